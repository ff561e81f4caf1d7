"""The host mounts nodelet makes for pod volumes (tmpfs), and finding them in the mount table.

``/proc/self/mountinfo`` is the truth: after an agent restart it still shows what an earlier
agent mounted, so setup does not stack a second tmpfs and removal unmounts before deleting.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from dataclasses import dataclass

MNT_DETACH = 2
_MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(r"\\([0-7]{3})")

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo: where, which filesystem, and its superblock options."""

    mount_point: str
    fstype: str
    super_options: str


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def mount_table(path: str = _MOUNTINFO) -> list[MountEntry]:
    """The mounts of this mount namespace, in mount order (a later entry covers an earlier)."""
    entries = []
    with open(path, encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            fields = line.split()
            separator = fields.index("-", 6)
            entries.append(
                MountEntry(
                    mount_point=_unescape(fields[4]),
                    fstype=fields[separator + 1],
                    super_options=fields[separator + 3] if len(fields) > separator + 3 else "",
                )
            )
    return entries


def mount_at(path: str) -> MountEntry | None:
    """The topmost mount whose mount point is ``path`` itself (symlinks resolved), or None."""
    target = os.path.realpath(path)
    found = None
    for entry in mount_table():
        if entry.mount_point == target:
            found = entry
    return found


def mounts_below(root: str) -> list[str]:
    """Mount points at or under ``root``, deepest (and latest) first: the order to unmount."""
    base = os.path.realpath(root).rstrip("/")
    points = [
        e.mount_point
        for e in mount_table()
        if e.mount_point == base or e.mount_point.startswith(base + "/")
    ]
    ordered = list(reversed(points))
    ordered.sort(key=lambda point: point.count("/"), reverse=True)
    return ordered


def mount_tmpfs(target: str, options: list[str]) -> None:
    """``mount -t tmpfs -o <options> tmpfs <target>``, with no flags, as kubelet mounts it."""
    data = ",".join(options).encode() if options else None
    result = _libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", ctypes.c_ulong(0), data)
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs: {os.strerror(err)}", target)


def unmount(target: str) -> None:
    """Unmount ``target``; when it is busy (a process of the host still has a file open there),
    detach it lazily: either way nothing is mounted at ``target`` afterwards, so the directory
    beneath can be deleted without reaching into the filesystem that was mounted."""
    path = os.fsencode(target)
    if _libc.umount2(path, 0) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EBUSY and _libc.umount2(path, MNT_DETACH) == 0:
        return
    if err == errno.EBUSY:
        err = ctypes.get_errno()
    raise OSError(err, f"unmount: {os.strerror(err)}", target)
