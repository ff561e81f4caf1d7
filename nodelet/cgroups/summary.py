"""kubelet's Summary API (``/stats/summary``, stats/v1alpha1) from the pods' cgroups.

CPU rates (``usageNanoCores``) need two samples: each call keeps the cumulative figures it read
and rates them against the previous call's, as cAdvisor does between housekeeping runs; the
first call has cumulative figures only. The node's own figures come from ``psutil``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psutil

from nodelet.cgroups.driver import CgroupDriver, CgroupStats
from nodelet.cgroups.resources import qos_class
from nodelet.model import StaticPod
from nodelet.util.timefmt import rfc3339

Json = dict[str, Any]


@dataclass
class _Sample:
    at: float
    cpu_ns: int


class StatsSummary:
    """Builds summaries; remembers the last CPU sample of every cgroup it read."""

    def __init__(self, node_name: str, clock: Callable[[], float] = time.time) -> None:
        self._node_name = node_name
        self._clock = clock
        self._samples: dict[tuple[str, str], _Sample] = {}

    def build(
        self, driver: CgroupDriver | None, pods: Iterable[tuple[StaticPod, Json | None]]
    ) -> Json:
        now = self._clock()
        seen: set[tuple[str, str]] = set()
        node = self._node(now, seen)
        items = [self._pod(driver, pod, status or {}, now, seen) for pod, status in pods]
        for key in set(self._samples) - seen:
            del self._samples[key]  # pods and runs that are gone
        return {"node": node, "pods": items}

    def _node(self, now: float, seen: set[tuple[str, str]]) -> Json:
        times = psutil.cpu_times()
        busy_ns = int((sum(times) - times.idle - getattr(times, "iowait", 0.0)) * 1e9)
        memory = psutil.virtual_memory()
        return {
            "nodeName": self._node_name,
            "startTime": rfc3339(psutil.boot_time()),
            "cpu": self._cpu(("node", ""), busy_ns, now, seen),
            "memory": {
                "time": rfc3339(now),
                "availableBytes": memory.available,
                "usageBytes": memory.total - memory.free,
                "workingSetBytes": memory.total - memory.available,
            },
        }

    def _pod(
        self,
        driver: CgroupDriver | None,
        pod: StaticPod,
        status: Json,
        now: float,
        seen: set[tuple[str, str]],
    ) -> Json:
        qos = qos_class(pod.spec)
        item: Json = {
            "podRef": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
            "startTime": status.get("startTime"),
            "containers": [],
        }
        if driver is None:
            return item
        for container in status.get("containerStatuses") or []:
            running = (container.get("state") or {}).get("running")
            if running is None:
                continue
            stats = driver.stats(pod.uid, qos, container["name"])
            if stats is None:
                continue
            key = (pod.uid, f"{container['name']}/{container.get('restartCount', 0)}")
            entry = {"name": container["name"], "startTime": running.get("startedAt")}
            item["containers"].append({**entry, **self._usage(key, stats, now, seen)})
        pod_stats = driver.stats(pod.uid, qos)
        if pod_stats is not None:
            item.update(self._usage((pod.uid, ""), pod_stats, now, seen))
            item["process_stats"] = {"process_count": pod_stats.pids}
        return item

    def _usage(
        self, key: tuple[str, str], stats: CgroupStats, now: float, seen: set[tuple[str, str]]
    ) -> Json:
        return {
            "cpu": self._cpu(key, stats.cpu_usage_ns, now, seen),
            "memory": {
                "time": rfc3339(now),
                "usageBytes": stats.memory_usage,
                "workingSetBytes": stats.memory_working_set,
            },
        }

    def _cpu(
        self, key: tuple[str, str], used_ns: int, now: float, seen: set[tuple[str, str]]
    ) -> Json:
        seen.add(key)
        cpu: Json = {"time": rfc3339(now), "usageCoreNanoSeconds": used_ns}
        before = self._samples.get(key)
        if before is not None and now > before.at and used_ns >= before.cpu_ns:
            cpu["usageNanoCores"] = int((used_ns - before.cpu_ns) / (now - before.at))
        self._samples[key] = _Sample(now, used_ns)
        return cpu
