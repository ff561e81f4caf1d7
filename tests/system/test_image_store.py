"""``nodelet image`` against the real store: docker-archives and OCI layouts built here from
Debian's busybox-static (and re-written by Debian's skopeo), layers checked by mounting them as
an overlay and running busybox in it; rm/prune; interrupted and corrupt imports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.imagebuild import (
    BuiltImage,
    app_layer,
    busybox_layer,
    docker_archive,
    entry,
    file_entry,
    nodelet_image,
    nodelet_image_fails,
    require_binary,
    sha,
    tar_bytes,
)

pytestmark = pytest.mark.system


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "nlt-root"


def names(root: Path) -> list[str]:
    out = json.loads(nodelet_image(root, "ls", "-o", "json"))
    return sorted(row["name"] for row in out["images"])


def layer_dirs(root: Path) -> list[str]:
    return sorted(os.listdir(root / "images" / "layers"))


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[Path]:
    """A mount point; whatever is mounted there is unmounted afterwards."""
    merged = tmp_path / "merged"
    merged.mkdir()
    yield merged
    subprocess.run(["umount", "-l", str(merged)], check=False, capture_output=True)


def mount_image(root: Path, image: str, merged: Path, work: Path) -> None:
    info = json.loads(nodelet_image(root, "inspect", image))
    lower = ":".join(layer["dir"] for layer in reversed(info["layers"]))  # top layer first
    (work / "upper").mkdir(parents=True)
    (work / "work").mkdir()
    subprocess.run(
        [
            "mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={lower},upperdir={work}/upper,workdir={work}/work", str(merged),
        ],
        check=True,
    )  # fmt: skip


def test_docker_archive_and_oci_layout_import_share_layers_and_run(
    root: Path, tmp_path: Path, overlay: Path
) -> None:
    base = BuiltImage([busybox_layer()], compress=False)
    app = BuiltImage([busybox_layer(), app_layer()], compress=False)
    archive = tmp_path / "save.tar"
    archive.write_bytes(
        docker_archive([(app, ["nlt/app:1", "nlt/app:stable"]), (base, ["nlt/base"])])
    )
    out = nodelet_image(root, "import", str(archive))
    assert "docker.io/nlt/app:1, docker.io/nlt/app:stable" in out
    # the same image as an OCI layout tar on standard input, gzip layers this time
    oci = tmp_path / "oci"
    BuiltImage([busybox_layer(), app_layer()]).write_oci(oci, "v1")
    with tarfile.open(tmp_path / "oci.tar", "w") as tar:
        tar.add(oci, arcname=".")
    nodelet_image(
        root,
        "import",
        "-",
        "--repo",
        "localhost/nlt/oci",
        stdin=(tmp_path / "oci.tar").read_bytes(),
    )
    assert names(root) == [
        "docker.io/nlt/app:1", "docker.io/nlt/app:stable", "docker.io/nlt/base:latest",
        "localhost/nlt/oci:v1",
    ]  # fmt: skip
    # one dir per distinct diff, whatever the compression or the archive it came from
    assert layer_dirs(root) == sorted(sha(layer)[7:] for layer in app.layers)
    info = json.loads(nodelet_image(root, "inspect", "nlt/app:stable"))
    assert info["id"] == sha(app.config())
    assert info["repoTags"] == ["docker.io/nlt/app:1", "docker.io/nlt/app:stable"]
    assert info["config"]["Entrypoint"] == ["/bin/sh", "-c"]
    assert info["config"]["WorkingDir"] == "/app"
    assert info["config"]["User"] == "1000:1000"
    by_id = json.loads(nodelet_image(root, "inspect", sha(app.config())[7:19]))
    assert by_id["id"] == info["id"]
    # the layers are overlay lowerdirs as they are: the whiteout hides the base's motd
    mount_image(root, "localhost/nlt/oci:v1", overlay, tmp_path / "c1")
    assert not (overlay / "etc/motd").exists()
    assert (overlay / "etc/passwd").exists()
    ran = subprocess.run(
        ["chroot", str(overlay), "/bin/sh", "-c", "cat /app/hello; echo new > /written"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert ran.stdout == "hello from the app layer\n", ran.stderr
    assert not any((root / "images/layers" / d / "written").exists() for d in layer_dirs(root))


def test_skopeo_written_archives_import(root: Path, tmp_path: Path) -> None:
    skopeo = require_binary("skopeo", "skopeo")
    oci = tmp_path / "oci"
    image = BuiltImage([busybox_layer(), app_layer()])
    image.write_oci(oci, "1")
    for dest in (
        f"oci-archive:{tmp_path}/sk-oci.tar:1",
        f"docker-archive:{tmp_path}/sk-docker.tar:nlt/sk:2",
    ):
        subprocess.run(
            [skopeo, "--insecure-policy", "copy", "-q", f"oci:{oci}:1", dest],
            check=True,
            timeout=120,
        )
    nodelet_image(root, "import", str(tmp_path / "sk-oci.tar"), "--repo", "localhost/nlt/sk")
    nodelet_image(root, "import", str(tmp_path / "sk-docker.tar"))
    assert names(root) == ["docker.io/nlt/sk:2", "localhost/nlt/sk:1"]
    ids = {json.loads(nodelet_image(root, "inspect", n))["id"] for n in names(root)}
    assert ids == {sha(image.config())}
    assert layer_dirs(root) == sorted(sha(layer)[7:] for layer in image.layers)


def test_rm_untags_and_prune_frees_what_no_name_needs(root: Path, tmp_path: Path) -> None:
    base = BuiltImage([busybox_layer()], compress=False)
    app = BuiltImage([busybox_layer(), app_layer()], compress=False)
    archive = tmp_path / "save.tar"
    archive.write_bytes(docker_archive([(app, ["nlt/app:1", "nlt/app:2"]), (base, ["nlt/base:1"])]))
    nodelet_image(root, "import", str(archive))
    nodelet_image(root, "rm", "nlt/app:1")
    assert names(root) == ["docker.io/nlt/app:2", "docker.io/nlt/base:1"]
    assert len(layer_dirs(root)) == 2
    nodelet_image(root, "rm", sha(app.config())[7:19])  # by ID: every name of it
    assert names(root) == ["docker.io/nlt/base:1"]
    assert layer_dirs(root) == [sha(base.layers[0])[7:]]  # the app layer went, the shared one stays
    blobs = set(os.listdir(root / "images/blobs/sha256"))
    assert sha(app.config())[7:] not in blobs
    assert sha(base.config())[7:] in blobs
    nodelet_image(root, "rm", "nlt/base:1")
    assert names(root) == []
    assert layer_dirs(root) == []
    assert os.listdir(root / "images/blobs/sha256") == []
    assert "no image 'nlt/none'" in nodelet_image_fails(root, "rm", "nlt/none")


def test_killed_import_leaves_nothing_trusted(root: Path, tmp_path: Path) -> None:
    app = BuiltImage([busybox_layer(), app_layer()], compress=False)
    data = docker_archive([(app, ["nlt/app:1"])])
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodelet", "image", "import", "-", "--root-dir", str(root)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(data[: len(data) // 2])
    proc.stdin.flush()
    tmp = root / "images" / "tmp"
    deadline = time.monotonic() + 20
    while not (tmp.is_dir() and any(p.stat().st_size > 0 for p in tmp.iterdir())):
        assert time.monotonic() < deadline, "the import never started spooling"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert names(root) == []
    assert layer_dirs(root) == []
    assert os.listdir(root / "images/blobs/sha256") == []
    assert os.listdir(tmp) != []  # debris, never trusted; the next writer clears it
    out = nodelet_image(root, "import", "-", stdin=data)
    assert "docker.io/nlt/app:1" in out
    assert os.listdir(tmp) == []
    assert len(layer_dirs(root)) == 2


def test_corrupt_blob_and_wrong_diff_id_name_nothing(root: Path, tmp_path: Path) -> None:
    oci = tmp_path / "oci"
    image = BuiltImage([busybox_layer(), app_layer()])
    image.write_oci(oci, "1")
    top = sha(image.blobs()[1])[7:]
    blob = oci / "blobs/sha256" / top
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    stderr = nodelet_image_fails(root, "import", str(oci), "--repo", "nlt/x")
    assert f"expected sha256:{top}" in stderr
    assert names(root) == []
    assert top not in os.listdir(root / "images/blobs/sha256")
    # a layer whose bytes are fine but whose config lies about its diff_id
    liar = BuiltImage([busybox_layer(), app_layer()], compress=False)
    archive = docker_archive([(liar, ["nlt/liar:1"])])
    good_id, bad_id = sha(app_layer()), sha(b"not the layer")
    archive = archive.replace(good_id.encode(), bad_id.encode())
    stderr = nodelet_image_fails(root, "import", "-", stdin=archive)
    assert f"its config says {bad_id}" in stderr
    assert names(root) == []
    assert bad_id[7:] not in layer_dirs(root)
    assert not [d for d in os.listdir(root / "images/tmp")]


def test_malicious_layer_fails_the_import_and_writes_nothing_outside(
    root: Path, tmp_path: Path
) -> None:
    target = tmp_path / "outside"
    target.mkdir()
    evil = tar_bytes(
        [
            (entry("escape", tarfile.SYMTYPE, linkname=str(target)), None),
            file_entry("escape/planted", b"evil"),
        ]
    )
    image = BuiltImage([busybox_layer(), evil], compress=False)
    stderr = nodelet_image_fails(root, "import", "-", stdin=docker_archive([(image, ["nlt/e:1"])]))
    assert "'escape' is a symlink" in stderr
    assert os.listdir(target) == []
    assert names(root) == []
    assert layer_dirs(root) == [sha(busybox_layer())[7:]]  # the good layer is kept for reuse
