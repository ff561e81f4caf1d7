"""Pinning a pod's network namespace with a bind mount, as containerd pins its sandboxes'.

A CNI DEL needs the netns: without it the reference bridge plugin releases the IP but leaves
its masquerade rules behind (containernetworking/plugins#810). The holder's netns dies with
the holder, so the network pins it from ADD until its DEL succeeded; a crash or a dead holder
then still gets a complete DEL.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from nodelet.holder import linux

MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


def pin(netns_path: str, target: Path) -> None:
    """Bind-mount the namespace at ``netns_path`` on ``target`` (replacing a stale pin)."""
    unpin(target)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    try:
        linux.mount(netns_path, str(target), None, linux.MS_BIND)
    except OSError:
        target.unlink(missing_ok=True)
        raise


def unpin(target: Path) -> None:
    """Unmount and remove a pin; a missing or never-mounted one is fine."""
    if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {target}: {os.strerror(err)}")
    target.unlink(missing_ok=True)
