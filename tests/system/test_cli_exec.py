"""The operator CLI against a real agent: ``exec`` (namespaces, user, capabilities, seccomp,
cgroups, exit code, TTY), ``ps``, ``inspect``, ``version`` and ``debug``."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from typing import Any

import pytest
import yaml

from tests.agentharness import Agent, wait_for
from tests.system.test_wiring import manifest, marker, process_with

pytestmark = pytest.mark.system

SLEEP = "import time; print('ready', flush=True); time.sleep(3600)"
STATUS_KEYS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
               "NoNewPrivs", "Seccomp", "Seccomp_filters")  # fmt: skip


def nodelet(agent: Agent, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -m nodelet ARGS --run-dir <the agent's>`` (before ``--`` when there is one)."""
    argv = list(args)
    cut = argv.index("--") if "--" in argv else len(argv)
    argv[cut:cut] = ["--run-dir", str(agent.run_dir)]
    return subprocess.run([sys.executable, "-m", "nodelet", *argv], capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def status_of(text: str) -> dict[str, str]:
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key: fields.get(key, "").strip() for key in STATUS_KEYS}


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="utf-8") as file:
        return status_of(file.read())


@pytest.fixture
def pods(agent: Agent) -> dict[str, Any]:
    """A root pod ``exa`` with two containers, and ``exb`` whose container runs as uid 1000
    without privileges (drop ALL but one, no_new_privs, RuntimeDefault seccomp)."""
    root_mark, user_mark = marker("exa"), marker("exb")
    agent.write_manifest("exa.json", manifest("exa", [
        {"name": "main", "image": "host", "command": ["python3", "-c", SLEEP, root_mark]},
        {"name": "side", "image": "host", "command": ["sleep", "3600"]},
    ]))  # fmt: skip
    restricted = {
        "runAsUser": 1000, "runAsGroup": 1000, "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # fmt: skip
    agent.write_manifest("exb.json", manifest("exb", [
        {"name": "app", "image": "host", "command": ["python3", "-c", SLEEP, user_mark],
         "workingDir": "/tmp", "env": [{"name": "GREETING", "value": "hello-exec"}],
         "securityContext": restricted},
    ], securityContext={"supplementalGroups": [4242]}))  # fmt: skip
    exa = wait_for(lambda: agent.running("exa"), 30, "exa running")
    exb = wait_for(lambda: agent.running("exb"), 30, "exb running")
    return {"exa": exa, "exb": exb, "root_pid": process_with(root_mark),
            "user_pid": process_with(user_mark)}  # fmt: skip


def test_exec_runs_in_the_pods_namespaces_as_the_container(
    agent: Agent, pods: dict[str, Any]
) -> None:
    exa = pods["exa"]["metadata"]["name"]
    hostname = nodelet(agent, "exec", exa, "--", "hostname")
    assert hostname.returncode == 0, hostname.stderr
    assert hostname.stdout.strip() == exa  # the pod's UTS namespace, not the node's
    assert hostname.stdout.strip() != os.uname().nodename
    pid = pods["root_pid"]
    ns = nodelet(agent, "exec", exa, "-c", "main", "--",
                 "sh", "-c", "readlink /proc/self/ns/net /proc/self/ns/ipc /proc/self/ns/mnt; "
                 "cat /proc/self/cgroup")  # fmt: skip
    lines = ns.stdout.splitlines()
    assert lines[:3] == [os.readlink(f"/proc/{pid}/ns/{kind}") for kind in ("net", "ipc", "mnt")]
    with open(f"/proc/{pid}/cgroup", encoding="utf-8") as file:
        assert sorted(lines[3:]) == sorted(file.read().splitlines())
    pid_ns = nodelet(agent, "exec", exa, "-c", "main", "--", "sh", "-c", "echo $$")
    assert int(pid_ns.stdout) < 50  # numbered in the container's own PID namespace

    exb = pods["exb"]["metadata"]["name"]
    probe = nodelet(agent, "exec", exb, "--", "sh", "-c",
                    'cat /proc/self/status; echo "pwd=$(pwd) greeting=$GREETING"')  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    theirs, ours = proc_status(pods["user_pid"]), status_of(probe.stdout)
    assert ours == theirs
    assert ours["Uid"].split()[0] == "1000" and "4242" in ours["Groups"].split()
    assert ours["NoNewPrivs"] == "1"
    assert (ours["Seccomp"], ours["Seccomp_filters"]) == ("2", "1")  # its filter, only once
    assert int(ours["CapBnd"], 16) == 1 << 10  # NET_BIND_SERVICE only
    assert "pwd=/tmp greeting=hello-exec" in probe.stdout


def test_exec_passes_the_exit_code_and_refuses_what_is_not_there(
    agent: Agent, pods: dict[str, Any]
) -> None:
    exa = pods["exa"]["metadata"]["name"]
    assert nodelet(agent, "exec", exa, "-c", "side", "--", "sh", "-c", "exit 7").returncode == 7
    assert nodelet(agent, "exec", exa, "--", "true").returncode == 0
    missing = nodelet(agent, "exec", exa, "--", "no-such-command-nlt")
    assert missing.returncode == 127 and "no-such-command-nlt" in missing.stderr
    nope = nodelet(agent, "exec", exa, "-c", "nope", "--", "true")
    assert nope.returncode == 1 and "container nope not found" in nope.stderr
    gone = nodelet(agent, "exec", "no-such-pod", "--", "true")
    assert gone.returncode == 1 and "not found" in gone.stderr


def under_pty(argv: list[str], timeout: float = 30) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as its stdin/stdout/stderr; (exit code, output)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, *argv])
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # EIO: the other side closed
                    break
                if not data:
                    break
                chunks.append(data)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def test_exec_it_keeps_the_terminal(agent: Agent, pods: dict[str, Any]) -> None:
    exa = pods["exa"]["metadata"]["name"]
    script = "test -t 0 && echo STDIN-TTY; test -t 1 && echo STDOUT-TTY; echo TERM=$TERM"
    base = ["-m", "nodelet", "exec", "--run-dir", str(agent.run_dir)]
    code, out = under_pty([*base, "-it", exa, "--", "sh", "-c", script])
    assert code == 0, out
    assert "STDIN-TTY" in out and "STDOUT-TTY" in out and "TERM=xterm" in out
    code, out = under_pty([*base, exa, "--", "sh", "-c", script])
    assert "STDIN-TTY" not in out  # without -i the command gets no stdin


def test_ps_inspect_and_version(agent: Agent, pods: dict[str, Any]) -> None:
    exa = pods["exa"]["metadata"]["name"]
    table = nodelet(agent, "ps")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAMESPACE", "POD", "CONTAINER", "STATE", "ATTEMPT", "PID",
                              "STARTED"]  # fmt: skip
    main = next(r.split() for r in rows if r.split()[1:3] == [exa, "main"])
    assert main[3:6] == ["Running", "0", str(pods["root_pid"])]
    listed = json.loads(nodelet(agent, "ps", "-o", "json").stdout)["containers"]
    assert {(c["pod"], c["container"]) for c in listed} >= {(exa, "main"), (exa, "side")}
    assert "exec" not in listed[0]  # env values only for one named container
    wide = nodelet(agent, "ps", "-o", "wide", "--pod", exa).stdout.splitlines()
    assert "HOLDER" in wide[0] and len(wide) == 3

    inspected = yaml.safe_load(nodelet(agent, "inspect", exa, "-o", "yaml").stdout)
    assert inspected["metadata"]["name"] == exa
    assert inspected["status"]["phase"] == "Running"
    assert [c["name"] for c in inspected["spec"]["containers"]] == ["main", "side"]
    runs = {c["container"]: c for c in inspected["nodelet"]["containers"]}
    assert runs["main"]["pid"] == pods["root_pid"]
    assert json.loads(nodelet(agent, "inspect", exa).stdout)["metadata"]["uid"]
    assert nodelet(agent, "inspect", "no-such-pod").returncode == 1

    version = subprocess.run([sys.executable, "-m", "nodelet", "version", "-o", "json"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    info = json.loads(version.stdout)
    assert info["holderProtocolVersion"] >= 3 and info["pythonVersion"].startswith("3.")


def test_debug_gets_the_pods_namespaces_with_the_nodes_filesystem(
    agent: Agent, pods: dict[str, Any]
) -> None:
    exa = pods["exa"]["metadata"]["name"]
    holder = json.loads(nodelet(agent, "ps", "-o", "json", "--pod", exa).stdout)
    holder_pid = holder["containers"][0]["holderPid"]
    out = nodelet(agent, "debug", exa, "--", "sh", "-c",
                  "hostname; id -u; readlink /proc/self/ns/net /proc/self/ns/mnt; "
                  "grep CapEff /proc/self/status")  # fmt: skip
    assert out.returncode == 0, out.stderr
    name, uid, net, mnt, cap_eff = out.stdout.splitlines()
    assert name == exa and uid == "0"
    assert net == os.readlink(f"/proc/{holder_pid}/ns/net")
    assert mnt == os.readlink("/proc/self/ns/mnt")  # the node's filesystem and tools
    assert int(cap_eff.split()[1], 16) == int(proc_status(os.getpid())["CapEff"], 16)
    target = nodelet(agent, "debug", exa, "--target", "main", "--", "sh", "-c",
                     "readlink /proc/self/ns/pid")  # fmt: skip
    # kubectl debug --target: the container's PID namespace (its children are in it).
    assert target.stdout.strip() == os.readlink(f"/proc/{pods['root_pid']}/ns/pid")
    refused = nodelet(agent, "debug", exa, "--image", "busybox")
    assert refused.returncode == 1 and "only 'host'" in refused.stderr
