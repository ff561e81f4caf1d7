"""Atomically projected files, in kubelet's ``AtomicWriter`` layout (``atomic_writer.go``).

The real files live in a hidden timestamped directory (``..2026_12_02_13_00_00.123456789``);
``..data`` is a symlink to it, and each user-visible top-level name is a symlink through
``..data``. A new payload is written to a fresh timestamped directory and ``..data`` is
swapped to it by ``rename(2)``, so a reader sees either the old set of files or the new one,
never a mix; ``..data`` is what inotify watchers follow. Names starting with ``..`` are reserved.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

DATA_DIR = "..data"
NEW_DATA_DIR = "..data_tmp"
MAX_FILE_NAME_LENGTH = 255
MAX_PATH_LENGTH = 4096


@dataclass(frozen=True)
class FileProjection:
    """One file of a payload: its bytes and its permission bits."""

    data: bytes
    mode: int


def validate_path(target: str) -> None:
    """kubelet's ``validatePath``: relative, no ``..`` element, not starting with ``..``,
    names of at most 255 and paths of at most 4096 characters. Raises ValueError."""
    if target == "":
        raise ValueError(f'invalid path: must not be empty: "{target}"')
    if posixpath.isabs(target):
        raise ValueError(f"invalid path: must be relative path: {target}")
    if len(target) > MAX_PATH_LENGTH:
        raise ValueError(
            f"invalid path: must be less than or equal to {MAX_PATH_LENGTH} characters"
        )
    items = target.split("/")
    for item in items:
        if item == "..":
            raise ValueError(f"invalid path: must not contain '..': {target}")
        if len(item) > MAX_FILE_NAME_LENGTH:
            raise ValueError(
                "invalid path: filenames must be less than or equal to "
                f"{MAX_FILE_NAME_LENGTH} characters"
            )
    if items[0].startswith("..") and len(items[0]) > 2:
        raise ValueError(f"invalid path: must not start with '..': {target}")


def write(
    target_dir: str,
    payload: Mapping[str, FileProjection],
    set_perms: Callable[[str], None] | None = None,
) -> bool:
    """Project ``payload`` into ``target_dir`` (which must exist); returns whether anything was
    written. ``set_perms`` runs on the new timestamped directory's name before the swap (kubelet
    gives the volume its fsGroup there). Raises ValueError for a bad path, OSError otherwise."""
    clean: dict[str, FileProjection] = {}
    for path, content in payload.items():
        validate_path(path)
        clean[posixpath.normpath(path)] = content
    data_link = os.path.join(target_dir, DATA_DIR)
    try:
        old_ts = os.readlink(data_link)
    except FileNotFoundError:
        old_ts = ""
    old_ts_path = os.path.join(target_dir, old_ts)
    to_remove: set[str] = set()
    if old_ts:
        to_remove = _paths_to_remove(clean, old_ts_path)
        if not to_remove and not _should_write(clean, old_ts_path):
            return False
    ts_dir = _new_timestamp_dir(target_dir)
    ts_name = os.path.basename(ts_dir)
    try:
        _write_payload(clean, ts_dir)
        if set_perms is not None:
            set_perms(ts_name)
        _create_user_visible(target_dir, clean)
        new_link = os.path.join(target_dir, NEW_DATA_DIR)
        _remove_if_present(new_link)  # left behind by a crash between symlink and rename
        os.symlink(ts_name, new_link)
        try:
            os.rename(new_link, data_link)
        except OSError:
            _remove_if_present(new_link)
            raise
    except BaseException:
        shutil.rmtree(ts_dir, ignore_errors=True)
        raise
    for path in to_remove:
        if "/" not in path:  # only the root's links; deeper paths went with the old ts dir
            _remove_if_present(os.path.join(target_dir, path))
    if old_ts:
        shutil.rmtree(old_ts_path, ignore_errors=True)
    return True


def _paths_to_remove(payload: Mapping[str, FileProjection], old_ts_path: str) -> set[str]:
    """Paths of the old version that the new payload no longer has (nor has below it)."""
    current: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(old_ts_path):
        rel = os.path.relpath(dirpath, old_ts_path)
        for name in [*dirnames, *filenames]:
            current.add(name if rel == "." else f"{rel}/{name}")
    wanted: set[str] = set()
    for path in payload:
        sub = path
        while sub:
            wanted.add(sub)
            sub = posixpath.dirname(sub)
    return current - wanted


def _should_write(payload: Mapping[str, FileProjection], old_ts_path: str) -> bool:
    for path, content in payload.items():
        full = os.path.join(old_ts_path, path)
        try:
            with open(full, "rb") as current:
                if current.read() != content.data:
                    return True
        except FileNotFoundError:
            return True
    return False


def _new_timestamp_dir(target_dir: str) -> str:
    """``os.MkdirTemp(target, "..2006_01_02_15_04_05.")``: the UTC time and Go's random digits,
    then 0755 whatever the umask, so group and other can reach the files."""
    prefix = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    while True:
        path = os.path.join(target_dir, f"{prefix}{random.randrange(1 << 32)}")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o755)
        return path


def _write_payload(payload: Mapping[str, FileProjection], ts_dir: str) -> None:
    for path, content in payload.items():
        full = os.path.join(ts_dir, path)
        os.makedirs(os.path.dirname(full), mode=0o777, exist_ok=True)
        mode = content.mode & 0o777
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        try:
            view = memoryview(content.data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)  # the mode asked for, whatever the umask
        finally:
            os.close(fd)


def _create_user_visible(target_dir: str, payload: Mapping[str, FileProjection]) -> None:
    """``bar -> ..data/bar`` for each top-level name of the payload, when not already there."""
    for path in payload:
        top = path.split("/", 1)[0]
        link = os.path.join(target_dir, top)
        try:
            os.readlink(link)
        except FileNotFoundError:
            os.symlink(os.path.join(DATA_DIR, top), link)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise


def _remove_if_present(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
