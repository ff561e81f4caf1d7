"""The stats routes' wire formats: the Summary decodes into kubelet's stats/v1alpha1 types (a
strict decoder: unknown fields and missing required ones fail), CPU rates are taken between
samples as cAdvisor does, and /metrics/resource parses as kubelet's Prometheus text.

Pods here have no cgroups (none are needed without root): their figures come from real
processes of this test, as the agent reports pods when cgroups are off."""

# ruff: noqa: N815  (the types' field names are the wire's camelCase names)

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from nodelet.cgroups.summary import StatsSummary, SummaryPaths
from nodelet.model import StaticPod
from nodelet.runtime.api import ContainerRecord, SandboxStatus
from nodelet.server.kubeletstats import (
    StatsView,
    go_float,
    install,
    parse_go_bool,
    render_resource_metrics,
)
from nodelet.util.timefmt import rfc3339

pytestmark = pytest.mark.unit

# -- kubelet's stats/v1alpha1 types (k8s.io/kubelet/pkg/apis/stats/v1alpha1/types.go) -----------
# A field with a default is a pointer or omitempty there; one without is required on the wire.
# metav1.Time is a string, or null when zero (a non-pointer zero Time marshals as null).
Time = str | None


@dataclass
class InterfaceStats:
    name: str
    rxBytes: int | None = None
    rxErrors: int | None = None
    txBytes: int | None = None
    txErrors: int | None = None


@dataclass
class NetworkStats:
    time: Time
    name: str
    rxBytes: int | None = None
    rxErrors: int | None = None
    txBytes: int | None = None
    txErrors: int | None = None
    interfaces: list[InterfaceStats] = field(default_factory=list)


@dataclass
class CPUStats:
    time: Time
    usageNanoCores: int | None = None
    usageCoreNanoSeconds: int | None = None


@dataclass
class MemoryStats:
    time: Time
    availableBytes: int | None = None
    usageBytes: int | None = None
    workingSetBytes: int | None = None
    rssBytes: int | None = None
    pageFaults: int | None = None
    majorPageFaults: int | None = None


@dataclass
class FsStats:
    time: Time
    availableBytes: int | None = None
    capacityBytes: int | None = None
    usedBytes: int | None = None
    inodesFree: int | None = None
    inodes: int | None = None
    inodesUsed: int | None = None


@dataclass
class VolumeStats(FsStats):
    name: str = ""


@dataclass
class RuntimeStats:
    imageFs: FsStats | None = None
    containerFs: FsStats | None = None


@dataclass
class RlimitStats:
    time: Time
    maxpid: int | None = None
    curproc: int | None = None


@dataclass
class ContainerStats:
    name: str
    startTime: Time
    cpu: CPUStats | None = None
    memory: MemoryStats | None = None
    rootfs: FsStats | None = None
    logs: FsStats | None = None


@dataclass
class NodeStats:
    nodeName: str
    startTime: Time
    systemContainers: list[ContainerStats] = field(default_factory=list)
    cpu: CPUStats | None = None
    memory: MemoryStats | None = None
    network: NetworkStats | None = None
    fs: FsStats | None = None
    runtime: RuntimeStats | None = None
    rlimit: RlimitStats | None = None


@dataclass
class PodReference:
    name: str
    namespace: str
    uid: str


@dataclass
class ProcessStats:
    process_count: int | None = None


@dataclass
class PodStats:
    podRef: PodReference
    startTime: Time
    containers: list[ContainerStats]
    cpu: CPUStats | None = None
    memory: MemoryStats | None = None
    network: NetworkStats | None = None
    volume: list[VolumeStats] = field(default_factory=list)
    ephemeral_storage: FsStats | None = None
    process_stats: ProcessStats | None = None


@dataclass
class Summary:
    node: NodeStats
    pods: list[PodStats]


T = TypeVar("T")
WIRE_NAMES = {"ephemeral_storage": "ephemeral-storage"}


def decode(cls: type[T], data: Any, where: str = "summary") -> T:
    """``data`` as ``cls``: every key a field, every required field present, every value of
    its field's type (uint64 counters non-negative)."""
    assert isinstance(data, dict), f"{where}: {data!r} is not an object"
    hints = typing.get_type_hints(cls)
    fields = {WIRE_NAMES.get(f.name, f.name): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(fields)
    assert not unknown, f"{where}: unknown fields {sorted(unknown)}"
    values = {}
    for wire, spec in fields.items():
        required = (
            spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        )
        if wire not in data:
            assert not required, f"{where}: required field {wire} missing"
            continue
        values[spec.name] = _value(hints[spec.name], data[wire], f"{where}.{wire}")
    return cls(**values)


def _value(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            assert type(None) in args, f"{where}: null"
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, value, where)
    if origin is list:
        assert isinstance(value, list), f"{where}: not a list"
        return [_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return decode(hint, value, where)  # type: ignore[arg-type]
    if hint is int:
        assert isinstance(value, int) and not isinstance(value, bool) and value >= 0, where
    else:
        assert isinstance(value, hint), f"{where}: {value!r} is not {hint.__name__}"
    return value


# -- fixtures -----------------------------------------------------------------------------------

BURN = "import time\nend = time.time() + 60\nwhile time.time() < end:\n    pass\n"
HOLD = "import time; time.sleep(60)"


@pytest.fixture
def processes() -> Iterator[tuple[int, int]]:
    """A "holder" that sleeps and a "container" that burns CPU, both real processes."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD])
    burner = subprocess.Popen([sys.executable, "-c", BURN])
    try:
        yield holder.pid, burner.pid
    finally:
        for process in (holder, burner):
            process.kill()
            process.wait()


def pod() -> StaticPod:
    manifest = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web-n", "namespace": "default", "uid": "u1"},
                "spec": {"containers": [{"name": "c", "image": "host"}]}}  # fmt: skip
    return StaticPod("u1", "default", "web-n", "/m/web.yaml", manifest)


def status(started: float) -> dict[str, Any]:
    running = {"running": {"startedAt": rfc3339(started)}}
    return {"startTime": rfc3339(started),
            "containerStatuses": [{"name": "c", "restartCount": 0, "state": running}]}  # fmt: skip


def sandbox(holder: int, container: int, started: float) -> SandboxStatus:
    run = ContainerRecord("c", 0, container, started)
    return SandboxStatus("u1", True, holder, started, containers=(run,))


def paths(tmp_path: Path) -> SummaryPaths:
    logs = tmp_path / "logs" / "default_web-n_u1" / "c"
    logs.mkdir(parents=True)
    (logs / "0.log").write_bytes(b"x" * 10000)
    volume = tmp_path / "root" / "pods" / "u1" / "volumes" / "kubernetes.io~empty-dir" / "scratch"
    volume.mkdir(parents=True)
    (volume / "data").write_bytes(b"y" * 50000)
    return SummaryPaths(tmp_path / "root", tmp_path / "logs", tmp_path / "root" / "pods")


# -- the Summary --------------------------------------------------------------------------------


def test_summary_decodes_into_kubelets_types(processes: tuple[int, int], tmp_path: Path) -> None:
    holder, burner = processes
    started = time.time()
    summary = StatsSummary("nlt-node", min_window=0.2)
    sandboxes = {"u1": sandbox(holder, burner, started)}
    where = paths(tmp_path)
    summary.build(None, [(pod(), status(started))], sandboxes=sandboxes, paths=where)
    time.sleep(0.5)
    data = summary.build(None, [(pod(), status(started))], sandboxes=sandboxes, paths=where)

    decoded = decode(Summary, data)
    assert decoded.node.nodeName == "nlt-node"
    assert decoded.node.cpu and decoded.node.cpu.usageNanoCores is not None
    assert decoded.node.memory and decoded.node.memory.workingSetBytes
    assert decoded.node.rlimit and decoded.node.rlimit.maxpid and decoded.node.rlimit.curproc
    assert decoded.node.fs and decoded.node.fs.capacityBytes
    (item,) = decoded.pods
    assert item.podRef == PodReference("web-n", "default", "u1")
    (container,) = item.containers
    assert container.cpu and container.memory and container.logs
    # The burner runs flat out: near one core over the half second, and never more than two.
    assert container.cpu.usageNanoCores is not None
    assert 0.3e9 <= container.cpu.usageNanoCores <= 2e9, container.cpu
    assert container.memory.workingSetBytes and container.memory.rssBytes
    assert container.logs.usedBytes is not None and container.logs.usedBytes >= 10000
    assert item.process_stats == ProcessStats(2)  # the holder and the burner
    (volume,) = item.volume
    assert volume.name == "scratch" and volume.usedBytes and volume.usedBytes >= 50000
    assert item.ephemeral_storage and item.ephemeral_storage.usedBytes
    assert item.ephemeral_storage.usedBytes >= 60000


def test_only_cpu_and_memory_leaves_the_rest_out(processes: tuple[int, int]) -> None:
    holder, burner = processes
    started = time.time()
    data = StatsSummary("nlt-node").build(
        None,
        [(pod(), status(started))],
        sandboxes={"u1": sandbox(holder, burner, started)},
        only_cpu_and_memory=True,
    )
    decode(Summary, data)
    assert set(data["node"]) == {"nodeName", "startTime", "cpu", "memory"}
    (item,) = data["pods"]
    assert set(item) == {"podRef", "startTime", "containers", "cpu", "memory"}
    assert set(item["containers"][0]) == {"name", "startTime", "cpu", "memory"}


def test_the_decoder_refuses_what_kubelets_types_do_not_have() -> None:
    good = {"node": {"nodeName": "n", "startTime": None}, "pods": []}
    decode(Summary, good)
    with pytest.raises(AssertionError, match="unknown fields"):
        decode(Summary, {**good, "extra": 1})
    with pytest.raises(AssertionError, match="required field nodeName"):
        decode(Summary, {"node": {"startTime": None}, "pods": []})
    with pytest.raises(AssertionError, match=r"cpu\.usageNanoCores"):
        decode(NodeStats, {"nodeName": "n", "startTime": None,
                           "cpu": {"time": None, "usageNanoCores": -1}}, "node")  # fmt: skip


# -- rates --------------------------------------------------------------------------------------


def test_rates_are_taken_between_samples_a_window_apart() -> None:
    summary = StatsSummary("n", min_window=1.0)
    seen: set[tuple[str, str]] = set()
    key = ("u1", "c/0")
    assert "usageNanoCores" not in summary.cpu(key, 5_000_000_000, 100.0, seen)  # first sample
    # 1.5 s of CPU in 2 s: 0.75 cores.
    assert summary.cpu(key, 6_500_000_000, 102.0, seen)["usageNanoCores"] == 750_000_000
    # A second client 0.1 s later gets the same rate, and the kept sample stays the older one.
    assert summary.cpu(key, 6_600_000_000, 102.1, seen)["usageNanoCores"] == 750_000_000
    # 1 s after the kept sample (102.0): 0.5 s of CPU -> 0.5 cores.
    again = summary.cpu(key, 7_000_000_000, 103.0, seen)
    assert again["usageNanoCores"] == 500_000_000
    assert again["usageCoreNanoSeconds"] == 7_000_000_000
    # The counter went back (a new cgroup under the same key): no rate until the next sample.
    assert "usageNanoCores" not in summary.cpu(key, 1_000, 105.0, seen)
    assert summary.cpu(key, 1_000_001_000, 107.0, seen)["usageNanoCores"] == 500_000_000


def test_samples_of_gone_pods_are_forgotten(processes: tuple[int, int]) -> None:
    holder, burner = processes
    started = time.time()
    clock = iter([1000.0, 1010.0, 1020.0])
    summary = StatsSummary("n", clock=lambda: next(clock))
    sandboxes = {"u1": sandbox(holder, burner, started)}
    summary.build(None, [(pod(), status(started))], sandboxes=sandboxes)
    summary.build(None, [])  # the pod is gone: its samples go
    data = summary.build(None, [(pod(), status(started))], sandboxes=sandboxes)
    assert "usageNanoCores" not in data["pods"][0]["containers"][0]["cpu"]
    assert "usageNanoCores" in data["node"]["cpu"]


# -- /metrics/resource --------------------------------------------------------------------------


def test_resource_metrics_are_kubelets_prometheus_text(processes: tuple[int, int]) -> None:
    holder, burner = processes
    started = time.time() - 30
    data = StatsSummary("n").build(
        None,
        [(pod(), status(started))],
        sandboxes={"u1": sandbox(holder, burner, started)},
        only_cpu_and_memory=True,
    )
    text = render_resource_metrics(data)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert list(families) == sorted(families)
    assert set(families) == {
        "container_cpu_usage_seconds", "container_memory_working_set_bytes",
        "container_start_time_seconds", "node_cpu_usage_seconds",
        "node_memory_working_set_bytes", "pod_cpu_usage_seconds", "pod_memory_working_set_bytes",
        "resource_scrape_error", "scrape_error",
    }  # fmt: skip
    (cpu,) = families["container_cpu_usage_seconds"].samples
    assert cpu.labels == {"container": "c", "pod": "web-n", "namespace": "default"}
    container = data["pods"][0]["containers"][0]
    assert cpu.value == pytest.approx(container["cpu"]["usageCoreNanoSeconds"] / 1e9)
    assert cpu.timestamp is not None and abs(float(cpu.timestamp) - time.time()) < 5
    (start,) = families["container_start_time_seconds"].samples
    assert start.value == int(started)
    assert families["resource_scrape_error"].samples[0].value == 0
    assert (
        'container_cpu_usage_seconds_total{container="c",namespace="default",pod="web-n"}' in text
    )
    assert "# HELP node_memory_working_set_bytes [STABLE] Current working set" in text


def test_a_failed_scrape_reports_only_the_error() -> None:
    text = render_resource_metrics(None)
    assert [f.name for f in text_string_to_metric_families(text)] == [
        "resource_scrape_error",
        "scrape_error",
    ]
    assert "resource_scrape_error 1\n" in text


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.0, "0"), (1.0, "1"), (123.5, "123.5"), (999999.0, "999999"), (1e6, "1e+06"),
     (48234496.0, "4.8234496e+07"), (0.0001, "0.0001"), (0.00001, "1e-05"),
     (16630.21, "16630.21"), (-2.5, "-2.5"), (2.5e-07, "2.5e-07")],
)  # fmt: skip
def test_floats_are_written_as_go_writes_them(value: float, text: str) -> None:
    assert go_float(value) == text


def test_go_booleans() -> None:
    assert [parse_go_bool(t) for t in ("1", "t", "True", "0", "F", "false")] == [
        True, True, True, False, False, False]  # fmt: skip
    assert parse_go_bool("yes") is None and parse_go_bool("") is None


# -- the routes ---------------------------------------------------------------------------------


async def test_routes_answer_as_kubelet(processes: tuple[int, int], tmp_path: Path) -> None:
    holder, burner = processes
    started = time.time()
    view = StatsView(
        node_name="nlt-node",
        paths=paths(tmp_path),
        summary=StatsSummary("nlt-node"),
        pods=lambda: [(pod(), status(started))],
        sandboxes=lambda: [sandbox(holder, burner, started)],
        cgroups=lambda: None,
    )
    app = web.Application()
    install(app, view)
    async with TestClient(TestServer(app)) as client:
        full = await client.get("/stats/summary")
        assert full.status == 200 and full.content_type == "application/json"
        assert decode(Summary, await full.json()).node.fs is not None
        short = await client.post("/stats/summary", data={"only_cpu_and_memory": "true"})
        assert "fs" not in (await short.json())["node"]
        bad = await client.get("/stats/summary?only_cpu_and_memory=maybe")
        assert bad.status == 500
        assert await bad.text() == (
            'Internal Error: strconv.ParseBool: parsing "maybe": invalid syntax'
        )
        metrics = await client.get("/metrics/resource")
        assert metrics.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "pod_memory_working_set_bytes{" in await metrics.text()
        for path in ("/spec/", "/spec"):
            spec = await (await client.get(path)).json()
            assert spec["num_cores"] >= 1 and spec["memory_capacity"] > 0
            assert spec["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
