"""The CrashLoopBackOff window resets after a run of more than 2 x max, and not before: checked
with the tests' FAST_BACKOFF shape (1 s doubling to 8 s) on an injected clock, at the edges."""

from __future__ import annotations

import pytest

from nodelet.pod.backoff import Backoff

pytestmark = pytest.mark.unit

KEY = "uid/app"


def looping(crashes: int) -> tuple[Backoff, float, list[float]]:
    """A container crashing at once ``crashes`` times; returns the back-off, the time of its
    last restart and each wait before a restart."""
    backoff = Backoff(initial=1.0, maximum=8.0)
    now, waits = 1_000.0, []
    for _ in range(crashes):
        wait = backoff.remaining(KEY, now, now)
        waits.append(wait)
        now += wait
        backoff.next(KEY, now - wait, now)
    return backoff, now, waits


def test_fast_backoff_schedule() -> None:
    backoff, _, waits = looping(7)
    assert waits == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.get(KEY) == 8.0


@pytest.mark.parametrize(
    ("ran", "wait", "window_after"),
    [
        (8.5, 8.0, 8.0),  # ran 1 x max: still crash looping, waits the full window
        (16.0, 8.0, 8.0),  # exactly 2 x max: not more than, no reset
        (16.001, 0.0, 1.0),  # more than 2 x max: starts over at once, window back to 1 s
        (600.0, 0.0, 1.0),
    ],
)
def test_reset_only_after_running_longer_than_twice_the_maximum(
    ran: float, wait: float, window_after: float
) -> None:
    backoff, restarted, _ = looping(6)
    crashed = restarted + ran
    assert backoff.remaining(KEY, crashed, crashed) == pytest.approx(wait)
    backoff.next(KEY, crashed, crashed + wait)
    assert backoff.get(KEY) == window_after


def test_remaining_counts_from_the_failure_and_never_goes_negative() -> None:
    backoff, restarted, _ = looping(5)  # window 8 s
    crashed = restarted + 1.0
    assert backoff.remaining(KEY, crashed, crashed + 3.0) == pytest.approx(5.0)
    assert backoff.remaining(KEY, crashed, crashed + 8.0) == 0.0
    assert backoff.remaining(KEY, crashed, crashed + 20.0) == 0.0
    assert backoff.remaining("uid/other", crashed, crashed) == 0.0


def test_first_failure_opens_the_initial_window_and_doubling_is_capped() -> None:
    backoff = Backoff(initial=3.0, maximum=10.0)
    assert backoff.get(KEY) == 0.0
    backoff.next(KEY, 0.0, 0.0)
    assert backoff.get(KEY) == 3.0
    backoff.next(KEY, 1.0, 1.0)
    assert backoff.get(KEY) == 6.0
    backoff.next(KEY, 2.0, 2.0)
    assert backoff.get(KEY) == 10.0
    backoff.next(KEY, 3.0, 3.0)
    assert backoff.get(KEY) == 10.0


def test_the_window_is_measured_from_the_last_restart_not_the_first() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0)
    backoff.next(KEY, 0.0, 0.0)
    backoff.next(KEY, 10.0, 15.0)  # restarted at 15
    assert backoff.remaining(KEY, 31.0, 31.0) == 2.0  # 16 s after the restart: kept
    assert backoff.remaining(KEY, 31.5, 31.5) == 0.0  # 16.5 s after it: reset


def test_forget_prefix_drops_one_pods_windows_only() -> None:
    backoff = Backoff()
    for key in ("pod1/a", "pod1/b", "pod10/a", "pod2/a"):
        backoff.next(key, 0.0, 0.0)
    backoff.forget_prefix("pod1/")
    assert [backoff.get(k) for k in ("pod1/a", "pod1/b", "pod10/a", "pod2/a")] == [
        0.0, 0.0, 10.0, 10.0,
    ]  # fmt: skip
