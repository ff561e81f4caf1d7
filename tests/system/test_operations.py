"""What a node operator relies on: broken manifests stay harmless and visible, the CLI tells
the truth, and pods whose manifest vanished while the agent was down are cleaned up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.agentharness import NODE, Agent, process_gone, wait_for
from tests.badmanifests import BAD_MANIFESTS

pytestmark = pytest.mark.system

SLEEPER = (  # the host pid: the container has its own PID namespace, /proc is the host's
    "import os, time; print('pid=%s' % os.readlink('/proc/self'), flush=True); time.sleep(3600)"
)


def good_pod(name: str, script: str = SLEEPER) -> str:
    container = {"name": "app", "image": "host", "command": ["python3", "-c", script]}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [container], "terminationGracePeriodSeconds": 2}}  # fmt: skip
    return json.dumps(pod)


def nodelet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodelet", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_manifests_are_rejected_one_by_one_while_a_good_pod_runs(agent: Agent) -> None:
    assert len(BAD_MANIFESTS) >= 30
    agent.write_manifest("good.yaml", good_pod("good"))
    pod = wait_for(lambda: agent.running("good"), 20, "good pod running")
    pid = int(agent.log_value(pod, "app", "pid"))
    for bad in BAD_MANIFESTS:
        bad.create(agent.manifests)

    def all_rejected() -> dict[str, list[str]] | None:
        found = {item["path"]: item["errors"] for item in agent.get("/rejected")["items"]}
        wanted = {str(agent.manifests / bad.filename) for bad in BAD_MANIFESTS}
        return found if wanted <= set(found) else None

    rejected = wait_for(all_rejected, 30, "every bad manifest rejected")
    for bad in BAD_MANIFESTS:
        errors = rejected[str(agent.manifests / bad.filename)]
        assert any(bad.expected in e for e in errors), (bad.filename, errors)
        assert all(e.startswith(str(agent.manifests / bad.filename)) for e in errors)
    assert agent.alive() and agent.healthy()
    assert not process_gone(pid)
    status = agent.container_status("good", "app")
    assert status is not None and status["restartCount"] == 0 and "running" in status["state"]
    assert [i["metadata"]["name"] for i in agent.get("/pods")["items"]] == [f"good-{NODE}"]


def test_manifest_removed_while_agent_down_is_cleaned_up(agents: Callable[[], Agent]) -> None:
    first = agents()
    first.start()
    path = first.write_manifest("gone.yaml", good_pod("gone"))
    pod = wait_for(lambda: first.running("gone"), 20, "pod running")
    pid = int(first.log_value(pod, "app", "pid"))
    first.signal(signal.SIGKILL)
    assert not process_gone(pid)  # pods outlive the agent
    path.unlink()
    second = agents()
    second.start()
    run_dir = second.run_dir / "pods" / pod["metadata"]["uid"]
    wait_for(lambda: process_gone(pid) and not run_dir.exists(), 30, "orphan pod removed")


def test_validate_reports_every_error_and_exit_code(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(good_pod("fine"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\n"
        "spec:\n  containers:\n  - {name: a, image: host, comand: [x]}\n"
    )
    ok = nodelet("validate", str(good), "--hostname-override", NODE)
    assert ok.returncode == 0, ok.stderr
    assert f"pod default/fine-{NODE}" in ok.stdout
    result = nodelet("validate", str(good), str(bad))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"{bad}: metadata.name") for line in lines), lines
    assert any("spec.containers[0].comand" in line and "command" in line for line in lines)


def test_pods_and_logs_commands(agent: Agent) -> None:
    script = "import time\nfor i in range(3): print('line', i, flush=True)\ntime.sleep(3600)"
    agent.write_manifest("talk.yaml", good_pod("talk", script))
    (agent.manifests / "broken.yaml").write_text("kind: Pod\napiVersion: v1\nspec: [")
    pod = wait_for(lambda: agent.running("talk"), 20, "talk running")
    wait_for(lambda: len(agent.log_lines(pod, "app")) == 3, 10, "three log lines")
    wait_for(lambda: agent.get("/rejected")["items"], 10, "broken.yaml rejected")

    table = nodelet("pods", "--healthz-port", str(agent.port))
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if f"talk-{NODE}" in line)
    assert row.split()[2:5] == ["1/1", "Running", "0"]
    assert f"REJECTED {agent.manifests / 'broken.yaml'}" in table.stdout

    as_json = json.loads(nodelet("pods", "-o", "json", "--healthz-port", str(agent.port)).stdout)
    assert as_json["pods"]["items"][0]["status"]["phase"] == "Running"

    logs = nodelet("logs", f"talk-{NODE}", "--healthz-port", str(agent.port),
                   "--pod-logs-dir", str(agent.logs))  # fmt: skip
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == ["line 0", "line 1", "line 2"]


def test_agent_sigterm_leaves_pods_running_and_next_agent_adopts(
    agents: Callable[[], Agent],
) -> None:
    first = agents()
    first.start()
    first.write_manifest("keep.yaml", good_pod("keep"))
    pod = wait_for(lambda: first.running("keep"), 20, "pod running")
    pid = int(first.log_value(pod, "app", "pid"))
    first.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert not process_gone(pid)
    second = agents()
    second.start()
    adopted: dict[str, Any] = wait_for(lambda: second.running("keep"), 10, "re-adopted")
    assert adopted["status"]["containerStatuses"][0]["restartCount"] == 0
    assert not process_gone(pid)


def test_ctrl_c_stops_the_agent_quietly_and_leaves_pods_running(
    agents: Callable[[], Agent],
) -> None:
    """A Ctrl-C at `nodelet run` in a terminal is a SIGINT to the whole foreground process
    group: the agent stops as on SIGTERM, its zygote goes without a traceback, the pods stay."""
    agent = agents()
    agent.own_group = True
    agent.start()
    agent.write_manifest("keep.yaml", good_pod("keep"))
    pod = wait_for(lambda: agent.running("keep"), 20, "pod running")
    pid = int(agent.log_value(pod, "app", "pid"))
    assert agent.proc is not None
    os.killpg(agent.proc.pid, signal.SIGINT)
    assert agent.proc.wait(timeout=20) == 0
    log = agent.output.read_text()
    assert "stopping; pods keep running" in log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-2000:]
    assert not process_gone(pid)
