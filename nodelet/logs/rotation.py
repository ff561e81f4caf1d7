"""Rotated container logs: their names and order, and the agent's side of rotation.

The holder rotates (``nodelet.holder.crilog.LogFile``): ``<attempt>.log`` is renamed to
``<attempt>.log.<YYYYMMDD-HHMMSS>[.<n>]`` and a fresh file opened. The agent, as kubelet's
container log manager does every ``containerLogMonitorInterval`` (10 s), removes the oldest
rotated files beyond ``containerLogMaxFiles`` and gzips all rotated files but the newest (which
a ``kubectl logs -f`` may still be finishing). Nothing here ever writes the current file.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

MONITOR_INTERVAL_SECONDS = 10.0
"""kubelet's ``containerLogMonitorInterval`` default."""
GZ = ".gz"
TMP = ".tmp"

_ROTATED = re.compile(r"\.(\d{8}-\d{6})(?:\.(\d+))?(\.gz)?")
_CURRENT = re.compile(r"\d+\.log")


def rotation_key(current: Path, candidate: str) -> tuple[str, int] | None:
    """(stamp, sequence) of ``candidate`` when it is a rotated file of ``current``; None for
    anything else (the current file itself, ``.tmp`` leftovers, other attempts)."""
    prefix = current.name
    if not candidate.startswith(prefix):
        return None
    match = _ROTATED.fullmatch(candidate, len(prefix))
    if match is None:
        return None
    return match.group(1), int(match.group(2) or 0)


def rotated_files(current: Path) -> list[Path]:
    """The rotated files of one container run, oldest first; for a file present both plain
    and gzipped (a compression under way), the plain one."""
    found: dict[tuple[str, int], Path] = {}
    try:
        names = os.listdir(current.parent)
    except FileNotFoundError:
        return []
    for name in names:
        key = rotation_key(current, name)
        if key is not None and (key not in found or not name.endswith(GZ)):
            found[key] = current.parent / name
    return [found[key] for key in sorted(found)]


def open_rotated(path: Path) -> io.BufferedIOBase | None:
    """A rotated file for reading, decompressed; it may have been gzipped (or removed: None)
    since it was listed."""
    candidates = [path] if path.name.endswith(GZ) else [path, Path(str(path) + GZ)]
    for candidate in candidates:
        try:
            raw = candidate.open("rb")
        except FileNotFoundError:
            continue
        if candidate.name.endswith(GZ):
            return gzip.GzipFile(fileobj=raw, mode="rb")
        return raw
    return None


def current_logs(pod_logs_dir: Path) -> list[Path]:
    """Every ``<ns>_<pod>_<uid>/<container>/<attempt>.log`` under ``pod_logs_dir``."""
    found: list[Path] = []
    for pod_dir in _subdirs(pod_logs_dir):
        for container_dir in _subdirs(pod_dir):
            try:
                names = os.listdir(container_dir)
            except OSError:
                continue
            found.extend(container_dir / name for name in names if _CURRENT.fullmatch(name))
    return found


def _subdirs(path: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def compress(path: Path) -> Path:
    """gzip ``path`` to ``path.gz`` through ``path.gz.tmp`` (kubelet's steps), then remove it."""
    target = Path(str(path) + GZ)
    temporary = Path(str(target) + TMP)
    with path.open("rb") as source, temporary.open("wb") as raw:
        with gzip.GzipFile(filename=path.name, fileobj=raw, mode="wb", compresslevel=6) as out:
            shutil.copyfileobj(source, out, 1 << 20)
        raw.flush()
        os.fsync(raw.fileno())
    os.chmod(temporary, 0o640)
    os.replace(temporary, target)
    path.unlink()
    return target


def _clean_up(current: Path) -> None:
    """kubelet's ``cleanupUnusedLogs``: ``.gz.tmp`` of an interrupted compression, and a plain
    file whose ``.gz`` already exists (removed after its compression finished)."""
    for name in os.listdir(current.parent):
        path = current.parent / name
        interrupted = name.startswith(current.name + ".") and name.endswith(GZ + TMP)
        compressed = rotation_key(current, name) is not None and not name.endswith(GZ)
        if interrupted or (compressed and Path(str(path) + GZ).exists()):
            path.unlink(missing_ok=True)


def rotate(current: Path, max_files: int) -> None:
    """One container run's rotated files down to ``max_files - 1`` (with the current file,
    ``max_files``), oldest removed first; every one but the newest gzipped."""
    _clean_up(current)
    rotated = rotated_files(current)
    keep = max(max_files - 1, 1)
    for path in rotated[: max(len(rotated) - keep, 0)]:
        path.unlink(missing_ok=True)
    for path in rotated[-keep:][:-1]:
        if not path.name.endswith(GZ):
            compress(path)


def rotate_all(pod_logs_dir: Path, max_files: int) -> int:
    """``rotate`` for every container run's log on the node; returns how many failed (each
    is logged with its path and the reason, and the others still go on)."""
    failures = 0
    for current in current_logs(pod_logs_dir):
        try:
            rotate(current, max_files)
        except OSError as err:
            failures += 1
            log.warning("cannot rotate the logs of %s: %s", current, err)
    return failures


async def run_rotation(
    pod_logs_dir: Path,
    max_files: int,
    interval: float = MONITOR_INTERVAL_SECONDS,
) -> None:
    """The agent's periodic task (kubelet's ``ContainerLogManager.Start``), in a thread."""
    while True:
        try:
            await asyncio.to_thread(rotate_all, pod_logs_dir, max_files)
        except Exception:
            log.exception("container log rotation failed")
        await asyncio.sleep(interval)
