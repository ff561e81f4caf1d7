"""Timing and history a node operator relies on, measured on a real agent with both bounds:
grace periods, init-before-app order, restart counts across a new holder, CrashLoopBackOff
phase, and how soon a manifest directory created after start-up is watched."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from typing import Any

import psutil
import pytest

from tests.agentharness import Agent, agent_session, process_gone, wait_for
from tests.system.conftest import FAST_BACKOFF

pytestmark = pytest.mark.system

SLEEP = "import time; print('ready', flush=True); time.sleep(3600)"
STUBBORN = (
    "import signal, time\n"
    "def term(*_):\n"
    "    print('term=%f' % time.time(), flush=True)\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "print('ready=yes', flush=True)\n"
    "while True:\n"
    "    time.sleep(1)\n"
)
TIMED = (
    "import sys, time\n"
    "print('start=%f' % time.time(), flush=True)\n"
    "time.sleep(float(sys.argv[1]))\n"
    "print('end=%f' % time.time(), flush=True)\n"
)


def marker(name: str) -> str:
    return f"nlt-{name}-{uuid.uuid4().hex[:8]}"


def py(name: str, script: str, *args: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "host", "command": ["python3", "-c", script, *args], **extra}


def manifest(name: str, containers: list[dict[str, Any]], **spec: Any) -> str:
    """A pod whose containers (PID 1 of their own namespace: SIGTERM does nothing to them)
    are killed 1 s after removal, unless the test sets another grace period."""
    spec = {"containers": containers, "terminationGracePeriodSeconds": 1, **spec}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    return json.dumps(pod)


def running(agent: Agent, name: str) -> dict[str, Any]:
    return wait_for(lambda: agent.running(name), 20, f"{name} running")


def process_with(mark: str, exclude: int | None = None) -> int:
    """The pid of our descendant whose argv holds ``mark`` (other than ``exclude``)."""

    def find() -> int | None:
        for proc in psutil.Process().children(recursive=True):
            try:
                if proc.pid != exclude and mark in proc.cmdline():
                    return proc.pid
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
        return None

    return wait_for(find, 20, f"a process with {mark} in its argv")


def test_sigkill_comes_after_the_grace_period_not_before_and_not_long_after(agent: Agent) -> None:
    """Two pods with different grace periods, removed together: any constant grace (the
    holder's own default, or the API's 30 s) fails one of the two windows."""
    graces = {"grace3": 3, "grace6": 6}
    marks = {name: marker(name) for name in graces}
    for name, grace in graces.items():
        container = py("app", STUBBORN, marks[name])
        text = manifest(name, [container], terminationGracePeriodSeconds=grace)
        agent.write_manifest(f"{name}.json", text)
    pods = {name: running(agent, name) for name in graces}
    for pod in pods.values():
        assert agent.log_value(pod, "app", "ready") == "yes"  # its SIGTERM handler is set
    pids = {name: process_with(mark) for name, mark in marks.items()}

    removed = time.time()
    for name in graces:
        (agent.manifests / f"{name}.json").unlink()
    ended: dict[str, float] = {}

    def all_ended() -> bool:
        for name, pid in pids.items():
            if name not in ended and process_gone(pid):
                ended[name] = time.time() - removed
        return len(ended) == len(pids)

    wait_for(all_ended, 20, "both containers killed", interval=0.02)
    assert 2.5 <= ended["grace3"] <= 4.5, ended
    assert 5.5 <= ended["grace6"] <= 7.5, ended
    for name, pod in pods.items():  # SIGTERM first, at once; the SIGKILL only at the end
        term = float(agent.log_value(pod, "app", "term"))
        assert 0 <= term - removed < 1.0, (name, term - removed)


def test_init_containers_run_one_after_another_before_the_app(agent: Agent) -> None:
    inits = [py("init0", TIMED, "0.3"), py("init1", TIMED, "0.3")]
    apps = [py("app", TIMED, "3600"), py("side", TIMED, "3600")]
    agent.write_manifest("ordered.json", manifest("ordered", apps, initContainers=inits))
    pod = wait_for(lambda: agent.running("ordered"), 20, "ordered running")
    times = {
        (name, key): float(agent.log_value(pod, name, key))
        for name, key in [("init0", "start"), ("init0", "end"), ("init1", "start"),
                          ("init1", "end"), ("app", "start"), ("side", "start")]
    }  # fmt: skip
    assert times["init0", "end"] <= times["init1", "start"], times
    assert times["init1", "end"] <= times["app", "start"], times
    assert times["init1", "end"] <= times["side", "start"], times


def test_restart_count_continues_across_new_holders(agent: Agent) -> None:
    """The holder is SIGKILLed twice; each new holder's run counts on from the archived
    journals (``journal-<n>.jsonl``), and the count never goes backwards on the way."""
    mark = marker("app")
    agent.write_manifest("phoenix.json", manifest("phoenix", [py("app", SLEEP, mark)]))
    pod = wait_for(lambda: agent.running("phoenix"), 20, "phoenix running")
    run_dir = agent.run_dir / "pods" / pod["metadata"]["uid"]
    counts: list[int] = []
    pid = process_with(mark)
    for round_ in (1, 2):
        holder = psutil.Process(pid).ppid()
        os.kill(holder, signal.SIGKILL)

        def restarted(expected: int = round_) -> dict[str, Any] | None:
            status = agent.container_status("phoenix", "app")
            if status is None:
                return None
            counts.append(status["restartCount"])
            done = status["restartCount"] == expected and "running" in status["state"]
            return status if done else None

        wait_for(restarted, 20, f"restartCount {round_} with a new holder")
        assert (run_dir / f"journal-{round_ - 1}.jsonl").is_file()
        new = process_with(mark, exclude=pid)
        assert process_gone(holder) and psutil.Process(new).ppid() != holder
        pid = new
    assert counts == sorted(counts), counts
    final = agent.container_status("phoenix", "app")
    assert final is not None and final["restartCount"] == 2


def test_crash_looping_pod_with_restart_policy_always_is_running(agent: Agent) -> None:
    crash = "raise SystemExit(3)"
    agent.write_manifest("loop.json", manifest("loop", [py("app", crash)]))

    def backing_off() -> dict[str, Any] | None:
        item = agent.pod("loop")
        statuses = (item or {}).get("status", {}).get("containerStatuses", [])
        waiting = statuses[0]["state"].get("waiting", {}) if statuses else {}
        return item if waiting.get("reason") == "CrashLoopBackOff" else None

    item = wait_for(backing_off, 15, "CrashLoopBackOff")
    assert item["status"]["phase"] == "Running"
    assert item["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 3


def test_manifest_dir_created_after_start_is_watched_long_before_the_relist() -> None:
    """With a 60 s relist, a pod in a directory made after start-up must come from inotify."""
    with agent_session([*FAST_BACKOFF, "--file-check-frequency", "60s"]) as make:
        agent = make()
        agent.manifests.rmdir()
        agent.start()
        wait_for(lambda: agent.get("/pods")["items"] == [], 5, "an empty first listing")
        agent.manifests.mkdir()
        created = time.monotonic()
        agent.write_manifest("late.json", manifest("late", [py("app", SLEEP)]))
        wait_for(lambda: agent.pod("late"), 10, "the pod from the late directory")
        assert time.monotonic() - created < 10


def test_an_agent_restart_keeps_the_crash_loop_backed_off() -> None:
    """kubelet forgets back-off when it restarts, and every crash-looping container is restarted
    at once; nodelet reads its windows back from the run dir. With windows of 4 s, 8 s, ...: two
    restarts open an 8 s window; an agent restarted inside it must wait for it to close, not
    restart the container at once (and not much later either)."""
    args = ["--crashloop-backoff-initial", "4s", "--crashloop-backoff-max", "60s"]
    with agent_session(args) as factory:
        agent = factory()
        agent.start()
        agent.write_manifest("loop.json", manifest("loop", [py("c", "import sys; sys.exit(1)")]))

        wait_for(lambda: restarts_of(agent) == 2, 15, "the second restart (after the 4 s window)")
        # The second run crashes at once; the third waits out the 8 s window from then.
        wait_for(
            lambda: (
                (s := agent.container_status("loop", "c"))
                and s["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"
                and s
            ),
            10,
            "back-off after the second restart",
        )
        crashed = time.time()
        agent.signal(signal.SIGTERM)
        restarted = factory()
        restarted.start()
        assert restarts_of(restarted) == 2
        time.sleep(max(0.0, crashed + 3.0 - time.time()))
        assert restarts_of(restarted) == 2, "restarted inside the back-off window"
        wait_for(lambda: restarts_of(restarted) >= 3, 12, "the restart once the window closed")
        took = time.time() - crashed
        assert 6.0 <= took <= 11.0, f"third restart {took:.1f}s after the crash (window 8 s)"


def restarts_of(agent: Agent) -> int:
    status = agent.container_status("loop", "c") or {}
    return int(status.get("restartCount", -1))


def test_active_deadline_stops_the_pod_and_reports_it_failed(agent: Agent) -> None:
    mark = marker("deadline")
    text = manifest("deadline", [py("app", SLEEP, mark)], activeDeadlineSeconds=2)
    agent.write_manifest("deadline.json", text)
    running(agent, "deadline")
    pid = process_with(mark)
    started = time.time()

    def failed() -> dict[str, Any] | None:
        item = agent.pod("deadline")
        return item if item and item["status"].get("phase") == "Failed" else None

    item = wait_for(failed, 10, "phase Failed", interval=0.05)
    took = time.time() - started
    assert 0.5 <= took <= 4.5, took  # start time has second precision: up to 1 s early
    assert item["status"]["reason"] == "DeadlineExceeded"
    assert "longer than the specified deadline" in item["status"]["message"]
    wait_for(lambda: process_gone(pid), 5, "the container stopped")
    time.sleep(2)
    later = agent.pod("deadline")
    assert later is not None and later["status"]["phase"] == "Failed"
    statuses = later["status"]["containerStatuses"]
    assert statuses[0]["restartCount"] == 0 and "running" not in statuses[0]["state"]


def test_fallback_to_logs_on_error_is_the_termination_message(agent: Agent) -> None:
    script = "import sys; print('first'); print('the cause', flush=True); sys.exit(3)"
    failing = py("app", script, terminationMessagePolicy="FallbackToLogsOnError")
    quiet = py("ok", "print('fine')", terminationMessagePolicy="FallbackToLogsOnError")
    text = manifest("fallback", [failing, quiet], restartPolicy="Never")
    agent.write_manifest("fallback.json", text)

    def terminated(name: str) -> dict[str, Any] | None:
        state = (agent.container_status("fallback", name) or {}).get("state") or {}
        found: dict[str, Any] | None = state.get("terminated")
        return found

    failed = wait_for(lambda: terminated("app"), 15, "app terminated")
    assert failed["exitCode"] == 3
    assert failed.get("message") == "first\nthe cause\n", failed
    succeeded = wait_for(lambda: terminated("ok"), 15, "ok terminated")
    assert "message" not in succeeded  # only a failure takes the logs
