"""``nodelet image pull`` from a real registry: Debian's docker-registry (Distribution 2.8) on a
free loopback port, images pushed by Debian's skopeo, requests counted in the registry's log."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.imagebuild import (
    BuiltImage,
    app_layer,
    busybox_layer,
    entry,
    file_entry,
    nodelet_image,
    nodelet_image_fails,
    require_binary,
    sha,
    tar_bytes,
)

pytestmark = pytest.mark.system


@dataclass
class Registry:
    host: str
    log: Path

    def requests(self, pattern: str) -> int:
        """How many requests the registry logged whose method and URI match ``pattern``."""
        lines = self.log.read_text().splitlines()
        return sum(1 for line in lines if "response completed" in line and re.search(pattern, line))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    binary = require_binary("docker-registry", "docker-registry")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry-data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = tmp_path / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"docker-registry did not start: {log.read_text()}")
                time.sleep(0.1)
        yield Registry(f"127.0.0.1:{port}", log)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def push(layout: Path, ref: str, dest: str, all_images: bool = False) -> None:
    skopeo = require_binary("skopeo", "skopeo")
    args = [skopeo, "--insecure-policy", "copy", "-q", "--dest-tls-verify=false"]
    if all_images:
        args.append("--all")
    subprocess.run([*args, f"oci:{layout}:{ref}", f"docker://{dest}"], check=True, timeout=120)


def test_pull_by_tag_and_digest_verified_and_shared(registry: Registry, tmp_path: Path) -> None:
    image = BuiltImage([busybox_layer(), app_layer()])
    image.write_oci(tmp_path / "oci", "1")
    push(tmp_path / "oci", "1", f"{registry.host}/nlt/test:1")
    root = tmp_path / "nlt-root"
    name = f"{registry.host}/nlt/test:1"
    out = nodelet_image(root, "pull", name)
    assert f"pulled {name} ({sha(image.config())})" in out
    info = json.loads(nodelet_image(root, "inspect", name))
    assert info["id"] == sha(image.config())
    assert info["repoDigests"] == [f"{registry.host}/nlt/test@{info['manifest']}"]
    layers = sorted(os.listdir(root / "images/layers"))
    assert layers == sorted(sha(layer)[7:] for layer in image.layers)
    assert (root / "images/layers" / layers[0]).exists()
    blob_gets = registry.requests(r"GET.*/v2/nlt/test/blobs/")
    assert blob_gets == 3  # config and two layers, once each
    # again, by digest: nothing new is downloaded, the name is added
    by_digest = f"{registry.host}/nlt/test@{info['manifest']}"
    nodelet_image(root, "pull", by_digest)
    assert registry.requests(r"GET.*/v2/nlt/test/blobs/") == blob_gets
    listed = json.loads(nodelet_image(root, "ls", "-o", "json"))["images"]
    assert sorted(row["name"] for row in listed) == sorted([name, by_digest])
    # a second image on the same base: only its own layer and config are fetched
    other = BuiltImage([busybox_layer(), tar_bytes([file_entry("other", b"2")])])
    other.write_oci(tmp_path / "oci2", "2")
    push(tmp_path / "oci2", "2", f"{registry.host}/nlt/test:2")
    nodelet_image(root, "pull", f"{registry.host}/nlt/test:2")
    assert registry.requests(r"GET.*/v2/nlt/test/blobs/") == blob_gets + 2


def test_index_resolves_to_the_host_platform(registry: Registry, tmp_path: Path) -> None:
    """A multi-platform index: only the host's manifest, config and layers are fetched."""
    mine = BuiltImage([busybox_layer()], compress=True)
    foreign = BuiltImage([tar_bytes([file_entry("foreign", b"s390x")])])
    layout = tmp_path / "oci"
    mine_digest = mine.write_oci(layout, "mine")
    foreign_digest = foreign.write_oci(layout, "foreign")
    config = json.loads(foreign.config())
    config["architecture"] = "s390x"
    index = json.loads((layout / "index.json").read_text())
    entries = []
    for desc, arch in zip(index["manifests"], ["amd64", "s390x"], strict=True):
        entries.append({k: v for k, v in desc.items() if k != "annotations"})
        entries[-1]["platform"] = {"os": "linux", "architecture": arch}
    from nodelet.image.manifest import host_platform

    entries[0]["platform"]["architecture"] = host_platform().architecture
    entries.reverse()  # the foreign one first: order must not decide
    index_blob = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries,
        }
    ).encode()
    (layout / "blobs/sha256" / sha(index_blob)[7:]).write_bytes(index_blob)
    index["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": sha(index_blob),
            "size": len(index_blob),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }
    )
    (layout / "index.json").write_text(json.dumps(index))
    push(layout, "multi", f"{registry.host}/nlt/multi:1", all_images=True)
    root = tmp_path / "nlt-root"
    nodelet_image(root, "pull", f"{registry.host}/nlt/multi:1")
    info = json.loads(nodelet_image(root, "inspect", f"{registry.host}/nlt/multi:1"))
    assert info["manifest"] == mine_digest
    assert info["id"] == sha(mine.config())
    assert registry.requests(f"GET.*/manifests/{foreign_digest}") == 0
    assert registry.requests(f"GET.*/blobs/{sha(foreign.blobs()[0])}") == 0
    assert sorted(os.listdir(root / "images/layers")) == [sha(mine.layers[0])[7:]]


def test_pull_errors_name_the_registry_and_reason(registry: Registry, tmp_path: Path) -> None:
    root = tmp_path / "nlt-root"
    stderr = nodelet_image_fails(root, "pull", f"{registry.host}/nlt/absent:1")
    assert f"registry {registry.host}" in stderr
    assert "404" in stderr
    assert "MANIFEST_UNKNOWN" in stderr
    assert not (root / "images/index.json").exists()
    closed = f"127.0.0.1:{free_port()}"
    assert f"registry {closed}" in nodelet_image_fails(root, "pull", f"{closed}/nlt/x:1")
    assert "must be lowercase" in nodelet_image_fails(root, "pull", "Bad/Name")


def test_malicious_layer_from_a_registry_fails_the_pull(registry: Registry, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = tar_bytes(
        [
            file_entry("ok", b"fine"),
            (entry("link", b"2", linkname=str(outside)), None),
            file_entry("link/planted", b"evil"),
        ]
    )
    BuiltImage([evil]).write_oci(tmp_path / "oci", "evil")
    push(tmp_path / "oci", "evil", f"{registry.host}/nlt/evil:1")
    root = tmp_path / "nlt-root"
    stderr = nodelet_image_fails(root, "pull", f"{registry.host}/nlt/evil:1")
    assert "'link' is a symlink or not a dir" in stderr
    assert os.listdir(outside) == []
    assert not (root / "images/index.json").exists()
    assert os.listdir(root / "images/layers") == []
