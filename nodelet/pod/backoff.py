"""CrashLoopBackOff, ported from kubelet's ``flowcontrol.Backoff`` (no jitter, as kubelet uses it).

The first failure restarts at once and opens a window of ``initial``; each failure inside the
window waits it out and doubles it, up to ``maximum``. A container that ran for more than
``2 * maximum`` (10 min with kubelet's 300 s) since the last restart starts over at ``initial``.
Times are wall-clock epoch seconds because container exit times come from the holder's journal.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_INITIAL_SECONDS = 10.0
"""kubelet's ``backOffPeriod``."""
DEFAULT_MAX_SECONDS = 300.0
"""kubelet's ``MaxContainerBackOff``."""


@dataclass
class _Entry:
    backoff: float
    last_update: float


class Backoff:
    """Per-key exponential back-off windows, keyed by pod UID and container name."""

    def __init__(
        self, initial: float = DEFAULT_INITIAL_SECONDS, maximum: float = DEFAULT_MAX_SECONDS
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self._entries: dict[str, _Entry] = {}

    def _expired(self, event_time: float, entry: _Entry) -> bool:
        return event_time - entry.last_update > 2 * self.maximum

    def get(self, key: str) -> float:
        """The current window length, 0 when the key has none."""
        entry = self._entries.get(key)
        return entry.backoff if entry else 0.0

    def next(self, key: str, event_time: float, now: float) -> None:
        """Record a restart caused by the failure at ``event_time``: open or double the window."""
        entry = self._entries.get(key)
        if entry is None or self._expired(event_time, entry):
            self._entries[key] = _Entry(backoff=self.initial, last_update=now)
            return
        entry.backoff = min(entry.backoff * 2, self.maximum)
        entry.last_update = now

    def remaining(self, key: str, event_time: float, now: float) -> float:
        """Seconds until a failure at ``event_time`` may be restarted; 0 means now."""
        entry = self._entries.get(key)
        if entry is None or self._expired(event_time, entry):
            return 0.0
        return max(0.0, entry.backoff - (now - event_time))

    def forget_prefix(self, prefix: str) -> None:
        """Drop every window of a pod once it is gone."""
        for key in [k for k in self._entries if k.startswith(prefix)]:
            del self._entries[key]
