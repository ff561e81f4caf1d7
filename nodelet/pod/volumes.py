"""Pod volumes on the host, set up and torn down as kubelet's volume plugins do.

Layout (kubelet's): ``<root-dir>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`` and
``.../kubernetes.io~downward-api/<name>``; a volume that is set up has a ready marker in
``<root-dir>/pods/<uid>/plugins/kubernetes.io~empty-dir/<name>/ready``, so an agent restart
neither mounts a second tmpfs nor re-walks the ownership. ``medium: Memory`` emptyDirs and
downwardAPI volumes are tmpfs mounts; removal unmounts every mount below the pod's directory
before anything is deleted. hostPath is the only way a pod writes elsewhere on the host, and is
never chowned.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from nodelet.cgroups.quantity import QuantityError, bytes_of
from nodelet.cgroups.resources import pod_limits
from nodelet.model import StaticPod
from nodelet.pod import atomicwriter, downwardapi, mounts, quantitytext
from nodelet.pod.ownership import set_volume_ownership
from nodelet.util import safepath

EMPTY_DIR_PLUGIN = "kubernetes.io~empty-dir"
DOWNWARD_API_PLUGIN = "kubernetes.io~downward-api"
EMPTY_DIR_MODE = 0o777
"""kubelet's emptyDir mode: any container user can write (issue 2630)."""
MEMORY = "Memory"
USAGE_WALK_MAX_ENTRIES = 200_000
"""How many entries ``empty_dir_overuse`` looks at in one volume before it stops counting."""

log = logging.getLogger(__name__)


class VolumeError(Exception):
    """A volume cannot be set up; the message names the volume and why (kubelet's FailedMount)."""


def pod_dir(pods_state_dir: Path, pod_uid: str) -> Path:
    return safepath.child(pods_state_dir, pod_uid)


def _volume_path(pods_state_dir: Path, pod_uid: str, plugin: str, name: str) -> Path:
    return safepath.child(pod_dir(pods_state_dir, pod_uid) / "volumes" / plugin, name)


def empty_dir_path(pods_state_dir: Path, pod_uid: str, name: str) -> Path:
    return _volume_path(pods_state_dir, pod_uid, EMPTY_DIR_PLUGIN, name)


def downward_api_path(pods_state_dir: Path, pod_uid: str, name: str) -> Path:
    return _volume_path(pods_state_dir, pod_uid, DOWNWARD_API_PLUGIN, name)


def _ready_file(pods_state_dir: Path, pod_uid: str, name: str) -> Path:
    plugins = pod_dir(pods_state_dir, pod_uid) / "plugins" / EMPTY_DIR_PLUGIN
    return safepath.child(plugins, name) / "ready"


# --- hostPath -------------------------------------------------------------------------------


def _file_type(path: str) -> str | None:
    """hostutil's ``GetFileType``: the kind of what ``path`` resolves to, None for a FIFO or
    anything else kubelet does not recognise (or when it cannot be stat'ed)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    kinds: list[tuple[Callable[[int], bool], str]] = [
        (stat.S_ISSOCK, "Socket"),
        (stat.S_ISCHR, "CharDevice"),
        (stat.S_ISBLK, "BlockDevice"),
        (stat.S_ISDIR, "Directory"),
        (stat.S_ISREG, "File"),
    ]
    return next((kind for check, kind in kinds if check(mode)), None)


_HOST_PATH_TYPES = {
    "DirectoryOrCreate": "Directory",
    "Directory": "Directory",
    "FileOrCreate": "File",
    "File": "File",
    "Socket": "Socket",
    "CharDevice": "CharDevice",
    "BlockDevice": "BlockDevice",
}
"""A hostPath type to the file type it checks for (once the ``...OrCreate`` created nothing)."""
_DESCRIPTIONS = {
    "Directory": "a directory",
    "File": "a file",
    "Socket": "a socket file",
    "CharDevice": "a character device",
    "BlockDevice": "a block device",
}


def _check_host_path_type(path: str, kind: str) -> None:
    """kubelet 1.20-1.2x's ``checkTypeInternal``: the ``...OrCreate`` types create what is
    missing (a directory with every missing parent, 0755; a file, 0644, but never its parent
    directory), the others only check. ``File`` accepts anything that exists and is not a
    directory, as kubelet's ``IsFile`` does. Modes are subject to the umask, as in kubelet."""
    exists = os.path.exists(path)
    if kind == "DirectoryOrCreate" and not exists:
        os.makedirs(path, mode=0o755, exist_ok=True)
        return
    if kind == "FileOrCreate" and not exists:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o644))
        return
    wanted = _HOST_PATH_TYPES.get(kind)
    if wanted is None:
        raise VolumeError(f"{kind} is an invalid volume type")
    found = _file_type(path)
    # kubelet's IsFile is "exists and is not a directory"; the others compare the type.
    matches = exists and found != "Directory" if wanted == "File" else found == wanted
    if not matches:
        raise VolumeError(f"hostPath type check failed: {path} is not {_DESCRIPTIONS[wanted]}")


def _prepare_host_path(source: Mapping[str, Any]) -> str:
    path: str = source["path"]
    if ".." in path.split("/"):
        raise VolumeError(f"invalid HostPath `{path}`: must not contain '..'")
    kind = source.get("type") or ""
    if kind:
        _check_host_path_type(path, kind)
    elif not os.path.lexists(path):
        # Untyped: kubelet checks nothing; the runtime (containerd) creates a missing bind
        # source as a directory, 0755.
        os.makedirs(path, mode=0o755, exist_ok=True)
    return path


# --- emptyDir and the tmpfs under downwardAPI -----------------------------------------------


def _setup_dir(path: Path) -> None:
    """kubelet's ``setupDir``: create with 0777 and chmod when the umask took bits away."""
    path.mkdir(mode=EMPTY_DIR_MODE, parents=True, exist_ok=True)
    if stat.S_IMODE(os.lstat(path).st_mode) != EMPTY_DIR_MODE:
        path.chmod(EMPTY_DIR_MODE)


def _is_tmpfs_mount(path: Path) -> bool:
    entry = mounts.mount_at(str(path))
    return entry is not None and entry.fstype == "tmpfs"


def _tmpfs_size(spec: Mapping[str, Any], size_limit: Any) -> int | None:
    """kubelet's ``calculateEmptyDirMemorySize`` without the node-allocatable cap: the pod's
    memory limit (when every container has one), lowered to ``sizeLimit`` when that is smaller;
    None leaves the kernel's default (half of RAM)."""
    size = pod_limits(spec, None).memory_limit
    if size is not None and size <= 0:
        size = None
    if size_limit is not None:
        wanted = bytes_of(size_limit)
        if wanted > 0 and (size is None or wanted <= size):
            size = wanted
    return size


def _setup_empty_dir(
    path: Path, ready: Path, memory: bool, size: int | None, ownership: Callable[[], None]
) -> None:
    """kubelet's ``emptyDir.SetUpAt``: nothing to do when it is ready (and, for Memory, still
    mounted); else make the dir, mount the tmpfs (unless one is there already), then ownership."""
    if ready.exists() and (_is_tmpfs_mount(path) if memory else path.is_dir()):
        return
    _setup_dir(path)
    if memory and not _is_tmpfs_mount(path):
        # No mode option: the tmpfs root is the kernel's 1777, as under kubelet.
        mounts.mount_tmpfs(str(path), [f"size={size}"] if size else [])
    ownership()
    ready.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    ready.touch(mode=0o600)


def _prepare_empty_dir(
    pods_state_dir: Path,
    pod_uid: str,
    name: str,
    source: Mapping[str, Any],
    spec: Mapping[str, Any],
) -> str:
    path = empty_dir_path(pods_state_dir, pod_uid, name)
    medium = source.get("medium") or ""
    if medium not in ("", MEMORY):
        raise VolumeError(f'unknown storage medium "{medium}" (nodelet has no hugepages)')
    memory = medium == MEMORY
    size = _tmpfs_size(spec, source.get("sizeLimit")) if memory else None
    fs_group, policy = _fs_group(spec)
    _setup_empty_dir(
        path,
        _ready_file(pods_state_dir, pod_uid, name),
        memory,
        size,
        lambda: set_volume_ownership(str(path), fs_group, policy, read_only=False),
    )
    return str(path)


# --- downwardAPI ----------------------------------------------------------------------------


def _prepare_downward_api(
    pods_state_dir: Path,
    pod_uid: str,
    name: str,
    source: Mapping[str, Any],
    spec: Mapping[str, Any],
    pod: StaticPod | None,
    allocatable: Callable[[], downwardapi.Allocatable],
) -> str:
    """A Memory emptyDir (kubelet wraps one) holding the files in the AtomicWriter layout. The
    fsGroup is applied to every new payload with no change policy, as kubelet does: skipping on
    a matching root would leave the new files without the group."""
    if pod is None:
        raise VolumeError("a downwardAPI volume needs the pod's metadata")
    path = downward_api_path(pods_state_dir, pod_uid, name)
    fs_group, _ = _fs_group(spec)
    _setup_empty_dir(
        path,
        _ready_file(pods_state_dir, pod_uid, name),
        True,
        _tmpfs_size(spec, None),
        lambda: set_volume_ownership(str(path), fs_group, None, read_only=False),
    )
    metadata = {
        **(pod.manifest.get("metadata") or {}),
        "name": pod.name,
        "namespace": pod.namespace,
        "uid": pod.uid,
    }
    try:
        payload = downwardapi.collect_data(source, metadata, spec, allocatable)
        atomicwriter.write(
            str(path),
            payload,
            lambda _: set_volume_ownership(str(path), fs_group, None, read_only=True),
        )
    except (downwardapi.DownwardAPIError, ValueError) as err:
        raise VolumeError(str(err)) from None
    return str(path)


# --- the pod's volumes ----------------------------------------------------------------------


def _fs_group(spec: Mapping[str, Any]) -> tuple[int | None, str | None]:
    context = spec.get("securityContext") or {}
    return context.get("fsGroup"), context.get("fsGroupChangePolicy")


def prepare_volumes(
    pods_state_dir: Path,
    pod_uid: str,
    spec: dict[str, Any],
    *,
    pod: StaticPod | None = None,
    allocatable: downwardapi.Allocatable | None = None,
) -> dict[str, str]:
    """Create, mount or check every volume; returns the host path backing each volume name.

    Idempotent: an agent that restarts calls it again for running pods. ``pod`` gives the
    metadata downwardAPI volumes project; ``allocatable`` (the Node's, by resource name) fills
    a ``resourceFieldRef`` to a limit the container does not set, else this machine's is read.
    """

    def node_allocatable() -> downwardapi.Allocatable:
        return allocatable if allocatable is not None else downwardapi.machine_allocatable()

    paths: dict[str, str] = {}
    for volume in spec.get("volumes") or []:
        name = volume["name"]
        try:
            if "emptyDir" in volume:
                source = volume["emptyDir"] or {}
                paths[name] = _prepare_empty_dir(pods_state_dir, pod_uid, name, source, spec)
            elif "hostPath" in volume:
                paths[name] = _prepare_host_path(volume["hostPath"])
            elif "downwardAPI" in volume:
                source = volume["downwardAPI"] or {}
                paths[name] = _prepare_downward_api(
                    pods_state_dir, pod_uid, name, source, spec, pod, node_allocatable
                )
        except VolumeError as err:
            raise VolumeError(f'volume "{name}": {err}') from None
        except OSError as err:
            raise VolumeError(f'volume "{name}": {err.strerror}: {err.filename}') from err
        except (safepath.UnsafePathError, QuantityError) as err:
            raise VolumeError(f'volume "{name}": {err}') from err
    return paths


def remove_pod_volumes(pods_state_dir: Path, pod_uid: str) -> None:
    """Remove everything the pod owned under the state dir; hostPaths are never touched.

    Every mount below the pod's directory (tmpfs volumes) is unmounted first, deepest first;
    if one is still there afterwards, nothing is deleted (OSError), so a delete never reaches
    through a mount into what it covers.
    """
    root = pod_dir(pods_state_dir, pod_uid)
    if root.is_symlink() or not safepath.is_within(pods_state_dir, root):
        raise safepath.UnsafePathError(f"refusing to clean {root}: not a directory of nodelet's")
    for mount_point in mounts.mounts_below(str(root)):
        mounts.unmount(mount_point)
    left = mounts.mounts_below(str(root))
    if left:
        raise OSError(errno.EBUSY, f"still mounted, not removing {root}", left[0])
    safepath.remove_tree(pods_state_dir, root)


# --- emptyDir sizeLimit (the eviction manager's check) --------------------------------------


def _usage_exceeds(path: Path, limit: int) -> bool:
    """Whether the bytes allocated under ``path`` (st_blocks, hard links once, this filesystem
    only, symlinks not followed) exceed ``limit``. Stops as soon as they do, and after
    ``USAGE_WALK_MAX_ENTRIES`` entries (then says no: an unfinished count is not an eviction)."""
    try:
        root = os.lstat(path)
    except OSError:
        return False
    used, seen, entries = root.st_blocks * 512, set(), 0
    pending = [str(path)]
    while pending:
        try:
            with os.scandir(pending.pop()) as listing:
                for entry in listing:
                    entries += 1
                    if entries > USAGE_WALK_MAX_ENTRIES:
                        return False
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if info.st_dev != root.st_dev:
                        continue
                    if info.st_nlink > 1:
                        if (info.st_ino, info.st_dev) in seen:
                            continue
                        seen.add((info.st_ino, info.st_dev))
                    used += info.st_blocks * 512
                    if used > limit:
                        return True
                    if stat.S_ISDIR(info.st_mode):
                        pending.append(entry.path)
        except OSError:
            continue
    return used > limit


def empty_dir_overuse(pods_state_dir: Path, pod_uid: str, spec: Mapping[str, Any]) -> str | None:
    """The eviction message when an emptyDir uses more than its ``sizeLimit``, else None.

    kubelet's eviction manager checks this on every housekeeping pass and evicts the pod
    (reason ``Evicted``, grace period 0) with exactly this message; call it periodically.
    """
    for volume in spec.get("volumes") or []:
        source = volume.get("emptyDir") if isinstance(volume, Mapping) else None
        if not isinstance(source, Mapping) or source.get("sizeLimit") is None:
            continue
        try:
            limit = bytes_of(source["sizeLimit"])
            path = empty_dir_path(pods_state_dir, pod_uid, volume["name"])
        except (QuantityError, safepath.UnsafePathError):
            continue
        if limit > 0 and _usage_exceeds(path, limit):
            size = quantitytext.canonical(source["sizeLimit"])
            name = downwardapi.go_quote(volume["name"])
            return (
                f"Usage of EmptyDir volume {name} exceeds the limit {downwardapi.go_quote(size)}. "
            )
    return None


def sweep_orphan_volumes(pods_state_dir: Path, keep: Collection[str]) -> list[str]:
    """kubelet's orphaned-pod cleanup: remove the state dirs (unmounting their tmpfs volumes)
    of pods that are neither desired nor running, left by pods removed while the agent was
    down or whose removal failed. Returns the UIDs removed; a dir that cannot be is logged."""
    removed: list[str] = []
    try:
        entries = sorted(os.listdir(pods_state_dir))
    except FileNotFoundError:
        return removed
    for uid in entries:
        if uid in keep:
            continue
        try:
            remove_pod_volumes(pods_state_dir, uid)
            removed.append(uid)
        except (OSError, safepath.UnsafePathError) as err:
            log.error("cannot remove the state dir of orphaned pod %s: %s", uid, err)
    return removed
