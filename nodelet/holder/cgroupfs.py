"""What a container of its own root sees at ``/sys/fs/cgroup``: its own cgroups, nothing more.

A fresh sysfs has an empty ``fs/cgroup``, so without this a JVM, Go's automaxprocs or any
runtime that sizes itself from its cgroup limits sees the node's memory and CPUs. runc without
a cgroup namespace (containerd and CRI-O on cgroup v1) binds the container's own cgroup dir
of each hierarchy; the same here, from the dirs the container joins (``cgroup_procs``):

- cgroup v2 (``/sys/fs/cgroup`` is the cgroup2 mount): the container's dir at ``/sys/fs/cgroup``;
- v1 (a tmpfs of hierarchies): a tmpfs, one dir per hierarchy the container has its own
  cgroup in (``cpu``, ``memory``, ``pids`` …) holding that cgroup, and the node's symlinks
  for co-mounted controllers (``cpu,cpuacct``) where they name one of those dirs. A
  hierarchy the agent leaves the container in its parent's cgroup is not shown: that would
  be the node's whole tree.

Read-only with the rest of ``/sys`` unless privileged. ``/proc/self/cgroup`` keeps the full
path and ``mountinfo`` shows it as the mount's root, which is how those runtimes match them.
Pure: the holder mounts what ``plan`` returns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from nodelet.holder import mounts

CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass
class CgroupView:
    whole: str | None = None
    """cgroup v2: the container's dir, bound at ``/sys/fs/cgroup`` itself."""
    dirs: list[tuple[str, str]] = field(default_factory=list)
    """v1: (name under the tmpfs, the container's dir in that hierarchy)."""
    links: list[tuple[str, str]] = field(default_factory=list)
    """v1: (name, target) symlinks of co-mounted controllers, as the node has them."""


def hierarchies(mountinfo: str) -> list[str]:
    """Mount points of the node's cgroup and cgroup2 mounts at or directly under the root."""
    points = []
    for point, fstype in mounts.points_and_types(mountinfo):
        if fstype in ("cgroup", "cgroup2") and (
            point == CGROUP_ROOT or os.path.dirname(point) == CGROUP_ROOT
        ):
            points.append(point)
    return points


def plan(procs_files: list[str], points: list[str], node_links: dict[str, str]) -> CgroupView:
    """The view for a container that joins ``procs_files``; ``node_links`` are the symlinks
    in the node's ``/sys/fs/cgroup`` (name → target)."""
    view = CgroupView()
    for procs in procs_files:
        own = os.path.dirname(procs)
        point = max((p for p in points if mounts.within(own, [p])), key=len, default=None)
        if point is None or point == own:
            continue  # not a cgroup of its own: that would show the node's whole tree
        if point == CGROUP_ROOT:
            return CgroupView(whole=own)
        name = os.path.basename(point)
        if all(name != existing for existing, _own in view.dirs):
            view.dirs.append((name, own))
    shown = {name for name, _own in view.dirs}
    view.links = sorted(
        (name, target)
        for name, target in node_links.items()
        if target in shown and name not in shown and "/" not in target
    )
    return view


def node_links() -> dict[str, str]:
    """The symlinks in the node's ``/sys/fs/cgroup`` (v1's ``cpu -> cpu,cpuacct``)."""
    try:
        entries = list(os.scandir(CGROUP_ROOT))
    except OSError:
        return {}
    return {entry.name: os.readlink(entry.path) for entry in entries if entry.is_symlink()}
