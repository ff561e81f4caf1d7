"""``nodelet image import``: docker-archives and OCI layouts into the store.

- docker-archive, as ``docker save`` / ``podman save`` write: ``manifest.json`` lists each
  image's config file, layer files and ``RepoTags``; every tag names the image. Its layers have
  no digests in the archive, so the store computes them and the config's ``diff_ids`` check
  them on unpack; the manifest is made here (OCI media types, as podman does on load).
- OCI layout (a dir, or a tar of one), as ``skopeo copy … oci:DIR:TAG`` writes: ``index.json``
  descriptors named by ``io.containerd.image.name`` (a full reference) or
  ``org.opencontainers.image.ref.name`` (a full reference, or a bare tag that ``repo`` turns
  into one). Every blob is checked against its descriptor's digest and size.

A tar that has ``manifest.json`` is read as a docker-archive (newer ``docker save`` writes both
forms; ``RepoTags`` is the one with the names).
"""

from __future__ import annotations

import contextlib
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from nodelet.image import manifest as mf
from nodelet.image.assemble import MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, store_image
from nodelet.image.reference import InvalidImageNameError, parse
from nodelet.image.store import ImageRecord, ImageStore, ImageStoreError
from nodelet.image.unpack import GZIP_MAGIC, ZSTD_MAGIC

CONTAINERD_NAME = "io.containerd.image.name"
OCI_REF_NAME = "org.opencontainers.image.ref.name"
_TAG_ONLY = re.compile(r"[\w][\w.-]{0,127}")


class ArchiveError(ImageStoreError):
    """An archive that cannot be imported; the message names the file inside it."""


class _Source(Protocol):
    def open(self, name: str) -> contextlib.AbstractContextManager[BinaryIO]: ...

    def exists(self, name: str) -> bool: ...


class _DirSource:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ArchiveError(f"archive path {name!r} leaves the archive")
        return self.root.joinpath(*parts)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        with open(self._path(name), "rb") as stream:
            yield stream


class _TarSource:
    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members = {
            m.name.removeprefix("./").lstrip("/"): m for m in tar.getmembers() if m.isfile()
        }

    def exists(self, name: str) -> bool:
        return name.removeprefix("./") in self.members

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        member = self.members.get(name.removeprefix("./"))
        if member is None:
            raise ArchiveError(f"{name!r} is not in the archive")
        stream = self.tar.extractfile(member)
        assert stream is not None
        with stream:
            yield stream  # type: ignore[misc]


def import_archive(store: ImageStore, path: Path, repo: str | None = None) -> list[ImageRecord]:
    """Import every image in ``path`` (a tar file or an OCI layout dir). Under
    ``store.writer()``. Returns one record per image, names in the index."""
    if path.is_dir():
        return _import_oci(store, _DirSource(path), repo)
    try:
        tar = tarfile.open(path, "r:*")  # noqa: SIM115  (closed by the with below)
    except (tarfile.TarError, OSError) as error:
        raise ArchiveError(f"{path}: not a tar archive or OCI layout dir: {error}") from None
    with tar:
        source = _TarSource(tar)
        if source.exists("manifest.json"):
            return _import_docker(store, source)
        if source.exists("index.json"):
            return _import_oci(store, source, repo)
    raise ArchiveError(f"{path}: neither manifest.json (docker-archive) nor index.json (OCI)")


def _read_json(source: _Source, name: str, limit: int) -> Any:
    with source.open(name) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise ArchiveError(f"{name}: larger than {limit} bytes")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArchiveError(f"{name}: not JSON: {error}") from None


def _import_docker(store: ImageStore, source: _Source) -> list[ImageRecord]:
    entries = _read_json(source, "manifest.json", MAX_MANIFEST_SIZE)
    if not isinstance(entries, list):
        raise ArchiveError("manifest.json: not a list of images")
    records, layer_blobs = [], {}
    for i, entry in enumerate(entries):
        where = f"manifest.json image {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise ArchiveError(f"{where}: no Config")
        names = _names(entry.get("RepoTags") or [], where)
        if not names:
            raise ArchiveError(f"{where}: no RepoTags, nothing to name the image by")
        with source.open(entry["Config"]) as stream:
            config_data = stream.read(MAX_CONFIG_SIZE + 1)
        if len(config_data) > MAX_CONFIG_SIZE:
            raise ArchiveError(f"{where}: config larger than {MAX_CONFIG_SIZE} bytes")
        config_digest = store.put_bytes(config_data)
        mf.parse_config(config_data, f"{where} config {entry['Config']}")
        layers = []
        for name in entry.get("Layers") or []:
            if name not in layer_blobs:
                layer_blobs[name] = _docker_layer(store, source, name)
            layers.append(layer_blobs[name])
        config = mf.Descriptor(mf.OCI_CONFIG, config_digest, len(config_data))
        manifest_data = mf.dump_manifest(config, layers, mf.OCI_MANIFEST)
        digest = store.put_bytes(manifest_data)
        top = mf.Descriptor(mf.OCI_MANIFEST, digest, len(manifest_data))
        records.append(store_image(store, _stored_only, top, names))
    return records


def _docker_layer(store: ImageStore, source: _Source, name: str) -> mf.Descriptor:
    with source.open(name) as stream:
        head = stream.read(4)
    media_type = (
        mf.OCI_LAYER_GZIP
        if head.startswith(GZIP_MAGIC)
        else mf.OCI_LAYER_ZSTD
        if head == ZSTD_MAGIC
        else mf.OCI_LAYER
    )
    with source.open(name) as stream:
        digest, size = store.ingest(stream)
    return mf.Descriptor(media_type, digest, size)


@contextlib.contextmanager
def _stored_only(desc: mf.Descriptor) -> Iterator[BinaryIO]:
    raise ArchiveError(f"blob {desc.digest} is referenced but not in the archive")
    yield  # pragma: no cover  (a generator, for contextmanager)


def _names(raw: list[Any], where: str) -> list[str]:
    names = []
    for text in raw:
        try:
            names.append(str(parse(str(text))))
        except InvalidImageNameError as error:
            raise ArchiveError(f"{where}: {error}") from None
    return names


def _import_oci(store: ImageStore, source: _Source, repo: str | None) -> list[ImageRecord]:
    if source.exists("oci-layout"):
        layout = _read_json(source, "oci-layout", 4096)
        version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
        if version != "1.0.0":
            raise ArchiveError(f"oci-layout: imageLayoutVersion {version!r} is not 1.0.0")
    index = _read_json(source, "index.json", MAX_MANIFEST_SIZE)
    entries = mf.parse_index(json.dumps(index).encode(), "index.json")
    by_digest: dict[str, tuple[mf.Descriptor, list[str]]] = {}
    for desc in entries:
        name = _oci_name(desc, repo)
        if name is None:
            continue
        by_digest.setdefault(desc.digest, (desc, []))[1].append(name)
    if not by_digest:
        raise ArchiveError(
            "index.json: no image has a name (io.containerd.image.name or "
            "org.opencontainers.image.ref.name)"
        )

    @contextlib.contextmanager
    def fetch(desc: mf.Descriptor) -> Iterator[BinaryIO]:
        name = f"blobs/sha256/{desc.digest.removeprefix('sha256:')}"
        if not source.exists(name):
            raise ArchiveError(f"{name} (for {desc.digest}) is not in the archive")
        with source.open(name) as stream:
            yield stream

    return [store_image(store, fetch, desc, names) for desc, names in by_digest.values()]


def _oci_name(desc: mf.Descriptor, repo: str | None) -> str | None:
    full = desc.annotations.get(CONTAINERD_NAME)
    ref = desc.annotations.get(OCI_REF_NAME)
    try:
        if full:
            return str(parse(full))
        if not ref:
            return None
        if _TAG_ONLY.fullmatch(ref):
            if repo is None:
                raise ArchiveError(
                    f"index.json: image {desc.digest} is named only by the tag {ref!r}; "
                    "give the repository with --repo"
                )
            return str(parse(f"{repo}:{ref}"))
        return str(parse(ref))
    except InvalidImageNameError as error:
        raise ArchiveError(f"index.json: image {desc.digest}: {error}") from None
