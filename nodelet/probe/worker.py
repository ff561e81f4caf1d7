"""kubelet's prober worker (``pkg/kubelet/prober/worker.go``): one asyncio task per probe.

Single results become the container's startup, liveness or readiness result as kubelet's do:

- the result starts at kubelet's initial value (readiness FAILURE until a success, liveness
  SUCCESS, startup UNKNOWN) and changes only after ``successThreshold`` / ``failureThreshold``
  consecutive equal results;
- the first probe runs ``initialDelaySeconds`` after the container started, then one every
  ``periodSeconds``;
- a prober error (``UNKNOWN``, or ``run_once`` raising) is retried at once up to 3 times
  (kubelet's ``maxProbeRetries``) and then thrown away: it counts neither way;
- liveness and readiness probes wait while gated (the startup probe has not succeeded yet); a
  readiness probe runs at once when the gate opens (kubelet's manual trigger);
- a startup probe stops probing once it succeeded; liveness and startup stop after reaching
  FAILURE (kubelet's ``onHold``): the caller kills the container and makes a new worker for
  the next one.

``on_change`` hears only of changes of the thresholded result. Every failed attempt is logged
with kubelet's event text, ``Liveness probe failed: <message>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nodelet.probe.result import Outcome, ProbeResult

log = logging.getLogger(__name__)

KINDS = ("startup", "liveness", "readiness")
INITIAL_RESULT = {
    "readiness": Outcome.FAILURE,
    "liveness": Outcome.SUCCESS,
    "startup": Outcome.UNKNOWN,
}
"""kubelet's ``worker.initialValue`` per probe type."""
MAX_PROBE_RETRIES = 3
"""kubelet's ``maxProbeRetries``: attempts at one tick before a prober error is thrown away."""


def _field(kind: str, probe: Mapping[str, Any], name: str, default: int, minimum: int) -> int:
    """A probe's integer field; 0 or absent is the API default, as the API server defaults it."""
    value = probe.get(name)
    if value is None or value == 0:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{kind}Probe.{name}: must be an integer, not {value!r}")
    if value < minimum:
        raise ValueError(f"{kind}Probe.{name}: must be greater than or equal to {minimum}")
    return value


@dataclass(frozen=True)
class ProbeSpec:
    """The timing of one probe, in seconds, with kubelet's defaults."""

    kind: str
    """``startup``, ``liveness`` or ``readiness``."""
    initial_delay: float = 0
    period: float = 10
    timeout: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3
    termination_grace_period: int | None = None
    """The probe's ``terminationGracePeriodSeconds`` (liveness/startup): the grace of the kill
    its failure causes, instead of the pod's."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"probe kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.period <= 0 or self.timeout <= 0 or self.initial_delay < 0:
            raise ValueError(f"{self.kind}Probe: period and timeout must be > 0, delay >= 0")
        if self.success_threshold < 1 or self.failure_threshold < 1:
            raise ValueError(f"{self.kind}Probe: thresholds must be at least 1")
        if self.kind != "readiness" and self.success_threshold != 1:
            raise ValueError(f"{self.kind}Probe.successThreshold: must be 1")

    @classmethod
    def from_k8s(cls, kind: str, probe: Mapping[str, Any]) -> ProbeSpec:
        """The spec of a container's ``<kind>Probe`` object, validated as the API server does
        (``successThreshold`` must be 1 for liveness and startup; no
        ``terminationGracePeriodSeconds`` on readiness). Raises ValueError naming the field."""
        if kind not in KINDS:
            raise ValueError(f"probe kind must be one of {', '.join(KINDS)}, not {kind!r}")
        success = _field(kind, probe, "successThreshold", 1, 0)
        if kind != "readiness" and success != 1:
            raise ValueError(f"{kind}Probe.successThreshold: must be 1")
        grace = probe.get("terminationGracePeriodSeconds")
        if grace is not None:
            if kind == "readiness":
                raise ValueError(
                    "readinessProbe.terminationGracePeriodSeconds: must not be set for "
                    "readinessProbes"
                )
            if not isinstance(grace, int) or isinstance(grace, bool) or grace <= 0:
                raise ValueError(f"{kind}Probe.terminationGracePeriodSeconds: must be > 0")
        return cls(
            kind=kind,
            initial_delay=_field(kind, probe, "initialDelaySeconds", 0, 0),
            period=_field(kind, probe, "periodSeconds", 10, 0),
            timeout=_field(kind, probe, "timeoutSeconds", 1, 0),
            success_threshold=success,
            failure_threshold=_field(kind, probe, "failureThreshold", 3, 0),
            termination_grace_period=grace,
        )


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ProbeWorker:
    """Runs one container's probe of one kind until stopped; ``result`` is its current
    thresholded result. ``clock`` and ``sleep`` are injectable so tests need no real time."""

    def __init__(
        self,
        spec: ProbeSpec,
        run_once: Callable[[], Awaitable[ProbeResult]],
        on_change: Callable[[str, Outcome, ProbeResult], None],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        *,
        describe: str = "",
    ) -> None:
        self.spec = spec
        self.result: Outcome = INITIAL_RESULT[spec.kind]
        self.last: ProbeResult | None = None
        """The last probe result that counted (not thrown away), for status and events."""
        self._run_once = run_once
        self._on_change = on_change
        self._clock = clock
        self._sleep = sleep
        self._describe = describe
        self._gated = False
        self._triggered = False
        """The gate's trigger fired: the next wait ends at once (or the current one now)."""
        self._wake: asyncio.Future[None] | None = None
        self._last_outcome = Outcome.SUCCESS  # kubelet's zero value of results.Result
        self._result_run = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def _title(self) -> str:
        return self.spec.kind.capitalize()

    def start(self, started_at: float) -> None:
        """Start probing; ``started_at`` is when the container started, on ``clock``'s scale
        (in the past for a container adopted after an agent restart)."""
        if self._task is not None:
            raise RuntimeError(f"{self.spec.kind} probe worker already started")
        self._task = asyncio.get_running_loop().create_task(
            self._guarded(started_at), name=f"probe-{self.spec.kind} {self._describe}"
        )

    def stop(self) -> None:
        """Cancel the task; a probe in flight is cancelled too (an exec probe's processes are
        killed). Safe to call more than once."""
        if self._task is not None:
            self._task.cancel()

    async def join(self) -> None:
        """Wait until the task ended (after :meth:`stop`, or a liveness/startup verdict)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def gate(self, open: bool) -> None:
        """Hold (``open=False``) or release liveness/readiness probing, which kubelet holds
        until the startup probe succeeded. A released readiness probe runs at once."""
        if self.spec.kind == "startup":
            raise ValueError("the startup probe is never gated")
        was_gated, self._gated = self._gated, not open
        if open and was_gated and self.spec.kind == "readiness":
            self._triggered = True
            if self._wake is not None:
                _wake(self._wake)

    async def _guarded(self, started_at: float) -> None:
        try:
            await self._loop(started_at)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s probe worker failed %s", self.spec.kind, self._describe)

    async def _loop(self, started_at: float) -> None:
        """Probes on a grid of ``period`` from the first one (kubelet's ticker). A probe run
        early by the gate's trigger leaves the grid alone; a probe that overran the period is
        followed by one at once, and the grid restarts there."""
        next_at = max(started_at + self.spec.initial_delay, self._clock())
        while True:
            await self._wait(next_at - self._clock())
            scheduled = self._clock() >= next_at
            if not self._gated and not await self._tick():
                return
            if scheduled:
                next_at = max(next_at + self.spec.period, self._clock())

    async def _wait(self, delay: float) -> None:
        """Sleep ``delay`` seconds (to the end of its tick slot), or less when the gate's
        trigger fires. One future, woken by the slot's shared timer (or the injected sleep) or
        by :meth:`gate`: this runs at every tick of every probe, so it creates no task, no
        event waiter and no timer of its own."""
        if self._triggered:
            self._triggered = False
            return
        if delay <= 0:
            return
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()
        stop: Callable[[], object]
        if self._sleep is asyncio.sleep:
            stop = _ticker(loop).wake_at(loop.time() + delay, wake)
        else:
            sleeper = asyncio.ensure_future(self._sleep(delay))
            sleeper.add_done_callback(lambda _: _wake(wake))
            stop = sleeper.cancel
        self._wake = wake
        try:
            await wake
        except BaseException:
            stop()
            raise
        finally:
            self._wake = None
        if self._triggered:
            stop()  # the gate woke the wait
            self._triggered = False

    async def _attempt(self) -> ProbeResult:
        """kubelet's ``runProbeWithRetries``: a prober error is retried at once."""
        result = ProbeResult(Outcome.UNKNOWN)
        for _ in range(MAX_PROBE_RETRIES):
            try:
                result = await self._run_once()
            except Exception as err:
                result = ProbeResult(Outcome.UNKNOWN, str(err) or type(err).__name__)
            if result.outcome is not Outcome.UNKNOWN:
                break
        return result

    async def _tick(self) -> bool:
        """One probe; whether to keep probing (kubelet's ``doProbe``)."""
        result = await self._attempt()
        if result.outcome is Outcome.UNKNOWN:
            log.warning("%s probe errored: %s %s", self._title, result.message, self._describe)
            return True
        if result.outcome is Outcome.FAILURE:
            log.info("%s probe failed: %s %s", self._title, result.message, self._describe)
        elif result.warning:
            log.info("%s probe warning: %s %s", self._title, result.message, self._describe)
        self.last = result
        if result.outcome is self._last_outcome:
            self._result_run += 1
        else:
            self._last_outcome, self._result_run = result.outcome, 1
        threshold = (
            self.spec.failure_threshold
            if result.outcome is Outcome.FAILURE
            else self.spec.success_threshold
        )
        if self._result_run < threshold:
            return True
        self._set(result)
        if self.spec.kind != "readiness" and result.outcome is Outcome.FAILURE:
            # -> on hold because the container will be killed; its successor gets a new worker.
            return False
        # -> done because a started container is never probed for startup again.
        return not (self.spec.kind == "startup" and result.outcome is Outcome.SUCCESS)

    def _set(self, result: ProbeResult) -> None:
        if result.outcome is self.result:
            return
        self.result = result.outcome
        try:
            self._on_change(self.spec.kind, result.outcome, result)
        except Exception:
            log.exception("%s probe result handler failed %s", self.spec.kind, self._describe)


TICK_SLACK = 0.05
"""Probe ticks wake on a shared 50 ms grid of the loop's clock: the probes of many pods that
fall due within one slot run in one loop pass instead of one wake-up each (a third less agent
CPU with 100 pods x 2 probes at 1 s, measured). A probe runs up to 50 ms after its period ends;
kubelet's tickers fire on time. The grid of periods itself does not drift."""


def _slot(when: float) -> float:
    """``when`` rounded up to the next tick slot."""
    return math.ceil(when / TICK_SLACK) * TICK_SLACK


class _Ticker:
    """One loop timer per tick slot that a wait ends in, shared by every probe due then, not
    one per probe: a timer is a handle, a heap push and a heap pop in Python, each tick of
    each probe."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, tuple[asyncio.TimerHandle, list[asyncio.Future[None]]]] = {}

    def wake_at(self, when: float, future: asyncio.Future[None]) -> Callable[[], None]:
        """Complete ``future`` at the slot of ``when``; returns what withdraws it (a no-op
        once the slot came)."""
        index = math.ceil(when / TICK_SLACK)
        slot = self._slots.get(index)
        if slot is None:
            handle = self._loop.call_at(index * TICK_SLACK, self._due, index)
            slot = self._slots[index] = (handle, [])
        slot[1].append(future)
        return functools.partial(self._withdraw, index, future)

    def _withdraw(self, index: int, future: asyncio.Future[None]) -> None:
        slot = self._slots.get(index)
        if slot is None or future not in slot[1]:
            return
        slot[1].remove(future)
        if not slot[1]:
            slot[0].cancel()
            del self._slots[index]

    def _due(self, index: int) -> None:
        for future in self._slots.pop(index)[1]:
            _wake(future)


_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Ticker] = (
    weakref.WeakKeyDictionary()
)


def _ticker(loop: asyncio.AbstractEventLoop) -> _Ticker:
    ticker = _tickers.get(loop)
    if ticker is None:
        ticker = _tickers[loop] = _Ticker(loop)
    return ticker
