"""Issue 21's runtime faults, each reproduced against a real agent as root: a full disk, a
stalled or killed holder, an agent killed mid-removal, damaged state on disk, escaping paths.

Every test looks at real processes (/proc, pids, pidfds) and the files the agent keeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from nodelet.holder import protocol
from nodelet.runtime import journal
from tests.agentharness import Agent, process_gone, wait_for
from tests.system.test_acceptance import SLEEPER, manifest, py

pytestmark = pytest.mark.system

TERM_LOGGER = (
    "import os, signal, sys, time\n"
    "print('pid=%s' % os.readlink('/proc/self'), flush=True)\n"
    "def term(*_):\n"
    "    print('got=TERM', flush=True); sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "time.sleep(3600)\n"
)
TERM_IGNORER = (
    "import os, signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('pid=%s' % os.readlink('/proc/self'), flush=True)\n"
    "time.sleep(3600)\n"
)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` (made by the test, unmounted lazily even on failure)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "nlt-tmpfs",
                    str(path)], check=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def pod_dir(agent: Agent, pod: dict[str, Any]) -> Path:
    uid: str = pod["metadata"]["uid"]
    return agent.run_dir / "pods" / uid


def holder_pid(agent: Agent, pod: dict[str, Any]) -> int:
    identity = json.loads((pod_dir(agent, pod) / protocol.HOLDER_ID_NAME).read_text())
    pid: int = identity["pid"]
    return pid


def restarts(agent: Agent, name: str, container: str = "app") -> int | None:
    status = agent.container_status(name, container)
    return None if status is None else int(status["restartCount"])


def fill(directory: Path) -> Path:
    """Write until the filesystem is full; returns the filler file."""
    filler = directory / "nlt-filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)
    return filler


def drain(agent: Agent) -> None:
    """Remove every pod and stop the agent while a test's small filesystem is still mounted."""
    for path in agent.manifests.iterdir():
        path.unlink()
    wait_for(lambda: not agent.get("/pods")["items"], 30, "pods removed")
    agent.signal(signal.SIGTERM)


def test_full_log_disk_drops_lines_and_keeps_the_pod(agents: Callable[[], Agent]) -> None:
    agent = agents()
    noisy = "import time\nfor i in range(4000): print('x' * 200, i, flush=True)\ntime.sleep(3600)"
    with tmpfs(agent.logs, "256k"):
        agent.start()
        agent.write_manifest(
            "loud.yaml", manifest("loud", [py("noisy", noisy), py("quiet", SLEEPER)])
        )
        pod = wait_for(lambda: agent.running("loud"), 20, "loud running")
        holder = holder_pid(agent, pod)

        def dropped() -> dict[str, Any] | None:
            item = agent.pod("loud")
            conditions = (item or {}).get("status", {}).get("conditions", [])
            return next((c for c in conditions if c["type"] == "nodelet.io/LogsDropped"), None)

        condition = wait_for(dropped, 20, "LogsDropped condition")
        assert "noisy" in condition["message"] and "No space left" in condition["message"]
        time.sleep(1)
        assert not process_gone(holder)
        assert holder_pid(agent, agent.running("loud") or {}) == holder
        assert restarts(agent, "loud", "noisy") == 0
        assert restarts(agent, "loud", "quiet") == 0
        assert agent.healthy()
        drain(agent)


def test_full_run_dir_loses_no_exit_and_claims_no_process(agents: Callable[[], Agent]) -> None:
    agent = agents()
    with tmpfs(agent.run_dir, "2m"):
        agent.start()
        agent.write_manifest("steady.yaml", manifest("steady", [py("app", SLEEPER)]))
        pod = wait_for(lambda: agent.running("steady"), 20, "steady running")
        pid = int(agent.log_value(pod, "app", "pid"))
        holder = holder_pid(agent, pod)
        filler = fill(agent.run_dir)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: restarts(agent, "steady") == 1 and agent.running("steady"), 15,
                 "restart seen with the run dir full")  # fmt: skip
        assert not process_gone(holder)
        running = agent.running("steady")
        assert running is not None
        new_pid = int(agent.log_value(running, "app", "pid", attempt=1))
        assert not process_gone(new_pid)
        filler.unlink()

        def journaled() -> bool:
            runs = journal.read_journals(pod_dir(agent, pod))
            return any(r.pid == pid and not r.running for r in runs)

        wait_for(journaled, 10, "the exit written once space was free")
        agent.signal(signal.SIGKILL)
        second = agents()
        second.start()
        wait_for(lambda: restarts(second, "steady") == 1 and second.running("steady"), 10,
                 "restart count kept across an agent restart")  # fmt: skip
        drain(second)


def test_a_dying_holder_is_recreated_with_back_off(agent: Agent) -> None:
    agent.write_manifest("fragile.yaml", manifest("fragile", [py("app", SLEEPER)]))
    pod = wait_for(lambda: agent.running("fragile"), 20, "fragile running")
    seen: set[int] = set()
    saw_back_off = False
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = holder_pid(agent, pod)
            if pid not in seen and not process_gone(pid):
                seen.add(pid)
                os.kill(pid, signal.SIGKILL)
        conditions = (agent.pod("fragile") or {}).get("status", {}).get("conditions", [])
        saw_back_off |= any(c.get("reason") == "SandboxBackOff" for c in conditions)
        time.sleep(0.02)
    # FAST_BACKOFF: re-created at once, then after 1 s, 2 s, 4 s: at most 4 holders in 6 s.
    assert 3 <= len(seen) <= 4, sorted(seen)
    assert saw_back_off
    wait_for(lambda: agent.running("fragile"), 15, "running again after the back-off")


def test_a_stalled_holder_is_never_duplicated(agents: Callable[[], Agent]) -> None:
    first = agents()
    first.start()
    spec = manifest("frozen", [py("app", TERM_IGNORER)], terminationGracePeriodSeconds=2)
    path = first.write_manifest("frozen.yaml", spec)
    pod = wait_for(lambda: first.running("frozen"), 20, "frozen running")
    app = int(first.log_value(pod, "app", "pid"))
    holder = holder_pid(first, pod)
    os.kill(holder, signal.SIGSTOP)
    try:
        first.signal(signal.SIGKILL)
        second = agents()
        began = time.monotonic()
        second.start()
        assert time.monotonic() - began < 8  # start-up did not wait out the stalled holder
        time.sleep(3)
        assert holder_pid(second, pod) == holder
        assert not (pod_dir(second, pod) / "journal-0.jsonl").exists()  # no second holder
        assert not process_gone(app)
        path.unlink()
        wait_for(lambda: process_gone(holder) and process_gone(app), 30, "stalled pod stopped")
        wait_for(lambda: not pod_dir(second, pod).exists(), 10, "run dir removed")
        assert second.healthy()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(holder, signal.SIGCONT)


def test_a_removal_interrupted_by_an_agent_crash_is_finished(
    agents: Callable[[], Agent],
) -> None:
    first = agents()
    first.start()
    spec = manifest("leaving", [py("app", TERM_IGNORER)], terminationGracePeriodSeconds=4)
    path = first.write_manifest("leaving.yaml", spec)
    pod = wait_for(lambda: first.running("leaving"), 20, "leaving running")
    app = int(first.log_value(pod, "app", "pid"))
    holder = holder_pid(first, pod)
    path.unlink()
    wait_for((pod_dir(first, pod) / protocol.TERMINATING_NAME).exists, 5, "removal intent")
    time.sleep(1)
    first.signal(signal.SIGKILL)
    wait_for(lambda: process_gone(holder) and process_gone(app), 10, "holder finished the stop")
    second = agents()
    second.start()
    wait_for(lambda: not pod_dir(second, pod).exists(), 10, "removal finished")
    time.sleep(1)
    assert not (second.log_dir(pod, "app") / "1.log").exists()  # never started again
    assert second.pod("leaving") is None


def test_a_damaged_journal_loses_no_exit(agents: Callable[[], Agent]) -> None:
    first = agents()
    first.start()
    first.write_manifest("scarred.yaml", manifest("scarred", [py("app", SLEEPER)]))
    pod = wait_for(lambda: first.running("scarred"), 20, "scarred running")
    pid = int(first.log_value(pod, "app", "pid"))
    first.signal(signal.SIGKILL)
    false_exit = {"type": "exit", "name": "app", "attempt": 0, "pid": pid, "started_at": 1.0,
                  "finished_at": 2.0, "exit_code": 0, "signal": None}  # fmt: skip
    with open(pod_dir(first, pod) / protocol.JOURNAL_NAME, "ab") as damaged:
        damaged.write(json.dumps(false_exit).encode() + b"\n")  # stray, unchecked JSON
        damaged.write(b'\xff\x00{"type": "exit", "name": "app", "att')  # torn, no newline
    second = agents()
    second.start()
    item = wait_for(lambda: second.running("scarred"), 10, "adopted despite the damage")
    assert item["status"]["phase"] == "Running"
    assert restarts(second, "scarred") == 0
    assert not process_gone(pid)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: restarts(second, "scarred") == 1 and second.running("scarred"), 15,
             "restart after the damage")  # fmt: skip
    second.signal(signal.SIGKILL)
    third = agents()
    third.start()
    item = wait_for(lambda: third.running("scarred"), 10, "adopted again")
    assert restarts(third, "scarred") == 1  # the exit after the torn line was not lost


def test_an_unusable_pod_record_still_stops_the_pod_gracefully(
    agents: Callable[[], Agent],
) -> None:
    first = agents()
    first.start()
    spec = manifest("garbled", [py("app", TERM_LOGGER)], terminationGracePeriodSeconds=20)
    path = first.write_manifest("garbled.yaml", spec)
    pod = wait_for(lambda: first.running("garbled"), 20, "garbled running")
    app = int(first.log_value(pod, "app", "pid"))
    first.signal(signal.SIGTERM)
    record = pod_dir(first, pod) / protocol.POD_RECORD_NAME
    stored = json.loads(record.read_text())
    record.write_text(json.dumps({**stored, "manifest": "oops"}))
    path.unlink()
    second = agents()
    second.start()
    wait_for(lambda: process_gone(app), 10, "the pod stopped")
    assert first.log_value(pod, "app", "got") == "TERM"  # SIGTERM within the grace, not a kill
    wait_for(lambda: not pod_dir(second, pod).exists(), 10, "run dir removed")
    assert second.healthy()


def test_a_killed_holder_takes_every_process_of_the_pod(agent: Agent) -> None:
    shell = {"name": "app", "image": "host", "command": ["sh", "-c", "sleep 3599; echo done"]}
    agent.write_manifest("family.yaml", manifest("family", [shell]))
    pod = wait_for(lambda: agent.running("family"), 20, "family running")
    holder = holder_pid(agent, pod)

    def grandchild() -> int | None:
        for child in psutil.Process(holder).children(recursive=True):
            if child.name() == "sleep":
                return child.pid
        return None

    sleeper = wait_for(grandchild, 10, "sleep under sh")
    os.kill(holder, signal.SIGKILL)
    wait_for(lambda: process_gone(sleeper), 5, "grandchild killed with its holder")


def test_the_agent_keeps_no_fd_of_removed_pods(agent: Agent) -> None:
    assert agent.proc is not None
    me = psutil.Process(agent.proc.pid)
    wait_for(lambda: agent.get("/pods") is not None, 5, "agent up")
    baseline = me.num_fds()
    names = [f"brief{i}" for i in range(8)]
    for name in names:
        agent.write_manifest(f"{name}.yaml", manifest(name, [py("app", SLEEPER)]))
    for name in names:
        wait_for(lambda n=name: agent.running(n), 30, f"{name} running")  # type: ignore[misc]
    for name in names:
        (agent.manifests / f"{name}.yaml").unlink()
    wait_for(lambda: not agent.get("/pods")["items"], 40, "all removed")
    wait_for(lambda: me.num_fds() <= baseline + 2, 10, f"fds back to {baseline}")


def test_a_dead_zygote_is_reaped_and_replaced(agent: Agent) -> None:
    assert agent.proc is not None
    me = psutil.Process(agent.proc.pid)
    zygotes = [c for c in me.children() if "zygote" in " ".join(c.cmdline())]
    assert len(zygotes) == 1
    zygote = zygotes[0]
    zygote.kill()
    wait_for(lambda: not psutil.pid_exists(zygote.pid), 5, "dead zygote reaped, no zombie")
    agent.write_manifest("after.yaml", manifest("after", [py("app", SLEEPER)]))
    wait_for(lambda: agent.running("after"), 20, "a pod starts with a new zygote")


def test_an_agent_killed_takes_its_zygote(agents: Callable[[], Agent]) -> None:
    first = agents()
    first.start()
    assert first.proc is not None
    zygote = next(
        c for c in psutil.Process(first.proc.pid).children() if "zygote" in c.cmdline()[-1]
    )
    first.signal(signal.SIGKILL)
    wait_for(lambda: process_gone(zygote.pid), 5, "zygote ended with its agent")


def test_working_dir_never_escapes_its_volume(agent: Agent) -> None:
    with tempfile.TemporaryDirectory(prefix="nlt-wd-") as scratch:
        base = Path(scratch)
        (base / "mnt").mkdir()
        (base / "outside").mkdir()
        mount = {"volumeMounts": [{"name": "v", "mountPath": str(base / "mnt")}]}
        volumes = [{"name": "v", "emptyDir": {}}]
        link = {"name": "link", "image": "host", "command": [
            "ln", "-s", str(base / "outside"), str(base / "mnt" / "link")], **mount}  # fmt: skip
        through_link = py("escape", SLEEPER, workingDir=str(base / "mnt" / "link" / "sub"), **mount)
        inside = py("inside", SLEEPER, workingDir=str(base / "mnt" / "deep" / "er"), **mount)
        pod = manifest("wd", [through_link, inside], initContainers=[link], volumes=volumes)
        agent.write_manifest("wd.yaml", pod)
        dotdot = py("app", SLEEPER, workingDir=str(base / "mnt" / ".." / "x" / "sub"), **mount)
        agent.write_manifest("dotdot.yaml", manifest("dotdot", [dotdot], volumes=volumes))
        wait_for(lambda: agent.running("wd", "inside"), 20, "inside running")

        def refused() -> str | None:
            state = (agent.container_status("wd", "escape") or {}).get("state", {})
            message: str | None = (state.get("waiting") or {}).get("message")
            return message

        assert "outside every volume" in wait_for(refused, 10, "escape refused")
        rejected = agent.get("/rejected")["items"]
        errors = [e for r in rejected if r["path"].endswith("dotdot.yaml") for e in r["errors"]]
        assert any("workingDir" in e for e in errors), rejected
        assert agent.pod("dotdot") is None
        assert not (base / "x").exists()
        assert not (base / "outside" / "sub").exists()
        assert (base / "mnt").exists() and not any((base / "mnt").iterdir())
        for name in ("wd.yaml", "dotdot.yaml"):
            (agent.manifests / name).unlink()
        wait_for(lambda: agent.pod("wd") is None, 30, "wd removed")
