"""fsGroup ownership of a volume, as kubelet's ``SetVolumeOwnership`` (``volume_linux.go``).

Every file and directory gets the pod's ``fsGroup`` as its group and group read (and, unless
the volume is read-only, write) permission; directories also get group search and setgid, so
what a container creates later inherits the group. The owner is never changed, symlinks are
re-grouped but never chmod'ed (that would change their target) and never followed.
"""

from __future__ import annotations

import logging
import os
import stat

RW_MASK = 0o660
RO_MASK = 0o440
EXEC_MASK = 0o110
ON_ROOT_MISMATCH = "OnRootMismatch"
ALWAYS = "Always"

log = logging.getLogger(__name__)


def set_volume_ownership(
    root: str, fs_group: int | None, policy: str | None, *, read_only: bool
) -> None:
    """Give ``root`` and everything below it to ``fs_group``; nothing when it is None.

    ``OnRootMismatch`` skips the walk when the root already has the group, the mode bits and
    setgid; ``Always`` (or None, the default) walks every time. Failures on single files are
    logged and skipped, as kubelet does: ownership is best effort, the mount is not failed.
    """
    if fs_group is None:
        return
    if policy == ON_ROOT_MISMATCH and not _requires_change(root, fs_group, read_only):
        log.debug("volume %s already owned by group %d, skipping", root, fs_group)
        return
    for path, info in _walk_deep(root):
        _change(path, info, fs_group, read_only)


def _requires_change(root: str, fs_group: int, read_only: bool) -> bool:
    try:
        info = os.stat(root)
    except OSError as err:
        log.warning("changing ownership of %s: cannot read its root: %s", root, err)
        return True
    if info.st_gid != fs_group or not stat.S_ISDIR(info.st_mode):
        return True
    wanted = (RO_MASK if read_only else RW_MASK) | EXEC_MASK
    return (info.st_mode & wanted) != wanted or not info.st_mode & stat.S_ISGID


def _walk_deep(root: str) -> list[tuple[str, os.stat_result]]:
    """Every path under ``root`` with its lstat, children before their directory (kubelet's
    ``walkDeep``); directories reached through symlinks are not entered."""
    order: list[tuple[str, os.stat_result]] = []
    try:
        pending = [(root, os.lstat(root), False)]
    except OSError as err:
        log.warning("changing ownership of %s: %s", root, err)
        return order
    while pending:
        path, info, expanded = pending.pop()
        if expanded or not stat.S_ISDIR(info.st_mode):
            order.append((path, info))
            continue
        pending.append((path, info, True))
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    try:
                        child = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    pending.append((entry.path, child, False))
        except OSError as err:
            log.warning("changing ownership below %s: %s", path, err)
    return order


def _change(path: str, info: os.stat_result, fs_group: int, read_only: bool) -> None:
    try:
        os.chown(path, -1, fs_group, follow_symlinks=False)
    except OSError as err:
        log.warning("lchown %s to group %d failed: %s", path, fs_group, err)
    if stat.S_ISLNK(info.st_mode):
        return
    mask = RO_MASK if read_only else RW_MASK
    if stat.S_ISDIR(info.st_mode):
        mask |= stat.S_ISGID | EXEC_MASK
    try:
        os.chmod(path, stat.S_IMODE(info.st_mode) | mask)
    except OSError as err:
        log.warning("chmod %s failed: %s", path, err)
