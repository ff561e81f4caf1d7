"""The manifest directory as a stream of full pod sets (kubelet's file source, done faster).

inotify (watchdog) makes a change visible within milliseconds, and a relist every
``file_check_frequency`` catches whatever events were missed: the relist is the truth.
A file is read only once its writer closed it (IN_CLOSE_WRITE / rename into place), or once it
has been quiet for ``settle_seconds`` when no such event was seen, so a half-written file never
becomes a half pod. Parsing runs in a worker thread so a huge or slow file never stalls pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from nodelet.aio import wait_event
from nodelet.manifests import is_ignored, load_manifest
from nodelet.model import ManifestError, Rejection, StaticPod

log = logging.getLogger(__name__)

SEEN_ANNOTATION = "kubernetes.io/config.seen"
DEBOUNCE_SECONDS = 0.005
"""Coalesces the burst of events one write makes (create, modify, close) into one relist."""

Loader = Callable[[str, str], StaticPod | Rejection]


@dataclass(frozen=True)
class SourceSnapshot:
    """Every pod the directory defines right now, and every file that was rejected."""

    pods: dict[str, StaticPod]
    """By UID."""
    rejected: list[Rejection] = field(default_factory=list)
    complete: bool = True
    """False while a file never read before is still being written: its pod may be missing."""


@dataclass(frozen=True)
class _FileKey:
    """What makes a cached parse stale."""

    dev: int
    ino: int
    size: int
    mtime_ns: int


class _Handler(FileSystemEventHandler):
    """Runs in watchdog's thread: hands every event to the loop and does nothing else."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sink: Callable[[FileSystemEvent], None]):
        self._loop = loop
        self._sink = sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(self._sink, event)


class ManifestSource:
    """Watches one directory and calls ``on_snapshot`` with the full set after every change."""

    def __init__(
        self,
        directory: Path,
        node_name: str,
        on_snapshot: Callable[[SourceSnapshot], None],
        *,
        file_check_frequency: float = 20.0,
        settle_seconds: float = 2.0,
        loader: Loader = load_manifest,
    ) -> None:
        self._dir = directory
        self._node = node_name
        self._emit = on_snapshot
        self._period = file_check_frequency
        self._settle = settle_seconds
        self._load = loader
        self._wake = asyncio.Event()
        self._writing: dict[str, float] = {}
        """Files modified with no close-after-write yet, and when that was last seen."""
        self._closed: set[str] = set()
        """Files whose writer finished (closed or renamed into place) since the last read."""
        self._cache: dict[str, tuple[_FileKey, StaticPod | Rejection]] = {}
        self._first_seen: dict[str, str] = {}
        self._observer: Any = None
        self._watched: tuple[int, int] | None = None
        self.last_relist: float = 0.0
        """Monotonic time of the last completed relist, for /healthz."""

    async def run(self) -> None:
        """Relist now, then on every event and every period, until cancelled."""
        try:
            while True:
                self._ensure_watch()
                deadline = await self._relist()
                timeout = self._period if deadline is None else min(self._period, deadline)
                await wait_event(self._wake, timeout)
                self._wake.clear()
                await asyncio.sleep(DEBOUNCE_SECONDS)
        finally:
            self._stop_watch()

    # -- inotify ---------------------------------------------------------------------------

    def _ensure_watch(self) -> None:
        """(Re)watch the directory, also after it was created late or replaced."""
        try:
            st = os.stat(self._dir)
        except OSError:
            self._stop_watch()
            return
        if self._watched == (st.st_dev, st.st_ino) and self._observer is not None:
            return
        self._stop_watch()
        observer = Observer()
        observer.schedule(
            _Handler(asyncio.get_running_loop(), self._on_event), str(self._dir), recursive=False
        )
        try:
            observer.start()
        except OSError as err:
            log.warning("cannot watch %s, relying on relist: %s", self._dir, err)
            return
        self._observer = observer
        self._watched = (st.st_dev, st.st_ino)

    def _stop_watch(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer = None
            self._watched = None

    def _name_of(self, path: str | bytes) -> str | None:
        text = os.fsdecode(path)
        if os.path.dirname(text) != str(self._dir):
            return None
        return os.path.basename(text)

    def _on_event(self, event: FileSystemEvent) -> None:
        now = time.monotonic()
        name = self._name_of(event.src_path)
        if isinstance(event, FileMovedEvent):
            self._writing.pop(name or "", None)
            dest = self._name_of(event.dest_path)
            if dest is not None:
                self._writing.pop(dest, None)
                self._closed.add(dest)
        elif name is None:
            pass
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent):
            self._writing[name] = now
            return  # wait for the close; the settle timer covers a lost close
        elif isinstance(event, FileClosedEvent):
            self._writing.pop(name, None)
            self._closed.add(name)
        elif isinstance(event, FileDeletedEvent):
            self._writing.pop(name, None)
        elif not event.is_directory:
            return  # opened, closed without writing, attributes: nothing to read
        self._wake.set()

    # -- relist ----------------------------------------------------------------------------

    async def _relist(self) -> float | None:
        """Read the dir and emit the full set; returns seconds until a deferred file settles."""
        try:
            names = sorted(
                e.name for e in os.scandir(self._dir) if not is_ignored(e.name) and not _is_dir(e)
            )
        except FileNotFoundError:
            names = []  # kubelet: a missing manifest dir means no static pods
        except OSError as err:
            log.error(
                "cannot list manifest dir %s: %s; keeping the pods as they are", self._dir, err
            )
            return None
        now = time.monotonic()
        results: list[StaticPod | Rejection] = []
        wait: float | None = None
        complete = True
        for name in names:
            result, defer = await self._read(name, now)
            if defer is not None:
                wait = defer if wait is None else min(wait, defer)
            if result is not None:
                results.append(result)
            else:
                complete = False
        for gone in set(self._cache) - set(names):
            del self._cache[gone]
        self._emit(self._snapshot(results, complete))
        self.last_relist = time.monotonic()
        return wait

    async def _read(
        self, name: str, now: float
    ) -> tuple[StaticPod | Rejection | None, float | None]:
        """The file's pod, reusing the cached parse while the file is unchanged or being written."""
        cached = self._cache.get(name)
        written = self._writing.get(name)
        if written is not None:
            if now - written < self._settle:
                return (cached[1] if cached else None), self._settle - (now - written)
            del self._writing[name]
        path = self._dir / name
        try:
            st = os.stat(path)
            key = _FileKey(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            key = None  # the loader turns a dangling link or a loop into a clear rejection
        if cached is not None and key is not None and cached[0] == key:
            return cached[1], None
        if key is not None and name not in self._closed:
            quiet = time.time() - st.st_mtime
            if 0 <= quiet < self._settle:
                return (cached[1] if cached else None), self._settle - quiet
        self._closed.discard(name)
        result = await asyncio.to_thread(self._load, str(path), self._node)
        if key is not None:
            self._cache[name] = (key, result)
        if isinstance(result, Rejection):
            for err in result.errors:
                log.error("manifest rejected: %s", err)
        return result, None

    def _snapshot(self, results: list[StaticPod | Rejection], complete: bool) -> SourceSnapshot:
        """Apply kubelet's cross-file rules: first file (sorted) wins a duplicate pod name."""
        pods: dict[str, StaticPod] = {}
        owners: dict[str, str] = {}
        rejected: list[Rejection] = []
        for result in results:
            if isinstance(result, Rejection):
                rejected.append(result)
                continue
            owner = owners.get(result.full_name)
            if owner is not None:
                rejected.append(_duplicate(result, owner))
                continue
            owners[result.full_name] = result.source_path
            pods[result.uid] = self._with_first_seen(result)
        for uid in set(self._first_seen) - set(pods):
            del self._first_seen[uid]
        return SourceSnapshot(pods=pods, rejected=rejected, complete=complete)

    def _with_first_seen(self, pod: StaticPod) -> StaticPod:
        """Keep ``config.seen`` at the first sighting of this UID, as kubelet does."""
        seen = self._first_seen.setdefault(
            pod.uid, pod.manifest["metadata"]["annotations"][SEEN_ANNOTATION]
        )
        if pod.manifest["metadata"]["annotations"][SEEN_ANNOTATION] == seen:
            return pod
        manifest = dict(pod.manifest)
        metadata = dict(manifest["metadata"])
        metadata["annotations"] = {**metadata["annotations"], SEEN_ANNOTATION: seen}
        manifest["metadata"] = metadata
        return replace(pod, manifest=manifest)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """Subdirectories are skipped like kubelet; a broken or looping link is not a directory."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _duplicate(pod: StaticPod, owner: str) -> Rejection:
    error = ManifestError(
        path=pod.source_path,
        field="metadata.name",
        reason=f"pod {pod.namespace}/{pod.name} is already defined by {owner}",
    )
    return Rejection(path=pod.source_path, errors=(error,), pod_name=pod.name)
