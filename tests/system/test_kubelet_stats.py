"""kubelet's stats routes over HTTP, against pods of a live agent on this machine's cgroups: a
pod that idles, then burns CPU, allocates memory, writes to its emptyDir and receives traffic
on an interface in its network namespace; every figure moves with the load, within bounds.

The routes are served by a plain aiohttp app in this process, with a ``StatsView`` read from
the live agent's API, its cgroup root and its directories (the agent's own wiring of the
kubelet server is the integrator's)."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from nodelet.cgroups.driver import detect
from nodelet.cgroups.summary import StatsSummary, SummaryPaths
from nodelet.model import StaticPod
from nodelet.runtime.api import ContainerRecord, SandboxStatus
from nodelet.server.kubeletstats import StatsView, install
from nodelet.util.timefmt import parse_rfc3339
from tests.agentharness import NODE, Agent, agent_session, wait_for
from tests.system.conftest import FAST_BACKOFF
from tests.unit.test_kubeletstats import Summary, decode

pytestmark = pytest.mark.system

MiB = 1 << 20
LOAD = (
    "import os, time\n"
    "print('pid=' + os.readlink('/proc/self'), flush=True)\n"
    "while not os.path.exists('/mnt/go'):\n"
    "    time.sleep(0.05)\n"
    "block = bytearray(96 << 20)\n"
    "for i in range(0, len(block), 4096):\n"
    "    block[i] = 1\n"
    "with open('/mnt/data', 'wb') as out:\n"
    "    out.write(os.urandom(8 << 20))\n"
    "print('loaded=1', flush=True)\n"
    "while True:\n"
    "    pass\n"
)


@pytest.fixture
def agent(cgroup_root: str) -> Iterator[Agent]:
    with agent_session([*FAST_BACKOFF, "--cgroup-root", cgroup_root]) as factory:
        first = factory()
        first.start()
        yield first


def manifest() -> str:
    container = {"name": "c", "image": "host", "command": ["python3", "-c", LOAD],
                 "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
                 "volumeMounts": [{"name": "scratch", "mountPath": "/mnt"}]}  # fmt: skip
    spec = {"terminationGracePeriodSeconds": 1, "containers": [container],
            "volumes": [{"name": "scratch", "emptyDir": {}}]}  # fmt: skip
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "load"},
                       "spec": spec})  # fmt: skip


def view_of(agent: Agent, cgroup_root: str, pid: int) -> StatsView:
    """What the integrator's wiring gives the routes, read from the live agent: its pods and
    statuses, the container's pid and its holder (the container's parent), its cgroups."""
    holder = psutil.Process(pid).ppid()

    def pods() -> list[tuple[StaticPod, dict[str, Any] | None]]:
        items = agent.get("/pods")["items"]
        return [(StaticPod(i["metadata"]["uid"], i["metadata"]["namespace"],
                           i["metadata"]["name"], "", i), i["status"]) for i in items]  # fmt: skip

    def sandboxes() -> list[SandboxStatus]:
        (pod, status) = pods()[0]
        started = parse_rfc3339((status or {})["startTime"])
        run = ContainerRecord("c", 0, pid, started)
        return [SandboxStatus(pod.uid, True, holder, started, containers=(run,))]

    driver = detect(Path("/sys/fs/cgroup"), cgroup_root)
    return StatsView(
        node_name=NODE,
        paths=SummaryPaths(agent.root, agent.logs, agent.root / "pods"),
        summary=StatsSummary(NODE),
        pods=pods,
        sandboxes=sandboxes,
        cgroups=lambda: driver,
    )


@contextlib.contextmanager
def veth_into(holder: int) -> Iterator[str]:
    """An ``eth0`` in the holder's network namespace, its peer ``nlt-s<hex>`` here with a /30
    of its own; yields the pod side's address. The peer is deleted even on failure."""
    name = f"nlt-s{secrets.token_hex(4)}"
    net = f"10.211.{secrets.randbelow(256)}"
    run = ["nsenter", "-t", str(holder), "-n", "ip"]
    try:
        subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", "eth0",
                        "netns", str(holder)], check=True)  # fmt: skip
        subprocess.run(["ip", "addr", "add", f"{net}.1/30", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        subprocess.run([*run, "addr", "add", f"{net}.2/30", "dev", "eth0"], check=True)
        subprocess.run([*run, "link", "set", "eth0", "up"], check=True)
        yield f"{net}.2"
    finally:
        subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


def send_udp(address: str, total: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"arp", (address, 9))
        time.sleep(0.5)  # the neighbour is resolved before the burst
        for sent in range(0, total, 1000):
            sock.sendto(b"x" * 1000, (address, 9))
            if sent % 100_000 == 0:
                time.sleep(0.01)


async def sample(client: TestClient[Any, Any], uid: str) -> tuple[dict[str, Any], Any]:
    response = await client.get("/stats/summary")
    assert response.status == 200
    data = await response.json()
    decode(Summary, data)  # every answer is a valid Summary
    (pod,) = [p for p in data["pods"] if p["podRef"]["uid"] == uid]
    return data, pod


async def test_figures_move_with_the_load(agent: Agent, cgroup_root: str) -> None:
    agent.write_manifest("load.json", manifest())
    item = wait_for(lambda: agent.running("load"), 20, "running")
    uid = item["metadata"]["uid"]
    pid = int(agent.log_value(item, "c", "pid"))
    view = view_of(agent, cgroup_root, pid)
    holder = psutil.Process(pid).ppid()
    assert Path(f"/proc/{holder}/ns/net").stat().st_ino != Path("/proc/self/ns/net").stat().st_ino
    app = web.Application()
    install(app, view)
    with veth_into(holder) as address:
        async with TestClient(TestServer(app)) as client:
            await sample(client, uid)
            time.sleep(2)
            _, idle = await sample(client, uid)
            (container,) = idle["containers"]
            assert container["cpu"]["usageNanoCores"] < 0.05e9, container["cpu"]
            assert container["memory"]["workingSetBytes"] < 40 * MiB, container["memory"]
            assert container["memory"]["availableBytes"] > 200 * MiB  # the 256Mi limit
            idle_net = idle["network"]
            assert idle_net["name"] == "eth0"
            volume_idle = idle["volume"][0]
            assert volume_idle["name"] == "scratch" and volume_idle["usedBytes"] < MiB

            scratch = agent.root / "pods" / uid / "volumes" / "kubernetes.io~empty-dir" / "scratch"
            (scratch / "go").touch()
            agent.log_value(item, "c", "loaded")
            send_udp(address, 2_000_000)
            await sample(client, uid)
            time.sleep(2)
            data, busy = await sample(client, uid)

    (container,) = busy["containers"]
    cores = container["cpu"]["usageNanoCores"] / 1e9
    assert 0.2 <= cores <= 0.6, cores  # the 500m quota caps it; a busy machine may give less
    assert 0.2 <= busy["cpu"]["usageNanoCores"] / 1e9 <= 0.65, busy["cpu"]
    memory = container["memory"]
    assert 96 * MiB <= memory["workingSetBytes"] <= 160 * MiB, memory
    assert 96 * MiB <= memory["rssBytes"] <= 160 * MiB, memory
    assert memory["pageFaults"] >= (96 * MiB) // 4096  # every page of the block was touched
    assert busy["memory"]["workingSetBytes"] >= memory["workingSetBytes"]
    received = busy["network"]["rxBytes"] - idle_net["rxBytes"]
    assert 1_500_000 <= received <= 2_500_000, (idle_net, busy["network"])
    assert busy["network"]["interfaces"] == [
        {k: busy["network"][k] for k in ("name", "rxBytes", "rxErrors", "txBytes", "txErrors")}
    ]
    volume = busy["volume"][0]
    assert 8 * MiB <= volume["usedBytes"] <= 9 * MiB, volume
    assert busy["ephemeral-storage"]["usedBytes"] >= volume["usedBytes"]
    assert busy["process_stats"]["process_count"] >= 2  # the holder and the container
    assert container["logs"]["usedBytes"] > 0
    assert data["node"]["memory"]["workingSetBytes"] >= busy["memory"]["workingSetBytes"]


async def test_resource_metrics_follow_the_cgroups(agent: Agent, cgroup_root: str) -> None:
    agent.write_manifest("load.json", manifest())
    item = wait_for(lambda: agent.running("load"), 20, "running")
    uid = item["metadata"]["uid"]
    pid = int(agent.log_value(item, "c", "pid"))
    scratch = agent.root / "pods" / uid / "volumes" / "kubernetes.io~empty-dir" / "scratch"
    (scratch / "go").touch()
    agent.log_value(item, "c", "loaded")
    app = web.Application()
    install(app, view_of(agent, cgroup_root, pid))
    async with TestClient(TestServer(app)) as client:
        first = await (await client.get("/metrics/resource")).text()
        time.sleep(1)
        second = await (await client.get("/metrics/resource")).text()
    labels = {"container": "c", "pod": f"load-{NODE}", "namespace": "default"}

    def value(text: str, family: str) -> float:
        for metric in text_string_to_metric_families(text):
            for s in metric.samples:
                if metric.name == family and s.labels == labels:
                    return float(s.value)
        raise AssertionError(f"no {family}{labels} in:\n{text}")

    burnt = value(second, "container_cpu_usage_seconds") - value(
        first, "container_cpu_usage_seconds"
    )
    assert 0.15 <= burnt <= 0.8, burnt  # about 1 s at the 500m quota
    assert 96 * MiB <= value(second, "container_memory_working_set_bytes") <= 160 * MiB
    started = value(second, "container_start_time_seconds")
    assert abs(started - parse_rfc3339(item["status"]["startTime"])) < 5
