"""The two time formats of the Kubernetes API, in one place."""

from __future__ import annotations

import calendar
import time

from nodelet.holder.crilog import timestamp


def rfc3339(epoch: float) -> str:
    """metav1.Time's wire format: second precision, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def rfc3339_nano(epoch: float) -> str:
    """RFC 3339 with nanoseconds, as the CRI logs and ``config.seen`` carry it."""
    return timestamp(int(epoch * 1_000_000_000))


def parse_rfc3339(text: str) -> float:
    """Epoch seconds of ``rfc3339``'s output (``2026-12-02T10:00:00Z``, UTC)."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))
