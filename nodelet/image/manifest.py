"""OCI and Docker v2 manifests, indexes and image configs: parsing and platform choice.

Only what the store and a container start need is kept; unknown fields are ignored (newer
writers add them), unknown media types are refused with the type named.
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass, field
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
LAYER_TYPES = (
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_LAYER_NONDIST_GZIP,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_FOREIGN,
)
ACCEPT = (*MANIFEST_TYPES, *INDEX_TYPES)
"""What a registry may answer for a manifest request."""

_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
_ARCHES = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i686": ("386", ""),
    "i386": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


class ManifestError(ValueError):
    """A manifest, index or config that cannot be used; the message names the digest."""


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


def host_platform() -> Platform:
    arch, variant = _ARCHES.get(platform.machine(), (platform.machine(), ""))
    return Platform("linux", arch, variant)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any, where: str) -> Descriptor:
        if not isinstance(raw, dict):
            raise ManifestError(f"{where}: a descriptor is not an object")
        digest, size = raw.get("digest"), raw.get("size")
        if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
            raise ManifestError(f"{where}: descriptor digest {digest!r} is not sha256:<64 hex>")
        if not isinstance(size, int) or size < 0:
            raise ManifestError(f"{where}: descriptor {digest} has no valid size")
        plat = raw.get("platform")
        parsed_platform = None
        if isinstance(plat, dict):
            parsed_platform = Platform(
                str(plat.get("os", "")),
                str(plat.get("architecture", "")),
                str(plat.get("variant", "")),
            )
        annotations = raw.get("annotations") or {}
        return cls(
            str(raw.get("mediaType", "")),
            digest,
            size,
            parsed_platform,
            {str(k): str(v) for k, v in annotations.items()},
        )


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[str, ...]
    working_dir: str
    user: str
    diff_ids: tuple[str, ...]
    platform: Platform
    created: str


def _load(data: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{where}: not JSON: {error}") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: not a JSON object")
    return doc


def media_type_of(data: bytes, declared: str, where: str) -> str:
    """The document's own ``mediaType`` (OCI makes it optional: then its shape decides)."""
    doc = _load(data, where)
    own = doc.get("mediaType")
    if isinstance(own, str) and own:
        return own
    if declared:
        return declared
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def parse_manifest(data: bytes, where: str) -> Manifest:
    doc = _load(data, where)
    media_type = str(doc.get("mediaType") or OCI_MANIFEST)
    if media_type not in MANIFEST_TYPES:
        raise ManifestError(f"{where}: unsupported manifest media type {media_type!r}")
    if doc.get("schemaVersion") != 2:
        raise ManifestError(f"{where}: schemaVersion {doc.get('schemaVersion')!r} is not 2")
    config = Descriptor.parse(doc.get("config"), f"{where} config")
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list):
        raise ManifestError(f"{where}: no layers list")
    layers = tuple(Descriptor.parse(raw, f"{where} layer {i}") for i, raw in enumerate(raw_layers))
    for layer in layers:
        if layer.media_type not in LAYER_TYPES:
            raise ManifestError(
                f"{where}: layer {layer.digest} has unsupported media type {layer.media_type!r}"
            )
    return Manifest(media_type, config, layers)


def parse_index(data: bytes, where: str) -> tuple[Descriptor, ...]:
    doc = _load(data, where)
    raw = doc.get("manifests")
    if not isinstance(raw, list):
        raise ManifestError(f"{where}: no manifests list")
    return tuple(Descriptor.parse(item, f"{where} manifest {i}") for i, item in enumerate(raw))


def choose_platform(entries: tuple[Descriptor, ...], want: Platform, where: str) -> Descriptor:
    """containerd's default matcher: same OS and architecture, the variant if both name one;
    entries without a platform (attestations, single-image OCI layouts) only when alone."""
    images = [e for e in entries if e.media_type in (*MANIFEST_TYPES, *INDEX_TYPES, "")]
    for entry in images:
        plat = entry.platform
        if plat is None or plat.os != want.os or plat.architecture != want.architecture:
            continue
        if plat.variant and want.variant and plat.variant != want.variant:
            continue
        return entry
    if len(images) == 1 and images[0].platform is None:
        return images[0]
    offered = ", ".join(str(e.platform) for e in images if e.platform) or "none"
    raise ManifestError(f"{where}: no image for {want} (offered: {offered})")


def parse_config(data: bytes, where: str) -> ImageConfig:
    doc = _load(data, where)
    conf = doc.get("config") or {}
    rootfs = doc.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and _DIGEST_RE.fullmatch(d) for d in diff_ids
    ):
        raise ManifestError(f"{where}: rootfs.diff_ids is not a list of sha256 digests")
    return ImageConfig(
        entrypoint=_strings(conf.get("Entrypoint"), where, "Entrypoint"),
        cmd=_strings(conf.get("Cmd"), where, "Cmd"),
        env=_strings(conf.get("Env"), where, "Env"),
        working_dir=str(conf.get("WorkingDir") or ""),
        user=str(conf.get("User") or ""),
        diff_ids=tuple(diff_ids),
        platform=Platform(
            str(doc.get("os", "")), str(doc.get("architecture", "")), str(doc.get("variant", ""))
        ),
        created=str(doc.get("created") or ""),
    )


def _strings(value: Any, where: str, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"{where}: config.{name} is not a list of strings")
    return tuple(value)


def dump_manifest(config: Descriptor, layers: list[Descriptor], media_type: str) -> bytes:
    """A manifest for an image the store assembled itself (docker-archive import)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": _descriptor_json(config),
        "layers": [_descriptor_json(layer) for layer in layers],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _descriptor_json(d: Descriptor) -> dict[str, Any]:
    return {"mediaType": d.media_type, "digest": d.digest, "size": d.size}
