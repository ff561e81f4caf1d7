"""The files of one pod's run dir, read and written safely.

Everything here may hold secrets (the pod's env) or decide what runs, so files are 0600 and
directories 0700, writes are atomic and fsync'd, and whatever is read back is checked for shape:
a damaged file is treated as absent, never trusted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from nodelet.holder import linux, protocol

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private_dir(path: Path) -> None:
    """Create ``path`` (0700) or tighten an existing one: run dirs hold secrets."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (0600), durably: a crash leaves the old or the new file."""
    temporary = path.with_name(path.name + ".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    _sync_dir(path.parent)


def _sync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when missing, unreadable or of another shape."""
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as err:
        log.warning("ignoring unreadable %s: %s", path, err)
        return None
    if not isinstance(value, dict):
        log.warning("ignoring %s: not a JSON object", path)
        return None
    return value


def write_pod_record(directory: Path, record: dict[str, Any]) -> None:
    write_atomically(directory / protocol.POD_RECORD_NAME, json.dumps(record).encode())


def read_pod_record(directory: Path) -> dict[str, Any]:
    """The stored record, or ``{}``: the agent checks its shape before it trusts it."""
    return read_json_object(directory / protocol.POD_RECORD_NAME) or {}


def mark_terminating(directory: Path, grace_seconds: float) -> dict[str, Any]:
    """Make the intent to remove the pod durable before anything is stopped."""
    marker = {"since": time.time(), "grace_seconds": grace_seconds}
    write_atomically(directory / protocol.TERMINATING_NAME, json.dumps(marker).encode())
    return marker


def read_terminating(directory: Path) -> dict[str, Any] | None:
    marker = read_json_object(directory / protocol.TERMINATING_NAME)
    if marker is None:
        return None
    since, grace = marker.get("since"), marker.get("grace_seconds")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (since, grace)):
        # Unreadable details, but the intent is clear: remove it, at once.
        return {"since": 0.0, "grace_seconds": 0.0}
    return marker


def remaining_grace(marker: dict[str, Any], requested: float, now: float) -> float:
    """A stop that resumes after a crash keeps its deadline: grace can only shrink."""
    left = float(marker["since"]) + float(marker["grace_seconds"]) - now
    return max(0.0, min(requested, left))


def read_holder_identity(directory: Path) -> dict[str, Any] | None:
    """``holder.json`` if it names a process that is still that holder (pid + start time)."""
    identity = read_json_object(directory / protocol.HOLDER_ID_NAME)
    if identity is None:
        return None
    pid, started = identity.get("pid"), identity.get("start_time")
    if not isinstance(pid, int) or not isinstance(started, int) or pid <= 0:
        return None
    try:
        if linux.start_time(pid) != started:
            return None  # the pid was reused by another process
    except (OSError, ValueError, IndexError):
        return None
    return identity
