"""kubelet's exec prober (``pkg/probe/exec``): a command run in the container; exit 0 is healthy.

With no container engine to ``exec`` through, the command goes through the holder's ``enter``
(``nodelet.holder.enter``, the ``runc exec`` equivalent, in a fresh interpreter): it joins the
container's cgroups and namespaces and gets the container's process spec, as a CRI runtime's
ExecSync gives it: its user, groups, capabilities, no_new_privs, seccomp filter, environment
and working directory. The target is named by pid and kernel start time, so a container that
ended and whose pid was reused is never entered. It runs in a session of its own, so on timeout
or cancellation the whole process group is SIGKILLed by that session's id (the unreaped leader's
pid, which cannot have been reused).

As kubelet: the combined output, cut at 10 KiB, is the message; a timeout is a failure
``command "<argv joined>" timed out`` (the ExecProbeTimeout behaviour); a probe that cannot be
started (the process is gone, a namespace cannot be joined, the command is not found: CRI's
ExecSync error) is ``UNKNOWN``, a prober error.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nodelet
from nodelet.probe.result import Outcome, ProbeResult
from nodelet.runtime.api import ContainerConfig
from nodelet.runtime.wire import container_spec

log = logging.getLogger(__name__)

MAX_OUTPUT = 10 * 1024
"""kubelet's ``maxReadLength``: output beyond it is read and dropped, so the command never
blocks on a full pipe."""
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SECURITY_KEYS = (
    "run_as_user", "run_as_group", "supplemental_groups", "no_new_privileges", "capabilities",
    "seccomp_bpf",
)  # fmt: skip
_F_SETPIPE_SZ = 1031
_PACKAGE_PARENT = str(Path(nodelet.__file__).resolve().parent.parent)
_BOOTSTRAP = (
    f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); "
    "from nodelet.holder import enter; enter.main()"
)
"""``-I -S``: no site, no user paths, no environment: the interpreter starts in a few ms."""


def start_time(pid: int) -> int | None:
    """``pid``'s kernel start time (what a probe target is checked by); None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def container_environ(target_pid: int) -> dict[str, str]:
    """The environment the container process started with; a default PATH when unreadable."""
    try:
        with open(f"/proc/{target_pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {"PATH": _DEFAULT_PATH}
    env: dict[str, str] = {}
    for entry in raw.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name:
            env[os.fsdecode(name)] = os.fsdecode(value)
    env.setdefault("PATH", _DEFAULT_PATH)
    return env


def enter_request(
    command: Sequence[str],
    target_pid: int,
    target_start_time: int,
    container: ContainerConfig | None,
    *,
    uid: int | None = None,
    gid: int | None = None,
    cgroup_procs: Sequence[str] = (),
) -> dict[str, Any]:
    """The holder's ``enter.Request``: the container's process spec (as containerd's ExecSync
    takes it from the container's spec) when ``container`` is known; else only the user and
    group, the process's environment and the root directory (the caller's capabilities)."""
    if container is not None:
        spec = container_spec(container)
        security = {key: spec[key] for key in _SECURITY_KEYS if key in spec}  # type: ignore[literal-required]
        env, cwd = dict(container.env), container.working_dir or "/"
    else:
        security = {"run_as_user": uid, "run_as_group": gid, "supplemental_groups": [],
                    "no_new_privileges": False}  # fmt: skip
        env, cwd = container_environ(target_pid), "/"
    return {
        "pid": target_pid, "start_time": target_start_time, "argv": list(command), "env": env,
        "cwd": cwd, "security": security, "cgroup_procs": list(cgroup_procs),
    }  # fmt: skip


class _Probe:
    """The probe's session: its leader (``enter``) watched through a pidfd, its output
    through a non-blocking pipe. Waiting is on the leader's exit, never on the pipe's end, so a
    process the command left behind holding the pipe cannot hang it."""

    def __init__(self, proc: subprocess.Popen[bytes], output_fd: int, status_fd: int) -> None:
        self.proc = proc
        self.output_fd = output_fd
        self.status_fd = status_fd
        self.pidfd = os.pidfd_open(proc.pid)
        self.output = bytearray()
        self.exited = False
        os.set_blocking(output_fd, False)

    def _read(self) -> bool:
        """Read what the pipe holds now; False at its end."""
        while True:
            try:
                data = os.read(self.output_fd, 65536)
            except BlockingIOError:
                return True
            if not data:
                return False
            self.output += data[: MAX_OUTPUT - len(self.output)]

    async def wait_exit(self) -> None:
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def on_output() -> None:
            if not self._read():
                loop.remove_reader(self.output_fd)

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(self.output_fd, on_output)
        loop.add_reader(self.pidfd, on_exit)
        try:
            await exited
        finally:
            loop.remove_reader(self.output_fd)
            loop.remove_reader(self.pidfd)
        self.exited = True
        self._read()

    def returncode(self) -> int:
        """The leader's exit status; it has exited, so this does not block."""
        return self.proc.wait()

    async def kill(self) -> None:
        """SIGKILL the whole session by the leader's pid, which cannot have been reused: the
        leader is not reaped until it has exited here."""
        if not self.exited:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(asyncio.CancelledError):
                await self.wait_exit()
        if self.exited:
            self.proc.wait()

    def close(self) -> None:
        os.close(self.pidfd)
        os.close(self.output_fd)
        os.close(self.status_fd)


def _spawn(request: bytes) -> _Probe:
    """``enter`` in a new session: the request waits in a pipe (sized to hold it all) on its
    stdin, the output pipe is its stdout and stderr, a failure comes back on a status pipe."""
    fds: list[int] = []
    try:
        request_r, request_w = os.pipe2(os.O_CLOEXEC)
        fds += [request_r, request_w]
        if len(request) > 65536:
            fcntl.fcntl(request_w, _F_SETPIPE_SZ, len(request))
        os.write(request_w, request)
        output_r, output_w = os.pipe2(os.O_CLOEXEC)
        fds += [output_r, output_w]
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        fds += [status_r, status_w]
        argv = [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, "--status-fd", str(status_w)]
        proc = subprocess.Popen(
            argv, bufsize=0, stdin=request_r, stdout=output_w, stderr=output_w,
            pass_fds=(status_w,), env={}, start_new_session=True,
        )  # fmt: skip
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for fd in (request_r, request_w, output_w, status_w):
        os.close(fd)
    return _Probe(proc, output_r, status_r)


def _failure(probe: _Probe) -> str | None:
    """What ``enter`` reported when it could not start the command (it has exited)."""
    os.set_blocking(probe.status_fd, False)
    with contextlib.suppress(BlockingIOError):
        text = os.read(probe.status_fd, 65536)
        if text:
            return str(json.loads(text)["message"])
    return None


async def exec_probe(
    command: list[str],
    *,
    target_pid: int,
    uid: int | None,
    gid: int | None,
    timeout: float,
    cgroup_procs: Sequence[str] = (),
    target_start_time: int | None = None,
    container: ContainerConfig | None = None,
) -> ProbeResult:
    """Run ``command`` in ``target_pid`` (the container's process) with ``container``'s
    process spec. ``target_start_time`` is its kernel start time when it was known to be the
    container; without it the process found at ``target_pid`` now is taken."""
    started = target_start_time if target_start_time is not None else start_time(target_pid)
    if started is None:
        return ProbeResult(Outcome.UNKNOWN, f"container process {target_pid} is gone")
    request = enter_request(command, target_pid, started, container, uid=uid, gid=gid,
                            cgroup_procs=cgroup_procs)  # fmt: skip
    try:
        probe = _spawn(json.dumps(request).encode())
    except OSError as err:
        return ProbeResult(Outcome.UNKNOWN, f"cannot start the exec probe: {err}")
    try:
        async with asyncio.timeout(timeout):
            await probe.wait_exit()
        code = probe.returncode()
        failure = _failure(probe)
    except TimeoutError:
        return ProbeResult(Outcome.FAILURE, f'command "{" ".join(command)}" timed out')
    finally:
        await probe.kill()
        probe.close()
    if failure is not None:
        return ProbeResult(Outcome.UNKNOWN, failure)
    message = probe.output.decode("utf-8", "replace")
    return ProbeResult(Outcome.SUCCESS if code == 0 else Outcome.FAILURE, message)
