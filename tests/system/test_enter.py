"""``enter`` (the holder's ``runc exec``) against a container started by the holder's spawn path:
new network, UTS and IPC namespaces made for it, its own PID and mount namespaces, a cgroup of
the test's own, uid 1000 with groups, drop ALL, no_new_privs and containerd's RuntimeDefault
seccomp program. The entered command is ``cat /proc/self/status`` and friends, so what it
prints is what the kernel gave it. Every process is killed by its pid, every cgroup removed."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nodelet.holder import enter, hooks, linux, protocol, spawn
from nodelet.probe.exec import enter_request, start_time
from nodelet.runtime.api import ContainerConfig
from nodelet.runtime.wire import container_spec
from nodelet.security.capabilities import container_capabilities, name_of, status_capabilities
from nodelet.security.seccomp import filter_for

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, cgroups)"),
]

NODE_CAPS = status_capabilities(Path("/proc/self/status").read_text())
ZERO = "0000000000000000"
NAMESPACES = ("ipc", "uts", "net", "pid", "mnt", "cgroup")
PIDS = Path("/sys/fs/cgroup/pids")
ROOT = str(Path(__file__).resolve().parents[2])


@dataclass
class Container:
    pid: int
    config: ContainerConfig
    cgroup: Path


def _config(cgroup_procs: list[str]) -> ContainerConfig:
    caps = container_capabilities({"capabilities": {"drop": ["ALL"]}}, False, node_caps=NODE_CAPS)
    assert caps is not None
    program = filter_for(
        {"type": "RuntimeDefault"}, {name_of(c) for c in caps.bounding}, False, Path("/nonexistent")
    )
    return ContainerConfig(
        name="nlt-enter", attempt=0, argv=["sleep", "300"],
        env={"PATH": "/usr/bin:/bin", "NLT_MARK": "from-the-spec"}, log_path="/dev/null",
        working_dir="/tmp", run_as_user=1000, run_as_group=1000, supplemental_groups=[1000, 2345],
        no_new_privileges=True, own_pid_namespace=True, cgroup_procs=cgroup_procs,
        capabilities=caps, seccomp_filter=program,
    )  # fmt: skip


def _start(config: ContainerConfig) -> int:
    """The holder's way: a PID namespace of its own (linux.fork), then spawn.run; the child
    makes the pod's network, UTS and IPC namespaces first, as the holder lives in them."""
    spec = container_spec(config)
    home = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    out_r, out_w = os.pipe()
    status_r, status_w = os.pipe()
    try:
        pid = linux.fork(home)
        if pid == 0:
            try:
                linux.unshare(linux.CLONE_NEWNET | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC)
                spawn.run(spec, out_w, out_w, status_w)
            finally:
                os._exit(126)
    finally:
        os.close(home)
    os.close(out_w)
    os.close(status_w)
    failure = os.read(status_r, 65536)
    os.close(status_r)
    os.close(out_r)
    assert failure == b"", failure
    return pid


@pytest.fixture
def container() -> Iterator[Container]:
    if not (PIDS / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 pids hierarchy here")
    cgroup = PIDS / f"nlt-enter-{secrets.token_hex(4)}"
    cgroup.mkdir()
    config = _config([str(cgroup / "cgroup.procs")])
    pid = 0
    try:
        pid = _start(config)
        yield Container(pid, config, cgroup)
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for _ in range(100):
            try:
                cgroup.rmdir()
                break
            except OSError:
                time.sleep(0.02)


def run_enter(request: dict[str, Any], timeout: float = 10.0) -> tuple[int, str, dict[str, str]]:
    """``python3 -S -m nodelet.holder.enter`` with the request on stdin: exit code, output,
    and the status report (empty when the command ran)."""
    status_r, status_w = os.pipe()
    try:
        proc = subprocess.run(
            [sys.executable, "-S", "-m", "nodelet.holder.enter", "--status-fd", str(status_w)],
            check=False, input=json.dumps(request).encode(), capture_output=True,
            timeout=timeout,
            pass_fds=(status_w,), cwd=ROOT,
        )  # fmt: skip
    finally:
        os.close(status_w)
    with os.fdopen(status_r, "rb") as status:
        report = status.read()
    return proc.returncode, (proc.stdout + proc.stderr).decode(), json.loads(report or b"{}")


def fields(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def request_for(ctr: Container, argv: list[str], **changes: Any) -> dict[str, Any]:
    started = start_time(ctr.pid)
    assert started is not None
    request = enter_request(argv, ctr.pid, started, ctr.config,
                            cgroup_procs=ctr.config.cgroup_procs)  # fmt: skip
    request.update(changes)
    return request


def test_entered_command_carries_the_containers_security(container: Container) -> None:
    code, output, report = run_enter(request_for(container, ["cat", "/proc/self/status"]))
    assert (code, report) == (0, {}), output
    mine, theirs = fields(output), fields(Path(f"/proc/{container.pid}/status").read_text())
    for field in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
                  "NoNewPrivs", "Seccomp"):  # fmt: skip
        assert mine[field] == theirs[field], field
    assert mine["Uid"].split() == ["1000"] * 4 and mine["Groups"].split() == ["1000", "2345"]
    assert (mine["CapEff"], mine["CapBnd"]) == (ZERO, ZERO)
    assert (mine["NoNewPrivs"], mine["Seccomp"]) == ("1", "2")


def test_entered_command_is_in_the_containers_namespaces_and_cgroup(container: Container) -> None:
    script = "for n in " + " ".join(NAMESPACES) + "; do readlink /proc/self/ns/$n; done; "
    script += 'cat /proc/self/cgroup; pwd; echo "$NLT_MARK"; echo "$$"'
    code, output, _ = run_enter(request_for(container, ["sh", "-c", script]))
    assert code == 0, output
    lines = output.splitlines()
    expected = [os.readlink(f"/proc/{container.pid}/ns/{kind}") for kind in NAMESPACES]
    assert lines[: len(NAMESPACES)] == expected
    mine = [os.readlink(f"/proc/self/ns/{kind}") for kind in ("ipc", "uts", "net", "pid", "mnt")]
    assert all(a != b for a, b in zip(expected, mine, strict=False))
    assert f"pids:/{container.cgroup.name}" in output
    assert lines[-3:-1] == ["/tmp", "from-the-spec"]
    assert 1 < int(lines[-1]) < 100  # a pid of the container's own PID namespace
    # The seccomp program applies: RuntimeDefault refuses unshare (EPERM).
    code, output, _ = run_enter(request_for(container, ["unshare", "--uts", "true"]))
    assert code != 0 and "Operation not permitted" in output


def test_a_reused_or_dead_pid_is_refused(container: Container) -> None:
    request = request_for(container, ["true"])
    code, _, report = run_enter({**request, "start_time": request["start_time"] + 1})
    assert code == enter.EXIT_SETUP_FAILED
    assert (
        report["message"] == f"process {container.pid} is not the container's (its pid was reused)"
    )
    dead = subprocess.Popen(["true"])
    dead.wait()
    code, _, report = run_enter({**request, "pid": dead.pid})
    assert code == enter.EXIT_SETUP_FAILED
    assert report == {"reason": protocol.SETUP_ERROR,
                      "message": f"container process {dead.pid} is gone"}  # fmt: skip


def test_exit_codes_signals_and_exec_failures(container: Container) -> None:
    assert run_enter(request_for(container, ["sh", "-c", "exit 7"]))[0] == 7
    assert run_enter(request_for(container, ["sh", "-c", "kill -TERM $$"]))[0] == 128 + 15
    code, _, report = run_enter(request_for(container, ["nlt-no-such-binary"]))
    assert code == enter.EXIT_EXEC_FAILED
    assert report == {
        "reason": protocol.START_ERROR,
        "message": 'exec: "nlt-no-such-binary": executable file not found in $PATH',
    }
    code, _, report = run_enter(request_for(container, ["true"], cwd="/nlt-no-such-dir"))
    assert code == enter.EXIT_SETUP_FAILED
    assert report["message"].startswith("chdir to cwd ('/nlt-no-such-dir') set in config.json")


def _reaped(pid: int) -> bool:
    """Whether ``pid`` is gone; reaped here if it was reparented to us (the subreaper)."""
    for _ in range(300):
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            if not Path(f"/proc/{pid}").exists():
                return True
        time.sleep(0.01)
    return False


def test_killing_the_group_ends_the_command(container: Container) -> None:
    """A timeout kills enter's process group: the command inside the container goes too."""
    request = request_for(container, ["sh", "-c", "echo up; exec sleep 300"])
    proc = subprocess.Popen(
        [sys.executable, "-S", "-m", "nodelet.holder.enter"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, start_new_session=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(request).encode())
    proc.stdin.close()
    sleeper = 0
    try:
        assert proc.stdout.readline() == b"up\n"
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1
        sleeper = int(children[0])
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(5) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # Reaped even when the test failed: a zombie would hold the container's PID namespace.
        assert sleeper == 0 or _reaped(sleeper)
    assert Path(f"/proc/{container.pid}").exists()


def test_signals_are_forwarded(container: Container) -> None:
    request = request_for(container, ["sh", "-c", "echo up; exec sleep 300"])
    proc = subprocess.Popen(
        [sys.executable, "-S", "-m", "nodelet.holder.enter"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, start_new_session=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(request).encode())
    proc.stdin.close()
    try:
        assert proc.stdout.readline() == b"up\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_prestop_exec_hook_gets_the_containers_security(container: Container) -> None:
    """The holder's path: its forked child calls ``hooks.run_child`` with the container's
    spec; the handler's output lands in holder.log (here: a file as fd 2) when it fails."""
    log = os.open(os.devnull, os.O_WRONLY)
    read_log, write_log = os.pipe()
    hook: protocol.HookSpec = {
        "kind": "exec",
        "argv": ["sh", "-c", "cat /proc/self/status; exit 3"],
    }
    child = os.fork()
    if child == 0:
        os.dup2(write_log, 2)
        hooks.run_child(hook, container.pid, 5.0, container_spec(container.config))
    os.close(write_log)
    os.close(log)
    _, status = os.waitpid(child, 0)
    with os.fdopen(read_log, "rb") as logged:
        output = logged.read().decode()
    assert os.waitstatus_to_exitcode(status) == 3, output
    status_fields = fields(output.replace("holder: preStop handler output: ", ""))
    assert status_fields["Uid"].split() == ["1000"] * 4
    assert (status_fields["CapEff"], status_fields["CapBnd"]) == (ZERO, ZERO)
    assert (status_fields["NoNewPrivs"], status_fields["Seccomp"]) == ("1", "2")
