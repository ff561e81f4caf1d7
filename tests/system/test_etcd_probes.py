"""kubeadm's etcd manifest through the real agent, running Debian's own ``/usr/bin/etcd``.

The manifest has kubeadm's shape (``cmd/kubeadm/app/phases/etcd/local.go``): hostNetwork,
priorityClassName system-node-critical, resources.requests, the data dir on a hostPath, and a
startupProbe and a livenessProbe that GET ``/health?exclude=NOSPACE&serializable=true`` on the
metrics listener at 127.0.0.1, and ``securityContext.seccompProfile: RuntimeDefault``. Adapted
for a test: loopback and free ports, plain http (no certificates), kubeadm's probe values
shortened.

``kill -STOP`` of etcd hangs its HTTP listener: the liveness probe must restart it after
failureThreshold x period, and the restarted etcd must find its data on the hostPath."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.agentharness import (
    Agent,
    agent_session,
    free_port,
    process_gone,
    wait_for,
)
from tests.system.conftest import FAST_BACKOFF

pytestmark = pytest.mark.system

ETCD = Path("/usr/bin/etcd")
HEALTH = "/health?exclude=NOSPACE&serializable=true"
LIVENESS_PERIOD = 2
LIVENESS_FAILURES = 3
LIVENESS_TIMEOUT = 1
GRACE = 1
CGROUPS = Path("/sys/fs/cgroup")


@dataclass
class Etcd:
    name: str  # the member name, --name=: unique, so its process is found by its cmdline
    client: int
    peer: int
    metrics: int
    data: Path


@pytest.fixture
def etcd() -> Iterator[Etcd]:
    base = Path(tempfile.mkdtemp(prefix="nlt-"))
    member = Etcd(f"nlt-etcd-{secrets.token_hex(4)}", free_port(), free_port(), free_port(),
                  base / "etcd")  # fmt: skip
    try:
        yield member
    finally:
        # Whatever went wrong, no etcd of ours outlives the test (a stopped one takes SIGKILL).
        for pid in etcd_pids(member):
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def agent(cgroup_root: str) -> Iterator[Agent]:
    with agent_session([*FAST_BACKOFF, "--cgroup-root", cgroup_root]) as factory:
        first = factory()
        first.start()
        yield first


def manifest(member: Etcd) -> str:
    """kubeadm's etcd.yaml, field for field where nodelet can run it."""
    client = f"http://127.0.0.1:{member.client}"
    peer = f"http://127.0.0.1:{member.peer}"

    def probe(**values: int) -> dict[str, Any]:
        get = {"host": "127.0.0.1", "path": HEALTH, "port": member.metrics, "scheme": "HTTP"}
        return {"httpGet": get, **values}

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "annotations": {"kubeadm.kubernetes.io/etcd.advertise-client-urls": client},
            "creationTimestamp": None,
            "labels": {"component": "etcd", "tier": "control-plane"},
            "name": "etcd",
            "namespace": "kube-system",
        },
        "spec": {
            "containers": [
                {
                    "command": [
                        str(ETCD),
                        f"--advertise-client-urls={client}",
                        f"--data-dir={member.data}",
                        "--experimental-initial-corrupt-check=true",
                        "--experimental-watch-progress-notify-interval=5s",
                        f"--initial-advertise-peer-urls={peer}",
                        f"--initial-cluster={member.name}={peer}",
                        f"--listen-client-urls={client}",
                        f"--listen-metrics-urls=http://127.0.0.1:{member.metrics}",
                        f"--listen-peer-urls={peer}",
                        f"--name={member.name}",
                        "--snapshot-count=10000",
                    ],
                    "image": "host",
                    "imagePullPolicy": "IfNotPresent",
                    "livenessProbe": probe(
                        failureThreshold=LIVENESS_FAILURES,
                        initialDelaySeconds=0,
                        periodSeconds=LIVENESS_PERIOD,
                        timeoutSeconds=LIVENESS_TIMEOUT,
                    ),
                    "name": "etcd",
                    "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}},
                    "startupProbe": probe(
                        failureThreshold=24,
                        initialDelaySeconds=0,
                        periodSeconds=1,
                        timeoutSeconds=1,
                    ),
                    "volumeMounts": [{"mountPath": str(member.data), "name": "etcd-data"}],
                }
            ],
            "hostNetwork": True,
            "priority": 2000001000,
            "priorityClassName": "system-node-critical",
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "terminationGracePeriodSeconds": GRACE,
            "volumes": [
                {
                    "hostPath": {"path": str(member.data), "type": "DirectoryOrCreate"},
                    "name": "etcd-data",
                }
            ],
        },
        "status": {},
    }
    return yaml.safe_dump(pod, sort_keys=False)


def etcd_pids(member: Etcd) -> list[int]:
    """Live etcd processes of this member (a zombie nobody reaped yet does not count)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if f"--name={member.name}" in (proc.info["cmdline"] or []) and not process_gone(proc.pid):
            found.append(proc.pid)
    return found


def one_pid(member: Etcd) -> int | None:
    pids = etcd_pids(member)
    assert len(pids) <= 1, f"more than one etcd {member.name}: {pids}"
    return pids[0] if pids else None


def http(url: str, body: dict[str, Any] | None = None, timeout: float = 2) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def healthy(member: Etcd) -> bool:
    try:
        status, body = http(f"http://127.0.0.1:{member.metrics}{HEALTH}")
    except (OSError, ValueError):
        return False
    return status == 200 and body.get("health") == "true"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def put(member: Etcd, key: str, value: str) -> None:
    """etcd 3.4's gRPC gateway (``/v3``; 3.4 still serves ``/v3beta`` too): no etcdctl needed."""
    url = f"http://127.0.0.1:{member.client}/v3/kv/put"
    status, body = http(url, {"key": b64(key), "value": b64(value)}, timeout=5)
    assert status == 200 and "header" in body, (status, body)


def get(member: Etcd, key: str) -> str | None:
    url = f"http://127.0.0.1:{member.client}/v3/kv/range"
    status, body = http(url, {"key": b64(key)}, timeout=5)
    assert status == 200, (status, body)
    kvs = body.get("kvs", [])
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def restarts(agent: Agent) -> int:
    return int((agent.container_status("etcd", "etcd") or {}).get("restartCount", -1))


def started_and_ready(agent: Agent) -> dict[str, Any] | None:
    rejected = agent.get("/rejected")["items"]
    assert not rejected, f"the manifest was rejected: {rejected}"
    item = agent.running("etcd", "etcd")
    status = agent.container_status("etcd", "etcd") or {}
    if item is None or status.get("started") is not True or status.get("ready") is not True:
        return None
    conditions = {c["type"]: c["status"] for c in item["status"].get("conditions", [])}
    return status if conditions.get("Ready") == "True" else None


def parse_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_kubeadm_etcd_hung_by_sigstop_is_restarted_by_liveness_with_its_data(
    agent: Agent, etcd: Etcd
) -> None:
    # `make test` installs Debian's etcd (make envtest): missing, it is a failure, not a skip.
    assert ETCD.exists(), "needs Debian's etcd (/usr/bin/etcd): run `make test`"
    agent.write_manifest("etcd.yaml", manifest(etcd))
    status = wait_for(lambda: started_and_ready(agent), 40, "etcd Running, started and ready")
    assert status["restartCount"] == 0
    assert healthy(etcd)
    pod = agent.pod("etcd") or {}
    assert pod["metadata"]["namespace"] == "kube-system"
    # RuntimeDefault seccomp and containerd's default capabilities, on etcd itself.
    proc_status = Path(f"/proc/{one_pid(etcd)}/status").read_text()
    fields = dict(line.split(":", 1) for line in proc_status.splitlines() if ":" in line)
    assert fields["Seccomp"].strip() == "2"
    assert int(fields["CapEff"], 16) == 0xA80425FB
    assert pod["spec"]["priorityClassName"] == "system-node-critical"

    put(etcd, "/registry/nlt/kept", "value-before-the-hang")
    assert get(etcd, "/registry/nlt/kept") == "value-before-the-hang"
    assert (etcd.data / "member" / "wal").is_dir(), "the data dir is not on the hostPath"

    # Healthy: a few liveness periods pass without a restart.
    time.sleep(LIVENESS_PERIOD * (LIVENESS_FAILURES + 1))
    assert restarts(agent) == 0
    assert healthy(etcd)

    hung = wait_for(lambda: one_pid(etcd), 5, f"the etcd process {etcd.name}")
    os.kill(hung, signal.SIGSTOP)
    stopped_wall, stopped = time.time(), time.monotonic()
    wait_for(lambda: restarts(agent) >= 1, 20, "the liveness restart", interval=0.02)
    took = time.monotonic() - stopped
    # The listener hangs (the kernel still accepts connections, nobody answers): each probe
    # fails at its timeout. The first failing probe starts within one period of the stop (the
    # ticker's phase, 0..period), the third failure follows (failureThreshold - 1) periods
    # later and is known at its timeout; then SIGTERM stays pending in a stopped process, so
    # the SIGKILL comes after the grace, then the restart. Lower bound: a failing probe right
    # after the stop plus (failureThreshold - 1) periods = 4 s. Upper bound:
    # failureThreshold x period (phase + the two periods) + one more period (the last probe's
    # timeout, <= period, and scheduling) + grace + 1.5 s for the restart and the status poll
    # = 6 + 2 + 1 + 1.5 = 10.5 s.
    low = LIVENESS_FAILURES * LIVENESS_PERIOD - LIVENESS_PERIOD
    high = LIVENESS_FAILURES * LIVENESS_PERIOD + LIVENESS_PERIOD + GRACE + 1.5
    print(f"kill -STOP -> restartCount 1: {took:.2f} s (allowed {low}..{high})")
    assert low <= took <= high, took
    assert restarts(agent) == 1

    # The stopped process got its SIGKILL: it is gone, not left stopped behind the new one.
    wait_for(lambda: process_gone(hung), 5, f"the stopped etcd {hung} killed")
    status = agent.container_status("etcd", "etcd") or {}
    terminated = status["lastState"]["terminated"]
    assert terminated["exitCode"] == 137, terminated
    assert parse_time(terminated["finishedAt"]) >= stopped_wall - 1, terminated
    assert parse_time(terminated["startedAt"]) <= stopped_wall, terminated

    # The new etcd: started, ready, healthy, and its data survived on the hostPath.
    status = wait_for(lambda: started_and_ready(agent), 30, "the new etcd started and ready")
    assert status["restartCount"] == 1
    fresh = wait_for(lambda: one_pid(etcd), 5, "the new etcd process")
    assert fresh != hung
    wait_for(lambda: healthy(etcd), 10, "the new etcd's /health")
    assert get(etcd, "/registry/nlt/kept") == "value-before-the-hang"
    put(etcd, "/registry/nlt/after", "written-after-the-restart")
    assert get(etcd, "/registry/nlt/after") == "written-after-the-restart"

    # And the healthy new one is left alone.
    time.sleep(LIVENESS_PERIOD * (LIVENESS_FAILURES + 1))
    assert restarts(agent) == 1
    assert one_pid(etcd) == fresh
