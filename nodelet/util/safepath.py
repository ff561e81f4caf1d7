"""Paths built from names a manifest chose, and deletes that cannot leave their directory.

Validation already refuses unsafe names; this is the second wall, at the filesystem itself,
so that no future caller (or a damaged record read back from disk) can turn a name into
``../../etc`` and have nodelet create or delete something outside its own directories.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class UnsafePathError(ValueError):
    """A name would leave its parent directory; the message says which and why."""


def child(base: Path, name: str) -> Path:
    """``base / name`` for a single path component ``name``, refusing anything else."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        raise UnsafePathError(f"{name!r} is not a usable file name under {base}")
    if "/" in name or "\0" in name:
        raise UnsafePathError(f"{name[:64]!r} is not a single file name under {base}")
    return base / name


def is_within(base: Path, path: Path) -> bool:
    """Whether ``path``'s parent, symlinks resolved, lies inside ``base`` (resolved too)."""
    root = os.path.realpath(base)
    parent = os.path.realpath(path.parent)
    return parent == root or parent.startswith(root.rstrip("/") + "/")


def remove_tree(base: Path, path: Path) -> None:
    """Delete ``path`` (a directory of nodelet's own under ``base``) and everything in it.

    Refuses when ``path`` is not inside ``base`` or is itself a symlink; links inside are
    removed, never followed (``shutil.rmtree`` works on file descriptors).
    """
    if not is_within(base, path) or os.path.realpath(base) == os.path.realpath(path):
        raise UnsafePathError(f"refusing to delete {path}: it is not inside {base}")
    try:
        if path.is_symlink():
            raise UnsafePathError(f"refusing to delete {path}: it is a symlink")
    except OSError:
        return
    shutil.rmtree(path, ignore_errors=True)
