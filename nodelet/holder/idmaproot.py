"""An image root for a pod with a user namespace (``hostUsers: false``): idmapped layers.

The unpacked layers belong to the host's root and are shared by every container of the
image, so they are never chowned. Instead each layer is cloned (``open_tree``), idmapped with
the pod's user namespace, the way its volumes are (the host's uid 0 is the pod's root, host
uid X + n its uid n), and attached at a dir of the container's own inside its private mount
namespace; the overlay stacks those (overlayfs takes idmapped layers since Linux 5.19, by
path). The container's upper dir and whatever the holder creates in the root for it
(mountPaths, workingDir, ``/proc``, ``/dev``) belong to the pod's root, so the container owns
its ``/`` and what it writes lands on the node with its mapped ids, as in its volumes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from nodelet.holder import mounts, protocol, userns
from nodelet.holder.mounts import MountError, step

OPEN_TREE_CLONE = 1
TTY_GID = 5
"""devpts's ``gid=``: the tty group, as containerd's default spec mounts it."""


@dataclass(frozen=True)
class Idmap:
    """Host ids of the pod's root user and group, and of its tty group."""

    uid: int
    gid: int
    tty_gid: int


def from_spec(spec: protocol.ContainerSpec) -> Idmap:
    maps = spec.get("user_namespace")
    if maps is None:
        raise MountError("no user namespace maps for an idmapped root")
    uid = userns.host_id(maps["uid_map"], 0)
    gid = userns.host_id(maps["gid_map"], 0)
    tty_gid = userns.host_id(maps["gid_map"], TTY_GID)
    if min(uid, gid, tty_gid) < 0:
        raise MountError("the pod's user namespace maps no root user or group")
    return Idmap(uid, gid, tty_gid)


def idmapped_layers(lowers: list[str], base: str, userns_fd: int) -> list[str]:
    """The layers as the pod's user namespace sees them, at ``base/N`` (same order)."""
    step(f"cannot create {base}", os.makedirs, base, 0o700, True)
    points = []
    for index, layer in enumerate(lowers):
        point = os.path.join(base, str(index))
        step(f"cannot idmap the image layer {layer}", _idmap_layer, layer, point, userns_fd)
        points.append(point)
    return points


def _idmap_layer(layer: str, point: str, userns_fd: int) -> None:
    os.makedirs(point, 0o700, exist_ok=True)
    tree = mounts.open_tree(mounts.AT_FDCWD, layer, OPEN_TREE_CLONE | os.O_CLOEXEC)
    try:
        mounts.mount_setattr(
            tree, "", mounts.AT_EMPTY_PATH, set_=mounts.MOUNT_ATTR_IDMAP, userns_fd=userns_fd
        )
        mounts.move_mount(tree, point)
    finally:
        os.close(tree)
