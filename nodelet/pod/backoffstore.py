"""CrashLoopBackOff windows kept in the run dir, so an agent restart is not a restart storm.

kubelet keeps its back-off in memory: restart kubelet during a crash loop and every crashing
container is restarted at once, and the loop starts over at 10 s. nodelet writes the windows
(a few bytes per crashing container) after every change and reads them back at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from nodelet.pod.backoff import Backoff
from nodelet.runtime.rundir import read_json_object, write_atomically

log = logging.getLogger(__name__)

BACKOFF_FILE = "backoff.json"


class BackoffStore:
    """Loads the windows once, then saves them after each change, one write at a time."""

    def __init__(
        self, path: Path, backoff: Backoff, clock: Callable[[], float] = time.time
    ) -> None:
        self._path = path
        self._backoff = backoff
        self._clock = clock
        self._dirty = False
        self._writer: asyncio.Task[None] | None = None

    def load(self) -> None:
        data = read_json_object(self._path)
        if data:
            kept = self._backoff.restore(data, self._clock())
            log.info("restored %d CrashLoopBackOff windows from %s", kept, self._path)
        self._backoff.on_change = self._changed

    def _changed(self) -> None:
        self._dirty = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write(), name="backoff")

    async def _write(self) -> None:
        while self._dirty:
            self._dirty = False
            data = json.dumps(self._backoff.snapshot()).encode()
            try:
                await asyncio.to_thread(write_atomically, self._path, data)
            except OSError as err:  # a full run dir costs the persistence, not the pods
                log.warning("cannot save CrashLoopBackOff windows to %s: %s", self._path, err)

    async def flush(self) -> None:
        if self._writer is not None:
            await self._writer
