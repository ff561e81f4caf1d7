"""One image garbage collection pass (``gc.collect``) over a real image store in a temp dir.

The filesystem's figures come from what the store really holds on disk: capacity is fixed
and "available" is capacity minus the bytes under the store, so removing an image frees
exactly what pruning it deleted, as it would on a dedicated image filesystem.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from nodelet.image.gc import GCPolicy, collect
from nodelet.image.store import ImageStore

pytestmark = pytest.mark.unit

LAYER_BYTES = 100_000
LATER = time.time() + 3600.0
"""``now`` for the passes: every image in these tests is older than the minimum age."""


def store_bytes(store: ImageStore) -> int:
    return sum(
        (Path(top) / name).stat().st_size
        for top, _dirs, files in os.walk(store.base)
        for name in files
        if not name.endswith("lock") and name != "index.json"
    )


class Disk:
    """An ``fs_stats`` whose free space is what the store leaves of ``capacity``."""

    def __init__(self, store: ImageStore, capacity: int) -> None:
        self.store = store
        self.capacity = capacity
        self.calls: list[str] = []

    def __call__(self, path: str) -> tuple[int, int]:
        self.calls.append(path)
        return self.capacity, self.capacity - store_bytes(self.store)


def add_image(store: ImageStore, name: str, fill: bytes) -> str:
    """A one-layer image whose unpacked layer holds LAYER_BYTES of ``fill``; its image ID."""
    payload = fill * LAYER_BYTES
    diff_id = "sha256:" + hashlib.sha256(payload).hexdigest()
    layer = store.layer_dir(diff_id)
    layer.mkdir(parents=True)
    (layer / "data").write_bytes(payload)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    with store.writer():
        config_digest = store.put_bytes(config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": diff_id,
                        "size": len(payload),
                    }
                ],
            }
        ).encode()
        digest = store.put_bytes(manifest)
        return store.commit_image([name], digest, digest).config


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path)


def names(store: ImageStore) -> set[str]:
    return set(store.records())


def test_an_empty_store_is_left_alone(store: ImageStore) -> None:
    fs_stats = Disk(store, 1)
    result = collect(store, GCPolicy(), set(), {}, LATER, fs_stats)
    assert result.removed == [] and result.wanted == 0
    assert fs_stats.calls == []
    assert not store.index_path.exists()


def test_below_the_high_threshold_nothing_goes_but_last_use_is_recorded(
    store: ImageStore,
) -> None:
    old = add_image(store, "nlt.test/old:1", b"o")
    add_image(store, "nlt.test/new:1", b"n")
    capacity = store_bytes(store) * 100 // 80  # 80 % used
    result = collect(store, GCPolicy(), set(), {old: LATER - 5.0}, LATER, Disk(store, capacity))
    assert result.removed == [] and result.wanted == 0 and not result.short
    assert names(store) == {"nlt.test/old:1", "nlt.test/new:1"}
    assert store.records()["nlt.test/old:1"].last_used == LATER - 5.0
    new = store.records()["nlt.test/new:1"]
    assert new.last_used == new.stored  # never used: its last use counts from when it came


def test_above_the_high_threshold_the_least_recently_used_go_until_low(
    store: ImageStore,
) -> None:
    ids = {fill: add_image(store, f"nlt.test/{fill}:1", fill.encode()) for fill in "abcd"}
    # Four equal images fill 90 % of the disk (22.5 % each); low 60 % needs two of them gone.
    capacity = store_bytes(store) * 100 // 90
    last_used = {ids["a"]: LATER - 10, ids["b"]: LATER - 40, ids["c"]: LATER - 30}
    last_used[ids["d"]] = LATER - 50
    result = collect(store, GCPolicy(85, 60), {ids["d"]}, last_used, LATER, Disk(store, capacity))
    assert [image.id for image in result.removed] == [ids["b"], ids["c"]]
    assert names(store) == {"nlt.test/a:1", "nlt.test/d:1"}
    assert len(list(store.layers.iterdir())) == 2
    assert result.wanted > 0 and not result.short
    assert result.bytes_freed >= max(result.wanted, 2 * LAYER_BYTES)


def test_pruning_frees_the_layers_of_what_went(store: ImageStore) -> None:
    add_image(store, "nlt.test/a:1", b"a")
    before = store_bytes(store)
    capacity = before * 100 // 95
    result = collect(store, GCPolicy(85, 80), set(), {}, LATER, Disk(store, capacity))
    assert [image.names for image in result.removed] == [("nlt.test/a:1",)]
    assert list(store.layers.iterdir()) == []
    assert store_bytes(store) < before - LAYER_BYTES


def test_in_use_and_too_young_images_stay_and_the_pass_says_it_fell_short(
    store: ImageStore,
) -> None:
    used = add_image(store, "nlt.test/used:1", b"u")
    add_image(store, "nlt.test/spare:1", b"s")
    capacity = store_bytes(store) * 100 // 99
    # Alone, the image in use fills about half the disk: above the low threshold of 40 %.
    result = collect(store, GCPolicy(85, 40), {used}, {}, LATER, Disk(store, capacity))
    assert [image.names for image in result.removed] == [("nlt.test/spare:1",)]
    assert result.short
    assert names(store) == {"nlt.test/used:1"}
    young = collect(store, GCPolicy(0, 0, min_age=7200.0), set(), {}, LATER, Disk(store, capacity))
    assert young.removed == [] and young.short
    assert names(store) == {"nlt.test/used:1"}


def test_images_unused_past_the_maximum_age_go_even_with_room_to_spare(
    store: ImageStore,
) -> None:
    stale = add_image(store, "nlt.test/stale:1", b"s")
    fresh = add_image(store, "nlt.test/fresh:1", b"f")
    busy = add_image(store, "nlt.test/busy:1", b"b")
    capacity = store_bytes(store) * 100  # 1 % used
    last_used = {stale: LATER - 700.0, fresh: LATER - 500.0, busy: LATER - 9999.0}
    policy = GCPolicy(min_age=120.0, max_age=600.0)
    result = collect(store, policy, {busy}, last_used, LATER, Disk(store, capacity))
    assert [image.id for image in result.removed] == [stale]
    assert result.wanted == 0
    assert names(store) == {"nlt.test/fresh:1", "nlt.test/busy:1"}
