"""Small facts from /proc and fds the holder needs, stdlib only.

The holder's /proc is the host's mount, so the numbers read here are host pids even when the
holder is PID 1 of a pod PID namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from typing import Any

from nodelet.holder import linux

NAMESPACES = ("net", "ipc", "uts", "pid")
"""Recorded in holder.json: the pod's own ones tell its leftover processes from the host's."""
STRAGGLER_ROUNDS = 100
"""Kill-and-reap rounds for processes still forking while the pod ends."""


def children_of(pid: str) -> list[str]:
    """Children of ``pid``, from /proc (the pod may have no PID namespace of its own)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[1].decode() == pid:
                found.append(entry)
    return found


def host_pid_of_child(pid: int) -> int:
    """The host pid of our child known to us as ``pid`` (we are in a pod PID namespace)."""
    me = os.readlink("/proc/self")  # /proc is the host's: this is our host pid
    try:
        with open(f"/proc/{me}/task/{me}/children") as listing:
            children = listing.read().split()
    except OSError:
        return pid
    for child in children:
        try:
            with open(f"/proc/{child}/status") as status:
                nspid = next(ln for ln in status if ln.startswith("NSpid:")).split()[1:]
        except (OSError, StopIteration):
            continue
        if nspid and nspid[-1] == str(pid):  # it lives in our namespace: last is ours
            return int(child)
    return pid


def say(message: str) -> None:
    """A line in holder.log; a log that cannot be written is no reason to fail."""
    with contextlib.suppress(OSError):
        os.write(2, message.encode(errors="replace") + b"\n")


def close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def open_log(path: str) -> tuple[int | None, str]:
    """The container's log file, or None and why: a full log disk must not stop the pod."""
    try:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(path, flags, 0o640), ""
    except OSError as err:
        say(f"holder: cannot open log {path}: {err}")
        return None, f"cannot open {path}: {err.strerror}"


def read_all(fd: int) -> bytes:
    """Everything until EOF, then close ``fd``."""
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def kill_children(pid: str) -> None:
    """SIGKILL and reap every child of ``pid`` (us), again while they keep forking."""
    for _ in range(STRAGGLER_ROUNDS):
        children = [int(child) for child in children_of(pid)]
        if not children:
            return
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child, 0)


def write_identity(path: str, extra: dict[str, Any]) -> None:
    """Our host pid, kernel start time and namespaces, atomically and durably (0600)."""
    me = int(os.readlink("/proc/self"))
    namespaces = {kind: os.stat(f"/proc/self/ns/{kind}").st_ino for kind in NAMESPACES}
    identity = {"pid": me, "start_time": linux.start_time(me), "namespaces": namespaces, **extra}
    temporary = path + ".new"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(identity).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, path)
