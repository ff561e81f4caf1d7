"""Store one image from wherever its blobs come from (an archive, a layout dir, a registry).

The walk is the same for every source: the top blob (an index or a manifest), the host
platform's manifest, the config, then the layers (fetched in parallel, each unpacked as soon as
it is stored), and last the names, so a name only ever points at a complete image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from nodelet.image import manifest as mf
from nodelet.image.store import ImageRecord, ImageStore, ImageStoreError, Progress

Fetch = Callable[[mf.Descriptor], contextlib.AbstractContextManager[BinaryIO]]
"""Opens a blob's bytes by descriptor; the store verifies digest and size."""

MAX_MANIFEST_SIZE = 4 << 20
"""containerd's limit for a manifest or index: a bigger one is an attack, not an image."""
MAX_CONFIG_SIZE = 64 << 20
MAX_INDEX_DEPTH = 2


def small_blob(store: ImageStore, fetch: Fetch, desc: mf.Descriptor, limit: int) -> bytes:
    if desc.size > limit:
        raise ImageStoreError(f"{desc.digest}: {desc.size} bytes, more than the {limit} allowed")
    if not store.has_blob(desc.digest):
        with fetch(desc) as stream:
            store.ingest(stream, desc.digest, desc.size)
    return store.read_blob(desc.digest)


def resolve_manifest(
    store: ImageStore, fetch: Fetch, top: mf.Descriptor, want: mf.Platform
) -> mf.Descriptor:
    """The image manifest for ``want`` under ``top`` (itself, or chosen from an index)."""
    desc = top
    for _ in range(MAX_INDEX_DEPTH + 1):
        data = small_blob(store, fetch, desc, MAX_MANIFEST_SIZE)
        media_type = mf.media_type_of(data, desc.media_type, desc.digest)
        if media_type in mf.MANIFEST_TYPES:
            return mf.Descriptor(media_type, desc.digest, desc.size, desc.platform)
        if media_type not in mf.INDEX_TYPES:
            raise mf.ManifestError(f"{desc.digest}: unsupported media type {media_type!r}")
        desc = mf.choose_platform(mf.parse_index(data, desc.digest), want, desc.digest)
    raise mf.ManifestError(f"{top.digest}: indexes nested more than {MAX_INDEX_DEPTH} deep")


def store_image(
    store: ImageStore,
    fetch: Fetch,
    top: mf.Descriptor,
    names: list[str],
    want: mf.Platform | None = None,
    workers: int = 3,
    progress: Progress | None = None,
) -> ImageRecord:
    """Fetch, verify, unpack and name one image. Call under ``store.writer()`` or
    ``store.puller()``."""
    manifest_desc = resolve_manifest(store, fetch, top, want or mf.host_platform())
    data = store.read_blob(manifest_desc.digest)
    manifest = mf.parse_manifest(data, manifest_desc.digest)
    config = mf.parse_config(
        small_blob(store, fetch, manifest.config, MAX_CONFIG_SIZE), manifest.config.digest
    )
    if len(config.diff_ids) != len(manifest.layers):
        raise mf.ManifestError(
            f"{manifest_desc.digest}: {len(manifest.layers)} layers but "
            f"{len(config.diff_ids)} diff_ids in its config"
        )
    wanted: dict[str, mf.Descriptor] = {}
    for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=True):
        if not store.layer_dir(diff_id).is_dir():
            wanted.setdefault(diff_id, layer)

    expect = getattr(progress, "expect", None)  # a progress that shows a total (a bar)
    if expect is not None:
        expect(sum(layer.size for layer in wanted.values() if not store.has_blob(layer.digest)))

    def one(item: tuple[str, mf.Descriptor]) -> None:
        diff_id, layer = item
        if not store.has_blob(layer.digest):
            with fetch(layer) as stream:  # stored and unpacked in one pass
                store.ingest_layer(stream, layer.digest, layer.size, diff_id, progress)
            return
        try:
            store.ensure_layer(layer.digest, diff_id)
        except Exception as error:
            raise ImageStoreError(f"layer {layer.digest}: {error}") from error

    if wanted:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(wanted)))) as pool:
            for _ in pool.map(one, wanted.items()):
                pass
    return store.commit_image(names, top.digest, manifest_desc.digest)
