"""The holder's CRI log writer: stream labels, F/P tags, the 16 KiB split, timestamps, and
output dropped (never blocking the container) when the log cannot be written."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodelet.holder.crilog import MAX_LINE, StreamLog, timestamp
from nodelet.logs.reader import iter_messages, parse_line

pytestmark = pytest.mark.unit

NOW_NS = 1_700_000_000_123_456_789
STAMP = "2023-11-14T22:13:20.123456789Z"
F_SETPIPE_SZ = 1031


@pytest.fixture(autouse=True)
def _frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("nodelet.holder.crilog.time.time_ns", lambda: NOW_NS)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    path = tmp_path / "0.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    yield fd, path
    os.close(fd)


def entries(path: Path) -> list[tuple[str, str, str]]:
    """(stream, tag, text) of every line, checking each line's timestamp and layout."""
    found = []
    for line in path.read_bytes().split(b"\n")[:-1]:
        stamp, stream, tag, text = line.split(b" ", 3)
        assert stamp.decode() == STAMP
        found.append((stream.decode(), tag.decode(), text.decode()))
    return found


def test_timestamp_is_rfc3339_nano_utc() -> None:
    assert MAX_LINE == 16384
    assert timestamp(NOW_NS) == STAMP
    assert timestamp(5) == "1970-01-01T00:00:00.000000005Z"
    assert timestamp(86_400 * 1_000_000_000) == "1970-01-02T00:00:00.000000000Z"


def test_each_stream_is_labelled_and_every_line_ends_with_f(log: tuple[int, Path]) -> None:
    fd, path = log
    out, err = StreamLog(fd, "stdout"), StreamLog(fd, "stderr")
    out.feed(b"one\ntwo\n")
    err.feed(b"oops\n")
    out.feed(b"\n")
    assert entries(path) == [
        ("stdout", "F", "one"),
        ("stdout", "F", "two"),
        ("stderr", "F", "oops"),
        ("stdout", "F", ""),
    ]
    assert path.read_bytes().endswith(b" stdout F \n")


def test_an_unfinished_line_waits_for_its_end_or_the_close(log: tuple[int, Path]) -> None:
    fd, path = log
    out = StreamLog(fd, "stdout")
    out.feed(b"hel")
    assert entries(path) == []
    out.feed(b"lo\nwor")
    assert entries(path) == [("stdout", "F", "hello")]
    out.close()
    out.close()
    assert entries(path) == [("stdout", "F", "hello"), ("stdout", "F", "wor")]
    StreamLog(fd, "stderr").close()  # nothing pending: nothing written
    assert len(entries(path)) == 2


def test_a_line_of_exactly_16_kib_is_one_entry(log: tuple[int, Path]) -> None:
    fd, path = log
    out = StreamLog(fd, "stdout")
    out.feed(b"a" * MAX_LINE)
    assert entries(path) == []
    out.feed(b"\n")
    assert entries(path) == [("stdout", "F", "a" * MAX_LINE)]


def test_an_unfinished_line_longer_than_16_kib_is_written_in_pieces(
    log: tuple[int, Path],
) -> None:
    fd, path = log
    out = StreamLog(fd, "stderr")
    out.feed(b"b" * (MAX_LINE + 1))
    assert entries(path) == [("stderr", "P", "b" * MAX_LINE)]
    out.feed(b"c" * (2 * MAX_LINE))
    out.close()
    assert entries(path) == [
        ("stderr", "P", "b" * MAX_LINE),
        ("stderr", "P", "b" + "c" * (MAX_LINE - 1)),
        ("stderr", "P", "c" * MAX_LINE),
        ("stderr", "F", "c"),
    ]


def test_a_long_line_read_whole_is_split_too(log: tuple[int, Path]) -> None:
    """containerd splits every line over 16 KiB, however it was read from the pipe: a
    40 000-byte line that arrives with its newline in one read must still become P, P, F."""
    fd, path = log
    StreamLog(fd, "stdout").feed(b"x" * 40_000 + b"\nafter\n")
    assert [(s, t, len(x)) for s, t, x in entries(path)] == [
        ("stdout", "P", MAX_LINE), ("stdout", "P", MAX_LINE),
        ("stdout", "F", 40_000 - 2 * MAX_LINE), ("stdout", "F", 5),
    ]  # fmt: skip


def test_pieces_join_back_to_the_bytes_written(log: tuple[int, Path]) -> None:
    fd, path = log
    out = StreamLog(fd, "stdout")
    data = bytes(range(32, 127)) * 400  # 38 000 bytes, no newline
    for start in range(0, len(data), 7_000):
        out.feed(data[start : start + 7_000])
    out.feed(b"\n")
    assert [m.render() for m in iter_messages(path)] == [data + b"\n"]
    first = parse_line(path.read_bytes().split(b"\n")[0])
    assert first is not None and first.partial and first.timestamp == STAMP


def test_no_log_file_drops_output_and_counts_it() -> None:
    out = StreamLog(None, "stdout", error="cannot open log: No space left on device")
    out.feed(b"a\nb\n")
    assert out.dropped == 2
    assert out.error == "cannot open log: No space left on device"
    assert StreamLog(None, "stdout").error == ""
    assert StreamLog(None, "stdout").dropped == 0


def test_a_failing_write_is_counted_with_its_reason(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "x.log", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        out = StreamLog(fd, "stdout")
        out.feed(b"lost\n")
        out.feed(b"lost too\n")
    finally:
        os.close(fd)
    assert (out.dropped, out.error) == (2, "Bad file descriptor")


def test_a_short_write_is_counted_with_the_reason_the_rest_failed() -> None:
    """The rest of a short write is tried once more: the count comes with the kernel's reason
    (ENOSPC on a full disk; EAGAIN for this full non-blocking pipe)."""
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
        os.set_blocking(write_end, False)
        out = StreamLog(write_end, "stdout")
        out.feed(b"y" * 8000 + b"\n")  # more than the pipe holds: only part is written
        assert (out.dropped, out.error) == (1, os.strerror(errno.EAGAIN))
        ok = StreamLog(write_end, "stdout")
        assert (ok.dropped, ok.error) == (0, "")
    finally:
        os.close(read_end)
        os.close(write_end)
