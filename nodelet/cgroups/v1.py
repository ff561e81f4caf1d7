"""The cgroup v1 driver: the same tree in the cpu, cpuacct, memory and pids hierarchies.

Limits, as runc writes them for kubelet: ``cpu.shares``; ``cpu.cfs_period_us`` then
``cpu.cfs_quota_us`` (-1 for none); ``memory.limit_in_bytes`` with
``memory.memsw.limit_in_bytes`` set to the same value where swap accounting exists (kubelet's
NoSwap on v1: a limited container never swaps instead of being OOM-killed); ``pids.max``.

QoS-level settings, as kubelet's node-allocatable and QoS managers set them on creation:
``kubepods`` gets the shares of the whole machine (1024 per CPU) and ``besteffort`` 2 shares.
kubelet also resizes ``burstable``'s shares to the sum of its pods' requests every minute;
nodelet leaves it at the kernel default (1024).

OOM detection reads the container's ``memory.oom_control``: its ``oom_kill`` counter (Linux
4.13 and later) counts processes of that very cgroup the kernel OOM-killed, whichever limit
(container or pod) ran out. Older kernels have no counter: there ``under_oom 1``, or a
``memory.failcnt`` above zero with ``memory.max_usage_in_bytes`` within a page of the limit,
is taken as an OOM kill -- a heuristic, which can also fire for a cgroup that hit its limit and
recovered by reclaim.

A process joins its cgroups by writing "0" to each hierarchy's ``tasks``, not ``cgroup.procs``:
a single thread moving itself skips the kernel's global ``cgroup_threadgroup_rwsem``, whose
write side waits out an RCU grace period (5-20 ms on a quiet machine, measured here: 7-11 ms
per start with ``cgroup.procs``, 1.5 ms with ``tasks``, fork included). The holder and a
container's process are single-threaded when they join (between fork and exec), so moving the
thread moves the process; threads started later inherit its cgroups.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from nodelet.cgroups.driver import (
    KUBEPODS,
    BaseDriver,
    CgroupStats,
    ensure_dirs,
    is_real_dir,
    read_int,
    read_keyed,
    write,
)
from nodelet.cgroups.resources import MIN_SHARES, CgroupLimits, cpu_shares

JOIN_FILE = "tasks"
"""What a single-threaded process writes "0" to, to join a v1 cgroup (see above)."""

KERNEL_DEFAULT_SHARES = 1024
KERNEL_DEFAULT_PERIOD_US = 100_000
"""What a new v1 cgroup starts with (its quota, memory and pids are unlimited)."""
PAGE = 4096
UNLIMITED = -1


class V1Driver(BaseDriver):
    """cgroup v1; ``mounts`` maps controller names to their hierarchies' mount points (cpu and
    cpuacct may be the same, co-mounted, hierarchy)."""

    version = 1

    def __init__(
        self, mounts: Mapping[str, Path], cgroup_root: str = "/nodelet", timeout: float = 5.0
    ) -> None:
        self.controllers = dict(mounts)
        super().__init__(self.controllers.values(), cgroup_root, timeout)

    def create_pod(self, pod_uid: str, qos: str, limits: CgroupLimits) -> None:
        parts = self.pod_parts(pod_uid, qos)
        fresh = True
        for mount in self.mounts:
            created = ensure_dirs(mount, parts[:-1])
            if mount == self.controllers["cpu"]:
                self._qos_settings(created)
            fresh = bool(ensure_dirs(mount, parts)) and fresh
        self._apply(parts, limits, fresh)

    def _qos_settings(self, created: list[Path]) -> None:
        """kubelet's settings for the QoS-level cgroups this call created."""
        kubepods = self.controllers["cpu"].joinpath(*self.root, KUBEPODS)
        for path in created:
            if path == kubepods:
                write(path / "cpu.shares", cpu_shares((os.cpu_count() or 1) * 1000))
            elif path == kubepods / "besteffort":
                write(path / "cpu.shares", MIN_SHARES)

    def create_container(
        self, pod_uid: str, qos: str, name: str, limits: CgroupLimits
    ) -> list[str]:
        parts = self.container_parts(pod_uid, qos, name)
        fresh = True
        for mount in self.mounts:
            fresh = bool(ensure_dirs(mount, parts)) and fresh
        self._apply(parts, limits, fresh)
        return self.container_procs(pod_uid, qos, name)

    def container_procs(self, pod_uid: str, qos: str, name: str) -> list[str]:
        parts = self.container_parts(pod_uid, qos, name)
        return [str(mount.joinpath(*parts, JOIN_FILE)) for mount in self.mounts]

    def holder_procs(self, pod_uid: str, qos: str) -> list[str]:
        parts = self.pod_parts(pod_uid, qos)
        return [str(mount.joinpath(*parts, JOIN_FILE)) for mount in self.mounts]

    def _apply(self, parts: tuple[str, ...], limits: CgroupLimits, fresh: bool = False) -> None:
        """Write the limits; on cgroups this call just created (``fresh``: the kernel's defaults,
        unlimited everything and 1024 shares) only the values that differ from those, since
        every write is a syscall on the pod's start path."""
        cpu = self.controllers["cpu"].joinpath(*parts)
        quota = limits.cpu_quota_us
        if not fresh or limits.cpu_shares != KERNEL_DEFAULT_SHARES:
            write(cpu / "cpu.shares", limits.cpu_shares)
        if not fresh or limits.cpu_period_us != KERNEL_DEFAULT_PERIOD_US:
            write(cpu / "cpu.cfs_period_us", limits.cpu_period_us)
        if not fresh or quota is not None:
            write(cpu / "cpu.cfs_quota_us", UNLIMITED if quota is None else quota)
        if fresh:
            self._fresh_memory_and_pids(parts, limits)
            return
        memory = self.controllers["memory"].joinpath(*parts)
        memsw = memory / "memory.memsw.limit_in_bytes"
        # memory.limit_in_bytes may never exceed memsw: open memsw up, set both, in that order.
        has_memsw = memsw.exists()
        if has_memsw:
            write(memsw, UNLIMITED)
        limit = UNLIMITED if limits.memory_limit is None else limits.memory_limit
        write(memory / "memory.limit_in_bytes", limit)
        if has_memsw:
            write(memsw, limit)
        if "pids" in self.controllers:
            pids = self.controllers["pids"].joinpath(*parts)
            write(pids / "pids.max", "max" if limits.pids_limit is None else limits.pids_limit)

    def _fresh_memory_and_pids(self, parts: tuple[str, ...], limits: CgroupLimits) -> None:
        if limits.memory_limit is not None:
            memory = self.controllers["memory"].joinpath(*parts)
            # A new cgroup's memsw is unlimited: the limit first, then memsw down to it.
            write(memory / "memory.limit_in_bytes", limits.memory_limit)
            memsw = memory / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                write(memsw, limits.memory_limit)
        if "pids" in self.controllers and limits.pids_limit is not None:
            write(self.controllers["pids"].joinpath(*parts) / "pids.max", limits.pids_limit)

    def oom_killed(self, pod_uid: str, qos: str, name: str) -> bool:
        memory = self.controllers["memory"].joinpath(*self.container_parts(pod_uid, qos, name))
        control = read_keyed(memory / "memory.oom_control")
        if "oom_kill" in control:
            return control["oom_kill"] > 0
        if control.get("under_oom", 0) > 0:
            return True
        failcnt = read_int(memory / "memory.failcnt") or 0
        peak = read_int(memory / "memory.max_usage_in_bytes") or 0
        limit = read_int(memory / "memory.limit_in_bytes")
        return failcnt > 0 and limit is not None and peak + PAGE >= limit

    def stats(self, pod_uid: str, qos: str, name: str | None = None) -> CgroupStats | None:
        parts = (
            self.pod_parts(pod_uid, qos)
            if name is None
            else self.container_parts(pod_uid, qos, name)
        )
        memory = self.controllers["memory"].joinpath(*parts)
        if not is_real_dir(memory):
            return None
        usage = read_int(memory / "memory.usage_in_bytes") or 0
        inactive = read_keyed(memory / "memory.stat").get("total_inactive_file", 0)
        pids = 0
        if "pids" in self.controllers:
            pids = read_int(self.controllers["pids"].joinpath(*parts, "pids.current")) or 0
        cpuacct = self.controllers["cpuacct"].joinpath(*parts)
        return CgroupStats(
            cpu_usage_ns=read_int(cpuacct / "cpuacct.usage") or 0,
            memory_usage=usage,
            memory_working_set=max(0, usage - inactive),
            pids=pids,
        )
