"""Container log rotation through the real agent and holder (kubelet's containerLogMaxSize and
containerLogMaxFiles, given as flags), ``nodelet logs`` across rotated files, and the agent's
JSON log format."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.agentharness import CRI_LINE, Agent, agent_session, wait_for
from tests.system.test_wiring import manifest

pytestmark = pytest.mark.system

MAX_SIZE = 1 << 20
MAX_FILES = 5
LINES = 500_000
"""Numbered lines of about 105 bytes: 50 MiB of output."""
WRITER = f"""
import sys, time
pad = "z" * 90
out = sys.stdout
for n in range({LINES}):
    out.write("%07d %s\\n" % (n, pad))
out.write("done\\n")
out.flush()
time.sleep(3600)
"""
FOLLOW_LINES = 40_000
SLOW_WRITER = f"""
import sys, time
for n in range({FOLLOW_LINES}):
    sys.stdout.write("%07d %s\\n" % (n, "w" * 60))
    if n % 400 == 0:
        sys.stdout.flush(); time.sleep(0.01)
sys.stdout.write("done\\n"); sys.stdout.flush()
time.sleep(3600)
"""


@pytest.fixture
def rotating() -> Iterator[Callable[[], Agent]]:
    flags = ["--container-log-max-size", "1Mi", "--container-log-max-files", str(MAX_FILES)]
    with agent_session(flags) as factory:
        yield factory


def nodelet(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodelet", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def kept_files(directory: Path) -> list[Path]:
    """The run's files, oldest first, as the reader orders them (the current one last)."""
    from nodelet.logs.rotation import rotated_files

    return [*rotated_files(directory / "0.log"), directory / "0.log"]


def messages(path: Path) -> list[str]:
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    found = []
    for raw in data.decode().splitlines():
        match = CRI_LINE.match(raw)
        assert match is not None, f"not a CRI line in {path.name}: {raw!r}"
        assert match.group(3) == "F"
        found.append(match.group(4))
    return found


def rotated_down(directory: Path) -> list[str] | None:
    """The kept files' names once everything is written and the agent's pass has settled
    (kubelet's shape: the current file, the newest rotated one, the rest gzipped)."""
    current = directory / "0.log"
    if not current.exists() or "done" not in current.read_text()[-200:]:
        return None
    names = [p.name for p in kept_files(directory)]
    settled = all(n.endswith(".gz") for n in names[:-2]) and len(names) <= MAX_FILES
    no_leftovers = not any(n.endswith(".tmp") for n in os.listdir(directory))
    return names if settled and no_leftovers else None


def test_50_mib_rotated_at_1mi_keeps_5_files_in_order(rotating: Callable[[], Agent]) -> None:
    agent = rotating()
    agent.start()
    agent.write_manifest("chatty.json", manifest("chatty", [
        {"name": "app", "image": "host", "command": ["python3", "-c", WRITER]}]))  # fmt: skip
    pod = wait_for(lambda: agent.running("chatty"), 30, "chatty running")
    directory = agent.log_dir(pod, "app")
    # The holder rotates as it writes; the agent prunes and gzips every 10 s.
    wait_for(lambda: rotated_down(directory), 90, "50 MiB written and rotated down")
    files = kept_files(directory)
    names = [p.name for p in files]
    assert len(files) == MAX_FILES, names
    assert [n.endswith(".gz") for n in names] == [True, True, True, False, False], names
    for path in files:
        if not path.name.endswith(".gz"):
            assert path.stat().st_size <= MAX_SIZE, (path.name, path.stat().st_size)
    lines = [line for path in files for line in messages(path)]
    assert lines[-1] == "done"
    numbered = [int(line.split()[0]) for line in lines[:-1]]
    # A contiguous run ending with the last line: nothing lost, repeated or reordered.
    assert numbered == list(range(LINES - len(numbered), LINES))
    assert len(numbered) > 3 * MAX_SIZE // 106  # the gzipped ones hold lines too

    name = pod["metadata"]["name"]
    tail = nodelet("logs", name, "--tail", "10", "--pod-logs-dir", str(agent.logs),
                   "--run-dir", str(agent.run_dir))  # fmt: skip
    assert tail.returncode == 0, tail.stderr
    expected = [f"{n:07d} {'z' * 90}" for n in range(LINES - 9, LINES)] + ["done"]
    assert tail.stdout.splitlines() == expected[-10:]
    # Further back than the current file holds: read on into the rotated (gzipped) files.
    reach = len(messages(files[-1])) + 25
    deep = nodelet("logs", name, "--tail", str(reach), "--pod-logs-dir", str(agent.logs))
    assert deep.stdout.splitlines() == lines[-reach:]


def test_follow_goes_on_across_rotations(rotating: Callable[[], Agent]) -> None:
    agent = rotating()
    agent.start()
    agent.write_manifest("steady.json", manifest("steady", [
        {"name": "app", "image": "host", "command": ["python3", "-c", SLOW_WRITER]}]))  # fmt: skip
    pod = wait_for(lambda: agent.running("steady"), 30, "steady running")
    follower = subprocess.Popen(
        [sys.executable, "-m", "nodelet", "logs", "-f", pod["metadata"]["name"],
         "--pod-logs-dir", str(agent.logs), "--run-dir", str(agent.run_dir)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: list[str] = []
    try:
        assert follower.stdout is not None
        for line in follower.stdout:
            seen.append(line.rstrip("\n"))
            if line == "done\n":
                break
    finally:
        follower.kill()
        follower.wait()
    assert seen[-1] == "done"
    numbered = [int(line.split()[0]) for line in seen[:-1]]
    assert numbered == list(range(FOLLOW_LINES))
    assert len(kept_files(agent.log_dir(pod, "app"))) > 1  # it did rotate meanwhile


def test_json_log_format_names_the_pod() -> None:
    with agent_session(["--log-format", "json"]) as factory:
        agent = factory()
        agent.start()
        agent.write_manifest("quiet.json", manifest("quiet", [
            {"name": "app", "image": "host", "command": ["sleep", "3600"]}]))  # fmt: skip
        pod = wait_for(lambda: agent.running("quiet"), 30, "quiet running")
        meta = pod["metadata"]

        def started() -> dict[str, str] | None:
            for line in agent.output.read_text().splitlines():
                if not line.startswith("{"):
                    continue
                entry = json.loads(line)
                assert {"ts", "level", "logger", "msg"} <= set(entry), entry
                if entry.get("uid") == meta["uid"] and "started container" in entry["msg"]:
                    found: dict[str, str] = entry
                    return found
            return None

        entry = wait_for(started, 20, "a JSON 'started container' line with the pod's uid")
        assert (entry["namespace"], entry["pod"]) == (meta["namespace"], meta["name"])
        assert entry["level"] == "INFO"
        lines = agent.output.read_text().splitlines()
        assert not [line for line in lines if line[:4].isdigit()]  # no text-format lines
