"""Run a command inside a running container, as ``runc exec`` does: exec probes, exec hooks.

The command gets everything the container's own process got from its spec, not the caller's
privileges: the container's cgroups, its namespaces (cgroup, IPC, UTS, network, PID, mount, then
the pod's user namespace when it has one, each checked against the target's ``/proc/<pid>/ns``
link after ``setns``), then, in a forked child (a PID namespace applies to children only), the
same steps ``spawn`` takes between fork and exec (``spawn.apply_process_security``: seccomp,
bounding set, user and groups, working directory, capability sets, no_new_privs), and exec. As
with ``runc exec``, the root is the mount namespace's own and the working directory is the
container's configured one (``/`` when it has none), not the target process's current one.

The target is named by its pid and its kernel start time: a pid number that was reused is
refused, and once checked the target is held by a pidfd and a ``/proc/<pid>`` directory fd,
so every later lookup reaches the same process or fails.

The parent stays outside the PID namespace and the cgroups (its memory is not charged to the
container), forwards the usual stop signals to the child and exits with the child's code
(128+signal when it was killed). The child stays in the caller's process group, so killing
that group (an exec probe's timeout, a hook's grace period) ends both.

``python3 -S -m nodelet.holder.enter [--request-fd N] [--status-fd N]`` reads a ``Request``
(JSON) from fd N (stdin by default, then replaced with /dev/null); a failure before exec is
written to the status fd as ``{"reason": ..., "message": ...}`` (else to stderr) and the exit
code is 126 (127 when exec itself failed). The holder calls ``enter`` in-process instead.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
from collections.abc import Callable
from typing import NoReturn, TypedDict

from nodelet.holder import linux, protocol, spawn, userns

CLONE_NEWCGROUP = 0x02000000
NAMESPACES = (
    ("cgroup", CLONE_NEWCGROUP),
    ("ipc", linux.CLONE_NEWIPC),
    ("uts", linux.CLONE_NEWUTS),
    ("net", linux.CLONE_NEWNET),
    ("pid", linux.CLONE_NEWPID),
    ("mnt", linux.CLONE_NEWNS),
    ("user", userns.CLONE_NEWUSER),
)
"""runc's join order, but the user namespace (a ``hostUsers: false`` pod's) last: runc joins it
first because there it owns every other namespace; here the container's mount and PID
namespaces are made by the holder as the host's root (see ``nodelet.holder.userns``), so they
are joined with the host's root's rights, and the user namespace after them. Its fd is opened
with the others, before the mount namespace hides the host's /proc."""
EXIT_SETUP_FAILED = 126
EXIT_EXEC_FAILED = 127
FORWARDED = (
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
)  # fmt: skip
"""Signals the parent passes on to the command (``runc exec``'s signal forwarding)."""


class EnterError(Exception):
    """The command could not be started in the container; ``reason`` is the holder's
    CreateContainerError (set-up) or StartError (exec itself failed)."""

    def __init__(self, message: str, reason: str = protocol.SETUP_ERROR) -> None:
        super().__init__(message)
        self.reason = reason


class Request(TypedDict):
    """What ``main`` reads: the target, the command, and the container's process spec."""

    pid: int
    """The target's pid in the caller's (the host's) PID namespace."""
    start_time: int
    """Its kernel start time (``/proc/<pid>/stat`` field 22), taken when it was known good."""
    argv: list[str]
    env: dict[str, str]
    cwd: str
    security: spawn.ProcessSecurity
    cgroup_procs: list[str]
    """``cgroup.procs`` (or v1 ``tasks``) files the command joins before exec."""


class Target:
    """A process held by a pidfd and a ``/proc/<pid>`` directory fd that was checked to be
    the same process: neither can come to mean another process later."""

    def __init__(self, pidfd: int, proc: int, pid: int) -> None:
        self.pidfd = pidfd
        self.proc = proc
        self.pid = pid

    def alive(self) -> bool:
        """The pidfd turns readable when the process exits."""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        for fd in (self.pidfd, self.proc):
            os.close(fd)


def _gone(pid: int) -> EnterError:
    return EnterError(f"container process {pid} is gone")


def _stat_fields(proc: int) -> list[bytes]:
    fd = os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
    try:
        return os.read(fd, 4096).rsplit(b")", 1)[1].split()
    finally:
        os.close(fd)


def open_target(pid: int, start_time: int) -> Target:
    """The process ``pid`` if it is still the one that started at ``start_time``."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise _gone(pid) from None
    try:
        proc = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        os.close(pidfd)
        raise _gone(pid) from None
    target = Target(pidfd, proc, pid)
    try:
        # Read through the directory fd: if it still names a process with that start time,
        # pidfd (opened before) and directory are that process, not a successor on its pid.
        if int(_stat_fields(proc)[19]) != start_time:
            raise EnterError(f"process {pid} is not the container's (its pid was reused)")
        if not target.alive():
            raise _gone(pid)
    except ProcessLookupError:
        target.close()
        raise _gone(pid) from None
    except BaseException:
        target.close()
        raise
    return target


def open_sibling(pid: int) -> Target:
    """Our parent's child ``pid`` (numbered in our PID namespace): a holder's container, seen
    from a child the holder forked for a hook. The host's /proc numbers it differently when
    the holder is PID 1 of the pod's PID namespace, so it is found among the parent's
    children by its pid in our namespace (its ``NSpid`` at our level); the pidfd is opened
    first, so the match is that process."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise _gone(pid) from None
    try:
        me = os.open("/proc/self", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            level = len(_nspids(me)) - 1
        finally:
            os.close(me)
        parent = int(_read("/proc/self/stat").rsplit(b")", 1)[1].split()[1])
        children = _read(f"/proc/{parent}/task/{parent}/children").split()
        for child in children:
            proc = os.open(f"/proc/{child.decode()}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            nspids = _nspids(proc)
            if len(nspids) > level and nspids[level] == pid:
                target = Target(pidfd, proc, int(child))
                if not target.alive():
                    target.close()
                    raise _gone(pid)
                return target
            os.close(proc)
    except OSError:
        os.close(pidfd)
        raise _gone(pid) from None
    os.close(pidfd)
    raise _gone(pid)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _nspids(proc: int) -> list[int]:
    """The process's pid in each PID namespace, the host's first (``NSpid``)."""
    fd = os.open("status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
    try:
        text = os.read(fd, 65536)
    finally:
        os.close(fd)
    line = next(ln for ln in text.splitlines() if ln.startswith(b"NSpid:"))
    return [int(n) for n in line.split()[1:]]


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def join_namespaces(target: Target) -> None:
    """setns into each namespace of the target that is not already ours, and check that it
    took: our ``/proc/self/ns`` link (``pid_for_children`` for PID) now names the target's."""
    own = os.open("/proc/self/ns", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    opened: list[tuple[str, int, int]] = []
    try:
        try:
            theirs = os.open("ns", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=target.proc)
            try:
                for name, flag in NAMESPACES:
                    opened.append((name, flag, os.open(name, os.O_RDONLY | os.O_CLOEXEC,
                                                       dir_fd=theirs)))  # fmt: skip
            finally:
                os.close(theirs)
        except (FileNotFoundError, ProcessLookupError):
            raise _gone(target.pid) from None
        if not target.alive():
            raise _gone(target.pid)
        for name, flag, fd in opened:
            link = "pid_for_children" if name == "pid" else name
            wanted = os.fstat(fd)
            if _same(os.stat(link, dir_fd=own), wanted):
                continue
            try:
                linux.setns(fd, flag)
            except OSError as err:
                raise EnterError(f"cannot join the container's {name} namespace: {err}") from None
            if not _same(os.stat(link, dir_fd=own), wanted):
                raise EnterError(f"setns did not join the container's {name} namespace")
    finally:
        for _, _, fd in opened:
            os.close(fd)
        os.close(own)


def _open_cgroups(paths: list[str]) -> list[int]:
    """Opened now, written by the child: after the mount namespace the paths are out of sight."""
    fds: list[int] = []
    try:
        for path in paths:
            fds.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
    except OSError as err:
        for fd in fds:
            os.close(fd)
        raise EnterError(f"cannot join the container's cgroup: {err}") from None
    return fds


def enter(request: Request, target: Target) -> int:
    """Run the request's command in ``target``; its exit code (128+signal when killed).
    Raises EnterError when it could not be started. Changes this process's namespaces."""
    cgroups = _open_cgroups(request["cgroup_procs"])
    try:
        join_namespaces(target)
        status_r, status_w = os.pipe()
    except BaseException:
        for fd in cgroups:
            os.close(fd)
        raise
    child = 0

    def forward(sig: int, _frame: object) -> None:
        if child:
            os.kill(child, sig)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        child = os.fork()
        if child == 0:
            _child(request, cgroups, status_w)
        os.close(status_w)
        for fd in cgroups:
            os.close(fd)
        failure = _read_fd(status_r)
        _, status = os.waitpid(child, 0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        details = json.loads(failure)
        raise EnterError(details["message"], details["reason"])
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _chdir(path: str) -> Callable[[], None]:
    def change() -> None:
        try:
            os.chdir(path)
        except OSError as err:
            message = f"chdir to cwd ({path!r}) set in config.json failed: {err.strerror}"
            raise spawn.SetupError(message) from None

    return change


def _child(request: Request, cgroups: list[int], status_w: int) -> NoReturn:
    """In the forked child (in the container's PID namespace): cgroups, security, exec."""
    argv = [str(a) for a in request["argv"]]
    try:
        for sig in (*FORWARDED, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        try:
            for fd in cgroups:
                os.write(fd, b"0")
        except OSError as err:
            raise spawn.SetupError(f"cannot join the container's cgroup: {err}") from None
        os.closerange(3, status_w)
        os.closerange(status_w + 1, 65536)
        if not argv:
            raise spawn.SetupError("no command given")
        spawn.apply_process_security(request["security"], _chdir(request["cwd"] or "/"))
        try:
            os.execvpe(argv[0], argv, dict(request["env"]))
        except OSError as err:
            spawn.fail(status_w, protocol.START_ERROR, spawn.exec_error(argv[0], err))
    except spawn.SetupError as err:
        spawn.fail(status_w, protocol.SETUP_ERROR, str(err))
    except OSError as err:
        spawn.fail(status_w, protocol.SETUP_ERROR, f"{err.strerror or err}: {err.filename or ''}")
    except BaseException as err:
        spawn.fail(status_w, protocol.SETUP_ERROR, repr(err))


def exit_code_of(error: EnterError) -> int:
    return EXIT_EXEC_FAILED if error.reason == protocol.START_ERROR else EXIT_SETUP_FAILED


def _options(argv: list[str]) -> dict[str, int]:
    options = {"--request-fd": 0, "--status-fd": -1}
    words = iter(argv)
    for word in words:
        name, sep, value = word.partition("=")
        if name not in options:
            raise SystemExit(f"usage: enter [--request-fd N] [--status-fd N]: unknown {word!r}")
        options[name] = int(value if sep else next(words))
    return options


def main(argv: list[str] | None = None) -> NoReturn:
    options = _options(sys.argv[1:] if argv is None else argv)
    request_fd, status_fd = options["--request-fd"], options["--status-fd"]
    raw = _read_fd(request_fd)
    if request_fd == 0:
        os.set_inheritable(os.open(os.devnull, os.O_RDONLY), True)  # the lowest free fd: 0
    try:
        request: Request = json.loads(raw)
        target = open_target(int(request["pid"]), int(request["start_time"]))
        code = enter(request, target)
    except EnterError as err:
        report = json.dumps({"reason": err.reason, "message": str(err)}).encode()
        os.write(status_fd if status_fd >= 0 else 2, report + b"\n")
        os._exit(exit_code_of(err))
    except (KeyError, TypeError, ValueError) as err:
        report = json.dumps({"reason": "BadRequest", "message": f"enter: {err!r}"}).encode()
        os.write(status_fd if status_fd >= 0 else 2, report + b"\n")
        os._exit(EXIT_SETUP_FAILED)
    os._exit(code)


if __name__ == "__main__":
    main()
