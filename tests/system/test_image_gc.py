"""Image garbage collection through the real agent: its root dir is a small tmpfs of the test's
own, three images are imported, a filler file takes the filesystem above 85 %, and the agent
must remove the least recently used unused image (by the last use the index records), keep the
one a pod uses and the one used more recently, and stop once usage is back under 80 %."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentharness import Agent, agent_session, wait_for
from tests.imagebuild import BuiltImage, busybox_layer, docker_archive, file_entry, nodelet_image
from tests.imagebuild import tar_bytes as layer_of
from tests.system.conftest import FAST_BACKOFF
from tests.system.test_wiring import manifest

pytestmark = pytest.mark.system

MIB = 1 << 20
FS_SIZE = 64 * MIB
IMAGES = ("nlt.test/gc-used:1", "nlt.test/gc-recent:1", "nlt.test/gc-stale:1")


def filler_image(seed: int) -> BuiltImage:
    """busybox plus 6 MiB of incompressible bytes of its own (12 MiB stored: blob + layer)."""
    data = os.urandom(6 * MIB)
    filler = layer_of([file_entry(f"filler-{seed}", data)])
    return BuiltImage([busybox_layer(), filler], compress=False)


def names(root: Path) -> list[str]:
    return sorted(
        row["name"] for row in json.loads(nodelet_image(root, "ls", "-o", "json"))["images"]
    )


def used_percent(path: Path) -> float:
    stats = os.statvfs(path)
    return 100 - stats.f_bavail * 100 / stats.f_blocks


@pytest.fixture
def small_root(request: pytest.FixtureRequest) -> Iterator[tuple[Agent, Path]]:
    """An agent whose root dir is a 64 MiB tmpfs holding the three images, stale and recent
    last used 1000 s and 100 s ago (the pod's image, least recently used of all, is in use),
    and a filler file that takes it above 85 %."""
    extra: list[str] = getattr(request, "param", ["--minimum-image-ttl-duration", "0s"])
    with agent_session([*FAST_BACKOFF, *extra]) as agents:
        agent = agents()
        root = agent.root
        root.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=700", "nlt-gc",
                        str(root)], check=True)  # fmt: skip
        try:
            archive = docker_archive([(filler_image(i), [name]) for i, name in enumerate(IMAGES)])
            nodelet_image(root, "import", "-", stdin=archive)
            index_path = root / "images" / "index.json"
            index = json.loads(index_path.read_text())
            now = time.time()
            # Stored in the opposite order of last use: only the last use can pick "stale".
            for name, stored, used in ((IMAGES[0], 7000, 5000), (IMAGES[1], 6000, 100),
                                       (IMAGES[2], 5000, 1000)):  # fmt: skip
                index["images"][name]["stored"] = now - stored
                index["images"][name]["lastUsed"] = now - used
            index_path.write_text(json.dumps(index))
            filler = root / "filler"
            while used_percent(root) < 87:
                with filler.open("ab") as out:
                    out.write(b"\0" * MIB)
            yield agent, root
        finally:
            for path in agent.manifests.glob("*"):
                path.unlink()
            if agent.alive():
                wait_for(lambda: not agent.get("/pods")["items"], 30, "pods removed")
                agent.signal(15)
            subprocess.run(["umount", "-l", str(root)], check=False)


def run_pod_on(agent: Agent, image: str) -> None:
    container = {"name": "app", "image": image, "imagePullPolicy": "Never",
                 "command": ["/bin/sh", "-c", "sleep 3600"]}  # fmt: skip
    agent.write_manifest("gc.yaml", manifest("gc", [container]))


def test_least_recently_used_unused_image_goes_until_under_the_low_threshold(
    small_root: tuple[Agent, Path],
) -> None:
    agent, root = small_root
    assert names(root) == sorted(IMAGES)
    run_pod_on(agent, IMAGES[0])
    agent.start()
    wait_for(lambda: agent.running("gc"), 30, "the pod on the oldest image running")
    wait_for(lambda: IMAGES[2] not in names(root), 30, "the stale image removed")
    assert names(root) == sorted([IMAGES[0], IMAGES[1]])  # in use, and used recently: kept
    assert used_percent(root) <= 80
    log = agent.output.read_text()
    assert "removed image" in log and IMAGES[2] in log
    assert "Failed to garbage collect" not in log


@pytest.mark.parametrize(
    "small_root",
    [["--minimum-image-ttl-duration", "0s", "--image-gc-low-threshold", "10"]],
    indirect=True,
)
def test_an_image_in_use_stays_when_freeing_enough_needs_it(
    small_root: tuple[Agent, Path],
) -> None:
    agent, root = small_root
    run_pod_on(agent, IMAGES[0])
    agent.start()
    wait_for(lambda: "Failed to garbage collect" in agent.output.read_text(), 30, "a short pass")
    assert names(root) == [IMAGES[0]]  # every unused image went; the pod's did not
    wait_for(lambda: agent.running("gc"), 30, "the pod still running")


@pytest.mark.parametrize("small_root", [[]], indirect=True)
def test_images_younger_than_the_minimum_age_stay(small_root: tuple[Agent, Path]) -> None:
    agent, root = small_root
    index_path = root / "images" / "index.json"
    index = json.loads(index_path.read_text())
    for record in index["images"].values():
        record["stored"] = time.time()  # just stored: the 2 minute default protects them
    index_path.write_text(json.dumps(index))
    run_pod_on(agent, IMAGES[0])
    agent.start()
    wait_for(lambda: "Failed to garbage collect" in agent.output.read_text(), 30, "a GC pass")
    assert names(root) == sorted(IMAGES)
    assert used_percent(root) > 85


def test_an_image_unused_past_the_maximum_age_goes_without_disk_pressure(tmp_path: Path) -> None:
    config = tmp_path / "kubelet.yaml"
    config.write_text(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
        "imageMaximumGCAge: 500s\n"  # (kubelet has no flag for it)
    )
    # imageMinimumGCAge: 0s in a file is kubelet's "unset" (2m); the flag's 0s is zero.
    extra = ["--config", str(config), "--minimum-image-ttl-duration", "0s"]
    with agent_session([*FAST_BACKOFF, *extra]) as agents:
        agent = agents()
        archive = docker_archive([(filler_image(i), [name]) for i, name in enumerate(IMAGES)])
        nodelet_image(agent.root, "import", "-", stdin=archive)
        index_path = agent.root / "images" / "index.json"
        index = json.loads(index_path.read_text())
        now = time.time()
        for name, ago in ((IMAGES[0], 5000), (IMAGES[1], 100), (IMAGES[2], 1000)):
            index["images"][name]["lastUsed"] = now - ago
        index_path.write_text(json.dumps(index))
        run_pod_on(agent, IMAGES[0])  # unused the longest, but in use
        agent.start()
        wait_for(lambda: IMAGES[2] not in names(agent.root), 30, "the image unused for 1000 s")
        assert names(agent.root) == sorted([IMAGES[0], IMAGES[1]])
        assert "(imageMaximumGCAge)" in agent.output.read_text()
        assert used_percent(agent.root) < 85  # no disk pressure was needed
