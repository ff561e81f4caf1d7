"""kubelet's exec prober (``pkg/probe/exec``): a command run in the container; exit 0 is healthy.

With no container engine to ``exec`` through, the command enters every namespace of the
container's process (mount, UTS, IPC, network, PID) and its root and working directory with
util-linux ``nsenter``, as the container's user and group, with the container process's
environment (what a CRI runtime's exec gives it). It runs in a session of its own, so on timeout
or cancellation the whole process group is SIGKILLed by that session's id (the unreaped leader's
pid, which cannot have been reused). With ``cgroup_procs``, a shell gate holds the command until
its pid is in the container's cgroups, so nothing it forks escapes them.

As kubelet: the combined output, cut at 10 KiB, is the message; a timeout is a failure
``command "<argv joined>" timed out`` (the ExecProbeTimeout behaviour); a probe that cannot be
started is ``UNKNOWN``, a prober error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence

from nodelet.probe.result import Outcome, ProbeResult

log = logging.getLogger(__name__)

MAX_OUTPUT = 10 * 1024
"""kubelet's ``maxReadLength``: output beyond it is read and dropped, so the command never
blocks on a full pipe."""
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_GATE = 'read -r _ || true; exec "$@"'
"""Run by ``sh -c`` in the new session: waits for the agent's go (after the cgroup writes)."""


def nsenter_argv(
    command: Sequence[str], target_pid: int, uid: int | None, gid: int | None
) -> list[str]:
    """``nsenter`` entering all of ``target_pid``'s namespaces, root and working directory."""
    nsenter = shutil.which("nsenter") or "nsenter"
    argv = [nsenter, f"--target={target_pid}", "--mount", "--uts", "--ipc", "--net", "--pid"]
    argv += ["--root", "--wd"]
    if gid is not None:
        argv.append(f"--setgid={gid}")
    if uid is not None:
        argv.append(f"--setuid={uid}")
    return [*argv, "--", *command]


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


def _join_cgroups(pid: int, cgroup_procs: Sequence[str]) -> None:
    for path in cgroup_procs:
        try:
            with open(path, "w") as f:
                f.write(f"{pid}\n")
        except OSError as err:
            log.warning("exec probe pid %d not moved into cgroup %s: %s", pid, path, err)


class _Probe:
    """The probe's session: its leader (``nsenter``, or the cgroup gate) watched through a
    pidfd, its output through a non-blocking pipe. Waiting is on the leader's exit, never on
    the pipe's end, so a process the command left behind holding the pipe cannot hang it."""

    def __init__(self, proc: subprocess.Popen[bytes], output_fd: int) -> None:
        self.proc = proc
        self.output_fd = output_fd
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
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()


def _spawn(argv: list[str], env: dict[str, str], gated: bool) -> _Probe:
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        proc = subprocess.Popen(
            argv,
            bufsize=0,
            stdin=subprocess.PIPE if gated else subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            env=env,
            start_new_session=True,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return _Probe(proc, read_fd)


async def exec_probe(
    command: list[str],
    *,
    target_pid: int,
    uid: int | None,
    gid: int | None,
    timeout: float,
    cgroup_procs: Sequence[str] = (),
) -> ProbeResult:
    """Run ``command`` in the namespaces of ``target_pid`` (the container's process)."""
    if not os.path.exists(f"/proc/{target_pid}"):
        return ProbeResult(Outcome.UNKNOWN, f"container process {target_pid} is gone")
    argv = nsenter_argv(command, target_pid, uid, gid)
    if cgroup_procs:
        argv = ["/bin/sh", "-c", _GATE, "nodelet-exec-probe", *argv]
    try:
        probe = _spawn(argv, container_environ(target_pid), gated=bool(cgroup_procs))
    except OSError as err:
        return ProbeResult(Outcome.UNKNOWN, f"cannot start the exec probe {argv[0]}: {err}")
    try:
        if probe.proc.stdin is not None:
            _join_cgroups(probe.proc.pid, cgroup_procs)
            with contextlib.suppress(BrokenPipeError):
                probe.proc.stdin.write(b"\n")
        async with asyncio.timeout(timeout):
            await probe.wait_exit()
        code = probe.returncode()
    except TimeoutError:
        return ProbeResult(Outcome.FAILURE, f'command "{" ".join(command)}" timed out')
    finally:
        await probe.kill()
        probe.close()
    message = probe.output.decode("utf-8", "replace")
    return ProbeResult(Outcome.SUCCESS if code == 0 else Outcome.FAILURE, message)
