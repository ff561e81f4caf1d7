"""Pod volumes on the host: emptyDir directories the pod owns, hostPath checks kubelet makes.

emptyDirs live under ``<root-dir>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`` (kubelet's
layout) and are removed with the pod. hostPath is the only way a pod writes elsewhere on the host.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodelet.util import safepath


class VolumeError(Exception):
    """A volume cannot be set up; the message names the volume and why (kubelet's FailedMount)."""


def pod_dir(pods_state_dir: Path, pod_uid: str) -> Path:
    return safepath.child(pods_state_dir, pod_uid)


def empty_dir_path(pods_state_dir: Path, pod_uid: str, name: str) -> Path:
    volumes = pod_dir(pods_state_dir, pod_uid) / "volumes" / "kubernetes.io~empty-dir"
    return safepath.child(volumes, name)


def _is_kind(check: Callable[[int], bool]) -> Callable[[str], bool]:
    def test(path: str) -> bool:
        try:
            return check(os.stat(path).st_mode)
        except OSError:
            return False

    return test


_HOST_PATH_CHECKS: dict[str, tuple[Callable[[str], bool], str]] = {
    "Directory": (_is_kind(stat.S_ISDIR), "a directory"),
    "File": (_is_kind(stat.S_ISREG), "a file"),
    "Socket": (_is_kind(stat.S_ISSOCK), "a socket"),
    "CharDevice": (_is_kind(stat.S_ISCHR), "a character device"),
    "BlockDevice": (_is_kind(stat.S_ISBLK), "a block device"),
}


def _prepare_host_path(name: str, source: dict[str, Any]) -> str:
    path: str = source["path"]
    kind = source.get("type") or ""
    if kind == "DirectoryOrCreate" or (kind == "" and not os.path.lexists(path)):
        # An untyped missing hostPath is created as a directory, as containerd does.
        if not os.path.isdir(path):
            os.makedirs(path, mode=0o755, exist_ok=True)
    elif kind == "FileOrCreate":
        if not os.path.exists(path):
            if not os.path.isdir(os.path.dirname(path)):
                raise VolumeError(
                    f'volume "{name}": hostPath type FileOrCreate does not create the parent '
                    f"directory of {path}"
                )
            Path(path).touch(mode=0o644)
    elif kind in _HOST_PATH_CHECKS:
        check, what = _HOST_PATH_CHECKS[kind]
        if not check(path):
            raise VolumeError(f'volume "{name}": hostPath type check failed: {path} is not {what}')
    return path


def prepare_volumes(pods_state_dir: Path, pod_uid: str, spec: dict[str, Any]) -> dict[str, str]:
    """Create or check every volume; returns the host path backing each volume name."""
    paths: dict[str, str] = {}
    for volume in spec.get("volumes") or []:
        name = volume["name"]
        try:
            if "emptyDir" in volume:
                path = empty_dir_path(pods_state_dir, pod_uid, name)
                path.mkdir(mode=0o777, parents=True, exist_ok=True)
                path.chmod(0o777)  # kubelet's emptyDir mode: any container user can write
                paths[name] = str(path)
            elif "hostPath" in volume:
                paths[name] = _prepare_host_path(name, volume["hostPath"])
        except OSError as err:
            raise VolumeError(f'volume "{name}": {err.strerror}: {err.filename}') from err
        except safepath.UnsafePathError as err:
            raise VolumeError(f'volume "{name}": {err}') from err
    return paths


def remove_pod_volumes(pods_state_dir: Path, pod_uid: str) -> None:
    """Remove everything the pod owned under the state dir; hostPaths are never touched."""
    safepath.remove_tree(pods_state_dir, pod_dir(pods_state_dir, pod_uid))
