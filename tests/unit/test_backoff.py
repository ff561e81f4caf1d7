"""CrashLoopBackOff follows kubelet: immediate first restart, then 10 s doubling to 300 s."""

import pytest

from nodelet.pod.backoff import DEFAULT_INITIAL_SECONDS, DEFAULT_MAX_SECONDS, Backoff

pytestmark = pytest.mark.unit


def test_defaults_are_kubelets() -> None:
    assert DEFAULT_INITIAL_SECONDS == 10.0
    assert DEFAULT_MAX_SECONDS == 300.0
    backoff = Backoff()
    assert (backoff.initial, backoff.maximum) == (10.0, 300.0)


def crash_loop_windows(backoff: Backoff, crashes: int) -> list[float]:
    """Simulate a container that crashes the moment it starts; return each wait before restart."""
    now = 1000.0
    waits = []
    for _ in range(crashes):
        finished = now  # crashed right away
        wait = backoff.remaining("pod/c", finished, now)
        waits.append(wait)
        now += wait
        backoff.next("pod/c", finished, now)
    return waits


def test_default_schedule_doubles_from_10s_to_300s() -> None:
    waits = crash_loop_windows(Backoff(), 9)
    assert waits == [0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]


def test_shortened_base_keeps_the_shape() -> None:
    assert crash_loop_windows(Backoff(0.5, 4.0), 6) == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]


def test_window_resets_after_running_ten_minutes() -> None:
    backoff = Backoff()
    crash_loop_windows(backoff, 5)  # window is now 160 s
    assert backoff.get("pod/c") == 160.0
    last_restart = 1000.0 + 10 + 20 + 40 + 80
    ran_until = last_restart + 2 * DEFAULT_MAX_SECONDS + 1  # ran > 10 min, then crashed
    assert backoff.remaining("pod/c", ran_until, ran_until) == 0.0
    backoff.next("pod/c", ran_until, ran_until)
    assert backoff.get("pod/c") == 10.0


def test_crash_after_long_enough_run_inside_window_waits_only_the_rest() -> None:
    backoff = Backoff()
    backoff.next("k", 0.0, 0.0)
    backoff.next("k", 1.0, 1.0)  # window 20 s
    assert backoff.remaining("k", 5.0, 12.0) == pytest.approx(13.0)


def test_forget_prefix() -> None:
    backoff = Backoff()
    backoff.next("a/x", 0.0, 0.0)
    backoff.next("b/x", 0.0, 0.0)
    backoff.forget_prefix("a/")
    assert backoff.get("a/x") == 0.0 and backoff.get("b/x") == 10.0


def test_snapshot_and_restore_keep_the_window() -> None:
    """What the agent writes to the run dir and reads back after a restart."""
    saved = Backoff(10.0, 300.0)
    saved.next("pod/c", 100.0, 100.0)
    saved.next("pod/c", 105.0, 110.0)  # a crash inside the window: doubled to 20 s
    restored = Backoff(10.0, 300.0)
    assert restored.restore(saved.snapshot(), now=120.0) == 1
    assert restored.get("pod/c") == 20.0
    assert restored.remaining("pod/c", 115.0, 120.0) == 15.0


def test_restore_drops_expired_and_malformed_entries() -> None:
    backoff = Backoff(10.0, 300.0)
    data = {
        "old/c": [40.0, 0.0],  # last restart 700 s ago: more than 2 x max
        "bad/c": ["x", 1.0],
        "short/c": [1.0],
        "huge/c": [10_000.0, 650.0],  # capped at the maximum
    }
    assert backoff.restore(data, now=700.0) == 1
    assert backoff.get("old/c") == 0.0 and backoff.get("bad/c") == 0.0
    assert backoff.get("huge/c") == 300.0


def test_every_change_is_announced() -> None:
    backoff = Backoff(10.0, 300.0)
    changes: list[dict[str, object]] = []
    backoff.on_change = lambda: changes.append(backoff.snapshot())
    backoff.next("pod/c", 1.0, 1.0)
    backoff.next("pod/c", 2.0, 2.0)
    backoff.forget_prefix("other/")  # nothing removed: no change
    backoff.forget_prefix("pod/")
    assert changes == [{"pod/c": [10.0, 1.0]}, {"pod/c": [20.0, 2.0]}, {}]
