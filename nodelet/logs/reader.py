"""Container logs in the CRI format kubelet reads: parse, locate, follow.

The layout is kubelet's: ``<pod-logs-dir>/<namespace>_<pod>_<uid>/<container>/<restart>.log``,
one file per container start. Each line is
``<RFC3339Nano timestamp> <stdout|stderr> <F|P>[:<more tags>] <content>``: a ``P`` (partial)
chunk is continued by the next chunks of the same stream until an ``F`` (full) one ends the line,
so a long line survives being cut by the writer. Parsing works on bytes: a container may write
anything, and ``nodelet logs`` hands back exactly what it wrote.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

STREAMS = ("stdout", "stderr")
DEFAULT_NAMESPACE = "default"
MAX_MESSAGE_BYTES = 1 << 20
"""A line still unfinished past this size is handed out in pieces, so a writer that never ends
its line cannot make the reader hold it all in memory. Output bytes stay the same."""
POLL_SECONDS = 0.25
READ_SIZE = 1 << 16

_TIMESTAMP = re.compile(rb"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")
_LOG_FILE = re.compile(r"(\d+)\.log")


class LogsError(Exception):
    """A request for logs that cannot be served; the message is meant for the operator."""


@dataclass(frozen=True)
class LogChunk:
    """One line of a CRI log file."""

    timestamp: str
    stream: str
    partial: bool
    content: bytes
    """Without the line's newline."""


@dataclass(frozen=True)
class LogMessage:
    """One line as the container wrote it, joined from its chunks."""

    timestamp: str
    """Of the first chunk."""
    stream: str
    content: bytes
    complete: bool
    """False when no ``F`` chunk ended it (yet): the writer stopped mid-line, or it is too long."""

    def render(self) -> bytes:
        """The bytes the container wrote: a complete line gets its newline back."""
        return self.content + b"\n" if self.complete else self.content


def parse_line(line: bytes) -> LogChunk | None:
    """One CRI log line (with or without its newline), or None when it is not one.

    Unknown tags after ``F``/``P`` (``F:x``) are accepted, as kubelet does, for forward
    compatibility; a line with nothing after the tag is an empty chunk.
    """
    line = line.removesuffix(b"\n")
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        return None
    timestamp, stream, tags = parts[0], parts[1], parts[2]
    tag = tags.split(b":", 1)[0]
    if not _TIMESTAMP.fullmatch(timestamp) or stream.decode("latin-1") not in STREAMS:
        return None
    if tag not in (b"F", b"P"):
        return None
    content = parts[3] if len(parts) == 4 else b""
    return LogChunk(timestamp.decode(), stream.decode(), tag == b"P", content)


class Reassembler:
    """Joins the ``P`` chunks of each stream until the ``F`` chunk that ends their line.

    Streams are independent: a stderr line may complete while a stdout line is still partial,
    and is handed out first.
    """

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._pending: dict[str, tuple[str, list[bytes], int]] = {}

    def feed(self, chunk: LogChunk) -> LogMessage | None:
        """The message this chunk completes, if any."""
        timestamp, parts, size = self._pending.pop(chunk.stream, (chunk.timestamp, [], 0))
        parts.append(chunk.content)
        size += len(chunk.content)
        if not chunk.partial:
            return LogMessage(timestamp, chunk.stream, b"".join(parts), complete=True)
        if size >= self._max_bytes:
            return LogMessage(timestamp, chunk.stream, b"".join(parts), complete=False)
        self._pending[chunk.stream] = (timestamp, parts, size)
        return None

    def flush(self) -> list[LogMessage]:
        """Every unfinished line, oldest first; the reassembler is empty afterwards."""
        messages = [
            LogMessage(timestamp, stream, b"".join(parts), complete=False)
            for stream, (timestamp, parts, _) in self._pending.items()
        ]
        self._pending.clear()
        return messages


def _messages(lines: list[bytes], reassembler: Reassembler) -> Iterator[LogMessage]:
    for line in lines:
        chunk = parse_line(line)
        if chunk is None:
            continue
        message = reassembler.feed(chunk)
        if message is not None:
            yield message


def iter_messages(path: Path) -> Iterator[LogMessage]:
    """Every message of one log file as it is now; malformed lines are skipped, as kubelet does.

    A last line without its newline (being written right now) is read as it is, and lines left
    partial at the end are handed out unfinished, like ``kubectl logs`` shows them.
    """
    reassembler = Reassembler()
    with path.open("rb") as file:
        for line in file:
            yield from _messages([line], reassembler)
    yield from reassembler.flush()


@dataclass(frozen=True)
class PodRef:
    """A pod as the operator names it: ``name`` or ``namespace/name``."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> PodRef:
        namespace, slash, name = text.rpartition("/")
        if not slash:
            namespace = DEFAULT_NAMESPACE
        for part in (namespace, name):
            if not part or "_" in part or "/" in part:
                raise LogsError(f"invalid pod name {text!r}: expected NAME or NAMESPACE/NAME")
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def _split_pod_dir(name: str) -> tuple[str, str, str] | None:
    """``<namespace>_<name>_<uid>``; neither a namespace nor a pod name may contain ``_``."""
    parts = name.split("_", 2)
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def _pod_dirs(pod_logs_dir: Path) -> list[tuple[str, str, str, Path]]:
    try:
        entries = list(os.scandir(pod_logs_dir))
    except FileNotFoundError:
        raise LogsError(f"no pod logs at all: {pod_logs_dir} does not exist") from None
    found = []
    for entry in entries:
        split = _split_pod_dir(entry.name)
        if split is not None and entry.is_dir():
            found.append((*split, Path(entry.path)))
    return found


def find_pod_dir(pod_logs_dir: Path, pod: PodRef, uid: str | None = None) -> Path:
    """The pod's log dir: the given UID's, else the most recently modified one of that name.

    A pod's UID changes when its manifest changes, and each UID has its own dir; the newest is
    the pod that runs now.
    """
    dirs = _pod_dirs(pod_logs_dir)
    if uid is not None:
        for namespace, name, found_uid, path in dirs:
            if (namespace, name, found_uid) == (pod.namespace, pod.name, uid):
                return path
        raise LogsError(f"pod {pod} with uid {uid} has no logs in {pod_logs_dir}")
    matches = [path for ns, name, _, path in dirs if (ns, name) == (pod.namespace, pod.name)]
    if not matches:
        raise LogsError(_not_found(pod, pod_logs_dir, dirs))
    return max(matches, key=lambda path: (path.stat().st_mtime_ns, path.name))


def _not_found(pod: PodRef, pod_logs_dir: Path, dirs: list[tuple[str, str, str, Path]]) -> str:
    """The error, with a hint when the node suffix or the namespace is what is missing."""
    message = f"pod {pod} has no logs in {pod_logs_dir}"
    suffixed = sorted(
        {name for ns, name, _, _ in dirs if ns == pod.namespace and name.startswith(pod.name + "-")}
    )
    elsewhere = sorted({f"{ns}/{name}" for ns, name, _, _ in dirs if name == pod.name})
    if suffixed:
        message += f"; static pod names carry the node name, did you mean {', '.join(suffixed)}?"
    elif elsewhere:
        message += f"; found in another namespace: {', '.join(elsewhere)}"
    return message


def list_containers(pod_dir: Path) -> list[str]:
    """The containers (init containers included) that have a log dir, sorted by name."""
    return sorted(entry.name for entry in os.scandir(pod_dir) if entry.is_dir())


def container_dir(pod_dir: Path, pod: PodRef, container: str | None) -> Path:
    """The container's log dir; without a name, the pod must have exactly one container."""
    names = list_containers(pod_dir)
    choices = f"choose one of: [{' '.join(names)}]"
    if container is None:
        if len(names) == 1:
            return pod_dir / names[0]
        if not names:
            raise LogsError(f"pod {pod} has no container logs yet ({pod_dir})")
        raise LogsError(f"a container name must be specified for pod {pod.name}, {choices}")
    if container not in names:
        raise LogsError(f"container {container} is not valid for pod {pod.name}, {choices}")
    return pod_dir / container


def log_files(directory: Path) -> list[tuple[int, Path]]:
    """The container's ``<restart>.log`` files, oldest start first; rotated files are left out."""
    found = []
    for entry in os.scandir(directory):
        match = _LOG_FILE.fullmatch(entry.name)
        if match is not None and entry.is_file():
            found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


def pick_log(directory: Path, *, previous: bool = False) -> Path:
    """The log of the container's latest start, or of the one before it."""
    files = log_files(directory)
    name = directory.name
    if not files:
        raise LogsError(f"container {name} has not started yet: no log in {directory}")
    if previous:
        if len(files) < 2:
            raise LogsError(f"previous terminated container {name} not found: it never restarted")
        return files[-2][1]
    return files[-1][1]


class _Tail:
    """The complete lines appended to one open file; the unfinished last line waits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO = path.open("rb")
        self._inode = os.fstat(self._file.fileno()).st_ino
        self._rest = b""

    def lines(self) -> list[bytes]:
        data = self._rest + self._read_all()
        *lines, self._rest = data.split(b"\n")
        return lines

    def drain(self) -> list[bytes]:
        """Everything left, the unfinished line included: the writer is done with this file."""
        lines = self.lines()
        rest, self._rest = self._rest, b""
        return [*lines, rest] if rest else lines

    def truncated(self) -> bool:
        return os.fstat(self._file.fileno()).st_size < self._file.tell()

    def rewind(self) -> None:
        self._file.seek(0)
        self._rest = b""

    def replaced(self) -> bool:
        """The path no longer names the open file: rotated away or deleted."""
        try:
            return self.path.stat().st_ino != self._inode
        except FileNotFoundError:
            return True

    def close(self) -> None:
        self._file.close()

    def _read_all(self) -> bytes:
        chunks = []
        while data := self._file.read(READ_SIZE):
            chunks.append(data)
        return b"".join(chunks)


def _restart_of(path: Path) -> int:
    match = _LOG_FILE.fullmatch(path.name)
    if match is None:
        raise LogsError(f"not a container log file: {path}")
    return int(match.group(1))


def _next_log(directory: Path, restart: int) -> tuple[int, Path] | None:
    """The first start after ``restart``; skipping none, so no restart's output is lost."""
    try:
        later = [(n, path) for n, path in log_files(directory) if n > restart]
    except FileNotFoundError:
        return None
    return later[0] if later else None


def follow_messages(
    start: Path,
    *,
    poll_seconds: float = POLL_SECONDS,
    stop: threading.Event | None = None,
) -> Iterator[LogMessage]:
    """Messages of ``start`` and then of every later start of the same container, as written.

    Polls: a log file is written by one holder process, and a poll every quarter second is cheaper
    and simpler than inotify on a file that may be rotated or replaced. When the container
    restarts, ``<n+1>.log`` appears and the old file is finished first. A truncated file is read
    again from its beginning; a file rotated away is followed to the new one at the same path.
    Ends when ``stop`` is set or the container's log dir is deleted (the pod was removed).
    """
    directory = start.parent
    restart = _restart_of(start)
    reassembler = Reassembler()
    tail = _Tail(start)
    try:
        while True:
            lines = tail.lines()
            if lines:
                yield from _messages(lines, reassembler)
                continue
            if tail.truncated():
                yield from reassembler.flush()
                tail.rewind()
                continue
            following = _next_log(directory, restart)
            if following is not None or tail.replaced():
                yield from _messages(tail.drain(), reassembler)
                yield from reassembler.flush()
                path: Path | None
                if following is not None:
                    restart, path = following
                elif tail.path.exists():
                    path = tail.path  # rotated: a new file at the same path
                elif not directory.exists():
                    return  # the pod was removed
                else:
                    path = None  # deleted, or rotation under way: wait for a file to appear
                if path is not None:
                    tail.close()
                    tail = _Tail(path)
                    continue
            if _wait(stop, poll_seconds):
                return
    finally:
        tail.close()


def _wait(stop: threading.Event | None, seconds: float) -> bool:
    """Sleep; True when told to stop."""
    if stop is None:
        time.sleep(seconds)
        return False
    return stop.wait(seconds)


FALLBACK_LINES = 80
FALLBACK_BYTES = 2048
"""kubelet's ``FallbackToLogsOnError``: the last 80 lines of the log, at most 2 KiB."""


def fallback_message(path: Path) -> str:
    """The termination message kubelet takes from the logs of a container that failed."""
    try:
        lines = [m.render() for m in iter_messages(path)][-FALLBACK_LINES:]
    except OSError:
        return ""
    return b"".join(lines)[-FALLBACK_BYTES:].decode(errors="replace")
