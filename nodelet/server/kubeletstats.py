"""kubelet's stats routes on the kubelet API: ``/stats/summary``, ``/metrics/resource``, ``/spec/``.

``/stats/summary`` is the Summary API (stats/v1alpha1) that metrics-server and ``kubectl top``
read, built by ``nodelet.cgroups.summary``; ``/metrics/resource`` is kubelet's resource
collector over the CPU-and-memory summary, in the Prometheus text format as kubelet's registry
writes it (families sorted by name, labels by name, Go's float format, sample timestamps in ms);
``/spec/`` is the subset of cAdvisor's ``MachineInfo`` that this node can tell truthfully.

Backend reads (pods, statuses, sandboxes) happen on the loop; the file reads run in a thread.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import psutil
from aiohttp import web

from nodelet.cgroups.driver import CgroupDriver
from nodelet.cgroups.summary import IGNORED_INTERFACES, StatsSummary, SummaryPaths
from nodelet.cluster.noderesources import read_system_info
from nodelet.model import StaticPod
from nodelet.runtime.api import SandboxStatus
from nodelet.util.timefmt import parse_rfc3339

Json = dict[str, Any]

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


class StatsBackend(Protocol):
    """What the stats routes need from the agent."""

    @property
    def node_name(self) -> str: ...

    @property
    def paths(self) -> SummaryPaths:
        """Where filesystem figures are measured (root dir, pod logs, pod volumes)."""
        ...

    @property
    def summary(self) -> StatsSummary:
        """The builder whose CPU samples the rates are taken against (shared with the local
        ``/stats/summary``, so two routes never halve each other's windows)."""
        ...

    def pods(self) -> list[tuple[StaticPod, Json | None]]:
        """Desired pods with their latest status (``status.containerStatuses``, ``startTime``)."""
        ...

    def sandboxes(self) -> Iterable[SandboxStatus]:
        """The runtime's latest-seen sandboxes: holder pid (the pod's netns) and container pids."""
        ...

    def cgroups(self) -> CgroupDriver | None:
        """The cgroup driver, or None when cgroups are off."""
        ...


@dataclass(frozen=True)
class StatsView:
    """A ``StatsBackend`` made of the agent's parts (as ``ops.metrics.AgentView``)."""

    node_name: str
    paths: SummaryPaths
    summary: StatsSummary
    pods: Callable[[], list[tuple[StaticPod, Json | None]]]
    sandboxes: Callable[[], Iterable[SandboxStatus]]
    cgroups: Callable[[], CgroupDriver | None]


def install(app: web.Application, backend: StatsBackend) -> None:
    """Add kubelet's stats routes to ``app``; kubelet serves the summary to GET and POST."""
    routes = _Routes(backend)
    app.router.add_route("GET", "/stats/summary", routes.summary)
    app.router.add_route("POST", "/stats/summary", routes.summary)
    app.router.add_get("/metrics/resource", routes.resource_metrics)
    app.router.add_get("/spec", routes.spec)
    app.router.add_get("/spec/", routes.spec)


@dataclass(frozen=True)
class _Routes:
    backend: StatsBackend

    async def summary(self, request: web.Request) -> web.Response:
        values = request.query.getall("only_cpu_and_memory", [])
        if request.method == "POST":
            form = (await request.post()).getall("only_cpu_and_memory", [])
            values = [*values, *(value for value in form if isinstance(value, str))]
        only = False
        if len(values) == 1:  # kubelet reads the parameter only when given exactly once
            parsed = parse_go_bool(values[0])
            if parsed is None:
                return web.Response(
                    status=500,
                    text=f"Internal Error: strconv.ParseBool: parsing {json.dumps(values[0])}: "
                    "invalid syntax",
                )
            only = parsed
        body = await self.build(only)
        return web.json_response(body)

    async def resource_metrics(self, request: web.Request) -> web.Response:
        try:
            summary: Json | None = await self.build(True)
        except OSError:
            summary = None  # kubelet: scrape_error 1 and no samples
        return web.Response(
            body=render_resource_metrics(summary).encode(),
            headers={"Content-Type": PROMETHEUS_TEXT},
        )

    async def spec(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(machine_info))

    async def build(self, only_cpu_and_memory: bool) -> Json:
        backend = self.backend
        pods = [(pod, copy.deepcopy(status)) for pod, status in backend.pods()]
        sandboxes = {sandbox.pod_uid: sandbox for sandbox in backend.sandboxes()}
        return await asyncio.to_thread(
            backend.summary.build,
            backend.cgroups(),
            pods,
            sandboxes=sandboxes,
            paths=backend.paths,
            only_cpu_and_memory=only_cpu_and_memory,
        )


def parse_go_bool(text: str) -> bool | None:
    """Go's ``strconv.ParseBool``; None where it fails."""
    return True if text in _GO_TRUE else False if text in _GO_FALSE else None


# -- /metrics/resource --------------------------------------------------------------------------

_STABLE, _ALPHA = "[STABLE] ", "[ALPHA] "
_FAMILIES = {
    "container_cpu_usage_seconds_total": (
        "counter",
        _STABLE + "Cumulative cpu time consumed by the container in core-seconds",
    ),
    "container_memory_working_set_bytes": (
        "gauge",
        _STABLE + "Current working set of the container in bytes",
    ),
    "container_start_time_seconds": (
        "gauge",
        _STABLE + "Start time of the container since unix epoch in seconds",
    ),
    "node_cpu_usage_seconds_total": (
        "counter",
        _STABLE + "Cumulative cpu time consumed by the node in core-seconds",
    ),
    "node_memory_working_set_bytes": (
        "gauge",
        _STABLE + "Current working set of the node in bytes",
    ),
    "pod_cpu_usage_seconds_total": (
        "counter",
        _STABLE + "Cumulative cpu time consumed by the pod in core-seconds",
    ),
    "pod_memory_working_set_bytes": ("gauge", _STABLE + "Current working set of the pod in bytes"),
    "resource_scrape_error": (
        "gauge",
        _STABLE + "1 if there was an error while getting container metrics, 0 otherwise",
    ),
    "scrape_error": (
        "gauge",
        _ALPHA + "(Deprecated since 1.29.0) 1 if there was an error while getting container "
        "metrics, 0 otherwise",
    ),
}
Sample = tuple[dict[str, str], float, int | None]
"""Labels, value, timestamp (ms) or None."""


def render_resource_metrics(summary: Json | None) -> str:
    """kubelet's resource collector over a CPU-and-memory summary (None: the scrape failed)."""
    samples: dict[str, list[Sample]] = {name: [] for name in _FAMILIES}
    failed = 1.0 if summary is None else 0.0
    samples["resource_scrape_error"].append(({}, failed, None))
    samples["scrape_error"].append(({}, failed, None))
    if summary is not None:
        node = summary["node"]
        _usage(samples, "node", {}, node)
        for pod in summary["pods"]:
            ref = {"pod": pod["podRef"]["name"], "namespace": pod["podRef"]["namespace"]}
            for container in pod["containers"]:
                labels = {"container": container["name"], **ref}
                start = container.get("startTime")
                if start:
                    samples["container_start_time_seconds"].append(
                        (labels, parse_rfc3339(start), None)
                    )
                _usage(samples, "container", labels, container)
            _usage(samples, "pod", ref, pod)
    return "".join(_family(name, samples[name]) for name in sorted(samples) if samples[name])


def _usage(
    samples: dict[str, list[Sample]], kind: str, labels: dict[str, str], stats: Json
) -> None:
    cpu, memory = stats.get("cpu") or {}, stats.get("memory") or {}
    if "usageCoreNanoSeconds" in cpu:
        at = _millis(cpu["time"])
        value = cpu["usageCoreNanoSeconds"] / 1e9
        samples[f"{kind}_cpu_usage_seconds_total"].append((labels, value, at))
    if "workingSetBytes" in memory:
        at = _millis(memory["time"])
        value = float(memory["workingSetBytes"])
        samples[f"{kind}_memory_working_set_bytes"].append((labels, value, at))


def _millis(rfc3339: str) -> int:
    return int(parse_rfc3339(rfc3339) * 1000)


def _family(name: str, samples: list[Sample]) -> str:
    kind, help_text = _FAMILIES[name]
    lines = [f"# HELP {name} {_escape_help(help_text)}", f"# TYPE {name} {kind}"]
    rendered = []
    for labels, value, at in samples:
        pairs = ",".join(f'{key}="{_escape_label(labels[key])}"' for key in sorted(labels))
        text = name + (f"{{{pairs}}}" if pairs else "") + " " + go_float(value)
        rendered.append((sorted(labels.items()), text + (f" {at}" if at is not None else "")))
    lines += [text for _, text in sorted(rendered)]
    return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def go_float(value: float) -> str:
    """Go's ``strconv.FormatFloat(v, 'g', -1, 64)`` as the Prometheus text writer uses it:
    the shortest digits, in exponent form below 1e-4 and from 1e6 on."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(float(value))).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    exp = len(text) + exponent - 1
    minus = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp < 0:
        return f"{minus}0.{'0' * (-exp - 1)}{text}"
    whole, fraction = text[: exp + 1].ljust(exp + 1, "0"), text[exp + 1 :]
    return minus + whole + (f".{fraction}" if fraction else "")


# -- /spec/ -------------------------------------------------------------------------------------


def machine_info() -> Json:
    """cAdvisor's ``MachineInfo`` fields that this node can fill truthfully (no NUMA topology,
    disk map or NVM: those are left out rather than reported empty)."""
    system = read_system_info()
    cpuinfo = _cpuinfo()
    sockets = {block.get("physical id", "0") for block in cpuinfo}
    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "vendor_id": cpuinfo[0].get("vendor_id", "") if cpuinfo else "",
        "num_cores": os.cpu_count() or 1,
        "num_physical_cores": psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        "num_sockets": max(1, len(sockets)),
        "cpu_frequency_khz": _cpu_frequency_khz(cpuinfo),
        "memory_capacity": psutil.virtual_memory().total,
        "swap_capacity": psutil.swap_memory().total,
        "hugepages": list(_hugepages()),
        "machine_id": system.machine_id,
        "system_uuid": system.system_uuid,
        "boot_id": system.boot_id,
        "filesystems": list(_filesystems()),
        "network_devices": list(_network_devices()),
        "cloud_provider": "Unknown",
        "instance_type": "Unknown",
        "instance_id": "None",
    }


def _cpuinfo() -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    for chunk in Path("/proc/cpuinfo").read_text().split("\n\n"):
        block = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                block[key.strip()] = value.strip()
        if block:
            blocks.append(block)
    return blocks


def _cpu_frequency_khz(cpuinfo: list[dict[str, str]]) -> int:
    """cAdvisor's: cpufreq's ``cpuinfo_max_freq`` (kHz), else the highest "cpu MHz"."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
    except (OSError, ValueError):
        pass
    mhz = [float(block["cpu MHz"]) for block in cpuinfo if "cpu MHz" in block]
    return int(max(mhz) * 1000) if mhz else 0


def _hugepages() -> Iterator[Json]:
    base = Path("/sys/kernel/mm/hugepages")
    if not base.is_dir():
        return
    for entry in sorted(base.iterdir()):
        size = entry.name.removeprefix("hugepages-").removesuffix("kB")
        try:
            pages = int((entry / "nr_hugepages").read_text())
        except (OSError, ValueError):
            continue
        if size.isdigit():
            yield {"page_size": int(size), "num_pages": pages}


def _filesystems() -> Iterator[Json]:
    """Mounted block-device filesystems, each device once, as cAdvisor lists those it can
    measure (``type`` is cAdvisor's storage kind, "vfs" for a plain block device)."""
    seen: set[str] = set()
    for part in psutil.disk_partitions(all=False):
        if part.device in seen or not part.device.startswith("/dev/"):
            continue
        try:
            fs = os.statvfs(part.mountpoint)
        except OSError:
            continue
        seen.add(part.device)
        yield {
            "device": part.device,
            "capacity": fs.f_blocks * fs.f_frsize,
            "type": "vfs",
            "inodes": fs.f_files,
            "has_inodes": fs.f_files > 0,
        }


def _network_devices() -> Iterator[Json]:
    """``/sys/class/net`` but the interfaces cAdvisor ignores (lo, veth*, docker*)."""
    base = Path("/sys/class/net")
    for entry in sorted(base.iterdir()) if base.is_dir() else []:
        if entry.name.startswith(IGNORED_INTERFACES):
            continue
        yield {
            "name": entry.name,
            "mac_address": _read(entry / "address"),
            "speed": _read_int(entry / "speed"),
            "mtu": _read_int(entry / "mtu"),
        }


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _read_int(path: Path) -> int:
    text = _read(path)
    return int(text) if text.lstrip("-").isdigit() and int(text) > 0 else 0
