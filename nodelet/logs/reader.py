"""Container logs in the CRI format kubelet reads: parse, locate, follow.

The layout is kubelet's: ``<pod-logs-dir>/<namespace>_<pod>_<uid>/<container>/<restart>.log``,
one file per container start. Each line is
``<RFC3339Nano timestamp> <stdout|stderr> <F|P>[:<more tags>] <content>``: a ``P`` (partial)
chunk is continued by the next chunks of the same stream until an ``F`` (full) one ends the line,
so a long line survives being cut by the writer. Parsing works on bytes: a container may write
anything, and ``nodelet logs`` hands back exactly what it wrote.
"""

from __future__ import annotations

import calendar
import contextlib
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nodelet.logs.rotation import open_rotated, rotated_files

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
        self.last_line = b""
        """The last whole line handed out: finds this file again once it was gzipped."""

    def lines(self) -> list[bytes]:
        data = self._rest + self._read_all()
        *lines, self._rest = data.split(b"\n")
        if lines:
            self.last_line = lines[-1]
        return lines

    def drain(self) -> list[bytes]:
        """Everything left, the unfinished line included: the writer is done with this file."""
        lines = self.lines()
        rest, self._rest = self._rest, b""
        if rest:
            self.last_line = rest
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

    def find_in(self, rotated: list[Path]) -> int | None:
        """Where the open file is among ``rotated``: by its inode while it is uncompressed,
        else by its last line (unique: it carries a nanosecond timestamp)."""
        for index, path in enumerate(rotated):
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == self._inode:
                    return index
        if not self.last_line:
            return None
        for index in range(len(rotated) - 1, -1, -1):
            lines = _read_lines(rotated[index])
            if lines and lines[-1] == self.last_line:
                return index
        return None

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
    history: bool = False,
    tail: int | None = None,
    since_ns: int | None = None,
) -> Iterator[LogMessage]:
    """Messages of ``start`` and then of every later start of the same container, as written.

    Polls: a log file is written by one holder process, and a poll every quarter second is cheaper
    and simpler than inotify on a file that may be rotated or replaced. When the container
    restarts, ``<n+1>.log`` appears and the old file is finished first. A truncated file is read
    again from its beginning. A file rotated away is finished, then every file rotated after it
    (however many rotations happened between two polls, gzipped or not), then the new file at
    the same path. Ends when ``stop`` is set or the container's log dir is deleted (the pod was
    removed).

    ``history`` starts with the run's rotated files; ``tail`` and ``since_ns`` limit what is
    already there to its last lines and to lines not older (``kubectl logs -f --tail``).
    """
    directory = start.parent
    restart = _restart_of(start)
    reassembler = Reassembler()
    first = _Tail(start)
    tail_file: _Tail | None = first
    try:
        yield from _already_there(start, first, reassembler, history, tail, since_ns)
        while True:
            if tail_file is not None:
                lines = tail_file.lines()
                if lines:
                    yield from _messages(lines, reassembler)
                    continue
                if tail_file.truncated():
                    yield from reassembler.flush()
                    tail_file.rewind()
                    continue
                if tail_file.replaced():
                    yield from _messages(tail_file.drain(), reassembler)
                    yield from _rotated_after(tail_file, reassembler)
                    tail_file.close()
                    tail_file = None
            current = directory / f"{restart}.log"
            if tail_file is None and current.exists():
                tail_file = _Tail(current)  # rotated: the new file at the same path
                continue
            following = _next_log(directory, restart)
            if following is not None:
                if tail_file is not None:
                    yield from _messages(tail_file.drain(), reassembler)
                    tail_file.close()
                yield from reassembler.flush()
                restart, path = following
                tail_file = _Tail(path)
                continue
            if tail_file is None and not directory.exists():
                return  # the pod was removed
            if _wait(stop, poll_seconds):
                return
    finally:
        if tail_file is not None:
            tail_file.close()


def _already_there(
    start: Path,
    tail_file: _Tail,
    reassembler: Reassembler,
    history: bool,
    tail: int | None,
    since_ns: int | None,
) -> Iterator[LogMessage]:
    """What a follow prints before it waits: the open file's lines now (and the run's rotated
    files before them, with ``history``), cut to ``tail`` and ``since_ns``."""
    if not history and tail is None and since_ns is None:
        return
    lines = tail_file.lines()
    older = _older_needed(start, lines, tail) if history else []
    found = _chain(
        *(_file_messages(path, reassembler) for path in older), _messages(lines, reassembler)
    )
    yield from select(found, tail=tail, since_ns=since_ns)


def _older_needed(current: Path, current_lines: list[bytes], tail: int | None) -> list[Path]:
    """The run's rotated files that hold part of its last ``tail`` lines (all without one)."""
    rotated = rotated_files(current)
    if tail is None:
        return rotated
    have, needed = _line_ends(current_lines), 0
    for path in reversed(rotated):
        if have >= tail:
            break
        needed += 1
        have += _line_ends(_read_lines(path))
    return rotated[len(rotated) - needed :]


def _line_ends(lines: list[bytes]) -> int:
    """How many lines end (``F`` chunks) among ``lines``: at least that many messages."""
    return sum(1 for line in lines if line.split(b" ", 3)[2:3] == [b"F"])


def _read_lines(path: Path) -> list[bytes]:
    """A rotated or current file's lines (decompressed); none when it is gone meanwhile."""
    if _LOG_FILE.fullmatch(path.name):
        try:
            return split_lines(path.read_bytes())
        except FileNotFoundError:
            return []
    file = open_rotated(path)
    if file is None:
        return []
    with file:
        return split_lines(file.read())


def split_lines(data: bytes) -> list[bytes]:
    """CRI lines end at ``\n`` only (kubelet's reader): a ``\r`` inside a message (a
    progress bar) is part of it, which ``bytes.splitlines`` would cut."""
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()
    return lines


def _file_messages(path: Path, reassembler: Reassembler) -> Iterator[LogMessage]:
    yield from _messages(_read_lines(path), reassembler)


def read_run(
    current: Path, *, tail: int | None = None, since_ns: int | None = None
) -> Iterator[LogMessage]:
    """Every kept message of one container run, oldest first: its rotated files (gzipped or
    not), then ``current``; or its last ``tail`` messages, and none older than ``since_ns``
    (kubelet's order: the tail is taken, then the time filter)."""
    reassembler = Reassembler()
    lines = _read_lines(current)
    older = _older_needed(current, lines, tail)
    found = _chain(
        *(_file_messages(path, reassembler) for path in older),
        _messages(lines, reassembler),
        _flushed(reassembler),
    )
    yield from select(found, tail=tail, since_ns=since_ns)


def select(
    messages: Iterator[LogMessage], *, tail: int | None = None, since_ns: int | None = None
) -> Iterator[LogMessage]:
    """The last ``tail`` of ``messages`` (all when None), then those not before ``since_ns``."""
    kept: Iterable[LogMessage] = messages if tail is None else deque(messages, maxlen=tail)
    for message in kept:
        if since_ns is None or timestamp_ns(message.timestamp) >= since_ns:
            yield message


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})"
)


def timestamp_ns(text: str) -> int:
    """An RFC3339(Nano) timestamp as nanoseconds since the epoch."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7) or "", match.group(8)
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000_000 + int(fraction.ljust(9, "0"))


def rfc3339_nano(text: str) -> str:
    """A CRI timestamp as Go's ``time.RFC3339Nano`` prints it (what ``kubectl logs
    --timestamps`` shows): trailing zeros of the fraction dropped, the dot too when all are."""
    match = _RFC3339.fullmatch(text)
    if match is None or match.group(7) is None:
        return text
    fraction = match.group(7).rstrip("0")
    head = text[: match.start(7) - 1]
    return f"{head}.{fraction}{match.group(8)}" if fraction else f"{head}{match.group(8)}"


def _flushed(reassembler: Reassembler) -> Iterator[LogMessage]:
    yield from reassembler.flush()  # evaluated last, once every file was read


def _chain(*parts: Iterator[LogMessage]) -> Iterator[LogMessage]:
    for part in parts:
        yield from part


def _rotated_after(tail_file: _Tail, reassembler: Reassembler) -> Iterator[LogMessage]:
    """The messages of every file rotated after the one ``tail_file`` still holds open."""
    rotated = rotated_files(tail_file.path)
    position = tail_file.find_in(rotated)
    for path in rotated[position + 1 :] if position is not None else []:
        yield from _file_messages(path, reassembler)


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
