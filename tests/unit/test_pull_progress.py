"""A pull's progress as the terminal and the log show it."""

from __future__ import annotations

import pytest

from nodelet.image.progress import PullProgress, bar_line, plain_line

pytestmark = pytest.mark.unit


def test_the_bar_fills_with_the_share_of_the_total() -> None:
    line = bar_line("nlt.test/a:1", 12_300_000, 27_000_000, 5_100_000)
    assert line == ("pulling nlt.test/a:1  [##########..............]  45%  12.3/27.0 MB  5.1 MB/s")
    assert "[########################] 100%" in bar_line("x", 27, 27, 1.0)
    assert "[........................]   0%" in bar_line("x", 0, 27, 0.0)


def test_without_a_total_there_is_no_bar() -> None:
    assert bar_line("x", 2_000_000, None, 1_000_000) == "pulling x  2.0 MB  1.0 MB/s"
    assert plain_line("x", 2_000_000, None) == "pulling x: 2.0 MB so far"


def test_an_empty_total_is_complete() -> None:
    assert plain_line("x", 0, 0) == "pulling x: 0.0 of 0.0 MB (100 %)"


def test_lines_are_throttled_and_the_last_one_is_always_shown() -> None:
    shown: list[str] = []
    now = [100.0]
    progress = PullProgress(
        "x", shown.append, 2.0, lambda n, d, t, r: plain_line(n, d, t), clock=lambda: now[0]
    )
    progress.expect(4_000_000)
    progress(1_000_000)  # at once: too soon
    now[0] = 101.0
    progress(1_000_000)  # still within 2 s
    assert shown == []
    now[0] = 102.5
    progress(1_000_000)
    assert shown == ["pulling x: 3.0 of 4.0 MB (75 %)"]
    now[0] = 103.0
    progress(1_000_000)
    progress.finish()
    assert shown[-1] == "pulling x: 4.0 of 4.0 MB (100 %)"
    assert len(shown) == 2


def test_rounding_and_bounds_of_the_figures() -> None:
    from nodelet.image.progress import megabytes, percent

    assert megabytes(1_050_000) == "1.1"
    assert bar_line("x", 0, None, 1_050_000).endswith("1.1 MB/s")
    assert percent(0, 1) == 0
    assert percent(202, 100) == 100  # more than announced never shows more than 100 %


def test_the_rate_is_bytes_over_time_since_the_start_and_a_line_is_due_at_every() -> None:
    seen: list[tuple[int, int | None, float]] = []
    now = [50.0]

    def render(name: str, done: int, total: int | None, rate: float) -> str:
        seen.append((done, total, rate))
        return name

    progress = PullProgress("x", lambda _line: None, 2.0, render, clock=lambda: now[0])
    progress.finish()
    assert seen == [(0, None, 0.0)]
    now[0] = 52.0  # exactly one period after the start: due
    progress(3_000_000)
    assert seen[-1] == (3_000_000, None, 1_500_000.0)
