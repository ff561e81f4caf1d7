"""Container output to a CRI log file, as containerd writes it.

Each line is ``<RFC3339Nano UTC> <stdout|stderr> <F|P> <text>``: ``F`` ends a line, ``P`` is a
piece of a line longer than ``MAX_LINE`` (kubelet joins them back). Output that ends without a
newline is written as ``F`` when the stream closes.
"""

from __future__ import annotations

import os
import time

MAX_LINE = 16 * 1024


def timestamp(ns: int) -> str:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


class StreamLog:
    """One stream (stdout or stderr) of one container run, appended to the shared log file."""

    def __init__(self, log_fd: int | None, stream: str, error: str = "") -> None:
        self._fd = log_fd
        self._stream = stream.encode()
        self._pending = b""
        self.dropped = 0
        """Lines (or pieces) that could not be written: a full or failing log disk drops output,
        it never stops the container."""
        self.error = error

    def _write(self, text: bytes, tag: bytes) -> None:
        if self._fd is None:
            self.dropped += 1
            return
        stamp = timestamp(time.time_ns()).encode()
        line = b"%s %s %s %s\n" % (stamp, self._stream, tag, text)
        try:
            written = os.write(self._fd, line)
        except OSError as err:
            self.dropped += 1
            self.error = err.strerror or str(err)
            return
        if written != len(line):
            self.dropped += 1
            self.error = "short write"

    def feed(self, data: bytes) -> None:
        buffer = self._pending + data
        *lines, self._pending = buffer.split(b"\n")
        for line in lines:
            pieces = range(0, max(len(line), 1), MAX_LINE)
            for start in pieces:
                last = start + MAX_LINE >= len(line)
                self._write(line[start : start + MAX_LINE], b"F" if last else b"P")
        while len(self._pending) > MAX_LINE:
            self._write(self._pending[:MAX_LINE], b"P")
            self._pending = self._pending[MAX_LINE:]

    def close(self) -> None:
        if self._pending:
            self._write(self._pending, b"F")
            self._pending = b""
