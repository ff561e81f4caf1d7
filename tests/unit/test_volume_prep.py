"""Volume preparation without mounts: hostPath types, the downwardAPI payload, the AtomicWriter
layout, canonical quantities and the emptyDir sizeLimit check (on a temp dir, no root needed
except where a test says)."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodelet.pod import atomicwriter, downwardapi, quantitytext
from nodelet.pod.atomicwriter import FileProjection
from nodelet.pod.volumes import VolumeError, empty_dir_overuse, empty_dir_path, prepare_volumes

pytestmark = pytest.mark.unit


def host_path(tmp_path: Path, path: str | Path, kind: str | None) -> dict[str, str]:
    source: dict[str, Any] = {"path": str(path)}
    if kind is not None:
        source["type"] = kind
    spec = {"volumes": [{"name": "hp", "hostPath": source}]}
    return prepare_volumes(tmp_path / "state", "uid1", spec)


def type_error(tmp_path: Path, path: str | Path, kind: str) -> str:
    with pytest.raises(VolumeError) as caught:
        host_path(tmp_path, path, kind)
    return str(caught.value)


@pytest.fixture
def a_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        yield path


def a_block_device() -> str:
    for entry in os.scandir("/dev"):
        if stat.S_ISBLK(entry.stat().st_mode):
            return entry.path
    pytest.skip("no block device in /dev")


# --- hostPath -------------------------------------------------------------------------------


def test_host_path_directory_or_create_makes_every_missing_parent(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    assert host_path(tmp_path, target, "DirectoryOrCreate") == {"hp": str(target)}
    umask = os.umask(0)
    os.umask(umask)
    assert target.is_dir()
    assert stat.S_IMODE(target.stat().st_mode) == 0o755 & ~umask


def test_host_path_directory_or_create_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    message = type_error(tmp_path, tmp_path / "f", "DirectoryOrCreate")
    assert message == f'volume "hp": hostPath type check failed: {tmp_path}/f is not a directory'


def test_host_path_directory(tmp_path: Path) -> None:
    assert host_path(tmp_path, tmp_path, "Directory") == {"hp": str(tmp_path)}
    missing = tmp_path / "missing"
    message = type_error(tmp_path, missing, "Directory")
    assert message == f'volume "hp": hostPath type check failed: {missing} is not a directory'
    assert not missing.exists()


def test_host_path_file_or_create_makes_the_file_but_not_its_parent(tmp_path: Path) -> None:
    target = tmp_path / "f"
    host_path(tmp_path, target, "FileOrCreate")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_ISREG(target.stat().st_mode)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644 & ~umask
    nested = tmp_path / "no-such-dir" / "f"
    message = type_error(tmp_path, nested, "FileOrCreate")
    assert message == f'volume "hp": No such file or directory: {nested}'
    assert not nested.parent.exists()


def test_host_path_file_or_create_refuses_a_directory(tmp_path: Path) -> None:
    message = type_error(tmp_path, tmp_path, "FileOrCreate")
    assert message == f'volume "hp": hostPath type check failed: {tmp_path} is not a file'


def test_host_path_file(tmp_path: Path, a_socket: Path) -> None:
    (tmp_path / "f").write_text("x")
    host_path(tmp_path, tmp_path / "f", "File")
    host_path(tmp_path, a_socket, "File")  # kubelet's IsFile: exists and is not a directory
    message = type_error(tmp_path, tmp_path, "File")
    assert message == f'volume "hp": hostPath type check failed: {tmp_path} is not a file'
    missing = tmp_path / "missing"
    message = type_error(tmp_path, missing, "File")
    assert message == f'volume "hp": hostPath type check failed: {missing} is not a file'
    assert not missing.exists()


def test_host_path_socket(tmp_path: Path, a_socket: Path) -> None:
    host_path(tmp_path, a_socket, "Socket")
    (tmp_path / "f").write_text("x")
    message = type_error(tmp_path, tmp_path / "f", "Socket")
    assert message == f'volume "hp": hostPath type check failed: {tmp_path}/f is not a socket file'


def test_host_path_char_device(tmp_path: Path) -> None:
    host_path(tmp_path, "/dev/null", "CharDevice")
    message = type_error(tmp_path, tmp_path, "CharDevice")
    assert message == (
        f'volume "hp": hostPath type check failed: {tmp_path} is not a character device'
    )


def test_host_path_block_device(tmp_path: Path) -> None:
    host_path(tmp_path, a_block_device(), "BlockDevice")
    message = type_error(tmp_path, "/dev/null", "BlockDevice")
    assert message == 'volume "hp": hostPath type check failed: /dev/null is not a block device'


def test_host_path_untyped_checks_nothing_and_creates_a_missing_dir(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    host_path(tmp_path, tmp_path / "f", None)
    host_path(tmp_path, tmp_path / "f", "")
    host_path(tmp_path, tmp_path / "new", None)
    assert (tmp_path / "new").is_dir()


def test_host_path_type_unknown_and_backsteps(tmp_path: Path) -> None:
    assert type_error(tmp_path, tmp_path, "Fifo") == 'volume "hp": Fifo is an invalid volume type'
    message = type_error(tmp_path, f"{tmp_path}/../x", "Directory")
    assert message == f"volume \"hp\": invalid HostPath `{tmp_path}/../x`: must not contain '..'"


# --- downwardAPI payload --------------------------------------------------------------------

META = {
    "name": "web-n1",
    "namespace": "prod",
    "uid": "u-1",
    "labels": {"tier": "front", "app": "web"},
    "annotations": {"note": 'say "hi"\n\tbye', "z": "é"},
}
SPEC = {
    "containers": [
        {"name": "app", "resources": {"limits": {"cpu": "1500m", "memory": "100Mi"}}},
        {"name": "bare"},
    ],
    "initContainers": [{"name": "init", "resources": {"requests": {"cpu": "100m"}}}],
}
ALLOCATABLE = {"cpu": "4", "memory": "8Gi"}


def field(path: str, field_path: str, **extra: Any) -> dict[str, Any]:
    return {"path": path, "fieldRef": {"fieldPath": field_path}, **extra}


def resource(path: str, container: str, name: str, divisor: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"containerName": container, "resource": name}
    if divisor is not None:
        ref["divisor"] = divisor
    return {"path": path, "resourceFieldRef": ref}


def collect(*items: dict[str, Any], **source: Any) -> dict[str, tuple[str, int]]:
    data = downwardapi.collect_data(
        {"items": list(items), **source}, META, SPEC, lambda: ALLOCATABLE
    )
    return {path: (p.data.decode(), p.mode) for path, p in data.items()}


def test_field_refs_of_the_metadata() -> None:
    got = collect(
        field("name", "metadata.name"),
        field("ns", "metadata.namespace"),
        field("uid", "metadata.uid"),
        field("labels", "metadata.labels"),
        field("annotations", "metadata.annotations"),
        field("one/app", "metadata.labels['app']"),
        field("none", "metadata.labels['missing']"),
        field("note", "metadata.annotations['note']"),
    )
    assert got["name"] == ("web-n1", 0o644)
    assert got["ns"][0] == "prod" and got["uid"][0] == "u-1"
    assert got["labels"][0] == 'app="web"\ntier="front"'
    assert got["annotations"][0] == 'note="say \\"hi\\"\\n\\tbye"\nz="é"'
    assert got["one/app"][0] == "web"
    assert got["none"][0] == ""
    # A subscripted value is raw, its lines sorted as kubelet's sortLines does.
    assert got["note"][0] == '\tbye\nsay "hi"'


def test_modes_default_and_per_item() -> None:
    got = collect(field("a", "metadata.name"), field("b", "metadata.name", mode=0o400))
    assert got["a"][1] == 0o644 and got["b"][1] == 0o400
    got = collect(
        field("a", "metadata.name"), field("b", "metadata.name", mode=0o600), defaultMode=0o440
    )
    assert got["a"][1] == 0o440 and got["b"][1] == 0o600


def test_resource_field_refs_with_divisors_round_up() -> None:
    got = collect(
        resource("cpu", "app", "limits.cpu"),
        resource("cpu-m", "app", "limits.cpu", "1m"),
        resource("mem", "app", "limits.memory"),
        resource("mem-mi", "app", "limits.memory", "1Mi"),
        resource("mem-g", "app", "limits.memory", "1G"),
        resource("req-cpu-m", "app", "requests.cpu", "1m"),  # defaulted from the limit
        resource("bare-cpu", "bare", "limits.cpu"),  # node allocatable
        resource("bare-mem", "bare", "limits.memory", "1Gi"),
        resource("bare-req", "bare", "requests.memory"),
        resource("init-cpu", "init", "requests.cpu", "1m"),
    )
    assert {k: v for k, (v, _) in got.items()} == {
        "cpu": "2",  # ceil(1.5)
        "cpu-m": "1500",
        "mem": str(100 * 2**20),
        "mem-mi": "100",
        "mem-g": "1",  # ceil(104857600 / 1e9)
        "req-cpu-m": "1500",
        "bare-cpu": "4",
        "bare-mem": "8",
        "bare-req": "0",
        "init-cpu": "100",
    }


def test_errors_are_kubelets_and_all_reported() -> None:
    with pytest.raises(downwardapi.DownwardAPIError) as caught:
        collect(resource("x", "nope", "limits.cpu"))
    assert str(caught.value) == "container nope not found"
    with pytest.raises(downwardapi.DownwardAPIError) as caught:
        collect(field("a", "spec.nodeName"), field("b", "metadata.name['x']"))
    assert str(caught.value) == (
        "[unsupported fieldPath: spec.nodeName, fieldPath \"metadata.name['x']\" does not "
        "support subscript]"
    )


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/etc/passwd", "invalid path: must be relative path: /etc/passwd"),
        ("a/../../b", "invalid path: must not contain '..': a/../../b"),
        ("..data", "invalid path: must not start with '..': ..data"),
        ("", 'invalid path: must not be empty: ""'),
        ("x" * 256, "invalid path: filenames must be less than or equal to 255 characters"),
    ],
)
def test_item_paths_are_validated(path: str, message: str) -> None:
    with pytest.raises(downwardapi.DownwardAPIError) as caught:
        collect(field(path, "metadata.name"))
    assert str(caught.value) == message


def test_go_quote() -> None:
    assert downwardapi.go_quote('a"b\\c\n\x01\x7fé\u200b') == '"a\\"b\\\\c\\n\\x01\\x7fé\\u200b"'


# --- AtomicWriter ---------------------------------------------------------------------------


def payload(**files: str) -> dict[str, FileProjection]:
    return {
        name.replace("__", "/"): FileProjection(text.encode(), 0o644)
        for name, text in files.items()
    }


def ts_dirs(target: Path) -> list[str]:
    return sorted(p.name for p in target.iterdir() if p.name.startswith("..2"))


def test_atomic_writer_layout(tmp_path: Path) -> None:
    written: list[str] = []
    assert atomicwriter.write(str(tmp_path), payload(name="web", k8s__labels="a=1"), written.append)
    [ts] = ts_dirs(tmp_path)
    assert written == [ts]
    assert os.readlink(tmp_path / "..data") == ts
    assert os.readlink(tmp_path / "name") == "..data/name"
    assert os.readlink(tmp_path / "k8s") == "..data/k8s"
    assert (tmp_path / "k8s" / "labels").read_text() == "a=1"
    assert stat.S_IMODE((tmp_path / ts).stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / ts / "name").stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == sorted(["..data", ts, "name", "k8s"])


def test_atomic_writer_rewrite_swaps_data_and_drops_the_old_dir(tmp_path: Path) -> None:
    atomicwriter.write(str(tmp_path), payload(name="web", old="x"))
    [first] = ts_dirs(tmp_path)
    assert not atomicwriter.write(str(tmp_path), payload(name="web", old="x"))  # unchanged
    assert ts_dirs(tmp_path) == [first]
    assert atomicwriter.write(str(tmp_path), payload(name="api"))
    [second] = ts_dirs(tmp_path)
    assert second != first
    assert os.readlink(tmp_path / "..data") == second
    assert (tmp_path / "name").read_text() == "api"
    assert not os.path.lexists(tmp_path / "old")
    assert not os.path.lexists(tmp_path / "..data_tmp")


def test_atomic_writer_mode_ignores_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomicwriter.write(str(tmp_path), {"f": FileProjection(b"x", 0o644)})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


# --- quantities and the emptyDir sizeLimit --------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("1Gi", "1Gi"),
        ("1024Mi", "1Gi"),
        ("1.5Gi", "1536Mi"),
        ("0.5Ki", "512"),
        ("1000M", "1G"),
        ("1000", "1k"),
        ("0.5", "500m"),
        ("100", "100"),
        ("1e3", "1e3"),
        ("1500e3", "1500e3"),
        (0, "0"),
    ],
)
def test_canonical_quantity(given: str, canonical: str) -> None:
    assert quantitytext.canonical(given) == canonical


def test_empty_dir_overuse_message(tmp_path: Path) -> None:
    state = tmp_path / "state"
    spec = {
        "volumes": [
            {"name": "free", "emptyDir": {}},
            {"name": "cache", "emptyDir": {"sizeLimit": "64Ki"}},
        ]
    }
    prepare_volumes(state, "uid1", spec)
    assert empty_dir_overuse(state, "uid1", spec) is None
    (empty_dir_path(state, "uid1", "free") / "big").write_bytes(os.urandom(1 << 20))
    assert empty_dir_overuse(state, "uid1", spec) is None  # no limit there
    cache = empty_dir_path(state, "uid1", "cache")
    (cache / "sub").mkdir()
    (cache / "sub" / "a").write_bytes(os.urandom(40 << 10))
    os.link(cache / "sub" / "a", cache / "a-again")  # one file, counted once
    assert empty_dir_overuse(state, "uid1", spec) is None
    (cache / "sub" / "b").write_bytes(os.urandom(40 << 10))
    assert empty_dir_overuse(state, "uid1", spec) == (
        'Usage of EmptyDir volume "cache" exceeds the limit "64Ki". '
    )


def test_empty_dir_overuse_counts_allocated_blocks_not_sizes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    spec = {"volumes": [{"name": "v", "emptyDir": {"sizeLimit": "1024Ki"}}]}
    prepare_volumes(state, "uid1", spec)
    with open(empty_dir_path(state, "uid1", "v") / "sparse", "wb") as sparse:
        sparse.truncate(100 << 20)
    assert empty_dir_overuse(state, "uid1", spec) is None
    (empty_dir_path(state, "uid1", "v") / "real").write_bytes(os.urandom(2 << 20))
    assert empty_dir_overuse(state, "uid1", spec) == (
        'Usage of EmptyDir volume "v" exceeds the limit "1Mi". '
    )
