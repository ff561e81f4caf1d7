"""Which of the node's mounts a host-image overlay root rebuilds (``rootfs.host_submounts``)."""

from __future__ import annotations

import pytest

from nodelet.holder.rootfs import host_submounts

pytestmark = pytest.mark.unit

TABLE = """\
21 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
22 21 0:5 / /proc rw - proc proc rw
23 21 0:6 / /sys rw - sysfs sysfs rw
24 23 0:7 / /sys/fs/cgroup rw - tmpfs tmpfs rw
25 21 0:8 / /dev rw - devtmpfs udev rw
26 21 8:2 / /var rw shared:3 - ext4 /dev/sda2 rw
27 26 8:3 / /var/lib/nodelet rw - ext4 /dev/sda3 rw
28 26 0:40 / /var/lib/nodelet/pods/x/shm rw - tmpfs shm rw
29 21 0:41 / /tmp rw - tmpfs tmpfs rw
30 21 0:42 / /run/user/0 rw - tmpfs tmpfs rw
31 21 0:43 / /mnt/with\\040space rw - ext4 /dev/sdb rw
32 21 0:44 / /tmp rw - tmpfs tmpfs rw
33 21 0:45 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw
34 21 0:46 / /proc/sys/fs/binfmt_misc rw - binfmt_misc binfmt_misc rw
35 21 0:47 / /srv/fuse rw - fuse.sshfs host:/ rw
not a mount line
"""


def test_every_node_mount_but_fresh_trees_pseudo_filesystems_and_skipped_dirs() -> None:
    # Shallow first; "/tmp" is stacked twice and listed once.
    assert host_submounts(TABLE, ["/var/lib/nodelet"]) == [
        "/var",
        "/tmp",
        "/mnt/with space",  # unescaped
        "/srv/fuse",
        "/run/user/0",
    ]


def test_parents_come_before_their_children() -> None:
    points = host_submounts(TABLE, [])
    assert points.index("/var") < points.index("/var/lib/nodelet")
    assert "/var/lib/nodelet/pods/x/shm" in points
    assert "/" not in points
