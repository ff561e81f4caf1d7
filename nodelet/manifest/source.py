"""The manifest directory as a stream of full pod sets (kubelet's file source, done faster).

inotify (watchdog) makes a change visible within milliseconds, and a relist every
``file_check_frequency`` catches whatever events were missed: the relist is the truth.

When a new or changed file is read (the settle rule), so that a half-written file never
becomes a half pod:

1. After a close-after-write event (IN_CLOSE_WRITE) or a rename into place: at once.
2. Otherwise (the event was missed, or the file was written while the agent was down): once
   its last modification is ``settle_seconds`` old (by inotify and by mtime) *and* no process
   holds it open for writing: no ``/proc/<pid>/fd`` entry on the same device and inode whose
   ``/proc/<pid>/fdinfo`` flags carry ``O_WRONLY`` or ``O_RDWR``. The /proc scan runs only
   in this case, never after a close event and never for an unchanged file.

Until then the file keeps its previous parse (a new file has no pod yet, and the snapshot is
marked incomplete so no adopted pod is stopped on a partial view), and a held file is listed
among the rejections as pending, with the pid of its writer. A writer that keeps the file open
for good keeps its change from being read; its close makes it read at once.

Parsing runs in a worker thread so a huge or slow file never stalls pods, and whatever reading
one file raises becomes that file's rejection: the source itself never dies of a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

from nodelet.manifest import snapshot
from nodelet.manifest.load import (
    STRICT,
    ManifestWarnings,
    display_path,
    internal_error,
    is_ignored,
    load_with_warnings,
)
from nodelet.manifest.snapshot import SourceSnapshot
from nodelet.manifest.writers import Writer, WriterScan
from nodelet.model import ManifestError, Rejection, StaticPod
from nodelet.util.aio import wait_event

log = logging.getLogger(__name__)

DEBOUNCE_SECONDS = 0.005
"""Coalesces the burst of events one write makes (create, modify, close) into one relist."""

MOVE_PAIRING_SECONDS = 0.05
"""How long watchdog holds a rename's first half to pair it with the second (its default,
0.5 s, is a sleep that also holds every later event when it loses a race with the pairing:
gorakhargosh/watchdog#649, seen here as a manifest renamed into place read 0.5 s late). Both
halves of a rename inside the watched directory come from one inotify read, so 50 ms pairs
them as surely; a half that is never paired is a file moved in or out, read by the relist
either way."""
InotifyMoveEventGrouper.delay = MOVE_PAIRING_SECONDS

Result = StaticPod | Rejection
Loader = Callable[[str, str], Result]


@dataclass(frozen=True)
class _FileKey:
    """What makes a cached parse stale."""

    dev: int
    ino: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class _Outcome:
    """What one file contributes to a relist."""

    result: Result | None
    """Its pod or rejection; None while a file never read before is not settled."""
    retry_in: float | None = None
    """Seconds until it should be looked at again."""
    pending: Rejection | None = None
    """Why its latest content is not read yet (a writer holds it), to show in /rejected."""
    warnings: ManifestWarnings | None = None
    """The fields dropped from its pod (``manifestValidation: Warn``)."""


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
        manifest_validation: str = STRICT,
        loader: Loader | None = None,
    ) -> None:
        self._dir = directory
        self._node = node_name
        self._emit = on_snapshot
        self._period = file_check_frequency
        self._settle = settle_seconds
        self._validation = manifest_validation
        self._loader = loader
        """Instead of ``load_with_warnings`` (tests): a loader that gives no warnings."""
        self._wake = asyncio.Event()
        self._settle_timer: asyncio.TimerHandle | None = None
        """Wakes the loop when a file modified without a close settles (a write event alone
        does not wake it: a writer makes many)."""
        self._writing: dict[str, float] = {}
        """Files modified with no close-after-write yet, and when that was last seen."""
        self._closed: set[str] = set()
        """Files whose writer finished (closed or renamed into place) since the last read."""
        self._cache: dict[str, tuple[_FileKey, Result, ManifestWarnings | None]] = {}
        self._first_seen: dict[str, str] = {}
        self._observer: Any = None
        self._watched: tuple[str, int, int] | None = None
        """(path, device, inode) of the directory watched: the manifest dir or its parent."""
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
            if self._settle_timer is not None:
                self._settle_timer.cancel()
                self._settle_timer = None

    # -- inotify ---------------------------------------------------------------------------

    def _ensure_watch(self) -> None:
        """(Re)watch the directory, also after it was replaced. While it does not exist, watch
        its parent instead: any event there wakes a relist, which finds the directory once it
        is made and watches it, long before the next periodic relist."""
        target = self._dir
        try:
            st = os.stat(target)
        except OSError:
            target = self._dir.parent
            try:
                st = os.stat(target)
            except OSError:
                self._stop_watch()
                return
        ident = (str(target), st.st_dev, st.st_ino)
        if self._watched == ident and self._observer is not None:
            return
        self._stop_watch()
        observer = Observer()
        observer.schedule(
            _Handler(asyncio.get_running_loop(), self._on_event), str(target), recursive=False
        )
        try:
            observer.start()
        except OSError as err:
            log.warning("cannot watch %s, relying on relist: %s", target, err)
            return
        self._observer = observer
        self._watched = ident

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
            self._closed.discard(name)  # a close seen before this write says nothing of it
            if self._settle_timer is None:  # wait for the close; the timer covers a lost one
                self._settle_timer = asyncio.get_running_loop().call_later(
                    self._settle, self._settled
                )
            return
        elif isinstance(event, FileClosedEvent):
            self._writing.pop(name, None)
            self._closed.add(name)
        elif isinstance(event, FileDeletedEvent):
            self._writing.pop(name, None)
        elif not event.is_directory:
            return  # opened, closed without writing, attributes: nothing to read
        self._wake.set()

    def _settled(self) -> None:
        self._settle_timer = None
        self._wake.set()  # the relist finds what settled and when the rest will

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
        results: list[Result] = []
        wait: float | None = None
        complete = True
        scan = WriterScan()
        for name in names:
            try:
                outcome = await self._read(name, now, scan)
            except Exception as err:  # a bug in reading one file must not stop the others
                shown = display_path(str(self._dir / name))
                log.error("internal error while reading manifest %s", shown, exc_info=True)
                outcome = _Outcome(internal_error(shown, err))
            if outcome.retry_in is not None:
                wait = outcome.retry_in if wait is None else min(wait, outcome.retry_in)
            if outcome.pending is not None:
                results.append(outcome.pending)
                if isinstance(outcome.result, StaticPod):
                    results.append(outcome.result)  # the previous version stays in effect
            elif outcome.result is not None:
                results.append(outcome.result)
            if outcome.warnings is not None and isinstance(outcome.result, StaticPod):
                results.append(outcome.warnings)
            if outcome.result is None:
                complete = False
        for gone in set(self._cache) - set(names):
            del self._cache[gone]
        self._emit(self._snapshot(results, complete))
        self.last_relist = time.monotonic()
        return wait

    async def _read(self, name: str, now: float, scan: WriterScan) -> _Outcome:
        """The file's pod, reusing the cached parse while the file is unchanged or unsettled."""
        cached = self._cache.get(name)
        previous = cached[1] if cached else None
        warned = cached[2] if cached else None
        written = self._writing.get(name)
        if written is not None:
            if now - written < self._settle:
                return _Outcome(previous, self._settle - (now - written), warnings=warned)
            del self._writing[name]
        path = self._dir / name
        try:
            st = os.stat(path)
            key = _FileKey(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            key = None  # the loader turns a dangling link or a loop into a clear rejection
        if cached is not None and key is not None and cached[0] == key:
            return _Outcome(previous, warnings=warned)
        if key is not None and name not in self._closed:
            quiet = time.time() - st.st_mtime
            if 0 <= quiet < self._settle:
                return _Outcome(previous, self._settle - quiet, warnings=warned)
            holders = await scan.writers(st.st_dev, st.st_ino)
            if holders:
                return self._held(path, previous, holders, warned)
        self._closed.discard(name)
        result, warnings = await asyncio.to_thread(self._load, str(path))
        if key is not None:
            self._cache[name] = (key, result, warnings)
        if isinstance(result, Rejection):
            for err in result.errors:
                log.error("manifest rejected: %s", err)
        for err in warnings.errors if warnings else ():
            log.warning("manifest warning: %s", err)
        return _Outcome(result, warnings=warnings)

    def _load(self, path: str) -> tuple[Result, ManifestWarnings | None]:
        if self._loader is not None:
            return self._loader(path, self._node), None
        return load_with_warnings(path, self._node, None, self._validation)

    def _held(
        self,
        path: Path,
        previous: Result | None,
        holders: list[Writer],
        warned: ManifestWarnings | None,
    ) -> _Outcome:
        """A file some process still writes: keep what it held before, say who holds it."""
        shown = display_path(str(path))
        who = ", ".join(f"pid {pid} ({comm})" for pid, comm in holders[:3])
        kept = "the previous version stays in effect" if previous else "no pod until then"
        reason = f"pending: held open for writing by {who}; read once closed ({kept})"
        log.info("manifest %s: %s", shown, reason)
        pending = Rejection(shown, (ManifestError(shown, "", reason),))
        return _Outcome(previous, self._period, pending, warned)

    def _snapshot(self, results: list[Result], complete: bool) -> SourceSnapshot:
        return snapshot.build(results, complete, self._first_seen)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """Subdirectories are skipped like kubelet; a broken or looping link is not a directory."""
    try:
        return entry.is_dir()
    except OSError:
        return False
