"""kubelet's Summary API (``/stats/summary``, stats/v1alpha1) from the pods' cgroups.

Figures are kubelet's: a cgroup's working set is its usage minus inactive file cache, RSS and
page faults come from ``memory.stat``, a pod's network from ``/proc/<holder>/net/dev`` (its
network namespace), filesystems from ``statvfs`` and a walk of the log and volume dirs. The
node's own figures come from ``psutil`` and ``/proc``. A pod without cgroups (cgroups off)
still gets its entry, with CPU and memory summed over its processes.

CPU rates (``usageNanoCores``) need two samples: every cgroup's last cumulative reading is kept
and the rate is taken against it, as cAdvisor rates consecutive housekeeping samples. A reading
less than ``min_window`` after the kept one does not replace it (two clients scraping a moment
apart would otherwise see the noise of a millisecond window): it reports the kept rate. The
first reading of a cgroup, and one after its counter went back (a new run), has no rate.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from nodelet.cgroups.driver import (
    CgroupDriver,
    CgroupStats,
    is_real_dir,
    read_int,
    read_keyed,
    subdirs,
)
from nodelet.cgroups.resources import qos_class
from nodelet.model import StaticPod
from nodelet.runtime.api import SandboxStatus
from nodelet.util.timefmt import rfc3339

Json = dict[str, Any]

DEFAULT_INTERFACE = "eth0"
"""kubelet's ``network.DefaultInterfaceName``: the interface whose figures are inlined."""
IGNORED_INTERFACES = ("lo", "veth", "docker")
"""cAdvisor leaves out interfaces with these prefixes (``isIgnoredDevice``)."""
MIN_WINDOW = 1.0
"""Seconds: cAdvisor's shortest housekeeping interval."""
UNLIMITED = 1 << 62
"""A v1 ``memory.limit_in_bytes`` at or above this is "no limit" (the kernel's is page-rounded
``LLONG_MAX``)."""
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class SummaryPaths:
    """Where the filesystem figures are measured (kubelet: root dir, pod logs, pod volumes)."""

    root_dir: Path
    pod_logs_dir: Path
    pods_state_dir: Path


@dataclass
class _Sample:
    at: float
    cpu_ns: int
    rate: int | None


@dataclass(frozen=True)
class _Usage:
    """CPU and memory of a cgroup or a group of processes, before rating."""

    cpu_ns: int
    usage: int
    working_set: int
    rss: int
    page_faults: int
    major_faults: int
    limit: int | None = None


class StatsSummary:
    """Builds summaries; remembers the last CPU sample of every cgroup it read.

    ``build`` may run in a worker thread (it reads files): one lock guards the samples."""

    def __init__(
        self,
        node_name: str,
        clock: Callable[[], float] = time.time,
        min_window: float = MIN_WINDOW,
    ) -> None:
        self.node_name = node_name
        self._clock = clock
        self._min_window = min_window
        self._samples: dict[tuple[str, str], _Sample] = {}
        self._lock = threading.Lock()

    def build(
        self,
        driver: CgroupDriver | None,
        pods: Iterable[tuple[StaticPod, Json | None]],
        *,
        sandboxes: Mapping[str, SandboxStatus] | None = None,
        paths: SummaryPaths | None = None,
        only_cpu_and_memory: bool = False,
    ) -> Json:
        """The Summary; ``sandboxes`` (by pod UID) give the holder and container pids that the
        network and the cgroup-less figures need; ``paths`` the filesystem figures."""
        with self._lock:
            now = self._clock()
            seen: set[tuple[str, str]] = set()
            build = _Build(self, driver, sandboxes or {}, paths, only_cpu_and_memory, now, seen)
            node = build.node()
            items = [build.pod(pod, status or {}) for pod, status in pods]
            for key in set(self._samples) - seen:
                del self._samples[key]  # pods and runs that are gone
            return {"node": node, "pods": items}

    def cpu(
        self, key: tuple[str, str], used_ns: int, now: float, seen: set[tuple[str, str]]
    ) -> Json:
        """``CPUStats`` of one cumulative reading, rated against the kept one."""
        seen.add(key)
        cpu: Json = {"time": rfc3339(now), "usageCoreNanoSeconds": used_ns}
        before = self._samples.get(key)
        rate: int | None = None
        if before is None or used_ns < before.cpu_ns:
            self._samples[key] = _Sample(now, used_ns, None)  # first, or a new run
        elif now - before.at < self._min_window:
            rate = before.rate
        else:
            rate = int((used_ns - before.cpu_ns) / (now - before.at))
            self._samples[key] = _Sample(now, used_ns, rate)
        if rate is not None:
            cpu["usageNanoCores"] = rate
        return cpu


@dataclass
class _Build:
    """One summary's inputs and its shared clock reading."""

    summary: StatsSummary
    driver: CgroupDriver | None
    sandboxes: Mapping[str, SandboxStatus]
    paths: SummaryPaths | None
    only_cpu_and_memory: bool
    now: float
    seen: set[tuple[str, str]]

    def node(self) -> Json:
        times = psutil.cpu_times()
        busy_ns = int((sum(times) - times.idle - getattr(times, "iowait", 0.0)) * 1e9)
        node: Json = {
            "nodeName": self.summary.node_name,
            "startTime": rfc3339(psutil.boot_time()),
            "cpu": self.summary.cpu(("node", ""), busy_ns, self.now, self.seen),
            "memory": self._node_memory(),
        }
        if self.only_cpu_and_memory:
            return node
        node["network"] = network_stats(Path("/proc/self/net/dev"), self.now)
        if self.paths is not None:
            node["fs"] = fs_stats(self.paths.root_dir, self.now)
        node["rlimit"] = rlimit_stats(self.now)
        return node

    def _node_memory(self) -> Json:
        """kubelet's node figures (cAdvisor's root cgroup), from ``/proc/meminfo`` and
        ``/proc/vmstat``: usage = total - free, working set = usage - inactive file,
        available = capacity - working set."""
        info = _proc_keyed(Path("/proc/meminfo"), scale=1024)
        vmstat = _proc_keyed(Path("/proc/vmstat"))
        total = info.get("MemTotal", 0)
        usage = total - info.get("MemFree", 0)
        working_set = max(0, usage - info.get("Inactive(file)", 0))
        return {
            "time": rfc3339(self.now),
            "availableBytes": max(0, total - working_set),
            "usageBytes": usage,
            "workingSetBytes": working_set,
            "rssBytes": info.get("AnonPages", 0),
            "pageFaults": vmstat.get("pgfault", 0),
            "majorPageFaults": vmstat.get("pgmajfault", 0),
        }

    def pod(self, pod: StaticPod, status: Json) -> Json:
        sandbox = self.sandboxes.get(pod.uid)
        start = status.get("startTime")
        if start is None and sandbox is not None:
            start = rfc3339(sandbox.created_at)
        item: Json = {
            "podRef": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
            "startTime": start,
            "containers": [],
        }
        qos = qos_class(pod.spec)
        logs_used = 0
        for container in status.get("containerStatuses") or []:
            running = (container.get("state") or {}).get("running")
            if running is None:
                continue
            name = container["name"]
            usage = self._container_usage(pod.uid, qos, name, sandbox)
            if usage is None:
                continue
            key = (pod.uid, f"{name}/{container.get('restartCount', 0)}")
            entry: Json = {"name": name, "startTime": running.get("startedAt")}
            entry.update(self._usage(key, usage))
            if not self.only_cpu_and_memory and self.paths is not None:
                log_dir = self.paths.pod_logs_dir / f"{pod.namespace}_{pod.name}_{pod.uid}" / name
                entry["logs"] = fs_stats(log_dir, self.now, used_of=log_dir)
                logs_used += entry["logs"]["usedBytes"]
            item["containers"].append(entry)
        pod_usage, processes = self._pod_usage(pod.uid, qos, sandbox)
        if pod_usage is not None:
            item.update(self._usage((pod.uid, ""), pod_usage))
        if self.only_cpu_and_memory:
            return item
        if sandbox is not None and sandbox.ready and sandbox.holder_pid:
            net_dev = Path(f"/proc/{sandbox.holder_pid}/net/dev")
            if net_dev.exists():
                item["network"] = network_stats(net_dev, self.now)
        if self.paths is not None:
            volumes = self._volumes(pod.uid)
            if volumes:
                item["volume"] = volumes
            ephemeral = fs_stats(self.paths.root_dir, self.now)
            ephemeral["usedBytes"] = logs_used + sum(v["usedBytes"] for v in volumes)
            ephemeral["inodesUsed"] = sum(v["inodesUsed"] for v in volumes)
            item["ephemeral-storage"] = ephemeral
        if processes is not None:
            item["process_stats"] = {"process_count": processes}
        return item

    def _usage(self, key: tuple[str, str], usage: _Usage) -> Json:
        memory: Json = {"time": rfc3339(self.now)}
        if usage.limit is not None:
            memory["availableBytes"] = max(0, usage.limit - usage.working_set)
        memory.update(
            usageBytes=usage.usage,
            workingSetBytes=usage.working_set,
            rssBytes=usage.rss,
            pageFaults=usage.page_faults,
            majorPageFaults=usage.major_faults,
        )
        return {"cpu": self.summary.cpu(key, usage.cpu_ns, self.now, self.seen), "memory": memory}

    def _container_usage(
        self, uid: str, qos: str, name: str, sandbox: SandboxStatus | None
    ) -> _Usage | None:
        if self.driver is not None:
            stats = self.driver.stats(uid, qos, name)
            if stats is None:
                return None
            return cgroup_usage(stats, memory_dir(self.driver, uid, qos, name))
        record = sandbox.latest(name) if sandbox is not None else None
        if record is None or not record.running:
            return None
        return process_usage([record.pid])

    def _pod_usage(
        self, uid: str, qos: str, sandbox: SandboxStatus | None
    ) -> tuple[_Usage | None, int | None]:
        if self.driver is not None:
            stats = self.driver.stats(uid, qos)
            if stats is None:
                return None, None
            return cgroup_usage(stats, memory_dir(self.driver, uid, qos)), stats.pids
        if sandbox is None or not sandbox.ready:
            return None, None
        roots = [sandbox.holder_pid] if sandbox.holder_pid else []
        roots += [run.pid for run in sandbox.containers if run.running]
        pids = process_tree(roots)
        return process_usage(pids, expand=False), len(pids)

    def _volumes(self, uid: str) -> list[Json]:
        """``VolumeStats`` of every volume dir the pod has (emptyDir, downwardAPI ...), named by
        the pod's volume name as kubelet names them."""
        assert self.paths is not None
        base = self.paths.pods_state_dir / uid / "volumes"
        volumes = []
        for plugin in subdirs(base):
            for name in subdirs(base / plugin):
                path = base / plugin / name
                volumes.append({**fs_stats(path, self.now, used_of=path), "name": name})
        return sorted(volumes, key=lambda v: str(v["name"]))


# -- cgroups ------------------------------------------------------------------------------------


def memory_dir(driver: CgroupDriver, uid: str, qos: str, name: str | None = None) -> Path | None:
    """The directory with the cgroup's ``memory.stat`` (v1: the memory hierarchy's)."""
    from nodelet.cgroups.v1 import V1Driver
    from nodelet.cgroups.v2 import V2Driver

    if isinstance(driver, V1Driver):
        base = driver.controllers["memory"]
    elif isinstance(driver, V2Driver):
        base = driver.mount
    else:
        return None
    parts = driver.pod_parts(uid, qos) if name is None else driver.container_parts(uid, qos, name)
    path = base.joinpath(*parts)
    return path if is_real_dir(path) else None


def cgroup_usage(stats: CgroupStats, memory: Path | None) -> _Usage:
    """The driver's figures plus RSS, faults and the limit from ``memory.stat`` (v1's
    ``total_`` keys are hierarchical; v2's are always)."""
    stat = read_keyed(memory / "memory.stat") if memory is not None else {}
    v1 = "total_rss" in stat or "hierarchical_memory_limit" in stat
    limit = (
        read_int(memory / ("memory.limit_in_bytes" if v1 else "memory.max"))
        if memory is not None
        else None
    )
    return _Usage(
        cpu_ns=stats.cpu_usage_ns,
        usage=stats.memory_usage,
        working_set=stats.memory_working_set,
        rss=stat.get("total_rss" if v1 else "anon", 0),
        page_faults=stat.get("total_pgfault" if v1 else "pgfault", 0),
        major_faults=stat.get("total_pgmajfault" if v1 else "pgmajfault", 0),
        limit=limit if limit is not None and limit < UNLIMITED else None,
    )


# -- processes ----------------------------------------------------------------------------------


def process_tree(roots: Iterable[int]) -> list[int]:
    """``roots`` and all their descendants that still exist, each once."""
    pids: dict[int, None] = {}
    for pid in roots:
        try:
            process = psutil.Process(pid)
            children = process.children(recursive=True)
        except psutil.Error:
            continue
        pids[pid] = None
        pids.update((child.pid, None) for child in children)
    return list(pids)


def process_usage(pids: Iterable[int], expand: bool = True) -> _Usage:
    """CPU time, resident memory and faults summed over processes (their descendants too
    when ``expand``), from ``/proc/<pid>/stat``; the working set of processes without a
    cgroup is their resident memory (no per-group page cache to subtract)."""
    cpu_ticks = rss_pages = minor = major = 0
    for pid in process_tree(pids) if expand else pids:
        fields = _proc_stat(pid)
        if fields is None:
            continue
        minor += int(fields[7])
        major += int(fields[9])
        cpu_ticks += int(fields[11]) + int(fields[12])
        rss_pages += int(fields[21])
    rss = rss_pages * _PAGE
    return _Usage(
        cpu_ns=cpu_ticks * 1_000_000_000 // _TICKS,
        usage=rss,
        working_set=rss,
        rss=rss,
        page_faults=minor + major,
        major_faults=major,
    )


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state is index 0)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


# -- network, filesystems, limits ---------------------------------------------------------------


def read_net_dev(path: Path) -> dict[str, tuple[int, int, int, int]]:
    """Interface -> (rx bytes, rx errors, tx bytes, tx errors) from a ``net/dev`` file."""
    interfaces = {}
    for line in path.read_text().splitlines()[2:]:
        name, sep, rest = line.partition(":")
        values = rest.split()
        if sep and len(values) >= 16:
            interfaces[name.strip()] = (
                int(values[0]),
                int(values[2]),
                int(values[8]),
                int(values[10]),
            )
    return interfaces


def network_stats(net_dev: Path, now: float) -> Json:
    """``NetworkStats`` as kubelet builds it from cAdvisor: every interface but the ignored
    ones, and ``eth0``'s figures inline (an empty name when there is none)."""
    interfaces = [
        {"name": name, "rxBytes": rx, "rxErrors": rx_err, "txBytes": tx, "txErrors": tx_err}
        for name, (rx, rx_err, tx, tx_err) in sorted(read_net_dev(net_dev).items())
        if not name.startswith(IGNORED_INTERFACES)
    ]
    default = next((i for i in interfaces if i["name"] == DEFAULT_INTERFACE), {"name": ""})
    stats: Json = {"time": rfc3339(now), **default}
    if interfaces:
        stats["interfaces"] = interfaces
    return stats


def fs_stats(path: Path, now: float, used_of: Path | None = None) -> Json:
    """``FsStats`` of the filesystem holding ``path``; used bytes and inodes are those of the
    filesystem, or of the tree ``used_of`` (kubelet's ``du`` of a log or volume dir)."""
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    fs = os.statvfs(existing)
    stats: Json = {
        "time": rfc3339(now),
        "availableBytes": fs.f_bavail * fs.f_frsize,
        "capacityBytes": fs.f_blocks * fs.f_frsize,
        "usedBytes": (fs.f_blocks - fs.f_bfree) * fs.f_frsize,
        "inodesFree": fs.f_ffree,
        "inodes": fs.f_files,
        "inodesUsed": fs.f_files - fs.f_ffree,
    }
    if used_of is not None:
        stats["usedBytes"], stats["inodesUsed"] = disk_usage(used_of)
    return stats


def disk_usage(top: Path) -> tuple[int, int]:
    """(bytes allocated, inodes) of a tree, counting each inode once and never following a
    symlink or crossing into another filesystem (``du -x`` as kubelet runs it)."""
    try:
        first = os.lstat(top)
    except OSError:
        return 0, 0
    seen = {first.st_ino}
    used = first.st_blocks * 512
    for directory, dirs, files in os.walk(top):
        inside = []
        for name in [*dirs, *files]:
            try:
                info = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if info.st_dev != first.st_dev:
                continue
            if name in dirs:
                inside.append(name)
            if info.st_ino not in seen:
                seen.add(info.st_ino)
                used += info.st_blocks * 512
        dirs[:] = inside
    return used, len(seen)


def rlimit_stats(now: float) -> Json:
    """``RlimitStats``: kubelet's ``maxpid`` (the smaller of ``pid_max`` and ``threads-max``)
    and ``curproc`` (the kernel's task count, sysinfo's ``procs``)."""
    limits = [
        value
        for value in (
            read_int(Path("/proc/sys/kernel/pid_max")),
            read_int(Path("/proc/sys/kernel/threads-max")),
        )
        if value is not None
    ]
    fields = Path("/proc/loadavg").read_text().split()
    stats: Json = {"time": rfc3339(now), "curproc": int(fields[3].split("/")[1])}
    if limits:
        stats["maxpid"] = min(limits)
    return stats


def _proc_keyed(path: Path, scale: int = 1) -> dict[str, int]:
    """``key value`` or ``key: value kB`` lines of a ``/proc`` file."""
    values = {}
    for line in path.read_text().splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[1].isdigit():
            values[parts[0]] = int(parts[1]) * scale
    return values
