"""The cgroup v2 driver: one tree, controllers delegated down to it through subtree_control.

Limits, as runc writes them for kubelet: ``cpu.weight`` (shares converted), ``cpu.max``
(``"<quota> <period>"`` or ``"max <period>"``), ``memory.max`` with ``memory.swap.max`` 0 for a
limited cgroup where swap accounting exists (kubelet's NoSwap), ``pids.max``, and
``memory.oom.group`` 1 on a container, so an OOM kill takes the whole container as kubelet asks.
A controller the mount does not offer (``cgroup.controllers``) is neither enabled nor written:
on a controller-less cgroup2 the tree, ``cgroup.procs``, ``cgroup.kill`` and the events still
work, the limits are not enforced.

The holder leaf. v2 forbids processes in a cgroup whose children have controllers enabled
("no internal processes"), and a pod's containers are its children, so the pod's holder and
exec probes join ``pod<uid>/nodelet.holder`` (a name that cannot be a container's DNS label)
instead of the pod cgroup itself. The pod's limits still cover them.

OOM detection reads ``oom_kill`` in the container's ``memory.events``: the kernel counts there
every process of the container's subtree it OOM-killed, whichever limit ran out.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from nodelet.cgroups.driver import (
    KUBEPODS,
    POLL_S,
    BaseDriver,
    CgroupError,
    CgroupStats,
    ensure_dirs,
    is_real_dir,
    read_int,
    read_keyed,
    read_text,
    write,
)
from nodelet.cgroups.resources import MIN_SHARES, CgroupLimits, cpu_shares, cpu_weight

HOLDER = "nodelet.holder"
CONTROLLERS = ("cpu", "memory", "pids")


class V2Driver(BaseDriver):
    """cgroup v2 mounted at ``mount`` (a test may pass a plain directory that mimics it)."""

    version = 2

    def __init__(self, mount: Path, cgroup_root: str = "/nodelet", timeout: float = 5.0) -> None:
        super().__init__([mount], cgroup_root, timeout)
        self.mount = mount
        available = (read_text(mount / "cgroup.controllers") or "").split()
        self.controllers = [name for name in CONTROLLERS if name in available]

    def create_pod(self, pod_uid: str, qos: str, limits: CgroupLimits) -> None:
        parts = self.pod_parts(pod_uid, qos)
        created = ensure_dirs(self.mount, parts[:-1])
        ensure_dirs(self.mount, parts)
        self._delegate(parts)
        self._qos_settings(created)
        self._apply(self.mount.joinpath(*parts), limits, container=False)
        ensure_dirs(self.mount, (*parts, HOLDER))

    def _delegate(self, parts: tuple[str, ...]) -> None:
        """Enable our controllers for the children of the mount and of every cgroup on the
        way down to (and including) ``parts``, where they are not enabled yet."""
        if not self.controllers:
            return
        path = self.mount
        for part in ("", *parts):
            path = path / part if part else path
            enabled = (read_text(path / "cgroup.subtree_control") or "").split()
            missing = [name for name in self.controllers if name not in enabled]
            if missing:
                write(path / "cgroup.subtree_control", " ".join(f"+{n}" for n in missing))

    def _qos_settings(self, created: list[Path]) -> None:
        """kubelet's settings for the QoS-level cgroups this call created."""
        if "cpu" not in self.controllers:
            return
        kubepods = self.mount.joinpath(*self.root, KUBEPODS)
        for path in created:
            if path == kubepods:
                machine = cpu_shares((os.cpu_count() or 1) * 1000)
                write(path / "cpu.weight", cpu_weight(machine))
            elif path == kubepods / "besteffort":
                write(path / "cpu.weight", cpu_weight(MIN_SHARES))

    def create_container(
        self, pod_uid: str, qos: str, name: str, limits: CgroupLimits
    ) -> list[str]:
        parts = self.container_parts(pod_uid, qos, name)
        ensure_dirs(self.mount, parts)
        self._apply(self.mount.joinpath(*parts), limits, container=True)
        return self.container_procs(pod_uid, qos, name)

    def container_procs(self, pod_uid: str, qos: str, name: str) -> list[str]:
        return [str(self.mount.joinpath(*self.container_parts(pod_uid, qos, name), "cgroup.procs"))]

    def holder_procs(self, pod_uid: str, qos: str) -> list[str]:
        return [str(self.mount.joinpath(*self.pod_parts(pod_uid, qos), HOLDER, "cgroup.procs"))]

    def _apply(self, path: Path, limits: CgroupLimits, container: bool) -> None:
        if "cpu" in self.controllers:
            write(path / "cpu.weight", cpu_weight(limits.cpu_shares))
            quota = "max" if limits.cpu_quota_us is None else str(limits.cpu_quota_us)
            write(path / "cpu.max", f"{quota} {limits.cpu_period_us}")
        if "memory" in self.controllers:
            limit = limits.memory_limit
            limited = limit is not None
            write(path / "memory.max", "max" if limit is None else limit)
            if (path / "memory.swap.max").exists():
                write(path / "memory.swap.max", 0 if limited else "max")
            if container:
                write(path / "memory.oom.group", 1)
        if "pids" in self.controllers:
            write(path / "pids.max", "max" if limits.pids_limit is None else limits.pids_limit)

    def oom_killed(self, pod_uid: str, qos: str, name: str) -> bool:
        path = self.mount.joinpath(*self.container_parts(pod_uid, qos, name))
        return read_keyed(path / "memory.events").get("oom_kill", 0) > 0

    def stats(self, pod_uid: str, qos: str, name: str | None = None) -> CgroupStats | None:
        parts = (
            self.pod_parts(pod_uid, qos)
            if name is None
            else self.container_parts(pod_uid, qos, name)
        )
        path = self.mount.joinpath(*parts)
        if not is_real_dir(path):
            return None
        usage = read_int(path / "memory.current") or 0
        inactive = read_keyed(path / "memory.stat").get("inactive_file", 0)
        return CgroupStats(
            cpu_usage_ns=read_keyed(path / "cpu.stat").get("usage_usec", 0) * 1000,
            memory_usage=usage,
            memory_working_set=max(0, usage - inactive),
            pids=read_int(path / "pids.current") or 0,
        )

    def kill_all(self, parts: tuple[str, ...], deadline: float) -> None:
        """``cgroup.kill`` (Linux 5.14) kills the whole subtree, forks in flight included;
        without it, SIGKILL by pid."""
        path = self.mount.joinpath(*parts)
        if not is_real_dir(path):
            return
        if not (path / "cgroup.kill").exists():
            self.kill_by_pid(parts, deadline)
            return
        write(path / "cgroup.kill", 1)
        while read_keyed(path / "cgroup.events").get("populated", 0):
            if time.monotonic() > deadline:
                raise CgroupError(
                    errno.EBUSY,
                    f"cgroup {self.cgroup_name(parts)} still populated {self.timeout} s "
                    "after cgroup.kill",
                )
            time.sleep(POLL_S)
