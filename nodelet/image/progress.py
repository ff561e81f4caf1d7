"""A pull's progress: bytes so far against the bytes the manifest says are missing.

``store_image`` counts every layer byte it stores through the ``Progress`` callback and, once
the manifest is read, tells a callback that has an ``expect`` method how many bytes the
missing layers hold. This module renders that for a terminal (a redrawn bar) and for logs
(plain lines).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

BAR_WIDTH = 24
REDRAW_SECONDS = 0.1
LINE_SECONDS = 2.0


def megabytes(count: int) -> str:
    return f"{count / 1e6:.1f}"


def percent(done: int, total: int) -> int:
    return 100 if total <= 0 else min(100, done * 100 // total)


def bar_line(name: str, done: int, total: int | None, rate: float) -> str:
    """``pulling NAME  [#####......]  45%  12.3/27.0 MB  5.1 MB/s``; no bar before the total
    is known."""
    speed = f"{rate / 1e6:.1f} MB/s"
    if total is None:
        return f"pulling {name}  {megabytes(done)} MB  {speed}"
    filled = BAR_WIDTH * percent(done, total) // 100
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    share = f"{percent(done, total):3d}%"
    return f"pulling {name}  [{bar}] {share}  {megabytes(done)}/{megabytes(total)} MB  {speed}"


def plain_line(name: str, done: int, total: int | None) -> str:
    """``pulling NAME: 12.3 of 27.0 MB (45 %)``, for logs and files."""
    if total is None:
        return f"pulling {name}: {megabytes(done)} MB so far"
    return f"pulling {name}: {megabytes(done)} of {megabytes(total)} MB ({percent(done, total)} %)"


class PullProgress:
    """A ``Progress`` with a total: counts bytes from the layer threads (under a lock) and
    hands a line to ``show`` at most every ``every`` seconds; ``finish`` shows the last one."""

    def __init__(
        self,
        name: str,
        show: Callable[[str], None],
        every: float,
        render: Callable[[str, int, int | None, float], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.done = 0
        self.total: int | None = None
        self._show = show
        self._every = every
        self._render = render
        self._clock = clock
        self._started = clock()
        self._shown = self._started
        self._lock = threading.Lock()

    def expect(self, total: int) -> None:
        with self._lock:
            self.total = total

    def __call__(self, count: int) -> None:
        with self._lock:
            self.done += count
            now = self._clock()
            if now - self._shown < self._every:
                return
            self._shown = now
            line = self._line(now)
        self._show(line)

    def finish(self) -> None:
        with self._lock:
            line = self._line(self._clock())
        self._show(line)

    def _line(self, now: float) -> str:
        rate = self.done / max(now - self._started, 1e-6)
        return self._render(self.name, self.done, self.total, rate)
