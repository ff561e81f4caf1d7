"""CRI log reading at its edges: chunk sizes, odd directory names, exact operator messages,
files bigger than one read, unfinished last lines, and following without a stop event."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from nodelet.logs.reader import (
    READ_SIZE,
    LogChunk,
    LogMessage,
    LogsError,
    PodRef,
    Reassembler,
    container_dir,
    find_pod_dir,
    follow_messages,
    pick_log,
)

pytestmark = pytest.mark.unit

TS = "2024-05-01T10:00:00.123456789Z"
POLL = 0.01
WAIT = 5.0


def cri(stream: str, tag: str, text: str) -> str:
    return f"{TS} {stream} {tag} {text}\n"


def write(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


def test_the_size_limit_counts_only_the_bytes_of_the_line() -> None:
    joined = Reassembler(max_bytes=4)
    assert joined.feed(LogChunk(TS, "stdout", True, b"ab")) is None
    assert joined.feed(LogChunk(TS, "stdout", True, b"c")) is None  # 3 bytes: below 4
    assert joined.feed(LogChunk(TS, "stdout", False, b"")) == LogMessage(TS, "stdout", b"abc", True)


def test_flush_joins_every_piece_of_an_unfinished_line() -> None:
    joined = Reassembler()
    for piece in (b"a", b"b", b"c"):
        joined.feed(LogChunk(TS, "stderr", True, piece))
    assert joined.flush() == [LogMessage(TS, "stderr", b"abc", False)]
    assert joined.flush() == []


# --- finding the pod's and the container's log dirs ---------------------------------------


def test_pod_dirs_split_at_the_first_two_underscores_only(tmp_path: Path) -> None:
    (tmp_path / "default_web-n1_uid_with_underscores").mkdir()
    found = find_pod_dir(tmp_path, PodRef("default", "web-n1"), uid="uid_with_underscores")
    assert found.name == "default_web-n1_uid_with_underscores"


def test_names_that_are_not_pod_dirs_are_ignored(tmp_path: Path) -> None:
    real = tmp_path / "default_web-n1_u1"
    real.mkdir()
    os.utime(real, (1_000_000, 1_000_000))
    for junk in ("plain", "two_parts", "default__u2", "_web-n1_u3", "default_web-n1_"):
        (tmp_path / junk).mkdir()
    (tmp_path / "default_web-n1_u9").write_text("a file, not a pod dir")  # newest of all
    assert find_pod_dir(tmp_path, PodRef("default", "web-n1")) == real


def test_the_newest_dir_wins_whatever_its_name(tmp_path: Path) -> None:
    old, new = tmp_path / "default_web-n1_zzz", tmp_path / "default_web-n1_aaa"
    old.mkdir()
    new.mkdir()
    os.utime(old, (1_000_000, 1_000_000))
    assert find_pod_dir(tmp_path, PodRef("default", "web-n1")) == new


def test_not_found_messages(tmp_path: Path) -> None:
    for name in ("default_web-n1_u1", "default_web-n2_u2", "kube-system_web-n1_u3"):
        (tmp_path / name).mkdir()
    cases = {
        PodRef("default", "web"): f"pod default/web has no logs in {tmp_path}; static pod names "
        "carry the node name, did you mean web-n1, web-n2?",
        PodRef("prod", "web-n1"): f"pod prod/web-n1 has no logs in {tmp_path}; found in "
        "another namespace: default/web-n1, kube-system/web-n1",
        PodRef("prod", "web"): f"pod prod/web has no logs in {tmp_path}",
        PodRef("default", "db"): f"pod default/db has no logs in {tmp_path}",
    }
    for ref, message in cases.items():
        with pytest.raises(LogsError) as error:
            find_pod_dir(tmp_path, ref)
        assert str(error.value) == message


def test_container_dir_messages(tmp_path: Path) -> None:
    pod_dir = tmp_path / "default_web-n1_u1"
    pod_dir.mkdir()
    ref = PodRef("default", "web-n1")
    with pytest.raises(LogsError) as error:
        container_dir(pod_dir, ref, None)
    assert str(error.value) == f"pod default/web-n1 has no container logs yet ({pod_dir})"
    (pod_dir / "b").mkdir()
    (pod_dir / "a").mkdir()
    with pytest.raises(LogsError) as error:
        container_dir(pod_dir, ref, None)
    assert str(error.value) == (
        "a container name must be specified for pod web-n1, choose one of: [a b]"
    )
    with pytest.raises(LogsError) as error:
        container_dir(pod_dir, ref, "c")
    assert str(error.value) == "container c is not valid for pod web-n1, choose one of: [a b]"
    assert container_dir(pod_dir, ref, "b") == pod_dir / "b"


def test_pick_log_takes_the_latest_start_unless_asked_for_the_previous(tmp_path: Path) -> None:
    for restart in (0, 1, 10, 2):
        write(tmp_path / "app" / f"{restart}.log")
    (tmp_path / "app" / "3.log.20240501-100000").write_text("")  # rotated: not a start
    assert pick_log(tmp_path / "app") == tmp_path / "app" / "10.log"
    assert pick_log(tmp_path / "app", previous=True) == tmp_path / "app" / "2.log"


# --- following ------------------------------------------------------------------------------


def collect(start: Path, count: int, stop: threading.Event | None) -> list[bytes]:
    """Messages from ``follow_messages`` in a thread, until ``count`` arrived or it ended."""
    seen: list[bytes] = []
    done = threading.Event()

    def run() -> None:
        for message in follow_messages(start, poll_seconds=POLL, stop=stop):
            seen.append(message.render())
            if len(seen) >= count:
                break
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(WAIT), f"saw only {seen}"
    return seen


def test_follow_a_log_bigger_than_one_read(tmp_path: Path) -> None:
    line = "x" * 1000
    count = READ_SIZE // 1000 * 3
    path = write(tmp_path / "app" / "0.log", *(cri("stdout", "F", line) for _ in range(count)))
    assert path.stat().st_size > 2 * READ_SIZE
    seen = collect(path, count, threading.Event())
    assert seen == [line.encode() + b"\n"] * count


def test_follow_skips_malformed_lines_between_good_ones(tmp_path: Path) -> None:
    path = write(tmp_path / "app" / "0.log", cri("stdout", "F", "one"), "garbage\n",
                 cri("stdout", "F", "two"))  # fmt: skip
    assert collect(path, 2, threading.Event()) == [b"one\n", b"two\n"]


def test_follow_hands_out_an_unfinished_last_line_before_the_next_start(tmp_path: Path) -> None:
    first = write(tmp_path / "app" / "0.log", cri("stdout", "F", "a"), f"{TS} stdout F no-end")
    write(tmp_path / "app" / "1.log", cri("stdout", "F", "b"))
    assert collect(first, 3, threading.Event()) == [b"a\n", b"no-end\n", b"b\n"]


def test_follow_waits_for_a_deleted_log_to_come_back(tmp_path: Path) -> None:
    path = write(tmp_path / "app" / "0.log", cri("stdout", "F", "first"))
    stop = threading.Event()
    seen: list[bytes] = []

    def run() -> None:
        seen.extend(m.render() for m in follow_messages(path, poll_seconds=POLL, stop=stop))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not seen and time.monotonic() < deadline:
        time.sleep(POLL)
    path.unlink()
    time.sleep(10 * POLL)  # several polls with no file at all
    write(tmp_path / "app" / "1.log", cri("stdout", "F", "second"))
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(POLL)
    stop.set()
    thread.join(WAIT)
    assert seen == [b"first\n", b"second\n"]


def test_follow_without_a_stop_event_polls_until_the_pod_is_removed(tmp_path: Path) -> None:
    path = write(tmp_path / "app" / "0.log", cri("stdout", "F", "early"))
    seen: list[bytes] = []
    thread = threading.Thread(
        target=lambda: seen.extend(m.render() for m in follow_messages(path, poll_seconds=POLL)),
        daemon=True,
    )
    thread.start()
    time.sleep(10 * POLL)
    with path.open("a") as log:
        log.write(cri("stdout", "F", "late"))
    deadline = time.monotonic() + WAIT
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(POLL)
    path.unlink()
    path.parent.rmdir()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert seen == [b"early\n", b"late\n"]


def test_following_something_that_is_not_a_log_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "app" / "current.txt")
    with pytest.raises(LogsError) as error:
        next(follow_messages(path, poll_seconds=POLL, stop=threading.Event()))
    assert str(error.value) == f"not a container log file: {path}"
