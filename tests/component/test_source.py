"""The manifest source against a real directory and real inotify events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from nodelet.manifest.snapshot import SourceSnapshot
from nodelet.manifest.source import ManifestSource

pytestmark = pytest.mark.component


def pod_text(name: str, containers: int = 1) -> str:
    spec = {"containers": [{"name": f"c{i}", "image": "host"} for i in range(containers)]}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    return json.dumps(pod)


class Recorder:
    def __init__(self) -> None:
        self.snapshots: list[SourceSnapshot] = []
        self.changed = asyncio.Event()

    def __call__(self, snapshot: SourceSnapshot) -> None:
        self.snapshots.append(snapshot)
        self.changed.set()

    @property
    def last(self) -> SourceSnapshot:
        return self.snapshots[-1]

    def names(self) -> set[str]:
        return {p.name for p in self.last.pods.values()} if self.snapshots else set()

    async def until(self, check: Callable[[SourceSnapshot], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not (self.snapshots and check(self.last)):
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def running_source(
    directory: Path, period: float = 60.0, settle: float = 2.0
) -> AsyncIterator[Recorder]:
    recorder = Recorder()
    source = ManifestSource(
        directory, "nlt-node", recorder, file_check_frequency=period, settle_seconds=settle
    )
    task = asyncio.create_task(source.run())
    try:
        yield recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def manifest_dir() -> Any:
    path = Path(tempfile.mkdtemp(prefix="nlt-src-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_new_file_seen_through_inotify_long_before_relist(manifest_dir: Path) -> None:
    async with running_source(manifest_dir, period=60.0) as rec:
        await rec.until(lambda s: True)
        (manifest_dir / "web.yaml").write_text(pod_text("web"))
        await rec.until(lambda s: bool(s.pods), timeout=3.0)
        assert rec.names() == {"web-nlt-node"}
        (manifest_dir / "web.yaml").unlink()
        await rec.until(lambda s: not s.pods, timeout=3.0)


async def test_editor_and_hidden_files_are_ignored(manifest_dir: Path) -> None:
    ignored = ["web.yaml.swp", "web.yaml.swx", "web.yaml~", "web.yaml.bak", "#web.yaml#",
               "4913", ".web.yaml"]  # fmt: skip
    for name in ignored:
        (manifest_dir / name).write_text(pod_text("web"))
    (manifest_dir / "sub").mkdir()
    (manifest_dir / "sub" / "inner.yaml").write_text(pod_text("inner"))
    (manifest_dir / "real.yaml").write_text(pod_text("real"))
    async with running_source(manifest_dir) as rec:
        await rec.until(lambda s: bool(s.pods))
        assert rec.names() == {"real-nlt-node"}
        assert rec.last.rejected == []


async def test_half_written_file_never_becomes_a_half_pod(manifest_dir: Path) -> None:
    # The first part alone is a valid one-container pod: the trap a plain poll falls into.
    first_part = (
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: slow\nspec:\n  containers:\n"
        "  - name: c0\n    image: host\n"
    )
    rest = "  - name: c1\n    image: host\n"
    async with running_source(manifest_dir, period=0.3, settle=2.0) as rec:
        await rec.until(lambda s: True)
        with open(manifest_dir / "slow.yaml", "w") as f:
            f.write(first_part)
            f.flush()
            await asyncio.sleep(1.0)  # several relists happen while the writer holds the file
            f.write(rest)
        await rec.until(lambda s: bool(s.pods), timeout=3.0)
    containers = [len(p.spec["containers"]) for s in rec.snapshots for p in s.pods.values()]
    assert containers and set(containers) == {2}


async def test_duplicate_pod_name_first_file_wins(manifest_dir: Path) -> None:
    (manifest_dir / "a.yaml").write_text(pod_text("same"))
    (manifest_dir / "b.yaml").write_text(pod_text("same", containers=2))
    async with running_source(manifest_dir) as rec:
        await rec.until(lambda s: bool(s.pods))
        [pod] = rec.last.pods.values()
        assert pod.source_path == str(manifest_dir / "a.yaml")
        [rejected] = rec.last.rejected
        assert rejected.path == str(manifest_dir / "b.yaml")
        assert "already defined by" in str(rejected.errors[0])
        assert str(manifest_dir / "a.yaml") in str(rejected.errors[0])


async def test_directory_created_after_start_is_picked_up(manifest_dir: Path) -> None:
    late = manifest_dir / "later"
    async with running_source(late, period=0.2) as rec:
        await rec.until(lambda s: True)
        assert rec.last.pods == {}
        late.mkdir()
        await asyncio.sleep(0.5)  # a relist sees the dir and starts watching it
        (late / "web.yaml").write_text(pod_text("web"))
        await rec.until(lambda s: bool(s.pods), timeout=3.0)


async def test_seen_annotation_is_stable_across_relists(manifest_dir: Path) -> None:
    (manifest_dir / "web.yaml").write_text(pod_text("web"))
    async with running_source(manifest_dir, period=0.1) as rec:
        await rec.until(lambda s: bool(s.pods))
        first = next(iter(rec.last.pods.values()))
        (manifest_dir / "web.yaml").write_text(pod_text("web"))  # rewritten: parsed again
        await asyncio.sleep(0.5)
        again = next(iter(rec.last.pods.values()))
    key = "kubernetes.io/config.seen"
    assert again.uid == first.uid
    assert (
        again.manifest["metadata"]["annotations"][key]
        == (first.manifest["metadata"]["annotations"][key])
    )


async def test_unsettled_file_at_start_makes_the_set_incomplete(manifest_dir: Path) -> None:
    # Written just now by someone we never saw close it: maybe still being written.
    (manifest_dir / "fresh.yaml").write_text(pod_text("fresh"))
    async with running_source(manifest_dir, period=0.2, settle=1.0) as rec:
        await rec.until(lambda s: True)
        assert rec.snapshots[0].complete is False and rec.snapshots[0].pods == {}
        await rec.until(lambda s: s.complete and bool(s.pods), timeout=3.0)
        assert rec.names() == {"fresh-nlt-node"}
