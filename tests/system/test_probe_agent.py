"""Probes through the real agent: liveness restarts after exactly failureThreshold failures,
readiness drives Ready both ways, a startup probe gates liveness and restarts on its own, a
hung exec probe is killed at its timeout, and a netns pod's 127.0.0.1 is the pod's own."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.agentharness import Agent, free_port, wait_for

pytestmark = pytest.mark.system

# Answers 200, or 500 once the file argv[2] exists; on 127.0.0.1:argv[1] of its own netns.
SERVER = (
    "import http.server, os, sys\n"
    "port, switch = int(sys.argv[1]), sys.argv[2]\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(500 if os.path.exists(switch) else 200)\n"
    "        self.end_headers()\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', port), H).serve_forever()\n"
)
SLEEP = "import time; time.sleep(3600)"


def pod(name: str, container: dict[str, Any], grace: int = 1) -> str:
    spec = {"terminationGracePeriodSeconds": grace, "containers": [container]}
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                       "spec": spec})  # fmt: skip


def server(port: int, switch: Path, **probes: Any) -> dict[str, Any]:
    return {
        "name": "web",
        "image": "host",
        "command": ["python3", "-c", SERVER, str(port), str(switch)],
        "ports": [{"name": "http", "containerPort": port}],
        **probes,
    }


def http_probe(period: int = 1, failures: int = 3, **extra: Any) -> dict[str, Any]:
    return {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": period,
            "failureThreshold": failures, **extra}  # fmt: skip


def restarts(agent: Agent, name: str) -> int:
    return int((agent.container_status(name, "web") or {}).get("restartCount", -1))


def ready(agent: Agent, name: str) -> bool | None:
    item = agent.pod(name)
    if item is None:
        return None
    conditions = {c["type"]: c["status"] for c in item["status"].get("conditions", [])}
    status = agent.container_status(name, "web") or {}
    return bool(status.get("ready")) and conditions.get("Ready") == "True"


def test_liveness_restarts_after_exactly_failure_threshold_failures(
    agent: Agent, tmp_path: Path
) -> None:
    switch, port = tmp_path / "fail", free_port()
    agent.write_manifest("live.json", pod("live", server(port, switch, livenessProbe=http_probe())))
    wait_for(lambda: agent.running("live"), 20, "live running")
    time.sleep(1.5)  # a few successful probes first
    assert restarts(agent, "live") == 0
    switch.touch()
    failing = time.monotonic()
    wait_for(lambda: restarts(agent, "live") == 1, 15, "the restart", interval=0.02)
    took = time.monotonic() - failing
    # 3 failures 1 s apart: the first within a period of the switch, the kill 2 s later, then
    # the 1 s grace (PID 1 of its namespace ignores SIGTERM).
    assert 2.5 <= took <= 5.0, took
    status = agent.container_status("live", "web") or {}
    assert status["lastState"]["terminated"]["exitCode"] == 137
    switch.unlink()
    time.sleep(4)  # healthy again: no more restarts
    assert restarts(agent, "live") == 1


def test_readiness_drives_ready_both_ways_without_restarts(agent: Agent, tmp_path: Path) -> None:
    switch, port = tmp_path / "unready", free_port()
    probe = http_probe(failures=2, successThreshold=2)
    agent.write_manifest("ready.json", pod("ready", server(port, switch, readinessProbe=probe)))
    wait_for(lambda: agent.running("ready"), 20, "running")
    became = wait_for(lambda: ready(agent, "ready"), 10, "Ready")
    assert became
    switch.touch()
    wait_for(lambda: ready(agent, "ready") is False, 6, "not Ready", interval=0.05)
    switch.unlink()
    wait_for(lambda: ready(agent, "ready"), 6, "Ready again", interval=0.05)
    assert restarts(agent, "ready") == 0


def test_a_readiness_probe_starts_not_ready(agent: Agent, tmp_path: Path) -> None:
    """kubelet's initial readiness is failure: a container whose probe never passes is never
    Ready, though it runs."""
    switch, port = tmp_path / "never", free_port()
    switch.touch()
    container = server(port, switch, readinessProbe=http_probe())
    agent.write_manifest("never.json", pod("never", container))
    wait_for(lambda: agent.running("never"), 20, "running")
    for _ in range(10):
        assert ready(agent, "never") is False
        time.sleep(0.2)


def test_startup_probe_gates_liveness_and_restarts_on_its_own(agent: Agent, tmp_path: Path) -> None:
    liveness_ran = tmp_path / "liveness-ran"
    container = {
        "name": "web",
        "image": "host",
        "command": ["python3", "-c", SLEEP],
        "startupProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1,
                         "failureThreshold": 2},
        "livenessProbe": {"exec": {"command": ["touch", str(liveness_ran)]},
                          "periodSeconds": 1},
    }  # fmt: skip
    agent.write_manifest("slow.json", pod("slow", container))
    wait_for(lambda: agent.running("slow"), 20, "running")
    started = time.monotonic()
    status = agent.container_status("slow", "web") or {}
    assert status.get("started") is False and status.get("ready") is False
    wait_for(lambda: restarts(agent, "slow") >= 1, 10, "restarted by the startup probe")
    assert 1.0 <= time.monotonic() - started <= 5.0
    assert not liveness_ran.exists(), "liveness ran before the startup probe passed"


def test_a_hung_exec_probe_is_killed_at_its_timeout(agent: Agent) -> None:
    mark = f"nlt-hung-{time.monotonic_ns()}"
    container = {
        "name": "web",
        "image": "host",
        "command": ["python3", "-c", SLEEP],
        "readinessProbe": {"exec": {"command": ["python3", "-c", "import time; time.sleep(60)",
                                                mark]},
                           "timeoutSeconds": 1, "periodSeconds": 3},
    }  # fmt: skip
    agent.write_manifest("hung.json", pod("hung", container))
    wait_for(lambda: agent.running("hung"), 20, "running")

    def probe_pids() -> list[int]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if mark in (proc.info["cmdline"] or []):
                found.append(proc.pid)
        return found

    first = wait_for(probe_pids, 5, "the probe process", interval=0.02)
    seen = time.monotonic()

    def left() -> list[Any]:
        out = []
        for pid in set(probe_pids()) & set(first):
            try:
                proc = psutil.Process(pid)
                out.append((pid, proc.status(), proc.ppid(), proc.cmdline()))
            except psutil.Error:
                pass
        return out

    wait_for(lambda: not left(), 5, f"the probe killed {left()}", interval=0.02)
    assert time.monotonic() - seen <= 1.8
    assert ready(agent, "hung") is False


def test_a_probe_on_127_0_0_1_reaches_the_pod_not_the_node(agent: Agent, tmp_path: Path) -> None:
    """The pod has a network namespace of its own: its server on 127.0.0.1 is invisible from
    the node's loopback, so a Ready pod proves the probe went into the pod."""
    switch, port = tmp_path / "unused", free_port()
    probe = {"httpGet": {"host": "127.0.0.1", "port": port, "path": "/"}, "periodSeconds": 1}
    agent.write_manifest("netns.json", pod("netns", server(port, switch, readinessProbe=probe)))
    wait_for(lambda: ready(agent, "netns"), 15, "Ready through the pod's loopback")
    with socket.socket() as sock, pytest.raises(OSError):
        sock.settimeout(1)
        sock.connect(("127.0.0.1", port))  # nothing on the node's own loopback


def etcd(tmp_path: Path, service: str = "") -> dict[str, Any]:
    """Debian's etcd, which serves the standard gRPC health service on its client port."""
    client, peer = free_port(), free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    name = f"nlt-grpc-{time.monotonic_ns()}"
    grpc: dict[str, Any] = {"port": client}
    if service:
        grpc["service"] = service
    return {
        "name": "web",
        "image": "host",
        "command": [
            "/usr/bin/etcd", f"--name={name}", f"--data-dir={tmp_path / name}",
            f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster={name}={peer_url}", "--log-level=error",
        ],
        "readinessProbe": {"grpc": grpc, "periodSeconds": 1},
    }  # fmt: skip


def test_a_grpc_probe_asks_the_standard_health_service(agent: Agent, tmp_path: Path) -> None:
    """etcd in a pod of its own netns, probed on its loopback over plaintext HTTP/2."""
    agent.write_manifest("grpc.json", pod("grpc", etcd(tmp_path)))
    agent.write_manifest("nope.json", pod("nope", etcd(tmp_path, service="no-such-service")))
    wait_for(lambda: ready(agent, "grpc"), 20, "Ready by its gRPC health check")
    wait_for(lambda: agent.running("nope"), 20, "the other etcd running")
    time.sleep(3)  # three periods: an unknown service never answers SERVING
    assert ready(agent, "nope") is False


# Exit 0 only for a process with the container's identity: uid 1000 and no capabilities at all.
CONFINED = (
    "grep -q '^Uid:\\s*1000\\s' /proc/self/status && grep -q '^CapEff:\\s*0*$' /proc/self/status"
)


def test_an_exec_probe_keeps_the_containers_identity_after_an_agent_restart(
    agents: Callable[[], Agent],
) -> None:
    """An exec probe enters the container as runc exec does, with its user and capabilities;
    a container adopted by a restarted agent must get the same, not the agent's root."""
    container = {
        "name": "web",
        "image": "host",
        "command": ["python3", "-c", SLEEP],
        "securityContext": {"runAsUser": 1000, "capabilities": {"drop": ["ALL"]}},
        "readinessProbe": {"exec": {"command": ["sh", "-c", CONFINED]}, "periodSeconds": 1,
                           "failureThreshold": 1},
    }  # fmt: skip
    agent = agents()
    agent.start()
    agent.write_manifest("confined.json", pod("confined", container))
    wait_for(lambda: ready(agent, "confined"), 20, "ready under the first agent")
    agent.signal(signal.SIGKILL)
    restarted = agents()
    restarted.start()
    # Readiness starts False after a restart; the restarted agent's probes must pass to turn
    # it True and keep it so. Run with the agent's identity they fail (failureThreshold 1).
    wait_for(lambda: ready(restarted, "confined"), 10, "ready under the restarted agent")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert ready(restarted, "confined") is True, "a probe of the adopted container failed"
        time.sleep(0.1)
