"""Processes a pod left behind when its holder died without ending them.

A container is its own session (the holder calls ``setsid``), so everything it started shares
its session id, unless it made a session of its own. When the holder is SIGKILLed its
containers die by PDEATHSIG, but their children are reparented and would keep the pod's
namespaces alive forever. A session id cannot be reused while the session has a member, and a
process found by number is also checked against the pod's namespaces, so nothing outside the pod
is ever signalled. (Once pod cgroups exist, ``cgroup.kill`` replaces this.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


NAMESPACE_KINDS = ("net", "ipc", "uts", "pid")
_HOST_NAMESPACES = {kind: os.stat(f"/proc/self/ns/{kind}").st_ino for kind in NAMESPACE_KINDS}
"""The agent's own namespaces, which are the host's."""


def private_namespaces(recorded: Any) -> dict[str, int]:
    """Of the namespaces a holder recorded (kind -> inode), those that are not the host's."""
    if not isinstance(recorded, dict):
        return {}
    return {
        kind: inode
        for kind, inode in recorded.items()
        if isinstance(inode, int) and _HOST_NAMESPACES.get(kind) not in (None, inode)
    }


def _stat_fields(pid: str) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _namespace(pid: int | str, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def is_child(pid: int, parent: int | None, *, zombie_ok: bool = True) -> bool:
    """Whether ``pid`` exists as a child of ``parent`` (host pids), optionally unreaped."""
    fields = _stat_fields(str(pid))
    if fields is None or (fields[0] == b"Z" and not zombie_ok):
        return False
    return int(fields[1]) == parent


def members(sessions: Iterable[int], namespaces: dict[str, int]) -> list[int]:
    """Live processes in one of ``sessions`` (or process groups of those numbers) that share
    every namespace in ``namespaces`` (kind -> inode)."""
    wanted = set(sessions)
    if not wanted:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields is None or fields[0] == b"Z":
            continue
        group, session = int(fields[2]), int(fields[3])
        if group not in wanted and session not in wanted:
            continue
        if all(_namespace(entry, kind) == inode for kind, inode in namespaces.items()):
            found.append(int(entry))
    return found


def kill_sessions(pod_uid: str, sessions: Iterable[int], namespaces: dict[str, int]) -> int:
    """SIGKILL what is left of the pod's container sessions; returns how many were killed."""
    killed = 0
    for pid in members(sessions, namespaces):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    if killed:
        log.warning("killed %d leftover processes of pod uid=%s", killed, pod_uid)
    return killed


async def stop_children(pids: list[int], parent: int | None, grace_seconds: float) -> None:
    """SIGTERM each container's process group (children of ``parent``, a holder that cannot
    be asked), then wait up to the grace period for them to end."""
    for pid in pids:
        if is_child(pid, parent, zombie_ok=False):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and any(
        is_child(pid, parent, zombie_ok=False) for pid in pids
    ):
        await asyncio.sleep(0.05)
