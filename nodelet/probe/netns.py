"""Sockets created inside another network namespace.

A socket belongs for life to the network namespace of the thread that created it. The calling
thread enters the target namespace (``setns(CLONE_NEWNET)``, which Python 3.11 lacks, through
libc), creates the socket and returns to its own namespace at once, in one synchronous call:
nothing else runs on that thread meanwhile, so no other socket is ever made in the pod's
namespace. This costs two system calls; a thread per socket (the first design) cost a thread
start and join, the largest part of a probe's CPU time with 100 probed pods.

Going home cannot fail (the thread holds a descriptor of its own namespace and entered another
one a moment ago); if it ever did, the thread would be stranded in a pod's namespace, so the
agent aborts rather than run on there: systemd restarts it, and the pods keep running.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import threading

CLONE_NEWNET = 0x40000000

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_setns = _libc.setns
_setns.argtypes = [ctypes.c_int, ctypes.c_int]
_setns.restype = ctypes.c_int
_home = threading.local()


def _enter(fd: int, what: str) -> None:
    if _setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns(CLONE_NEWNET): {os.strerror(errno)}", what)


def _home_fd() -> int:
    """This thread's own network namespace, opened once per thread."""
    fd: int | None = getattr(_home, "fd", None)
    if fd is None:
        fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        _home.fd = fd
    return fd


def socket_in_netns(netns: str | None, family: int, type_: int) -> socket.socket:
    """A new socket in the network namespace at ``netns`` (``/proc/<pid>/ns/net``, a bind-mounted
    namespace file), or in the caller's own namespace when ``netns`` is None. Raises OSError with
    the path when the namespace cannot be entered (the pod's holder exited, no privilege)."""
    if netns is None:
        return socket.socket(family, type_)
    home = _home_fd()
    target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _enter(target, netns)
    finally:
        os.close(target)
    try:
        return socket.socket(family, type_)
    finally:
        try:
            _enter(home, "/proc/thread-self/ns/net")
        except OSError:
            log.critical("cannot return to the agent's network namespace; aborting")
            os.abort()
