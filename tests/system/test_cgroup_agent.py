"""Resources through the real agent on this machine's cgroup v1 hierarchies: limits land in the
container's own cgroup before it runs, requests become shares, an OOM kill is reported as
OOMKilled (read from the kernel's counter, not guessed from 137), the QoS class is kubelet's,
and a removed pod leaves no cgroup behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agentharness import Agent, agent_session, wait_for
from tests.system.conftest import FAST_BACKOFF

pytestmark = pytest.mark.system

MOUNTS = Path("/sys/fs/cgroup")
HIERARCHIES = ("cpu", "memory", "pids", "cpuacct")
SLEEP = "import os, time; print('pid=' + os.readlink('/proc/self'), flush=True); time.sleep(3600)"
HOG = (
    "import os, time\n"
    "print('pid=' + os.readlink('/proc/self'), flush=True)\n"
    "block = bytearray(128 << 20)\n"  # 128 MiB, touched: far over a 32 MiB limit
    "for i in range(0, len(block), 4096):\n"
    "    block[i] = 1\n"
    "time.sleep(3600)\n"
)


@pytest.fixture
def agent(cgroup_root: str) -> Iterator[Agent]:
    with agent_session([*FAST_BACKOFF, "--cgroup-root", cgroup_root]) as factory:
        first = factory()
        first.start()
        yield first


def pod(name: str, code: str, resources: dict[str, Any]) -> str:
    container = {"name": "c", "image": "host", "command": ["python3", "-c", code],
                 "resources": resources}  # fmt: skip
    spec = {"terminationGracePeriodSeconds": 1, "containers": [container]}
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                       "spec": spec})  # fmt: skip


def cgroup_of(pid: int, hierarchy: str) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if hierarchy in controllers.split(","):
            return MOUNTS / hierarchy / path.lstrip("/")
    raise AssertionError(f"{pid} has no {hierarchy} cgroup")


def read(path: Path) -> str:
    return path.read_text().strip()


def test_limits_and_requests_land_in_the_containers_own_cgroup(
    agent: Agent, cgroup_root: str
) -> None:
    resources = {"requests": {"cpu": "100m", "memory": "64Mi"},
                 "limits": {"cpu": "200m", "memory": "256Mi"}}  # fmt: skip
    agent.write_manifest("limited.json", pod("limited", SLEEP, resources))
    item = wait_for(lambda: agent.running("limited"), 20, "running")
    pid = int(agent.log_value(item, "c", "pid"))
    uid = item["metadata"]["uid"]
    cpu, memory = cgroup_of(pid, "cpu"), cgroup_of(pid, "memory")
    expected = (
        MOUNTS / "cpu" / cgroup_root.lstrip("/") / "kubepods" / "burstable" / f"pod{uid}" / "c"
    )
    assert cpu == expected
    assert read(cpu / "cpu.cfs_quota_us") == "20000" and read(cpu / "cpu.cfs_period_us") == "100000"
    assert read(cpu / "cpu.shares") == "102"  # 100m: 100 * 1024 / 1000
    assert read(memory / "memory.limit_in_bytes") == str(256 << 20)
    assert item["status"]["qosClass"] == "Burstable"
    # The pod level: the holder is there, with the pod's sums.
    assert read(cpu.parent / "cpu.cfs_quota_us") == "20000"


def test_qos_classes_are_kubelets(agent: Agent) -> None:
    guaranteed = {"limits": {"cpu": "100m", "memory": "64Mi"}}
    agent.write_manifest("g.json", pod("g", SLEEP, guaranteed))
    agent.write_manifest("b.json", pod("b", SLEEP, {}))
    g = wait_for(lambda: agent.running("g"), 20, "g running")
    b = wait_for(lambda: agent.running("b"), 20, "b running")
    assert g["status"]["qosClass"] == "Guaranteed"
    assert b["status"]["qosClass"] == "BestEffort"
    gpid = int(agent.log_value(g, "c", "pid"))
    assert cgroup_of(gpid, "memory").parent.parent.name == "kubepods"  # no QoS level
    bpid = int(agent.log_value(b, "c", "pid"))
    assert cgroup_of(bpid, "cpu").parent.parent.name == "besteffort"
    assert read(cgroup_of(bpid, "cpu") / "cpu.shares") == "2"


def test_an_oom_kill_is_reported_as_oomkilled_and_restarted(agent: Agent) -> None:
    agent.write_manifest("hog.json", pod("hog", HOG, {"limits": {"memory": "32Mi"}}))

    def oom_killed() -> dict[str, Any] | None:
        status = agent.container_status("hog", "c") or {}
        for key in ("state", "lastState"):
            terminated = (status.get(key) or {}).get("terminated")
            if terminated and terminated.get("reason") == "OOMKilled":
                return status
        return None

    status = wait_for(oom_killed, 20, "OOMKilled")
    terminated = (status["lastState"] or status["state"])["terminated"]
    assert terminated["exitCode"] == 137
    wait_for(
        lambda: (agent.container_status("hog", "c") or {}).get("restartCount", 0) >= 1,
        20,
        "restarted",
    )


def test_a_sigkilled_container_is_not_called_oomkilled(agent: Agent) -> None:
    """Exit 137 alone is not an OOM kill: the kernel's counter decides."""
    agent.write_manifest("killed.json", pod("killed", SLEEP, {"limits": {"memory": "64Mi"}}))
    item = wait_for(lambda: agent.running("killed"), 20, "running")
    os.kill(int(agent.log_value(item, "c", "pid")), signal.SIGKILL)
    status = wait_for(
        lambda: (
            (s := agent.container_status("killed", "c")) and s.get("restartCount", 0) >= 1 and s
        ),
        20,
        "restarted",
    )
    assert status["lastState"]["terminated"]["exitCode"] == 137
    assert status["lastState"]["terminated"]["reason"] == "Error"


def test_nothing_of_a_removed_pods_cgroups_remains(agent: Agent, cgroup_root: str) -> None:
    agent.write_manifest("gone.json", pod("gone", SLEEP, {"limits": {"memory": "64Mi"}}))
    item = wait_for(lambda: agent.running("gone"), 20, "running")
    uid = item["metadata"]["uid"]
    (agent.manifests / "gone.json").unlink()

    def leftovers() -> list[Path]:
        return [
            path
            for hierarchy in HIERARCHIES
            for path in (MOUNTS / hierarchy / cgroup_root.lstrip("/")).rglob(f"pod{uid}")
        ]

    assert leftovers()  # there while it runs
    # The 1 s grace (its PID 1 ignores SIGTERM), then the clean-up.
    wait_for(lambda: not leftovers(), 8, "every cgroup of the pod removed", interval=0.1)


BUSY = (
    "import os, time\n"
    "print('pid=' + os.readlink('/proc/self'), flush=True)\n"
    "block = bytearray(48 << 20)\n"
    "for i in range(0, len(block), 4096):\n"
    "    block[i] = 1\n"
    "while True:\n"
    "    pass\n"
)


def test_usage_stats_come_from_the_cgroups(agent: Agent) -> None:
    """/stats/summary in kubelet's shape, and nodelet pods -o wide: a busy container shows
    about a core (limited to 500m here) and its 48 MiB."""
    resources = {"limits": {"cpu": "500m", "memory": "128Mi"}}
    agent.write_manifest("busy.json", pod("busy", BUSY, resources))
    item = wait_for(lambda: agent.running("busy"), 20, "running")
    uid = item["metadata"]["uid"]
    agent.get("/stats/summary")  # the first CPU sample
    time.sleep(2)
    summary = agent.get("/stats/summary")
    assert summary["node"]["nodeName"] == "nlt-node"
    entry = next(p for p in summary["pods"] if p["podRef"]["uid"] == uid)
    assert entry["podRef"] == {"name": "busy-nlt-node", "namespace": "default", "uid": uid}
    container = entry["containers"][0]
    assert container["name"] == "c"
    cores = container["cpu"]["usageNanoCores"] / 1e9
    # The 500m quota caps it; a busy 2-core machine may give it less, never none.
    assert 0.2 <= cores <= 0.6, cores
    working = container["memory"]["workingSetBytes"]
    assert 40 << 20 <= working <= 100 << 20, working
    assert entry["process_stats"]["process_count"] >= 1
    assert entry["cpu"]["usageCoreNanoSeconds"] >= container["cpu"]["usageCoreNanoSeconds"]
    # The CLI's rate covers the time since the summary above: make it 10 CFS periods long, so
    # the 100 ms quota periods average out.
    time.sleep(1)
    table = subprocess.run(
        [sys.executable, "-m", "nodelet", "pods", "-o", "wide", "--run-dir", str(agent.run_dir)],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    header, row = (
        table.splitlines()[0].split(),
        next(ln for ln in table.splitlines() if "busy-nlt-node" in ln).split(),
    )
    cpu = row[header.index("CPU(cores)")]
    memory = row[header.index("MEMORY(bytes)")]
    assert cpu.endswith("m") and 200 <= int(cpu[:-1]) <= 600, table
    assert memory.endswith("Mi") and 40 <= int(memory[:-2]) <= 100, table


def test_an_exec_probe_runs_in_the_containers_cgroup(agent: Agent, tmp_path: Path) -> None:
    """The probe's own process writes where it finds itself: the container's cgroup (as
    ``runc exec`` joins it), not the agent's."""
    seen = tmp_path / "probe-cgroup"
    probe = {"exec": {"command": ["sh", "-c", f"cat /proc/self/cgroup > {seen}"]},
             "periodSeconds": 1}  # fmt: skip
    container = {"name": "c", "image": "host", "command": ["python3", "-c", SLEEP],
                 "readinessProbe": probe}  # fmt: skip
    spec = {"terminationGracePeriodSeconds": 1, "containers": [container]}
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probed"}, "spec": spec}
    agent.write_manifest("probed.json", json.dumps(manifest))
    item = wait_for(lambda: agent.running("probed"), 20, "running")
    text = wait_for(lambda: seen.read_text() if seen.exists() else None, 10, "the probe's cgroups")
    memory = next(line for line in text.splitlines() if ":memory:" in line)
    assert memory.endswith(f"/pod{item['metadata']['uid']}/c"), memory
