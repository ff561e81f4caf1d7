"""Container output to a CRI log file, as containerd writes it.

Each line is ``<RFC3339Nano UTC> <stdout|stderr> <F|P> <text>``: ``F`` ends a line, ``P`` is a
piece of a line longer than ``MAX_LINE`` (kubelet joins them back). Output that ends without a
newline is written as ``F`` when the stream closes.

Rotation (kubelet's ``containerLogMaxSize``) happens here, in the only writer, between two
lines: the file is renamed to ``<attempt>.log.<YYYYMMDD-HHMMSS>`` (kubelet's name; UTC) and a
fresh ``<attempt>.log`` is opened, so no line is lost, split or reordered. A second rotation
within the same second gets ``.<n>`` after the stamp (kubelet rotates at most every 10 s and
needs no such suffix; a holder may rotate many times a second). The agent gzips and removes
rotated files (``nodelet.logs.rotation``).
"""

from __future__ import annotations

import os
import time

MAX_LINE = 16 * 1024


def timestamp(ns: int) -> str:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


ROTATED_STAMP = "%Y%m%d-%H%M%S"
ROTATE_RETRY_SECONDS = 1.0
"""After a failed rotation (no space for the new file), lines go on into the current file,
and the next rotation is tried this much later."""
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class LogFile:
    """A container run's log file, shared by its stdout and stderr; rotated before a line
    would take it past ``max_bytes`` (never when empty: a file holds at least one line)."""

    def __init__(self, fd: int | None, path: str = "", max_bytes: int | None = None) -> None:
        self.fd = fd
        self.path = path
        self.max_bytes = max_bytes if path else None
        self.size = os.fstat(fd).st_size if fd is not None and self.max_bytes else 0
        self.error = ""
        self._last_stamp = ""
        self._sequence = 0
        self._retry_at = 0.0

    def write(self, line: bytes) -> int:
        """Append ``line`` (one whole CRI line); OSError when the disk refuses it."""
        assert self.fd is not None
        if self.max_bytes and self.size and self.size + len(line) > self.max_bytes:
            self._rotate()
        # A short write is retried for the rest: a disk that filled up mid-line then says why
        # (ENOSPC) instead of leaving only a count.
        written = 0
        try:
            while written < len(line):
                done = os.write(self.fd, line[written:])
                if not done:
                    break
                written += done
        finally:
            self.size += written
        return written

    def _rotated_name(self) -> str:
        stamp = time.strftime(ROTATED_STAMP, time.gmtime())
        self._sequence = self._sequence + 1 if stamp == self._last_stamp else 0
        self._last_stamp = stamp
        while True:
            suffix = f".{self._sequence}" if self._sequence else ""
            name = f"{self.path}.{stamp}{suffix}"
            if not any(os.path.lexists(name + end) for end in ("", ".gz", ".gz.tmp")):
                return name
            self._sequence += 1

    def _rotate(self) -> None:
        if time.monotonic() < self._retry_at:
            return
        rotated = self._rotated_name()
        try:
            os.rename(self.path, rotated)
        except OSError as err:
            self._failed(err)
            return
        try:
            fresh = os.open(self.path, _FLAGS, 0o640)
        except OSError as err:
            os.rename(rotated, self.path)  # back: the lines stay in one file, in order
            self._failed(err)
            return
        assert self.fd is not None
        os.close(self.fd)
        self.fd, self.size = fresh, 0

    def _failed(self, err: OSError) -> None:
        self.error = f"cannot rotate {self.path}: {err.strerror or err}"
        self._retry_at = time.monotonic() + ROTATE_RETRY_SECONDS

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class StreamLog:
    """One stream (stdout or stderr) of one container run, appended to the shared log file."""

    def __init__(self, log: LogFile | int | None, stream: str, error: str = "") -> None:
        self._file = log if isinstance(log, LogFile) else LogFile(log)
        self._stream = stream.encode()
        self._pending = b""
        self.dropped = 0
        """Lines (or pieces) that could not be written: a full or failing log disk drops output,
        it never stops the container."""
        self.error = error

    def _write(self, text: bytes, tag: bytes) -> None:
        if self._file.fd is None:
            self.dropped += 1
            return
        stamp = timestamp(time.time_ns()).encode()
        line = b"%s %s %s %s\n" % (stamp, self._stream, tag, text)
        try:
            written = self._file.write(line)
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
