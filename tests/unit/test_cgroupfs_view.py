"""Which of the node's cgroups a container of its own root sees (``holder/cgroupfs``)."""

from __future__ import annotations

import pytest

from nodelet.holder.cgroupfs import CgroupView, hierarchies, plan

pytestmark = pytest.mark.unit

V1_TABLE = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /sys/fs/cgroup/memory/nested rw,relatime - cgroup cgroup rw,memory
51 23 0:41 / /mnt/cg rw,relatime - cgroup2 cgroup2 rw
"""
V2_TABLE = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
POD = "nlt/kubepods/burstable/pod1/app"


def test_only_cgroup_mounts_at_or_directly_under_the_root_count() -> None:
    assert hierarchies(V1_TABLE) == [
        "/sys/fs/cgroup/cpu,cpuacct",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/unified",
    ]
    assert hierarchies(V2_TABLE) == ["/sys/fs/cgroup"]
    assert hierarchies("garbage\n\n1 2 3 4 /sys/fs/cgroup\n") == []


def test_v2_binds_the_containers_own_dir_at_the_root() -> None:
    view = plan([f"/sys/fs/cgroup/{POD}/cgroup.procs"], ["/sys/fs/cgroup"], {})
    assert view == CgroupView(whole=f"/sys/fs/cgroup/{POD}")


def test_v1_shows_each_hierarchy_the_container_has_a_cgroup_in_and_its_links() -> None:
    procs = [
        f"/sys/fs/cgroup/cpu,cpuacct/{POD}/tasks",
        f"/sys/fs/cgroup/memory/{POD}/tasks",
        f"/sys/fs/cgroup/memory/{POD}/tasks",  # named twice: shown once
        f"/sys/fs/cgroup/pids/{POD}/tasks",
        "/elsewhere/tasks",  # under no hierarchy: left out
    ]
    links = {"cpu": "cpu,cpuacct", "cpuacct": "cpu,cpuacct", "net_cls": "net_cls,net_prio",
             "odd": "/sys/fs/cgroup/memory"}  # fmt: skip
    view = plan(procs, hierarchies(V1_TABLE), links)
    assert view.whole is None
    assert view.dirs == [
        ("cpu,cpuacct", f"/sys/fs/cgroup/cpu,cpuacct/{POD}"),
        ("memory", f"/sys/fs/cgroup/memory/{POD}"),
        ("pids", f"/sys/fs/cgroup/pids/{POD}"),
    ]
    # Links to a hierarchy not shown, or out of the dir, are not copied.
    assert view.links == [("cpu", "cpu,cpuacct"), ("cpuacct", "cpu,cpuacct")]


def test_the_deepest_hierarchy_holding_the_cgroup_wins() -> None:
    points = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
    view = plan([f"/sys/fs/cgroup/unified/{POD}/cgroup.procs"], points, {})
    assert view == CgroupView(dirs=[("unified", f"/sys/fs/cgroup/unified/{POD}")])


def test_no_cgroups_no_view() -> None:
    assert plan([], hierarchies(V1_TABLE), {"cpu": "cpu,cpuacct"}) == CgroupView()


def test_a_hierarchy_root_is_never_shown() -> None:
    assert plan(["/sys/fs/cgroup/cgroup.procs"], ["/sys/fs/cgroup"], {}) == CgroupView()
    view = plan(["/sys/fs/cgroup/memory/tasks"], hierarchies(V1_TABLE), {})
    assert view == CgroupView()
