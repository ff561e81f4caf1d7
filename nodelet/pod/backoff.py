"""CrashLoopBackOff, ported from kubelet's ``flowcontrol.Backoff`` (no jitter, as kubelet uses it).

The first failure restarts at once and opens a window of ``initial``; each failure inside the
window waits it out and doubles it, up to ``maximum``. A container that ran for more than
``2 * maximum`` (10 min with kubelet's 300 s) since the last restart starts over at ``initial``.
Times are wall-clock epoch seconds because container exit times come from the holder's journal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
        self.on_change: Callable[[], None] | None = None
        """Called after every change: the agent persists the windows, so a restarted agent
        keeps a crash loop backed off instead of restarting it at once."""

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def snapshot(self) -> dict[str, Any]:
        """The windows as JSON: ``{key: [backoff, last_update]}``."""
        return {key: [e.backoff, e.last_update] for key, e in sorted(self._entries.items())}

    def restore(self, data: dict[str, Any], now: float) -> int:
        """Load windows saved by ``snapshot``, dropping expired and malformed entries (the file
        is the agent's own, but a damaged one must not stop it); returns how many were kept."""
        kept = 0
        for key, value in data.items():
            if not (isinstance(key, str) and isinstance(value, list) and len(value) == 2):
                continue
            backoff, last_update = value
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
                continue
            entry = _Entry(min(max(float(backoff), 0.0), self.maximum), float(last_update))
            if not self._expired(now, entry):
                self._entries[key] = entry
                kept += 1
        return kept

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
        else:
            entry.backoff = min(entry.backoff * 2, self.maximum)
            entry.last_update = now
        self._changed()

    def remaining(self, key: str, event_time: float, now: float) -> float:
        """Seconds until a failure at ``event_time`` may be restarted; 0 means now."""
        entry = self._entries.get(key)
        if entry is None or self._expired(event_time, entry):
            return 0.0
        return max(0.0, entry.backoff - (now - event_time))

    def forget_prefix(self, prefix: str) -> None:
        """Drop every window of a pod once it is gone."""
        gone = [k for k in self._entries if k.startswith(prefix)]
        for key in gone:
            del self._entries[key]
        if gone:
            self._changed()
