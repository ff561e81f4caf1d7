"""Logs of removed pods go, as kubelet's container GC removes them (a minute or so later).

Only directories nodelet made are touched: each carries a marker file, so a log directory
another runtime keeps in the same place is never removed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection
from pathlib import Path

from nodelet.util import safepath

log = logging.getLogger(__name__)

MARKER = ".nodelet-pod"
GC_PERIOD_SECONDS = 60.0
"""kubelet's ContainerGCPeriod: how often, and at least how long after removal, logs go."""


def mark(pod_log_dir: Path) -> None:
    """Create a pod's log dir (0700: logs may hold secrets) with nodelet's marker in it."""
    pod_log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (pod_log_dir / MARKER).touch(mode=0o600)


def sweep(logs_dir: Path, live_uids: Collection[str], min_age: float = GC_PERIOD_SECONDS) -> int:
    """Remove marked ``<ns>_<name>_<uid>`` dirs of pods that no longer exist; returns a count."""
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(logs_dir))
    except OSError:
        return 0
    for entry in entries:
        uid = entry.name.rpartition("_")[2]
        if uid in live_uids or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            if not os.path.exists(os.path.join(entry.path, MARKER)):
                continue
            if now - entry.stat(follow_symlinks=False).st_mtime < min_age:
                continue
            safepath.remove_tree(logs_dir, Path(entry.path))
        except (OSError, safepath.UnsafePathError) as err:
            log.warning("cannot remove the logs of removed pod %s: %s", entry.name, err)
            continue
        removed += 1
        log.info("removed the logs of removed pod %s", entry.name)
    return removed
