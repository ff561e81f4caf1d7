"""Volumes that need root: tmpfs mounts for Memory emptyDirs and downwardAPI volumes, their
removal, and fsGroup ownership. Every mount is made under the test's own state dir, and a
fixture detaches whatever is still mounted there, even when a test fails."""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodelet.model import StaticPod
from nodelet.pod import mounts
from nodelet.pod.ownership import ALWAYS, ON_ROOT_MISMATCH, set_volume_ownership
from nodelet.pod.volumes import (
    downward_api_path,
    empty_dir_path,
    pod_dir,
    prepare_volumes,
    remove_pod_volumes,
)

pytestmark = pytest.mark.system

UID = "nlt-uid-1"
FS_GROUP = 54321
_libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "state"
    root.mkdir()
    try:
        yield root
    finally:
        for point in mounts.mounts_below(str(tmp_path)):
            _libc.umount2(os.fsencode(point), mounts.MNT_DETACH)


def mounted(path: Path) -> list[mounts.MountEntry]:
    real = os.path.realpath(path)
    return [e for e in mounts.mount_table() if e.mount_point == real]


def make_pod(spec: dict[str, Any]) -> StaticPod:
    manifest = {"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": spec}
    return StaticPod(UID, "prod", "web-n1", "/m/web.yaml", manifest)


def memory_spec(**empty_dir: Any) -> dict[str, Any]:
    return {
        "containers": [{"name": "c"}],
        "volumes": [{"name": "mem", "emptyDir": {"medium": "Memory", **empty_dir}}],
    }


def test_memory_empty_dir_is_a_tmpfs_of_the_size_limit(state: Path) -> None:
    spec = memory_spec(sizeLimit="16Mi")
    paths = prepare_volumes(state, UID, spec)
    path = empty_dir_path(state, UID, "mem")
    assert paths == {"mem": str(path)}
    [entry] = mounted(path)
    assert entry.fstype == "tmpfs"
    assert "size=16384k" in entry.super_options.split(",")
    fs = os.statvfs(path)
    assert fs.f_blocks * fs.f_frsize == 16 << 20
    assert stat.S_IMODE(path.stat().st_mode) == 0o1777  # tmpfs's own root mode, as kubelet
    (path / "data").write_bytes(b"x" * 4096)
    assert not (state / UID / "volumes").joinpath("x").exists()


def test_memory_empty_dir_size_is_the_pod_limit_when_smaller(state: Path) -> None:
    spec = memory_spec(sizeLimit="64Mi")
    spec["containers"] = [{"name": "c", "resources": {"limits": {"memory": "8Mi"}}}]
    prepare_volumes(state, UID, spec)
    [entry] = mounted(empty_dir_path(state, UID, "mem"))
    assert "size=8192k" in entry.super_options.split(",")


def test_preparing_again_does_not_stack_a_second_tmpfs(state: Path) -> None:
    spec = memory_spec(sizeLimit="4Mi")
    prepare_volumes(state, UID, spec)
    path = empty_dir_path(state, UID, "mem")
    (path / "kept").write_text("still here")
    prepare_volumes(state, UID, spec)  # an agent restart
    assert len(mounted(path)) == 1
    assert (path / "kept").read_text() == "still here"
    # Mounted but without the ready marker (an older agent): still no second mount.
    (pod_dir(state, UID) / "plugins" / "kubernetes.io~empty-dir" / "mem" / "ready").unlink()
    prepare_volumes(state, UID, spec)
    assert len(mounted(path)) == 1


def test_removal_unmounts_then_deletes(state: Path) -> None:
    spec = memory_spec(sizeLimit="4Mi")
    spec["volumes"].append({"name": "disk", "emptyDir": {}})
    prepare_volumes(state, UID, spec)
    (empty_dir_path(state, UID, "mem") / "f").write_text("x")
    remove_pod_volumes(state, UID)
    assert mounts.mounts_below(str(state)) == []
    assert not pod_dir(state, UID).exists()


def test_removal_never_deletes_through_a_mount(state: Path, tmp_path: Path) -> None:
    """Whatever is mounted below the pod dir (here a bind of a dir outside it) is unmounted
    first: the files it showed survive, outside the pod dir."""
    prepare_volumes(state, UID, {"volumes": [{"name": "disk", "emptyDir": {}}]})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    target = empty_dir_path(state, UID, "disk")
    assert _libc.mount(os.fsencode(outside), os.fsencode(target), None, 4096, None) == 0
    (target / "nested").mkdir()
    assert _libc.mount(b"tmpfs", os.fsencode(target / "nested"), b"tmpfs", 0, None) == 0
    remove_pod_volumes(state, UID)
    assert (outside / "precious").read_text() == "keep me"
    assert mounts.mounts_below(str(state)) == []
    assert not pod_dir(state, UID).exists()


def test_removal_deletes_nothing_while_a_mount_stays(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unmount that fails, or one that leaves a mount behind (injected at the unmount call),
    leaves the whole tree in place: the mount table is read again before anything is deleted."""
    prepare_volumes(state, UID, memory_spec(sizeLimit="4Mi"))
    path = empty_dir_path(state, UID, "mem")
    (path / "f").write_text("x")

    def refuse(target: str) -> None:
        raise OSError(1, "unmount: Operation not permitted", target)

    monkeypatch.setattr(mounts, "unmount", refuse)
    with pytest.raises(OSError, match="not permitted"):
        remove_pod_volumes(state, UID)
    monkeypatch.setattr(mounts, "unmount", lambda target: None)
    with pytest.raises(OSError, match="still mounted"):
        remove_pod_volumes(state, UID)
    assert (path / "f").read_text() == "x"
    assert len(mounted(path)) == 1


def test_fs_group_ownership_and_setgid_on_empty_dirs(state: Path) -> None:
    spec = memory_spec(sizeLimit="4Mi")
    spec["volumes"].append({"name": "disk", "emptyDir": {}})
    spec["securityContext"] = {"fsGroup": FS_GROUP}
    prepare_volumes(state, UID, spec)
    for name in ("mem", "disk"):
        info = empty_dir_path(state, UID, name).stat()
        assert info.st_gid == FS_GROUP
        assert info.st_uid == 0
        assert info.st_mode & stat.S_ISGID
        assert stat.S_IMODE(info.st_mode) & 0o770 == 0o770
        made = empty_dir_path(state, UID, name) / "new"
        made.write_text("x")
        assert made.stat().st_gid == FS_GROUP  # inherited through setgid


def test_host_path_is_never_chowned(state: Path, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    spec = {
        "securityContext": {"fsGroup": FS_GROUP},
        "volumes": [{"name": "h", "hostPath": {"path": str(host), "type": "Directory"}}],
    }
    prepare_volumes(state, UID, spec)
    assert host.stat().st_gid == 0
    assert not host.stat().st_mode & stat.S_ISGID


def tree(root: Path) -> Path:
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("x")
    os.chmod(root / "d" / "f", 0o600)
    os.symlink("/etc/hostname", root / "link")
    return root


def test_ownership_always_is_recursive(tmp_path: Path) -> None:
    root = tree(tmp_path / "v")
    set_volume_ownership(str(root), FS_GROUP, ALWAYS, read_only=False)
    for path in (root, root / "d", root / "d" / "f"):
        assert path.stat().st_gid == FS_GROUP
    assert stat.S_IMODE((root / "d" / "f").stat().st_mode) == 0o660
    assert stat.S_IMODE((root / "d").stat().st_mode) & 0o2770 == 0o2770
    assert os.lstat(root / "link").st_gid == FS_GROUP
    assert os.stat("/etc/hostname").st_gid != FS_GROUP  # the link was not followed


def test_ownership_read_only_masks(tmp_path: Path) -> None:
    root = tree(tmp_path / "v")
    set_volume_ownership(str(root), FS_GROUP, None, read_only=True)
    assert stat.S_IMODE((root / "d" / "f").stat().st_mode) == 0o640


def test_ownership_on_root_mismatch_skips_a_matching_root(tmp_path: Path) -> None:
    root = tree(tmp_path / "v")
    os.chown(root, -1, FS_GROUP)
    os.chmod(root, 0o2775)
    set_volume_ownership(str(root), FS_GROUP, ON_ROOT_MISMATCH, read_only=False)
    assert (root / "d" / "f").stat().st_gid == 0  # skipped: the root already matched
    os.chmod(root, 0o775)  # no setgid: a mismatch
    set_volume_ownership(str(root), FS_GROUP, ON_ROOT_MISMATCH, read_only=False)
    assert (root / "d" / "f").stat().st_gid == FS_GROUP


def test_empty_dir_honours_on_root_mismatch_policy(state: Path) -> None:
    spec: dict[str, Any] = {
        "securityContext": {"fsGroup": FS_GROUP, "fsGroupChangePolicy": ON_ROOT_MISMATCH},
        "volumes": [{"name": "disk", "emptyDir": {}}],
    }
    prepare_volumes(state, UID, spec)
    assert empty_dir_path(state, UID, "disk").stat().st_gid == FS_GROUP


def downward_spec() -> dict[str, Any]:
    return {
        "securityContext": {"fsGroup": FS_GROUP},
        "containers": [{"name": "c", "resources": {"limits": {"memory": "32Mi"}}}],
        "volumes": [
            {
                "name": "info",
                "downwardAPI": {
                    "items": [
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                        {"path": "meta/name", "fieldRef": {"fieldPath": "metadata.name"}},
                        {
                            "path": "mem",
                            "resourceFieldRef": {
                                "containerName": "c",
                                "resource": "limits.memory",
                                "divisor": "1Mi",
                            },
                        },
                    ]
                },
            }
        ],
    }


def test_downward_api_volume(state: Path) -> None:
    spec = downward_spec()
    paths = prepare_volumes(state, UID, spec, pod=make_pod(spec))
    path = downward_api_path(state, UID, "info")
    assert paths == {"info": str(path)}
    [entry] = mounted(path)  # kubelet wraps a Memory emptyDir
    assert entry.fstype == "tmpfs" and "size=32768k" in entry.super_options.split(",")
    assert (path / "labels").read_text() == 'app="web"'
    assert (path / "meta" / "name").read_text() == "web-n1"
    assert (path / "mem").read_text() == "32"
    data = os.readlink(path / "..data")
    assert data.startswith("..") and (path / data).is_dir()
    assert os.readlink(path / "labels") == "..data/labels"
    info = (path / data / "labels").stat()
    assert stat.S_IMODE(info.st_mode) == 0o644 and info.st_gid == FS_GROUP
    assert (path / data).stat().st_mode & stat.S_ISGID


def test_downward_api_rewrite_swaps_data_atomically(state: Path) -> None:
    spec = downward_spec()
    prepare_volumes(state, UID, spec, pod=make_pod(spec))
    path = downward_api_path(state, UID, "info")
    first = os.readlink(path / "..data")
    prepare_volumes(state, UID, spec, pod=make_pod(spec))  # same content: nothing written
    assert os.readlink(path / "..data") == first
    pod = make_pod(spec)
    pod.manifest["metadata"]["labels"] = {"app": "api", "v": "2"}
    prepare_volumes(state, UID, spec, pod=pod)
    second = os.readlink(path / "..data")
    assert second != first
    assert not (path / first).exists()
    assert (path / "labels").read_text() == 'app="api"\nv="2"'
    assert (path / second / "labels").stat().st_gid == FS_GROUP
    assert len(mounted(path)) == 1
    remove_pod_volumes(state, UID)
    assert mounted(path) == [] and not pod_dir(state, UID).exists()
