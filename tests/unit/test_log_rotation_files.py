"""Container log rotation on files: the holder's writer rotates between lines, the agent's
pass prunes and gzips as kubelet does, and the reader reads a run across its rotated files
(``--tail``, ``--since``, ``--timestamps``, following across rotations); the agent's JSON log."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from nodelet.holder.crilog import LogFile, StreamLog
from nodelet.logs import agentlog, rotation
from nodelet.logs.reader import follow_messages, read_run, rfc3339_nano, timestamp_ns

pytestmark = pytest.mark.unit

LINE = "x" * 60


def write_lines(directory: Path, count: int, max_bytes: int, start: int = 0) -> Path:
    """``count`` numbered lines through the holder's writer, rotating at ``max_bytes``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "0.log"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    log = LogFile(fd, str(path), max_bytes)
    out = StreamLog(log, "stdout")
    for n in range(start, start + count):
        out.feed(f"{n:06d} {LINE}\n".encode())
    log.close()
    return path


def numbers(path: Path, **limits: int) -> list[int]:
    return [int(m.content.split()[0]) for m in read_run(path, **limits)]


def test_the_writer_rotates_between_lines_and_never_past_the_limit(tmp_path: Path) -> None:
    current = write_lines(tmp_path / "default_p_u" / "app", 400, 4096)
    rotated = rotation.rotated_files(current)
    assert len(rotated) > 5
    for path in [*rotated, current]:
        data = path.read_bytes()
        assert 0 < len(data) <= 4096 and data.endswith(b"\n")
    # Many rotations within one second: kubelet's name, then .1, .2 ... in order.
    names = [p.name for p in rotated]
    assert names[0].startswith("0.log.") and len(names[0]) == len("0.log.20240501-100000")
    assert any(name.endswith(".1") for name in names)
    assert numbers(current) == list(range(400))


def test_a_failed_rotation_keeps_every_line_in_the_current_file(tmp_path: Path) -> None:
    directory = tmp_path / "default_p_u" / "app"
    directory.mkdir(parents=True)
    path = directory / "0.log"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    log = LogFile(fd, str(directory / "gone" / "0.log"), 100)  # rename cannot succeed
    out = StreamLog(log, "stdout")
    out.feed(b"one " + b"y" * 80 + b"\ntwo\n")
    assert out.dropped == 0 and "cannot rotate" in log.error
    log.close()
    assert [m.content[:3] for m in read_run(path)] == [b"one", b"two"]


def test_the_agent_keeps_max_files_and_gzips_all_but_the_newest_rotated(tmp_path: Path) -> None:
    current = write_lines(tmp_path / "default_p_u" / "app", 400, 4096)
    (tmp_path / "default_p_u" / "app" / "0.log.20000101-000000.gz.tmp").write_bytes(b"interrupted")
    rotation.rotate_all(tmp_path, 5)
    names = sorted(os.listdir(tmp_path / "default_p_u" / "app"))
    rotated = rotation.rotated_files(current)
    assert len(rotated) == 4 and len(names) == 5
    assert [p.name.endswith(".gz") for p in rotated] == [True, True, True, False]
    with gzip.open(rotated[0], "rb") as file:
        assert file.read().endswith(b"\n")
    kept = numbers(current)
    assert kept == list(range(kept[0], 400))  # the newest lines, none lost between files
    rotation.rotate_all(tmp_path, 5)  # idempotent
    assert sorted(os.listdir(tmp_path / "default_p_u" / "app")) == names


def test_tail_and_since_read_back_across_gzipped_files(tmp_path: Path) -> None:
    current = write_lines(tmp_path / "default_p_u" / "app", 400, 4096)
    rotation.rotate_all(tmp_path, 50)
    in_current = len(current.read_bytes().splitlines())
    assert numbers(current, tail=10) == list(range(390, 400))
    wanted = in_current + 30  # reaches into the rotated (gzipped) files
    assert numbers(current, tail=wanted) == list(range(400 - wanted, 400))
    assert numbers(current, tail=0) == []
    future = time.time_ns() + 10**9
    assert numbers(current, since_ns=future) == []
    assert len(numbers(current, since_ns=0)) == 400


def test_timestamps_print_as_go_rfc3339nano() -> None:
    assert rfc3339_nano("2024-05-01T10:00:00.123400000Z") == "2024-05-01T10:00:00.1234Z"
    assert rfc3339_nano("2024-05-01T10:00:00.000000000Z") == "2024-05-01T10:00:00Z"
    assert timestamp_ns("1970-01-01T00:00:01.5Z") == 1_500_000_000
    assert timestamp_ns("1970-01-01T01:00:01+01:00") == 1_000_000_000


def test_follow_crosses_several_rotations_between_two_polls(tmp_path: Path) -> None:
    directory = tmp_path / "default_p_u" / "app"
    current = write_lines(directory, 10, 4096)
    stop, seen = threading.Event(), []

    def run() -> None:
        for message in follow_messages(current, poll_seconds=0.5, stop=stop):
            seen.append(int(message.content.split()[0]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while len(seen) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    write_lines(directory, 300, 4096, start=10)  # many rotations within one poll
    rotation.rotate_all(tmp_path, 100)  # and the agent gzips the older ones meanwhile
    while len(seen) < 310 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(5)
    assert seen == list(range(310))


def test_json_log_carries_the_pod_identity() -> None:
    stream = io.StringIO()
    agentlog.configure("json", stream=stream)
    try:
        logging.getLogger("nodelet.pod.worker").info(
            "started container %s container=%s", "pod=kube-system/etcd-n1 uid=abc123", "etcd"
        )
        logging.getLogger("nodelet.agent").warning("plain")
    finally:
        agentlog.configure("text")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "INFO" and first["logger"] == "nodelet.pod.worker"
    assert (first["namespace"], first["pod"], first["uid"]) == ("kube-system", "etcd-n1", "abc123")
    assert first["msg"].startswith("started container pod=kube-system/etcd-n1")
    assert first["ts"].endswith("Z")
    assert "pod" not in second and second["msg"] == "plain"
