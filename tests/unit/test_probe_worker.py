"""The prober worker against kubelet's worker.go semantics, on a fake clock (no real waits)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from nodelet.probe.result import Outcome, ProbeResult
from nodelet.probe.worker import TICK_SLACK, ProbeSpec, ProbeWorker, _slot, _ticker

pytestmark = pytest.mark.unit

S = ProbeResult(Outcome.SUCCESS, "ok")
F = ProbeResult(Outcome.FAILURE, "HTTP probe failed with statuscode: 500")
U = ProbeResult(Outcome.UNKNOWN, "cannot probe")


class FakeTime:
    """A clock that moves only in :meth:`advance`; ``sleep`` blocks until then."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.now + delay, future))
        await future

    async def settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        target = self.now + seconds
        await self.settle()
        while True:
            self.sleepers = [(at, f) for at, f in self.sleepers if not f.done()]
            due = sorted((s for s in self.sleepers if s[0] <= target), key=lambda s: s[0])
            if not due:
                break
            at, future = due[0]
            self.now = max(self.now, at)
            future.set_result(None)
            await self.settle()
        self.now = max(self.now, target)  # a probe may have moved the clock further
        await self.settle()


def result_of(worker: ProbeWorker) -> Outcome:
    """``worker.result``, unnarrowed: it changes behind mypy's back while the test awaits."""
    return worker.result


class Script:
    """``run_once``: answers the scripted results in order (then repeats the last), records
    the clock at each call."""

    def __init__(self, time: FakeTime, *answers: ProbeResult | Exception) -> None:
        self.time = time
        self.answers = list(answers)
        self.calls: list[float] = []

    async def __call__(self) -> ProbeResult:
        self.calls.append(self.time.now)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
async def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def make_worker(
    fake_time: FakeTime,
) -> AsyncIterator[Callable[..., tuple[ProbeWorker, Script, list[tuple[str, Outcome, str]]]]]:
    workers: list[ProbeWorker] = []

    def make(
        kind: str, *answers: ProbeResult | Exception, **timing: Any
    ) -> tuple[ProbeWorker, Script, list[tuple[str, Outcome, str]]]:
        script = Script(fake_time, *answers)
        changes: list[tuple[str, Outcome, str]] = []
        worker = ProbeWorker(
            ProbeSpec(kind, **timing),
            script,
            lambda k, o, r: changes.append((k, o, r.message)),
            clock=fake_time.clock,
            sleep=fake_time.sleep,
            describe="pod=default/web uid=u1 container=server",
        )
        workers.append(worker)
        return worker, script, changes

    yield make
    for worker in workers:
        worker.stop()
        await worker.join()


async def test_initial_results_are_kubelets(make_worker: Any, fake_time: FakeTime) -> None:
    for kind, initial in [
        ("readiness", Outcome.FAILURE),
        ("liveness", Outcome.SUCCESS),
        ("startup", Outcome.UNKNOWN),
    ]:
        worker, script, changes = make_worker(kind, S, initial_delay=5)
        worker.start(0.0)
        await fake_time.settle()
        assert worker.result is initial, kind
        assert script.calls == []
        assert changes == []


async def test_first_probe_after_initial_delay_then_every_period(
    make_worker: Any, fake_time: FakeTime
) -> None:
    worker, script, _ = make_worker("readiness", S, initial_delay=5, period=10)
    worker.start(0.0)
    await fake_time.advance(4.9)
    assert script.calls == []
    await fake_time.advance(30.1)
    assert script.calls == [5.0, 15.0, 25.0, 35.0]


async def test_initial_delay_counts_from_container_start(
    make_worker: Any, fake_time: FakeTime
) -> None:
    fake_time.now = 100.0
    adopted, adopted_calls, _ = make_worker("liveness", S, initial_delay=30, period=10)
    adopted.start(40.0)  # started 60 s ago (an adopted container): probed at once
    fresh, fresh_calls, _ = make_worker("liveness", S, initial_delay=30, period=10)
    fresh.start(90.0)  # started 10 s ago: 20 s left
    await fake_time.advance(20.0)
    assert adopted_calls.calls == [100.0, 110.0, 120.0]
    assert fresh_calls.calls == [120.0]


async def test_no_initial_delay_probes_immediately(make_worker: Any, fake_time: FakeTime) -> None:
    worker, script, _ = make_worker("readiness", S)
    worker.start(0.0)
    await fake_time.settle()
    assert script.calls == [0.0]
    assert worker.result is Outcome.SUCCESS


async def test_liveness_fails_after_failure_threshold_then_holds(
    make_worker: Any, fake_time: FakeTime
) -> None:
    worker, script, changes = make_worker("liveness", F, period=10, failure_threshold=3)
    worker.start(0.0)
    await fake_time.advance(10.0)
    assert worker.result is Outcome.SUCCESS  # two failures: below the threshold
    assert changes == []
    await fake_time.advance(10.0)
    assert result_of(worker) is Outcome.FAILURE
    assert changes == [("liveness", Outcome.FAILURE, F.message)]
    await fake_time.advance(100.0)
    assert script.calls == [0.0, 10.0, 20.0]  # on hold: the caller restarts the container
    assert worker.last == F


async def test_thresholds_count_consecutive_results(make_worker: Any, fake_time: FakeTime) -> None:
    worker, _, changes = make_worker(
        "readiness", S, F, S, S, F, S, F, F, F, period=1, success_threshold=2, failure_threshold=2
    )
    worker.start(0.0)
    seen = [worker.result]
    for _ in range(8):
        await fake_time.advance(1.0)
        seen.append(worker.result)
    succ, fail = Outcome.SUCCESS, Outcome.FAILURE
    #       S     F     S     S     F     S     F     F     F
    assert seen == [fail, fail, fail, succ, succ, succ, succ, fail, fail]
    assert [c[1] for c in changes] == [succ, fail]


async def test_on_change_only_on_transitions(make_worker: Any, fake_time: FakeTime) -> None:
    worker, script, changes = make_worker(
        "readiness", S, S, S, F, F, S, S, period=1, failure_threshold=2
    )
    worker.start(0.0)
    await fake_time.advance(6.0)
    assert len(script.calls) == 7
    assert changes == [
        ("readiness", Outcome.SUCCESS, "ok"),
        ("readiness", Outcome.FAILURE, F.message),
        ("readiness", Outcome.SUCCESS, "ok"),
    ]


async def test_prober_errors_are_retried_then_thrown_away(
    make_worker: Any, fake_time: FakeTime
) -> None:
    error = OSError("netns gone")
    worker, script, changes = make_worker(
        "liveness", F, error, U, error, F, period=10, failure_threshold=2
    )
    worker.start(0.0)
    await fake_time.advance(10.0)
    # kubelet's maxProbeRetries: three attempts at t=10, then the tick's result is discarded
    assert script.calls == [0.0, 10.0, 10.0, 10.0]
    assert worker.result is Outcome.SUCCESS
    await fake_time.advance(10.0)
    # the error did not break the run of failures: the second failure reaches the threshold
    assert result_of(worker) is Outcome.FAILURE
    assert changes == [("liveness", Outcome.FAILURE, F.message)]


async def test_an_error_then_a_result_at_the_same_tick_counts(
    make_worker: Any, fake_time: FakeTime
) -> None:
    worker, script, _ = make_worker("readiness", RuntimeError("flaky"), S, period=10)
    worker.start(0.0)
    await fake_time.settle()
    assert script.calls == [0.0, 0.0]
    assert worker.result is Outcome.SUCCESS


async def test_errors_alone_never_change_the_result(make_worker: Any, fake_time: FakeTime) -> None:
    worker, script, changes = make_worker("readiness", ValueError("boom"), period=10)
    worker.start(0.0)
    await fake_time.advance(30.0)
    assert len(script.calls) == 4 * 3
    assert worker.result is Outcome.FAILURE
    assert changes == []


async def test_gated_readiness_waits_and_runs_when_released(
    make_worker: Any, fake_time: FakeTime
) -> None:
    worker, script, changes = make_worker("readiness", S, period=10)
    worker.gate(False)
    worker.start(0.0)
    await fake_time.advance(35.0)
    assert script.calls == []
    assert worker.result is Outcome.FAILURE
    worker.gate(True)
    await fake_time.settle()
    assert script.calls == [35.0]  # kubelet triggers readiness once the container started
    assert changes == [("readiness", Outcome.SUCCESS, "ok")]
    await fake_time.advance(10.0)
    assert script.calls == [35.0, 40.0]  # the trigger left the ticker's grid alone


async def test_gated_liveness_waits_for_its_next_tick(
    make_worker: Any, fake_time: FakeTime
) -> None:
    worker, script, _ = make_worker("liveness", F, period=10, failure_threshold=1)
    worker.gate(False)
    worker.start(0.0)
    await fake_time.advance(25.0)
    assert script.calls == []
    assert worker.result is Outcome.SUCCESS
    worker.gate(True)
    await fake_time.settle()
    assert script.calls == []
    await fake_time.advance(5.0)
    assert script.calls == [30.0]
    assert result_of(worker) is Outcome.FAILURE


async def test_gating_the_startup_probe_is_refused(make_worker: Any) -> None:
    worker, _, _ = make_worker("startup", S)
    with pytest.raises(ValueError, match="never gated"):
        worker.gate(False)


async def test_startup_stops_probing_once_succeeded(make_worker: Any, fake_time: FakeTime) -> None:
    worker, script, changes = make_worker("startup", F, F, S, period=1, failure_threshold=5)
    worker.start(0.0)
    await fake_time.advance(10.0)
    assert script.calls == [0.0, 1.0, 2.0]
    assert worker.result is Outcome.SUCCESS
    assert changes == [("startup", Outcome.SUCCESS, "ok")]


async def test_startup_failure_holds(make_worker: Any, fake_time: FakeTime) -> None:
    worker, script, changes = make_worker("startup", F, period=1, failure_threshold=2)
    worker.start(0.0)
    await fake_time.advance(10.0)
    assert script.calls == [0.0, 1.0]
    assert changes == [("startup", Outcome.FAILURE, F.message)]


async def test_a_slow_probe_delays_the_next_one(make_worker: Any, fake_time: FakeTime) -> None:
    calls: list[float] = []

    async def slow() -> ProbeResult:
        calls.append(fake_time.now)
        if len(calls) == 1:
            fake_time.now += 12.0  # this probe took longer than the period
        return S

    worker = ProbeWorker(
        ProbeSpec("readiness", period=10),
        slow,
        lambda *_: None,
        clock=fake_time.clock,
        sleep=fake_time.sleep,
    )
    worker.start(0.0)
    await fake_time.advance(0.0)
    assert fake_time.now == 12.0
    await fake_time.advance(10.0)
    worker.stop()
    await worker.join()
    assert calls == [0.0, 12.0, 22.0]


async def test_stop_cancels_a_probe_in_flight(fake_time: FakeTime) -> None:
    started = asyncio.Event()
    cancelled: list[bool] = []

    async def hang() -> ProbeResult:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return S

    worker = ProbeWorker(
        ProbeSpec("liveness"), hang, lambda *_: None, clock=fake_time.clock, sleep=fake_time.sleep
    )
    worker.start(0.0)
    await started.wait()
    worker.stop()
    await worker.join()
    assert cancelled == [True]
    worker.stop()  # idempotent


async def test_start_twice_is_refused(make_worker: Any) -> None:
    worker, _, _ = make_worker("readiness", S)
    worker.start(0.0)
    with pytest.raises(RuntimeError):
        worker.start(0.0)


async def test_failed_attempts_are_logged_as_kubelet(
    make_worker: Any, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nodelet.probe.worker")
    worker, _, _ = make_worker("liveness", F, period=1)
    worker.start(0.0)
    await fake_time.advance(1.0)
    failed = [r.getMessage() for r in caplog.records if "probe failed" in r.getMessage()]
    assert len(failed) == 2
    assert failed[0].startswith("Liveness probe failed: HTTP probe failed with statuscode: 500")
    assert "pod=default/web uid=u1 container=server" in failed[0]


async def test_a_failing_on_change_does_not_stop_the_worker(fake_time: FakeTime) -> None:
    script = Script(fake_time, S, F, S)

    def explode(kind: str, outcome: Outcome, result: ProbeResult) -> None:
        raise RuntimeError("handler bug")

    worker = ProbeWorker(
        ProbeSpec("readiness", period=1), script, explode, fake_time.clock, fake_time.sleep
    )
    worker.start(0.0)
    await fake_time.advance(2.0)
    worker.stop()
    await worker.join()
    assert script.calls == [0.0, 1.0, 2.0]
    assert worker.result is Outcome.SUCCESS


def test_from_k8s_defaults() -> None:
    for kind in ("startup", "liveness", "readiness"):
        spec = ProbeSpec.from_k8s(kind, {"httpGet": {"port": 80}})
        assert (spec.initial_delay, spec.period, spec.timeout) == (0, 10, 1)
        assert (spec.success_threshold, spec.failure_threshold) == (1, 3)
        assert spec.termination_grace_period is None
        zeros = {
            "initialDelaySeconds": 0,
            "periodSeconds": 0,
            "timeoutSeconds": 0,
            "successThreshold": 0,
            "failureThreshold": 0,
        }
        assert ProbeSpec.from_k8s(kind, zeros) == spec  # 0 is unset, as the API defaults it


def test_from_k8s_values() -> None:
    spec = ProbeSpec.from_k8s(
        "readiness",
        {
            "initialDelaySeconds": 15,
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "successThreshold": 2,
            "failureThreshold": 8,
        },
    )
    assert spec == ProbeSpec("readiness", 15, 5, 3, 2, 8)
    live = ProbeSpec.from_k8s("liveness", {"terminationGracePeriodSeconds": 7})
    assert live.termination_grace_period == 7


@pytest.mark.parametrize(
    ("kind", "probe", "message"),
    [
        ("liveness", {"successThreshold": 2}, "livenessProbe.successThreshold: must be 1"),
        ("startup", {"successThreshold": 3}, "startupProbe.successThreshold: must be 1"),
        ("readiness", {"periodSeconds": -1}, "periodSeconds: must be greater than or equal to 0"),
        ("liveness", {"initialDelaySeconds": -5}, "initialDelaySeconds: must be greater than"),
        ("liveness", {"timeoutSeconds": "1s"}, "timeoutSeconds: must be an integer"),
        ("liveness", {"failureThreshold": True}, "failureThreshold: must be an integer"),
        ("liveness", {"periodSeconds": 2.5}, "periodSeconds: must be an integer"),
        (
            "readiness",
            {"terminationGracePeriodSeconds": 5},
            "must not be set for readinessProbes",
        ),
        ("liveness", {"terminationGracePeriodSeconds": 0}, "must be > 0"),
        ("sideness", {}, "probe kind must be one of"),
    ],
)
def test_from_k8s_rejects(kind: str, probe: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProbeSpec.from_k8s(kind, probe)


def test_spec_validates_directly() -> None:
    with pytest.raises(ValueError, match="must be 1"):
        ProbeSpec("liveness", success_threshold=2)
    with pytest.raises(ValueError):
        ProbeSpec("readiness", period=0)
    with pytest.raises(ValueError):
        ProbeSpec("readiness", failure_threshold=0)


# --- the real timer (the default clock and sleep: a loop timer, not the injected sleep) ----


async def test_real_timer_probes_every_period() -> None:
    calls: list[float] = []

    async def probe() -> ProbeResult:
        calls.append(asyncio.get_running_loop().time())
        return S

    worker = ProbeWorker(ProbeSpec("readiness", period=0.05), probe, lambda *_: None)
    worker.start(time.monotonic())
    await asyncio.sleep(0.32)
    worker.stop()
    await worker.join()
    assert 5 <= len(calls) <= 8, calls
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert all(gap >= 0.045 for gap in gaps), gaps


async def test_real_timer_wait_ends_when_the_gate_opens() -> None:
    calls: list[float] = []

    async def probe() -> ProbeResult:
        calls.append(time.monotonic())
        return S

    worker = ProbeWorker(ProbeSpec("readiness", period=30), probe, lambda *_: None)
    worker.gate(False)
    worker.start(time.monotonic())
    await asyncio.sleep(0.05)
    assert calls == []  # gated, and the next tick is 30 s away
    opened = time.monotonic()
    worker.gate(True)
    await asyncio.sleep(0.05)
    assert len(calls) == 1 and calls[0] - opened < 0.05
    assert worker.result is Outcome.SUCCESS
    await asyncio.sleep(0.1)
    assert len(calls) == 1  # back on the 30 s grid
    began = time.monotonic()
    worker.stop()
    await worker.join()
    assert time.monotonic() - began < 0.05  # a stop ends the wait at once


def test_tick_slots_round_up_to_the_grid() -> None:
    assert _slot(1.0) == pytest.approx(1.0)
    assert _slot(1.001) == pytest.approx(1.0 + TICK_SLACK)
    assert _slot(1.0 + TICK_SLACK - 0.001) == pytest.approx(1.0 + TICK_SLACK)


async def test_real_timer_ticks_of_two_workers_share_a_slot() -> None:
    """Probes due in the same 50 ms slot wake in the same loop pass: on the shared grid, at most
    one slot late, never early."""
    loop = asyncio.get_running_loop()
    calls: dict[str, list[float]] = {"a": [], "b": []}
    started: dict[str, float] = {}

    def prober(name: str) -> Callable[[], Awaitable[ProbeResult]]:
        async def probe() -> ProbeResult:
            calls[name].append(loop.time())
            return S

        return probe

    workers = {
        name: ProbeWorker(ProbeSpec("readiness", period=0.2), prober(name), lambda *_: None)
        for name in calls
    }
    # Both start inside one slot (10 and 17 ms into it); a period of 4 slots keeps them there.
    await asyncio.sleep(_slot(loop.time()) + 0.010 - loop.time())
    for name, worker in workers.items():
        started[name] = loop.time()  # the loop's clock is time.monotonic, the worker's
        worker.start(time.monotonic())
        await asyncio.sleep(0.007)
    await asyncio.sleep(0.65)
    for worker in workers.values():
        worker.stop()
        await worker.join()
    for name, ticks in calls.items():
        assert len(ticks) >= 3, calls
        due = started[name] + 0.2  # the first tick ran at once, the second is a period later
        assert 0 <= ticks[1] - _slot(due) < 0.03, (name, ticks[1], _slot(due))
    if _slot(started["a"] + 0.2) == _slot(started["b"] + 0.2):  # unless the loop lagged a slot
        assert abs(calls["a"][1] - calls["b"][1]) < 0.002  # one timer pass woke both


async def test_waits_in_one_slot_share_one_loop_timer_and_a_stopped_wait_withdraws() -> None:
    """Every probe due in a slot is woken by one timer of the loop, not one each; a wait that
    ends early (stop) takes its place back, and the last one out cancels the slot's timer."""
    loop = asyncio.get_running_loop()
    ticks: list[float] = []

    async def probe() -> ProbeResult:
        ticks.append(loop.time())
        return S

    workers = [
        ProbeWorker(ProbeSpec("readiness", period=30), probe, lambda *_: None) for _ in range(5)
    ]
    timers_before = len(loop._scheduled)  # type: ignore[attr-defined]
    started = time.monotonic()  # one start time: all next due at the same instant
    for worker in workers:
        worker.start(started)
    await asyncio.sleep(0.01)  # each probed once and now waits 30 s, all in one slot
    assert len(ticks) == 5
    slots = _ticker(loop)._slots
    assert len(slots) == 1 and len(next(iter(slots.values()))[1]) == 5
    assert len(loop._scheduled) == timers_before + 1  # type: ignore[attr-defined]
    for worker in workers:
        worker.stop()
        await worker.join()
    assert not slots
    assert all(h.cancelled() for h in loop._scheduled[timers_before:])  # type: ignore[attr-defined]
