"""Sockets created inside another network namespace, without moving the agent's threads.

A socket belongs for life to the network namespace of the thread that created it. So a fresh,
short-lived thread enters the target namespace (``setns(CLONE_NEWNET)``, which Python 3.11 lacks,
through libc), creates the socket and exits: the agent's own threads, and any thread pool a
later task could land on, never leave the host namespace.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_setns = _libc.setns
_setns.argtypes = [ctypes.c_int, ctypes.c_int]
_setns.restype = ctypes.c_int


def socket_in_netns(netns: str | None, family: int, type_: int) -> socket.socket:
    """A new socket in the network namespace at ``netns`` (``/proc/<pid>/ns/net``, a bind-mounted
    namespace file), or in the agent's own namespace when ``netns`` is None. Raises OSError with
    the path when the namespace cannot be entered (the pod's holder exited, no privilege)."""
    if netns is None:
        return socket.socket(family, type_)
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def create() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns(CLONE_NEWNET): {os.strerror(errno)}", netns)
            finally:
                os.close(fd)
            made.append(socket.socket(family, type_))
        except BaseException as err:  # handed to the caller's thread, re-raised there
            failed.append(err)

    thread = threading.Thread(target=create, name="nodelet-netns-socket", daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]
