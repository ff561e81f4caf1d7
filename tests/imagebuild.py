"""Build test images from real files: layer tars, OCI layouts and docker-archives, written the
way ``skopeo copy … oci:`` and ``docker save`` write them (no image tool needed to make them)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nodelet.image.manifest import host_platform

BUSYBOX = Path("/bin/busybox")


def require_binary(name: str, package: str) -> str:
    """The binary's path; a missing one fails the test (``make system-deps`` installs it),
    never skips it."""
    found = shutil.which(name) or (str(Path(name)) if Path(name).is_file() else None)
    if found is None:
        pytest.fail(
            f"{name} is missing: install Debian's {package} (make system-deps)", pytrace=False
        )
    return found


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, **attrs: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = attrs.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
    info.mtime = attrs.pop("mtime", 1_700_000_000)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def file_entry(name: str, data: bytes, **attrs: Any) -> tuple[tarfile.TarInfo, bytes]:
    info = entry(name, **attrs)
    info.size = len(data)
    return info, data


def busybox_layer() -> bytes:
    """/bin/busybox (Debian's busybox-static), /bin/sh → busybox, /bin/cat (a hard link),
    /etc/passwd, /etc/motd."""
    require_binary(str(BUSYBOX), "busybox-static")
    return tar_bytes(
        [
            (entry("bin", tarfile.DIRTYPE), None),
            file_entry("bin/busybox", BUSYBOX.read_bytes(), mode=0o755),
            (entry("bin/sh", tarfile.SYMTYPE, linkname="busybox", mode=0o777), None),
            (entry("bin/cat", tarfile.LNKTYPE, linkname="bin/busybox"), None),
            (entry("etc", tarfile.DIRTYPE), None),
            file_entry("etc/passwd", b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n"),
            file_entry("etc/motd", b"base layer\n"),
        ]
    )


def app_layer() -> bytes:
    """Whites out /etc/motd and adds /app/hello."""
    return tar_bytes(
        [
            (entry("etc", tarfile.DIRTYPE), None),
            file_entry("etc/.wh.motd", b""),
            (entry("app", tarfile.DIRTYPE), None),
            file_entry("app/hello", b"hello from the app layer\n", uid=1000, gid=1000),
        ]
    )


@dataclass
class BuiltImage:
    layers: list[bytes]
    """Uncompressed layer tars, base first."""
    compress: bool = True
    entrypoint: list[str] = field(default_factory=lambda: ["/bin/sh", "-c"])
    cmd: list[str] = field(default_factory=lambda: ["cat /app/hello"])

    def config(self) -> bytes:
        plat = host_platform()
        doc = {
            "architecture": plat.architecture,
            "os": plat.os,
            "created": "2024-01-01T00:00:00Z",
            "config": {
                "Entrypoint": self.entrypoint,
                "Cmd": self.cmd,
                "Env": ["PATH=/bin", "GREETING=hi"],
                "WorkingDir": "/app",
                "User": "1000:1000",
            },
            "rootfs": {"type": "layers", "diff_ids": [sha(layer) for layer in self.layers]},
        }
        return json.dumps(doc).encode()

    def blobs(self) -> list[bytes]:
        return [gzip.compress(lay, mtime=0) if self.compress else lay for lay in self.layers]

    def manifest(self) -> bytes:
        config = self.config()
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if self.compress else "")
        doc = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": media, "digest": sha(blob), "size": len(blob)}
                for blob in self.blobs()
            ],
        }
        return json.dumps(doc).encode()

    def write_oci(self, root: Path, ref_name: str) -> str:
        """An OCI layout as ``skopeo copy … oci:ROOT:REF`` writes it; returns the manifest
        digest. Several calls into one root add images to its index."""
        blobs = root / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        manifest = self.manifest()
        for data in [self.config(), manifest, *self.blobs()]:
            (blobs / sha(data)[7:]).write_bytes(data)
        index_path = root / "index.json"
        index: dict[str, Any] = (
            json.loads(index_path.read_text())
            if index_path.exists()
            else {"schemaVersion": 2, "manifests": []}
        )
        index["manifests"].append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": ref_name},
            }
        )
        index_path.write_text(json.dumps(index))
        return sha(manifest)


def docker_archive(images: list[tuple[BuiltImage, list[str]]]) -> bytes:
    """A tar as ``docker save`` writes it: <id>.json configs, <hex>/layer.tar layers (plain
    tars), manifest.json with RepoTags; layers shared between images are written once."""
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    written: set[str] = set()
    manifest = []
    for image, tags in images:
        config = image.config()
        config_name = f"{sha(config)[7:]}.json"
        entries.append(file_entry(config_name, config))
        layer_names = []
        for layer in image.layers:
            name = f"{sha(layer)[7:]}/layer.tar"
            if name not in written:
                written.add(name)
                entries.append((entry(sha(layer)[7:], tarfile.DIRTYPE), None))
                entries.append(file_entry(name, layer))
            layer_names.append(name)
        manifest.append({"Config": config_name, "RepoTags": tags, "Layers": layer_names})
    entries.append(file_entry("manifest.json", json.dumps(manifest).encode()))
    return tar_bytes(entries)


def nodelet_image_fails(root_dir: Path, *args: str, stdin: bytes | None = None) -> str:
    """``nodelet image ARGS``, which must exit 1; its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "nodelet", "image", *args, "--root-dir", str(root_dir)],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 1, f"exited {proc.returncode}: {proc.stdout!r} {proc.stderr!r}"
    return proc.stderr.decode()


def nodelet_image(root_dir: Path, *args: str, stdin: bytes | None = None) -> str:
    """``nodelet image ARGS --root-dir ROOT``; fails the test with its stderr on error."""
    proc = subprocess.run(
        [sys.executable, "-m", "nodelet", "image", *args, "--root-dir", str(root_dir)],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=120,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"nodelet image {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()}"
        )
    return proc.stdout.decode()
