"""Spec -> process wiring, through the real agent: every honoured field is checked on the
container process itself (``/proc/<pid>``), compared with the host (this test process), so a
field the agent stops passing on, or passes as another one, fails a test.

Each namespace flag is tested alone: a pod with ``hostIPC`` must keep its own network and UTS
namespaces, so ``hostIPC`` following ``hostNetwork`` (or the reverse) is caught.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.agentharness import CRI_LINE, NODE, Agent, free_port, process_gone, wait_for

pytestmark = pytest.mark.system

SLEEP = "import time; print('ready', flush=True); time.sleep(3600)"
KINDS = ("net", "ipc", "uts", "pid")


def marker(name: str) -> str:
    """A unique argv entry, to find the container's process among all of ours."""
    return f"nlt-{name}-{uuid.uuid4().hex[:8]}"


def sleeper(name: str, mark: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "host", "command": ["python3", "-c", SLEEP, mark], **extra}


def manifest(name: str, containers: list[dict[str, Any]], **spec: Any) -> str:
    spec = {"containers": containers, "terminationGracePeriodSeconds": 1, **spec}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    return json.dumps(pod)


def process_with(mark: str) -> int:
    """The pid of the (exec'd) process whose argv holds ``mark``: our descendant."""

    def find() -> int | None:
        for proc in psutil.Process().children(recursive=True):
            try:
                if mark in proc.cmdline():
                    return proc.pid
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
        return None

    return wait_for(find, 20, f"a process with {mark} in its argv")


def ns(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def status_field(pid: int, key: str) -> list[str]:
    """A line of ``/proc/<pid>/status`` split into its values (``Uid:``, ``NSpid:``, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return line.split()[1:]
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = [item.decode().split("=", 1) for item in raw.split(b"\0") if item]
    return {key: value for key, value in pairs}


def start_pod(agent: Agent, name: str, containers: list[dict[str, Any]], **spec: Any) -> None:
    agent.write_manifest(f"{name}.json", manifest(name, containers, **spec))
    wait_for(lambda: agent.running(name), 20, f"{name} running")


# --- namespaces: each flag alone, compared with the host -----------------------------------

# (spec flags, which of the host's namespaces the container must share); the others must differ.
# The PID namespace is checked where the spec decides it (see the two tests after this one).
NAMESPACE_CASES: dict[str, tuple[dict[str, bool], set[str]]] = {
    "none": ({}, set()),
    "hostNetwork": ({"hostNetwork": True}, {"net", "uts"}),  # kubelet: UTS goes with the network
    "hostIPC": ({"hostIPC": True}, {"ipc"}),
    "hostPID": ({"hostPID": True}, {"pid"}),
    "shareProcessNamespace": ({"shareProcessNamespace": True}, set()),
}


@pytest.mark.parametrize("case", list(NAMESPACE_CASES))
def test_each_namespace_flag_alone(agent: Agent, case: str) -> None:
    flags, shared = NAMESPACE_CASES[case]
    marks = [marker("a"), marker("b")]
    start_pod(agent, "ns", [sleeper("a", marks[0]), sleeper("b", marks[1])], **flags)
    pids = [process_with(m) for m in marks]
    for kind in ("net", "ipc", "uts"):
        mine = ns("self", kind)
        assert ns(pids[0], kind) == ns(pids[1], kind), f"{kind}: containers of one pod differ"
        if kind in shared:
            assert ns(pids[0], kind) == mine, f"{case}: {kind} should be the host's"
        else:
            assert ns(pids[0], kind) != mine, f"{case}: {kind} should be the pod's own"
    if "pid" in shared:
        assert ns(pids[0], "pid") == ns("self", "pid")
    expected = socket.gethostname() if "uts" in shared else f"ns-{NODE}"
    assert uts_hostname(pids[0]) == expected


def uts_hostname(pid: int) -> str:
    """The host name in ``pid``'s UTS namespace (nsenter, from util-linux)."""
    result = subprocess.run(["nsenter", "-t", str(pid), "-u", "hostname"],
                            check=True, capture_output=True, text=True, timeout=10)  # fmt: skip
    return result.stdout.strip()


def test_share_process_namespace_is_one_pid_namespace_with_the_holder_as_pid_1(
    agent: Agent,
) -> None:
    marks = [marker("a"), marker("b")]
    start_pod(agent, "pidns", [sleeper("a", marks[0]), sleeper("b", marks[1])],
              shareProcessNamespace=True)  # fmt: skip
    pids = [process_with(m) for m in marks]
    assert ns(pids[0], "pid") == ns(pids[1], "pid") != ns("self", "pid")
    holder = psutil.Process(pids[0]).ppid()
    assert status_field(holder, "NSpid")[-1] == "1"
    assert len(status_field(pids[0], "NSpid")) == len(status_field(os.getpid(), "NSpid")) + 1


def test_without_host_pid_a_container_has_its_own_pid_namespace(agent: Agent) -> None:
    """kubelet gives every container its own PID namespace unless hostPID (or
    shareProcessNamespace) says otherwise: a pod that did not ask for the host's processes
    must not see or signal them."""
    mark = marker("a")
    start_pod(agent, "nohostpid", [sleeper("a", mark)])
    assert ns(process_with(mark), "pid") != ns("self", "pid")


def test_host_port_is_served_on_the_host_with_host_network(agent: Agent) -> None:
    """A hostPort reached from the host's own network namespace: fails if hostNetwork is
    ignored (the server would listen in the pod's private loopback)."""
    port = free_port()
    serve = (
        "import socket, sys\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
        "print('listening', flush=True)\n"
        "while True:\n"
        "    c, _ = s.accept(); c.sendall(b'served-by-pod'); c.close()\n"
    )
    container = {"name": "web", "image": "host", "command": ["python3", "-c", serve, str(port)],
                 "ports": [{"containerPort": port, "hostPort": port}]}  # fmt: skip
    start_pod(agent, "hostport", [container], hostNetwork=True)
    pod = wait_for(lambda: agent.pod("hostport"), 5, "hostport")
    wait_for(lambda: agent.log_lines(pod, "web") == ["listening"], 15, "server listening")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        assert conn.recv(100) == b"served-by-pod"


# --- identity, working dir, environment ------------------------------------------------------


def test_run_as_user_and_group_from_pod_and_container(agent: Agent) -> None:
    marks = {name: marker(name) for name in ("inherits", "overrides", "group-only")}
    containers = [
        sleeper("inherits", marks["inherits"]),
        sleeper("overrides", marks["overrides"], securityContext={"runAsUser": 4343}),
    ]
    start_pod(agent, "ids", containers,
              securityContext={"runAsUser": 4242, "runAsGroup": 4545,
                               "supplementalGroups": [4646]})  # fmt: skip
    group_only = sleeper("group-only", marks["group-only"], securityContext={"runAsGroup": 4747})
    start_pod(agent, "gids", [group_only])
    inherits, overrides, only_group = (process_with(marks[n]) for n in marks)
    assert status_field(inherits, "Uid") == ["4242"] * 4
    assert status_field(inherits, "Gid") == ["4545"] * 4
    # containerd's additional gids always hold the primary gid (ensureAdditionalGids).
    assert status_field(inherits, "Groups") == ["4545", "4646"]
    assert status_field(overrides, "Uid") == ["4343"] * 4
    assert status_field(overrides, "Gid") == ["4545"] * 4
    assert status_field(only_group, "Uid") == ["0"] * 4
    assert status_field(only_group, "Gid") == ["4747"] * 4


def test_working_dir_is_the_process_cwd(agent: Agent) -> None:
    mark, plain = marker("wd"), marker("plain")
    workdir = agent.base / "nlt-workdir"
    workdir.mkdir()
    start_pod(agent, "wd", [sleeper("wd", mark, workingDir=str(workdir)), sleeper("plain", plain)])
    assert os.readlink(f"/proc/{process_with(mark)}/cwd") == str(workdir)
    assert os.readlink(f"/proc/{process_with(plain)}/cwd") != str(workdir)


def test_environment_is_exactly_the_prepared_one(agent: Agent) -> None:
    mark = marker("env")
    env = [
        {"name": "NLT_PLAIN", "value": "plain value"},
        {"name": "NLT_EXPANDED", "value": "$(NLT_PLAIN)+$(NLT_MISSING)+$$(NLT_PLAIN)"},
        {"name": "NLT_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NLT_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NLT_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        {"name": "NLT_LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
    ]
    pod = json.loads(manifest("env", [sleeper("app", mark, env=env)]))
    pod["metadata"]["labels"] = {"tier": "backend"}
    agent.write_manifest("env.json", json.dumps(pod))
    wait_for(lambda: agent.running("env"), 20, "env running")
    seen = environ(process_with(mark))
    assert os.environ.get("PYTEST_CURRENT_TEST")  # the agent's own env has it ...
    assert seen == {  # ... the container's has only what the spec and the runtime define
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOSTNAME": f"env-{NODE}",
        "NLT_PLAIN": "plain value",
        "NLT_EXPANDED": "plain value+$(NLT_MISSING)+$(NLT_PLAIN)",
        "NLT_POD": f"env-{NODE}",
        "NLT_NS": "default",
        "NLT_HOST_IP": "127.0.0.1",
        "NLT_LABEL": "backend",
    }


# --- process group ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pid_namespace", [{}, {"hostPID": True}, {"shareProcessNamespace": True}], ids=str
)
def test_background_child_dies_with_the_main_process(
    agent: Agent, pid_namespace: dict[str, bool]
) -> None:
    """With a PID namespace of its own the container's PID 1 takes everything with it; with the
    host's or the pod's shared one only the kill of its process group does."""
    mark, other = marker("main"), marker("other")
    script = f"sleep 3600 & exec python3 -c 'import time; time.sleep(3600)' {mark}"
    forker = {"name": "forker", "image": "host", "command": ["sh", "-c", script]}
    # A second container keeps the holder (which reaps orphans when the pod ends) running, so
    # only the end of the main process can take the child down.
    start_pod(agent, "group", [forker, sleeper("other", other)], **pid_namespace)
    wait_for(lambda: agent.pod("group"), 5, "group")
    main = process_with(mark)
    child = wait_for(lambda: [c.pid for c in psutil.Process(main).children()], 5, "child")[0]
    assert os.getsid(main) == main and os.getpgid(main) == main  # its own session and group
    assert os.getpgid(child) == main
    os.kill(main, signal.SIGKILL)
    wait_for(lambda: process_gone(child), 5, "the background child killed with its group")
    assert not process_gone(process_with(other))


# --- CRI log labels and long lines, as the holder writes them -----------------------------


def test_container_output_is_labelled_by_stream_and_long_lines_are_split(agent: Agent) -> None:
    talk = (
        "import sys\n"
        "print('to-stdout', flush=True)\n"
        "print('to-stderr', file=sys.stderr, flush=True)\n"
        "print('x' * 40000, flush=True)\n"
        "print('done', flush=True)\n"
        "import time; time.sleep(3600)\n"
    )
    start_pod(agent, "talk", [{"name": "app", "image": "host", "command": ["python3", "-c", talk]}])
    pod = wait_for(lambda: agent.pod("talk"), 5, "talk")
    wait_for(lambda: "done" in agent.log_lines(pod, "app"), 15, "all output logged")
    path = agent.log_dir(pod, "app") / "0.log"
    chunks = [CRI_LINE.match(line) for line in path.read_text().splitlines()]
    assert all(chunks)
    by_stream: dict[str, list[tuple[str, str]]] = {"stdout": [], "stderr": []}
    for match in chunks:
        assert match is not None
        by_stream[match.group(2)].append((match.group(3), match.group(4)))
    assert by_stream["stderr"] == [("F", "to-stderr")]
    out = by_stream["stdout"]
    assert out[0] == ("F", "to-stdout") and out[-1] == ("F", "done")
    long_line = out[1:-1]
    assert [(tag, len(text)) for tag, text in long_line] == [
        ("P", 16384), ("P", 16384), ("F", 40000 - 2 * 16384)
    ]  # fmt: skip
    assert "".join(text for _, text in long_line) == "x" * 40000
