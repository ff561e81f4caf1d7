"""The few Linux calls Python 3.11's os module lacks, through libc: namespaces, mounts, prctl."""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def unshare(flags: int) -> None:
    if hasattr(os, "unshare"):
        os.unshare(flags)
        return
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    if hasattr(os, "setns"):
        os.setns(fd, nstype)
        return
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def fork(home_pid_namespace: int | None = None) -> int:
    """fork; with ``home_pid_namespace`` (an fd of our own PID namespace) the child is PID 1 of
    a new PID namespace (kubelet gives every container its own unless hostPID or
    shareProcessNamespace), and the parent's next child lands in ours again."""
    if home_pid_namespace is None:
        return os.fork()
    unshare(CLONE_NEWPID)
    try:
        pid = os.fork()
    except OSError:
        setns(home_pid_namespace, CLONE_NEWPID)
        raise
    if pid != 0:
        setns(home_pid_namespace, CLONE_NEWPID)
    return pid


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    def enc(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    result = _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), None)
    _check(result, f"mount {source or ''} on {target}")


def prctl(option: int, value: int, arg3: int = 0) -> int:
    """prctl(2); returns its (non-negative) result, raises OSError on -1."""
    result: int = _libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(arg3), 0, 0)
    if result < 0:
        _check(result, f"prctl({option})")
    return result


def start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22):
    with the pid, an identity that a reused pid number cannot fake."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return int(fields[19])


def loopback_up() -> None:
    """Bring ``lo`` up in the current network namespace (a fresh netns has it down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def join_cgroups(procs_files: list[str]) -> None:
    """Move the calling process into each cgroup (``cgroup.procs``, "0" = the caller)."""
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
