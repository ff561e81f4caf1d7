"""A real agent over hostile manifest files, and over files still being written.

Every file that used to kill the agent (and kill it again on each restart) sits beside a good
pod: the agent stays healthy, the good pod keeps its process, each bad file is listed with its
own error, and the same holds after a restart. A file some process still holds open for writing
is not read, however long its writer pauses, also when the agent starts during the pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from watchdog.events import FileClosedEvent

from nodelet.manifest.load import display_path
from nodelet.manifest.snapshot import SourceSnapshot
from nodelet.manifest.source import ManifestSource
from nodelet.manifest.writers import writers_of
from nodelet.model import ManifestError, Rejection, StaticPod
from tests.agentharness import NODE, Agent, agent_session, process_gone, wait_for
from tests.badmanifests import BAD_FILE_NAMES, HOSTILE, BadManifest, encoded, pod
from tests.system.conftest import FAST_BACKOFF

pytestmark = pytest.mark.system

SLEEPER = (  # the host pid: the container has its own PID namespace, /proc is the host's
    "import os, time; print('pid=%s' % os.readlink('/proc/self'), flush=True); time.sleep(3600)"
)
SHOW_A = "import os, time; print('A=%r' % os.environ['A'], flush=True); time.sleep(3600)"


def sleeper_pod(name: str, script: str = SLEEPER, **container: Any) -> dict[str, Any]:
    app = {"name": "app", "image": "host", "command": ["python3", "-c", script], **container}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [app], "terminationGracePeriodSeconds": 1}}  # fmt: skip


def hostile_files(base: Path) -> list[BadManifest]:
    """Item 2 of issue 21, one file each, plus UIDs aimed at directories of this test."""
    victim_abs = base / "abs-victim"
    uid_abs = pod()
    uid_abs["metadata"]["uid"] = str(victim_abs)
    return [
        *HOSTILE,
        *BAD_FILE_NAMES,
        BadManifest("uid-absolute-victim.yaml", "metadata.uid: '/", encoded(uid_abs)),
    ]


def rejected_by_path(agent: Agent) -> dict[str, list[str]]:
    return {item["path"]: item["errors"] for item in agent.get("/rejected")["items"]}


def check_agent(agent: Agent, bad: list[BadManifest], good_pid: int) -> None:
    """Healthy, the good pod untouched, every bad file rejected with its own error."""
    wanted = {display_path(str(agent.manifests / b.filename)): b for b in bad}

    def all_rejected() -> dict[str, list[str]] | None:
        found = rejected_by_path(agent)
        return found if set(wanted) <= set(found) else None

    rejected = wait_for(all_rejected, 30, "every hostile file rejected")
    for path, b in wanted.items():
        errors = rejected[path]
        assert any(b.expected in e for e in errors), (b.filename, errors)
        assert all(e.startswith(path) for e in errors), errors
        assert not any("internal error" in e for e in errors), errors
    assert agent.alive() and agent.healthy()
    assert not process_gone(good_pid)
    status = agent.container_status("good", "app")
    assert status is not None and status["restartCount"] == 0 and "running" in status["state"]
    for name in ("value-null", "value-from-null"):
        running = wait_for(functools.partial(agent.running, name), 20, f"{name} running")
        assert agent.log_value(running, "app", "A") == "''"
    names = sorted(i["metadata"]["name"] for i in agent.get("/pods")["items"])
    assert names == sorted(f"{n}-{NODE}" for n in ("good", "value-null", "value-from-null"))


def test_hostile_files_leave_the_agent_and_its_pods_alone(agents: Callable[[], Agent]) -> None:
    first = agents()
    first.start()
    base = first.base
    for victim in (base / "victim", base / "abs-victim"):  # what "../../victim" and an
        victim.mkdir()  # absolute UID would name as the pod's run and state dirs
        (victim / "precious").write_text("keep me")
    first.write_manifest("good.yaml", json.dumps(sleeper_pod("good")))
    good = wait_for(lambda: first.running("good"), 20, "good pod running")
    pid = int(first.log_value(good, "app", "pid"))
    bad = hostile_files(base)
    for b in bad:
        b.create(first.manifests)
    # A null field is an unset field: these run, and their containers see A="".
    first.write_manifest(
        "value-null.yaml",
        json.dumps(sleeper_pod("value-null", SHOW_A, env=[{"name": "A", "value": None}])),
    )
    first.write_manifest(
        "value-from-null.yaml",
        json.dumps(sleeper_pod("value-from-null", SHOW_A, env=[{"name": "A", "valueFrom": None}])),
    )
    check_agent(first, bad, pid)

    first.signal(signal.SIGTERM)  # a restart reads every file again: no crash loop
    second = agents()
    second.start()
    check_agent(second, bad, pid)
    assert "internal error while checking" not in first.output.read_text()
    for victim in (base / "victim", base / "abs-victim"):
        assert (victim / "precious").read_text() == "keep me"


# -- half-written manifests -----------------------------------------------------------------

PREFIX = (  # ten lines that alone are a valid one-container pod: the trap
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: slow\nspec:\n"
    "  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c0\n    image: host\n"
    "    command: [sleep, '3600']\n"
)
REST = "  - name: c1\n    image: host\n    command: [sleep, '3600']\n"
WRITER = """
import sys
with open(sys.argv[1], "w") as f:
    f.write(sys.argv[2])
    f.flush()
    print("half", flush=True)
    sys.stdin.readline()  # hold the file open for writing until the test says go
    f.write(sys.argv[3])
print("done", flush=True)
"""


@pytest.fixture
def relisting() -> Iterator[Callable[[], Agent]]:
    """Agents that relist every second: a plain poll would read a half file within the pause."""
    with agent_session(["--file-check-frequency", "1s", *FAST_BACKOFF]) as factory:
        yield factory


@contextlib.contextmanager
def slow_writer(path: Path) -> Iterator[subprocess.Popen[str]]:
    """A process that writes PREFIX to ``path``, holds it open until told, then writes REST."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), PREFIX, REST],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "half\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def finish(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "done\n"
    proc.wait(timeout=10)


def containers_of(agent: Agent, name: str) -> list[str] | None:
    item = agent.pod(name)
    return None if item is None else [c["name"] for c in item["spec"]["containers"]]


def watch_while_held(
    agent: Agent, path: Path, writer_pid: int, seconds: float, expect: list[str] | None
) -> None:
    """For ``seconds``, the pod stays as it was (``expect``), and /rejected says who holds it."""
    pending = f"pending: held open for writing by pid {writer_pid} "
    seen_pending = False
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert containers_of(agent, "slow") == expect
        errors = rejected_by_path(agent).get(str(path), [])
        seen_pending = seen_pending or any(pending in e for e in errors)
        time.sleep(0.1)
    assert seen_pending, rejected_by_path(agent)


def test_a_writer_pausing_beyond_the_settle_time_never_starts_a_half_pod(
    relisting: Callable[[], Agent],
) -> None:
    agent = relisting()
    agent.start()
    path = agent.manifests / "slow.yaml"
    with slow_writer(path) as writer:
        watch_while_held(agent, path, writer.pid, 4.5, None)  # settle time is 2 s
        finish(writer)
    wait_for(lambda: agent.running("slow", "c0", "c1"), 20, "the whole pod running")
    assert str(path) not in rejected_by_path(agent)


def test_a_writer_rewriting_a_running_pods_file_keeps_the_old_pod_until_it_closes(
    relisting: Callable[[], Agent],
) -> None:
    agent = relisting()
    agent.start()
    path = agent.write_manifest("slow.yaml", json.dumps(sleeper_pod("slow")))
    old = wait_for(lambda: agent.running("slow"), 20, "old pod running")
    pid = int(agent.log_value(old, "app", "pid"))
    with slow_writer(path) as writer:
        watch_while_held(agent, path, writer.pid, 4.5, ["app"])
        assert not process_gone(pid)
        finish(writer)
    wait_for(lambda: agent.running("slow", "c0", "c1"), 30, "the new pod running")
    assert process_gone(pid)


def test_an_agent_started_while_a_writer_holds_the_file_waits_for_it(
    relisting: Callable[[], Agent],
) -> None:
    agent = relisting()
    path = agent.manifests / "slow.yaml"
    with slow_writer(path) as writer:
        time.sleep(2.5)  # older than the settle time when the agent first lists the dir
        agent.start()
        watch_while_held(agent, path, writer.pid, 3.0, None)
        finish(writer)
    wait_for(lambda: agent.running("slow", "c0", "c1"), 20, "the whole pod running")


# -- the source alone -------------------------------------------------------------------------


def test_writers_of_sees_write_holders_only(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("x")
    hold = "import sys, time; f = open(sys.argv[1], sys.argv[2]); print(flush=True); time.sleep(60)"
    procs = {
        mode: subprocess.Popen(
            [sys.executable, "-c", hold, str(path), mode], stdout=subprocess.PIPE, text=True
        )
        for mode in ("r", "a", "r+")
    }
    try:
        for proc in procs.values():
            assert proc.stdout is not None
            proc.stdout.readline()
        assert [pid for pid, _ in writers_of(str(path))] == sorted(
            [procs["a"].pid, procs["r+"].pid]
        )
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    assert writers_of(str(path)) == []


async def test_a_loader_that_raises_becomes_that_files_rejection(tmp_path: Path) -> None:
    """Whatever reading one file raises, the source lives on and lists that file."""
    (tmp_path / "a.yaml").write_text("a")
    (tmp_path / "b.yaml").write_text("b")

    def loader(path: str, _node: str) -> StaticPod | Rejection:
        if path.endswith("a.yaml"):
            raise RecursionError("maximum recursion depth exceeded")
        return Rejection(path, (ManifestError(path, "", "fine"),))

    snapshots: list[SourceSnapshot] = []
    source = ManifestSource(tmp_path, NODE, snapshots.append, loader=loader, settle_seconds=0)
    task = asyncio.create_task(source.run())
    try:
        async with asyncio.timeout(5):
            while not snapshots:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    errors = {r.path: [str(e) for e in r.errors] for r in snapshots[0].rejected}
    a, b = str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")
    assert errors == {
        a: [
            f"{a}: internal error while checking: RecursionError: maximum recursion depth exceeded"
        ],
        b: [f"{b}: fine"],
    }


async def test_a_close_event_seen_late_says_nothing_of_a_later_write(tmp_path: Path) -> None:
    """A close (or rename) event that arrives after its file was already read must not let a
    later in-place rewrite skip the writer check."""
    path = tmp_path / "slow.yaml"
    path.write_text(PREFIX + REST + "  - name: c2\n    image: host\n")
    snapshots: list[SourceSnapshot] = []

    def containers() -> list[list[str]]:
        return [[c["name"] for c in p.spec["containers"]] for p in snapshots[-1].pods.values()]

    source = ManifestSource(tmp_path, NODE, snapshots.append, file_check_frequency=0.2)
    task = asyncio.create_task(source.run())
    try:
        async with asyncio.timeout(10):
            while not (snapshots and containers() == [["c0", "c1", "c2"]]):
                await asyncio.sleep(0.05)
        source._on_event(FileClosedEvent(str(path)))  # the late event of that first write
        with slow_writer(path) as writer:
            seen = len(snapshots)
            await asyncio.sleep(3.0)  # past the 2 s settle time, several relists
            assert len(snapshots) > seen
            for snapshot in snapshots[seen:]:
                assert [len(p.spec["containers"]) for p in snapshot.pods.values()] == [3]
            pending = [str(e) for r in snapshots[-1].rejected for e in r.errors]
            assert any(f"held open for writing by pid {writer.pid} " in e for e in pending)
            await asyncio.to_thread(finish, writer)
        async with asyncio.timeout(10):
            while containers() != [["c0", "c1"]]:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
