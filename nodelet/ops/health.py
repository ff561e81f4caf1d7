"""Is the agent making progress? kubelet's healthz checks, for nodelet's two loops.

kubelet's ``syncloop`` check fails when its sync loop has not been entered for
``max(2 * resync interval, 5 min)`` (``pkg/kubelet/server`` ``syncLoopHealthCheck``). nodelet
has no single sync loop: each pod worker syncs its pod at least every ``resync_seconds``, so the
check fails when a syncing worker has not finished a sync pass for that long (it is stuck in
one). The manifest source relists every ``file_check_frequency``; its check fails once a relist
is more than two periods (plus a margin) overdue. The event loop itself needs no check here:
a wedged loop answers no request and sends no watchdog ping.

Freshness stamps are monotonic seconds; every decision takes ``now`` so tests need no sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

SYNC_LOOP_MIN_STALE_SECONDS = 300.0
"""kubelet's floor for the sync loop check: 5 minutes."""
SOURCE_STALE_MARGIN_SECONDS = 10.0
CHECK_NAMES = ("ping", "syncloop", "manifestsource")
"""The agent's checks, in ``/healthz`` order, each also served as ``/healthz/<name>``."""


@dataclass(frozen=True)
class Check:
    """One named check's outcome; ``error`` None means healthy."""

    name: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def healthz(checks: Iterable[Check], *, verbose: bool = False) -> tuple[int, str]:
    """kubelet's ``/healthz`` (k8s.io/apiserver ``healthz.handleRootHealth``): ``ok``, or 500
    with one line per check and ``healthz check failed``. The reason is withheld unless
    ``verbose`` (the root-only socket), as kubelet withholds it from its public endpoint."""
    lines = []
    failed = False
    for check in checks:
        if check.ok:
            lines.append(f"[+]{check.name} ok\n")
            continue
        failed = True
        why = check.error if verbose else "reason withheld"
        lines.append(f"[-]{check.name} failed: {why}\n")
    if failed:
        return 500, "".join(lines) + "healthz check failed\n"
    return 200, "ok"


def single(check: Check) -> tuple[int, str]:
    """``/healthz/<name>``: ``ok``, or 500 ``internal server error: <reason>`` as kubelet's."""
    if check.ok:
        return 200, "ok"
    return 500, f"internal server error: {check.error}\n"


class SyncLoopMonitor:
    """When each pod worker last finished (or first began) a sync pass."""

    def __init__(self, resync_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = max(2 * resync_seconds, SYNC_LOOP_MIN_STALE_SECONDS)
        self._clock = clock
        self._stamps: dict[str, float] = {}

    async def around(self, uid: str, sync: Awaitable[T]) -> T:
        """Await one sync pass of ``uid``'s worker, stamping it; a failed pass counts too (the
        worker retries it), only a pass that never ends goes stale."""
        self._stamps.setdefault(uid, self._clock())
        try:
            return await sync
        finally:
            self._stamps[uid] = self._clock()

    def forget(self, live: Iterable[str]) -> None:
        """Drop the stamps of workers that are gone."""
        keep = set(live)
        for uid in set(self._stamps) - keep:
            del self._stamps[uid]

    def check(self, syncing: Iterable[str], now: float | None = None) -> Check:
        """``syncloop``: every worker in ``syncing`` finished a pass within ``stale_after``."""
        now = self._clock() if now is None else now
        stuck = [
            (now - stamp, uid)
            for uid in syncing
            if (stamp := self._stamps.get(uid)) is not None and now - stamp > self.stale_after
        ]
        if not stuck:
            return Check("syncloop")
        age, uid = max(stuck)
        return Check(
            "syncloop",
            f"sync loop took longer than expected: {len(stuck)} pod worker(s) stuck, "
            f"pod uid={uid} for {age:.0f}s (limit {self.stale_after:.0f}s)",
        )


def source_check(
    last_relist: float, started: float, period: float, now: float | None = None
) -> Check:
    """``manifestsource``: the manifest dir was relisted within two periods plus a margin
    (counted from the agent's start until the first relist ends, so a first relist that hangs
    is caught too)."""
    now = time.monotonic() if now is None else now
    since = last_relist or started
    limit = 2 * period + SOURCE_STALE_MARGIN_SECONDS
    if now - since <= limit:
        return Check("manifestsource")
    what = "last relist" if last_relist else "no relist completed since start"
    return Check(
        "manifestsource",
        f"manifest relist is stale: {what} {now - since:.0f}s ago (limit {limit:.0f}s)",
    )
