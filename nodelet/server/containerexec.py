"""A command started in a running container for ``/exec``, with its stdio on pipes or a pty.

It takes the exec path the agent already has for exec probes: the holder's ``enter`` (the
``runc exec`` equivalent) in a fresh ``python -I -S`` interpreter, given the container's
process spec (``probe.exec.enter_request``: namespaces, cgroups, user, groups, capabilities,
no_new_privs, seccomp filter, environment and working dir). The request and the failure report
travel on their own pipes, so stdin/stdout/stderr are the client's alone. With a TTY the
command makes the pty its controlling terminal in a session of its own, so it gets job
control and SIGWINCH on a resize. It is killed when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import signal
import struct
import sys
import termios
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nodelet
from nodelet.cli.exec import TTY_TERM
from nodelet.pod.probes import ProbeTarget
from nodelet.probe.exec import enter_request, start_time

_PACKAGE_PARENT = str(Path(nodelet.__file__).resolve().parent.parent)
_BOOTSTRAP = (
    f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); "
    "from nodelet.holder import enter; enter.main()"
)
_TTY_BOOTSTRAP = (
    "import os, fcntl, termios; os.register_at_fork(after_in_child=lambda: "
    "(os.setsid(), fcntl.ioctl(0, termios.TIOCSCTTY, 0))); " + _BOOTSTRAP
)
"""With a TTY the command (``enter``'s one fork, already in the container's PID namespace)
starts a session of its own there and takes the pty as its controlling terminal, as
``runc exec -t`` sets its process up: a shell's job control then sees its own process groups
(the leader's, in the host's PID namespace, would be invisible to it)."""
_F_SETPIPE_SZ = 1031
READ_SIZE = 1 << 16


class ExecError(Exception):
    """The command could not be started (the container is gone, a step of enter failed)."""


@dataclass(frozen=True)
class Outcome:
    """How the command ended: its exit code, or why it never ran."""

    code: int
    failure: str | None = None


class ContainerProcess:
    """The running command: ``enter`` as session leader, its stdio ends on our side."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        status_fd: int,
        stdin: asyncio.StreamWriter | None,
        stdout: asyncio.StreamReader | None,
        stderr: asyncio.StreamReader | None,
        master: int | None,
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._status_fd = status_fd
        self._stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._master = master

    async def write(self, data: bytes) -> None:
        if self._stdin is None:
            return
        self._stdin.write(data)
        await self._stdin.drain()

    def close_stdin(self) -> None:
        """End of the client's stdin. A pty stays open: closing it would hang the terminal up
        (kubelet's TTY stdin does not end on the client's EOF either)."""
        if self._stdin is not None and self._master is None:
            self._stdin.close()

    def resize(self, width: int, height: int) -> None:
        if self._master is not None and width > 0 and height > 0:
            winsize = struct.pack("HHHH", height, width, 0, 0)
            with contextlib.suppress(OSError):
                fcntl.ioctl(self._master, termios.TIOCSWINSZ, winsize)

    async def wait(self) -> Outcome:
        code = await self.proc.wait()
        os.set_blocking(self._status_fd, False)
        with contextlib.suppress(BlockingIOError):
            report = os.read(self._status_fd, 65536)
            if report:
                return Outcome(code, str(json.loads(report)["message"]))
        return Outcome(128 - code if code < 0 else code)

    def kill(self) -> None:
        """SIGKILL the command (the leader's child; with a TTY it has a session of its own),
        so that the leader reaps it and exits; the leader itself when there is no child yet.
        The leader is not reaped before ``wait``, so neither pid can have been reused."""
        if self.proc.returncode is None:
            for pid in _children(self.pid) or [self.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def kill_all(self) -> None:
        """The leader's whole session, when it does not end after ``kill``."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    def close(self) -> None:
        if self._stdin is not None:
            self._stdin.close()
        for fd in (self._status_fd, self._master):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as file:
            return [int(word) for word in file.read().split()]
    except (OSError, ValueError):
        return []


async def start(
    target: ProbeTarget, argv: Sequence[str], *, stdin: bool, tty: bool
) -> ContainerProcess:
    """Start ``argv`` in ``target``'s container; stdout/stderr are pipes, or one pty."""
    started = target.start_time if target.start_time is not None else start_time(target.pid)
    if started is None:
        raise ExecError(f"container process {target.pid} is gone")
    request = enter_request(
        argv, target.pid, started, target.container, uid=target.uid, gid=target.gid,
        cgroup_procs=target.cgroup_procs,
    )  # fmt: skip
    if tty:
        request["env"].setdefault("TERM", TTY_TERM)
    payload = json.dumps(request).encode()
    ours: list[int] = []  # closed on failure
    theirs: list[int] = []  # the child's ends: closed here once it has them
    try:
        request_r, request_w = os.pipe2(os.O_CLOEXEC)
        theirs += [request_r, request_w]
        if len(payload) > 65536:
            fcntl.fcntl(request_w, _F_SETPIPE_SZ, len(payload))
        os.write(request_w, payload)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        ours.append(status_r)
        theirs.append(status_w)
        fds = ["--request-fd", str(request_r), "--status-fd", str(status_w)]
        if tty:
            master, slave = pty.openpty()
            ours.append(master)
            theirs.append(slave)
            proc = await _spawn(_TTY_BOOTSTRAP, fds, (request_r, status_w), slave, slave, slave)
            return await _tty_process(proc, status_r, master, stdin)
        stdio = asyncio.subprocess.PIPE
        proc = await _spawn(
            _BOOTSTRAP, fds, (request_r, status_w),
            stdio if stdin else asyncio.subprocess.DEVNULL, stdio, stdio,
        )  # fmt: skip
        return ContainerProcess(proc, status_r, proc.stdin, proc.stdout, proc.stderr, None)
    except OSError as err:
        for fd in ours:
            os.close(fd)
        raise ExecError(f"cannot start the command: {err}") from None
    finally:
        for fd in theirs:
            os.close(fd)


async def _spawn(
    bootstrap: str, fds: list[str], keep: tuple[int, int], stdin: int, stdout: int, stderr: int
) -> asyncio.subprocess.Process:
    argv = [sys.executable, "-I", "-S", "-c", bootstrap, *fds]
    return await asyncio.create_subprocess_exec(
        *argv, stdin=stdin, stdout=stdout, stderr=stderr, pass_fds=keep, env={},
        start_new_session=True,
    )  # fmt: skip


async def _tty_process(
    proc: asyncio.subprocess.Process, status_r: int, master: int, stdin: bool
) -> ContainerProcess:
    """Stream ends on the pty master (dups, so each transport owns its fd); EIO at the end of
    the terminal is the reader's EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_SIZE)
    read_end = os.fdopen(os.dup(master), "rb", buffering=0)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), read_end)
    writer = None
    if stdin:
        write_end = os.fdopen(os.dup(master), "wb", buffering=0)
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, write_end
        )
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
    return ContainerProcess(proc, status_r, writer, reader, None, master)


async def read_chunk(reader: asyncio.StreamReader) -> bytes:
    """The next output chunk; b"" at the end (a pty's EIO included)."""
    try:
        return await reader.read(READ_SIZE)
    except OSError:
        return b""
