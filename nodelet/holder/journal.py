"""The holder's side of the exit journal: append, fsync, and never lose a record to a full disk.

A record that cannot be written (ENOSPC, EIO) is kept in memory, retried every second, and
replayed to every agent that connects until it is on disk: the pod never ends because its
journal could not be written, and no exit is lost while the holder lives.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from nodelet.holder import protocol
from nodelet.holder.procfs import say

RETRY_SECONDS = 1.0

Scheduler = Callable[[float, Callable[[], None]], None]
"""Runs the callable after that many seconds (the holder's timer list)."""


class JournalWriter:
    def __init__(self, path: str, schedule: Scheduler) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._schedule = schedule
        self.unwritten: list[protocol.StartEntry | protocol.ExitEntry] = []
        """Records not on disk yet, oldest first."""
        self._retry_pending = False

    def append(self, entry: protocol.StartEntry | protocol.ExitEntry) -> None:
        self.unwritten.append(entry)
        self._flush()

    def _retry(self) -> None:
        self._retry_pending = False
        self._flush()

    def _flush(self) -> None:
        while self.unwritten:
            data = protocol.encode_record(self.unwritten[0])
            try:
                written = os.write(self._fd, data)
                if written != len(data):
                    raise OSError(28, "short write")  # the torn part fails its checksum
                os.fsync(self._fd)
            except OSError as err:
                if not self._retry_pending:
                    say(f"holder: journal write failed, retrying: {err}")
                    self._retry_pending = True
                    self._schedule(RETRY_SECONDS, self._retry)
                return
            self.unwritten.pop(0)
