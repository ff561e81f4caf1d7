"""CRI log reading: chunk parsing, P/F joining, locating logs, ``nodelet logs``, follow mode."""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodelet.cli.logs import add_logs_arguments, run_logs
from nodelet.logs.reader import (
    LogChunk,
    LogMessage,
    LogsError,
    PodRef,
    Reassembler,
    find_pod_dir,
    follow_messages,
    iter_messages,
    parse_line,
    read_run,
)

pytestmark = pytest.mark.unit

TS = "2024-05-01T10:00:00.123456789Z"
POLL = 0.01
WAIT = 5.0


def cri(stream: str, tag: str, text: str, ts: str = TS) -> str:
    return f"{ts} {stream} {tag} {text}\n"


def write_log(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


def append(path: Path, *lines: str) -> None:
    with path.open("a") as file:
        file.write("".join(lines))


def texts(messages: Iterator[LogMessage] | list[LogMessage]) -> list[bytes]:
    return [m.render() for m in messages]


# --- parse_line ---------------------------------------------------------------------------


def test_parse_full_line() -> None:
    assert parse_line(cri("stdout", "F", "hello world").encode()) == LogChunk(
        TS, "stdout", False, b"hello world"
    )


def test_parse_partial_stderr_keeps_spaces_in_content() -> None:
    chunk = parse_line(cri("stderr", "P", "  two  spaces ").encode())
    assert chunk == LogChunk(TS, "stderr", True, b"  two  spaces ")


def test_parse_extra_tags_offsets_and_empty_content() -> None:
    assert parse_line(b"2024-05-01T10:00:00+02:00 stdout F:x:y data") == LogChunk(
        "2024-05-01T10:00:00+02:00", "stdout", False, b"data"
    )
    assert parse_line(f"{TS} stdout F \n".encode()) == LogChunk(TS, "stdout", False, b"")
    assert parse_line(f"{TS} stdout F".encode()) == LogChunk(TS, "stdout", False, b"")


def test_parse_keeps_bytes_that_are_not_utf8() -> None:
    chunk = parse_line(f"{TS} stdout F ".encode() + b"\xff\xfe\n")
    assert chunk is not None
    assert chunk.content == b"\xff\xfe"


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"garbage",
        b"yesterday stdout F text",
        f"{TS} stdin F text".encode(),
        f"{TS} stdout X text".encode(),
        f"{TS} stdout".encode(),
    ],
)
def test_parse_rejects_malformed(line: bytes) -> None:
    assert parse_line(line) is None


# --- reassembly ---------------------------------------------------------------------------


def chunk(stream: str, partial: bool, content: bytes, ts: str = TS) -> LogChunk:
    return LogChunk(ts, stream, partial, content)


def test_partials_join_until_full() -> None:
    r = Reassembler()
    assert r.feed(chunk("stdout", True, b"a", "t1")) is None
    assert r.feed(chunk("stdout", True, b"b", "t2")) is None
    assert r.feed(chunk("stdout", False, b"c", "t3")) == LogMessage("t1", "stdout", b"abc", True)
    assert r.flush() == []


def test_streams_are_joined_independently() -> None:
    r = Reassembler()
    assert r.feed(chunk("stdout", True, b"out-")) is None
    assert r.feed(chunk("stderr", False, b"err")) == LogMessage(TS, "stderr", b"err", True)
    assert r.feed(chunk("stderr", True, b"more-")) is None
    assert r.feed(chunk("stdout", False, b"line")) == LogMessage(TS, "stdout", b"out-line", True)
    assert r.flush() == [LogMessage(TS, "stderr", b"more-", False)]


def test_overlong_line_is_handed_out_in_pieces_with_same_bytes() -> None:
    r = Reassembler(max_bytes=4)
    assert r.feed(chunk("stdout", True, b"ab")) is None
    piece = r.feed(chunk("stdout", True, b"cd"))
    assert piece == LogMessage(TS, "stdout", b"abcd", False)
    last = r.feed(chunk("stdout", False, b"e"))
    assert last is not None
    assert piece.render() + last.render() == b"abcde\n"


def test_iter_messages_on_a_file(tmp_path: Path) -> None:
    path = write_log(
        tmp_path / "0.log",
        cri("stdout", "P", "hel"),
        cri("stderr", "F", "warning"),
        "not a cri line\n",
        cri("stdout", "F", "lo"),
        cri("stdout", "P", "no newline yet"),
    )
    assert texts(iter_messages(path)) == [b"warning\n", b"hello\n", b"no newline yet"]


def test_iter_messages_reads_an_unfinished_last_line(tmp_path: Path) -> None:
    path = write_log(tmp_path / "0.log", cri("stdout", "F", "one"), f"{TS} stdout F two")
    assert texts(iter_messages(path)) == [b"one\n", b"two\n"]


def test_a_carriage_return_inside_a_message_is_kept(tmp_path: Path) -> None:
    """CRI lines end at \\n only: a progress bar's \\r is content, not a line end."""
    path = write_log(
        tmp_path / "0.log", cri("stdout", "F", "10%\r50%\r100%"), cri("stderr", "F", "x")
    )
    assert texts(read_run(path)) == [b"10%\r50%\r100%\n", b"x\n"]


# --- locating logs ------------------------------------------------------------------------


def test_pod_ref_parse() -> None:
    assert PodRef.parse("web-node1") == PodRef("default", "web-node1")
    assert PodRef.parse("kube-system/etcd-node1") == PodRef("kube-system", "etcd-node1")
    for bad in ("", "ns/", "/name", "a_b", "a/b/c"):
        with pytest.raises(LogsError, match="invalid pod name"):
            PodRef.parse(bad)


def test_newest_pod_dir_wins_unless_uid_given(tmp_path: Path) -> None:
    old = tmp_path / "default_web-n1_aaa"
    new = tmp_path / "default_web-n1_bbb"
    for path in (old, new, tmp_path / "other_web-n1_ccc"):
        path.mkdir()
    os.utime(old, (1_000_000, 1_000_000))
    pod = PodRef("default", "web-n1")
    assert find_pod_dir(tmp_path, pod) == new
    assert find_pod_dir(tmp_path, pod, uid="aaa") == old
    with pytest.raises(LogsError, match="uid zzz"):
        find_pod_dir(tmp_path, pod, uid="zzz")


def test_not_found_hints_at_the_node_suffix(tmp_path: Path) -> None:
    (tmp_path / "default_web-node1_u1").mkdir()
    with pytest.raises(LogsError, match="did you mean web-node1"):
        find_pod_dir(tmp_path, PodRef("default", "web"))
    with pytest.raises(LogsError, match="another namespace: default/web-node1"):
        find_pod_dir(tmp_path, PodRef("prod", "web-node1"))
    with pytest.raises(LogsError, match="does not exist"):
        find_pod_dir(tmp_path / "missing", PodRef("default", "web"))


# --- nodelet logs -------------------------------------------------------------------------


def parse_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_logs_arguments(parser)
    return parser.parse_args(list(argv))


def logs(
    capsysbinary: pytest.CaptureFixture[bytes], logs_dir: Path, *argv: str
) -> tuple[int, bytes, str]:
    code = run_logs(parse_args(*argv, "--pod-logs-dir", str(logs_dir)))
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


@pytest.fixture
def pod_logs(tmp_path: Path) -> Path:
    """A pod with one restart of ``server`` and a single run of ``render`` and ``sidecar``."""
    pod = tmp_path / "default_web-n1_uid1"
    write_log(pod / "render" / "0.log", cri("stdout", "F", "rendered"))
    write_log(pod / "server" / "0.log", cri("stdout", "F", "first run"))
    write_log(
        pod / "server" / "1.log",
        cri("stdout", "P", "second "),
        cri("stderr", "F", "oops"),
        cri("stdout", "F", "run"),
    )
    write_log(pod / "sidecar" / "0.log", cri("stdout", "F", "probing"))
    solo = tmp_path / "kube-system_clock-n1_uid2"
    write_log(solo / "clock" / "0.log", cri("stdout", "F", "tick"))
    return tmp_path


def test_logs_prints_both_streams_of_the_latest_start(
    capsysbinary: pytest.CaptureFixture[bytes], pod_logs: Path
) -> None:
    assert logs(capsysbinary, pod_logs, "web-n1", "-c", "server") == (
        0,
        b"oops\nsecond run\n",
        "",
    )


def test_logs_previous(capsysbinary: pytest.CaptureFixture[bytes], pod_logs: Path) -> None:
    assert logs(capsysbinary, pod_logs, "web-n1", "-c", "server", "--previous") == (
        0,
        b"first run\n",
        "",
    )
    code, out, err = logs(capsysbinary, pod_logs, "web-n1", "-c", "sidecar", "-p")
    assert (code, out) == (1, b"")
    assert "previous terminated container sidecar not found" in err


def test_logs_single_container_needs_no_name(
    capsysbinary: pytest.CaptureFixture[bytes], pod_logs: Path
) -> None:
    assert logs(capsysbinary, pod_logs, "kube-system/clock-n1") == (0, b"tick\n", "")


def test_logs_several_containers_need_a_name(
    capsysbinary: pytest.CaptureFixture[bytes], pod_logs: Path
) -> None:
    code, out, err = logs(capsysbinary, pod_logs, "web-n1")
    assert (code, out) == (1, b"")
    assert "a container name must be specified for pod web-n1" in err
    assert "choose one of: [render server sidecar]" in err


def test_logs_unknown_container_and_pod(
    capsysbinary: pytest.CaptureFixture[bytes], pod_logs: Path
) -> None:
    code, _, err = logs(capsysbinary, pod_logs, "web-n1", "-c", "nope")
    assert code == 1
    assert "container nope is not valid for pod web-n1" in err
    code, _, err = logs(capsysbinary, pod_logs, "web")
    assert code == 1
    assert "did you mean web-n1" in err


def test_logs_uses_the_uid_it_is_given(
    capsysbinary: pytest.CaptureFixture[bytes], pod_logs: Path
) -> None:
    write_log(pod_logs / "kube-system_clock-n1_uid9" / "clock" / "0.log", cri("stdout", "F", "x"))
    code, out, _ = logs(capsysbinary, pod_logs, "kube-system/clock-n1", "--uid", "uid2")
    assert (code, out) == (0, b"tick\n")


def test_logs_container_not_started_yet(
    capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path
) -> None:
    (tmp_path / "default_p-n1_u" / "c").mkdir(parents=True)
    code, _, err = logs(capsysbinary, tmp_path, "p-n1")
    assert code == 1
    assert "has not started yet" in err


# --- follow -------------------------------------------------------------------------------


class Collector:
    """Runs ``follow_messages`` in a thread; the test waits for what it expects to see."""

    def __init__(self, start: Path) -> None:
        self.stop = threading.Event()
        self.seen: list[bytes] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, args=(start,), daemon=True)
        self._thread.start()

    def _run(self, start: Path) -> None:
        for message in follow_messages(start, poll_seconds=POLL, stop=self.stop):
            with self._lock:
                self.seen.append(message.render())

    def wait_for(self, count: int) -> list[bytes]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.seen) >= count:
                    return list(self.seen)
            time.sleep(POLL)
        raise AssertionError(f"saw only {self.seen} after {WAIT}s, wanted {count} messages")

    def finished(self) -> bool:
        self._thread.join(WAIT)
        return not self._thread.is_alive()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(WAIT)


@pytest.fixture
def container(tmp_path: Path) -> Path:
    return tmp_path / "default_web-n1_u" / "server"


def test_follow_switches_to_the_next_restart(container: Path) -> None:
    first = write_log(container / "0.log", cri("stdout", "F", "a0"))
    collector = Collector(first)

    def writer() -> None:
        time.sleep(0.05)
        append(first, cri("stdout", "P", "half "))
        time.sleep(0.05)
        append(first, cri("stdout", "F", "line"), cri("stdout", "P", "cut off"))
        time.sleep(0.05)
        write_log(container / "1.log", cri("stderr", "F", "b0"))
        time.sleep(0.05)
        append(container / "1.log", cri("stdout", "F", "b1"))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = collector.wait_for(5)
    finally:
        thread.join()
        collector.close()
    assert seen == [b"a0\n", b"half line\n", b"cut off", b"b0\n", b"b1\n"]


def test_follow_waits_for_the_end_of_a_line(container: Path) -> None:
    path = write_log(container / "0.log", f"{TS} stdout F beg")
    collector = Collector(path)
    try:
        time.sleep(5 * POLL)
        assert collector.seen == []
        append(path, "un\n")
        assert collector.wait_for(1) == [b"begun\n"]
    finally:
        collector.close()


def test_follow_skips_no_restart_written_between_polls(container: Path) -> None:
    first = write_log(container / "0.log", cri("stdout", "F", "zero"))
    write_log(container / "1.log", cri("stdout", "F", "one"))
    write_log(container / "2.log", cri("stdout", "F", "two"))
    collector = Collector(first)
    try:
        assert collector.wait_for(3) == [b"zero\n", b"one\n", b"two\n"]
    finally:
        collector.close()


def test_follow_reads_a_truncated_file_again(container: Path) -> None:
    path = write_log(container / "0.log", cri("stdout", "F", "before truncation"))
    collector = Collector(path)
    try:
        collector.wait_for(1)
        path.write_text(cri("stdout", "F", "after"))
        assert collector.wait_for(2) == [b"before truncation\n", b"after\n"]
    finally:
        collector.close()


def test_follow_moves_to_a_rotated_file(container: Path) -> None:
    path = write_log(container / "0.log", cri("stdout", "F", "old"))
    collector = Collector(path)
    try:
        collector.wait_for(1)
        append(path, cri("stdout", "F", "last in old"))
        path.rename(container / "0.log.20240501-100000")
        write_log(path, cri("stdout", "F", "new file"))
        assert collector.wait_for(3) == [b"old\n", b"last in old\n", b"new file\n"]
    finally:
        collector.close()


def test_follow_ends_when_the_pod_is_removed(container: Path) -> None:
    path = write_log(container / "0.log", cri("stdout", "F", "bye"))
    collector = Collector(path)
    collector.wait_for(1)
    path.unlink()
    container.rmdir()
    assert collector.finished()
