"""The answer of one probe run: kubelet's ``probe.Result`` plus its output string."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.Enum):
    """kubelet's ``results.Result``. ``UNKNOWN`` from a prober means it could not probe (an
    error, not a verdict on the container): the worker throws such a result away, as kubelet."""

    SUCCESS = "success"
    FAILURE = "failure"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ProbeResult:
    outcome: Outcome
    message: str = ""
    """kubelet's prober output: the failure reason (``HTTP probe failed with statuscode: 500``,
    ``dial tcp 127.0.0.1:81: connect: connection refused``), an exec probe's output, or the
    error of an ``UNKNOWN`` result."""
    warning: bool = False
    """A success kubelet reports as a ``ProbeWarning`` event (``Probe terminated redirects``)."""
