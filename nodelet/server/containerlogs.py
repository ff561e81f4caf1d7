"""``/containerLogs/{ns}/{pod}/{container}``: a container's output as kubelet streams it.

The query is kubelet's ``PodLogOptions`` (its decoding and validation, its 400/422 bodies),
the run is chosen from the container's status as kubelet's ``validateContainerLogStatus``
does, and the bytes come from ``nodelet.logs.reader``, the reader ``nodelet logs`` uses:
rotated files of the run are read too (kubelet reads only the current one), so a ``--tail``
across a rotation is whole; a plain request (the whole run, as written) is converted by the
block, to the same bytes (``run_bytes``). ``follow`` ends when the followed run ends or the
client goes away. File reading runs in a thread of the request's own, so a slow disk never
stalls the agent's loop and a long ``-f`` never holds a worker of the shared executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from nodelet.logs.reader import (
    LogMessage,
    Reassembler,
    follow_messages,
    parse_line,
    read_run,
    rfc3339_nano,
    split_lines,
    timestamp_ns,
)
from nodelet.logs.rotation import open_rotated, rotated_files

log = logging.getLogger(__name__)

STREAMS = {"All": ("stdout", "stderr"), "Stdout": ("stdout",), "Stderr": ("stderr",)}
"""``stream``: kubelet's ``PodLogsQuerySplitStreams`` values."""
HIGH_WATER = 1 << 20
"""Bytes read ahead of the client before the reading thread waits."""
BATCH = 1 << 16
CHECK_SECONDS = 0.25
"""How often a waiting follow looks whether the run ended or the client left."""
READ_SIZE = 1 << 20
"""Bytes the reading thread takes from a log file at a time for a whole-run answer."""
_FULL_LINE = re.compile(
    rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d) "
    rb"(?:stdout|stderr) F ([^\n]*\n)",
    re.MULTILINE,
)
"""A plain full line (no ``P`` chunk, no extra tag), its message as the group. A match starts
at a line start and ends at that line's newline, so as many matches as newlines means every
line of the block is one."""
_INT64 = re.compile(r"[+-]?\d+")
_INT64_RANGE = (-(2**63), 2**63 - 1)


class LogRequestError(Exception):
    """A request answered with ``status`` and kubelet's plain-text body."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(frozen=True)
class LogOptions:
    """kubelet's ``PodLogOptions`` as the kubelet API takes them."""

    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    since_seconds: int | None = None
    since_time_ns: int | None = None
    stream: str = "All"

    def since_ns(self, now_ns: int) -> int | None:
        """kubelet's ``NewLogOptions``: the later of now-sinceSeconds and sinceTime."""
        since = None if self.since_seconds is None else now_ns - self.since_seconds * 10**9
        if self.since_time_ns is not None and (since is None or self.since_time_ns > since):
            since = self.since_time_ns
        return since


DECODE_ERROR = '{"message": "Unable to decode query."}'
INVALID = '{"message": "Invalid request."}'


def parse_options(query: Mapping[str, Sequence[str]]) -> LogOptions:
    """The query as kubelet decodes it: the first value of each parameter; ``tail`` is the old
    name of ``tailLines`` (``all`` is no limit); a boolean is false only when absent, ``0`` or
    ``false``; integers are Go's ``ParseInt``; ``sinceTime`` is RFC 3339. 400 when it does not
    decode, 422 when ``ValidatePodLogOptions`` refuses it."""
    values = {key: list(items) for key, items in query.items() if items}
    tail = _first(values, "tail")
    if tail:
        values["tailLines"] = [tail]
        if tail == "all":
            del values["tailLines"]
    since_time = _first(values, "sinceTime")
    try:
        options = LogOptions(
            follow=_bool(values, "follow"),
            previous=_bool(values, "previous"),
            timestamps=_bool(values, "timestamps"),
            tail_lines=_int64(values, "tailLines"),
            limit_bytes=_int64(values, "limitBytes"),
            since_seconds=_int64(values, "sinceSeconds"),
            since_time_ns=timestamp_ns(since_time) if since_time else None,
            stream=_first(values, "stream") or "All",
        )
    except ValueError:
        raise LogRequestError(400, DECODE_ERROR) from None
    if _invalid(options, since_time is not None):
        raise LogRequestError(422, INVALID)
    return options


def _invalid(options: LogOptions, since_time_given: bool) -> bool:
    """kubelet's ``ValidatePodLogOptions``."""
    return (
        (options.tail_lines is not None and options.tail_lines < 0)
        or (options.limit_bytes is not None and options.limit_bytes < 1)
        or (options.since_seconds is not None and since_time_given)
        or (options.since_seconds is not None and options.since_seconds < 1)
        or options.stream not in STREAMS
        or (options.stream != "All" and options.tail_lines is not None)
    )


def _first(values: Mapping[str, list[str]], key: str) -> str | None:
    items = values.get(key)
    return items[0] if items else None


def _bool(values: Mapping[str, list[str]], key: str) -> bool:
    value = _first(values, key)
    return value is not None and value != "0" and value.lower() != "false"


def _int64(values: Mapping[str, list[str]], key: str) -> int | None:
    value = _first(values, key)
    if value is None:
        return None
    if not _INT64.fullmatch(value) or not _INT64_RANGE[0] <= int(value) <= _INT64_RANGE[1]:
        raise ValueError(f"{key}: {value!r} is not an integer")
    return int(value)


# -- which run -------------------------------------------------------------------------------


def go_quote(text: str) -> str:
    """Go's ``%q`` for the names kubelet quotes in its errors (printable ASCII as it is)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped) + '"'


def container_status(status: Mapping[str, Any], container: str) -> Mapping[str, Any] | None:
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for item in status.get(key) or []:
            if item.get("name") == container:
                found: Mapping[str, Any] = item
                return found
    return None


def chosen_run(
    status: Mapping[str, Any], pod_name: str, container: str, previous: bool
) -> tuple[int, bool]:
    """``(attempt, running)``: the run whose log kubelet shows, by kubelet's
    ``validateContainerLogStatus`` (the running one, else the terminated one, else the last
    terminated one; ``previous`` the last terminated one); ``LogRequestError(400)`` with its
    message when there is none."""
    where = f"container {go_quote(container)} in pod {go_quote(pod_name)}"
    found = container_status(status, container)
    if found is None:
        raise LogRequestError(400, f"{where} is not available")
    state, last = found.get("state") or {}, (found.get("lastState") or {}).get("terminated")
    if previous:
        if not last or not last.get("containerID"):
            raise LogRequestError(
                400,
                f"previous terminated container {go_quote(container)} in pod "
                f"{go_quote(pod_name)} not found",
            )
        return _attempt(last["containerID"], where), False
    if "running" in state:
        return _attempt(found.get("containerID", ""), where), True
    terminated = state.get("terminated")
    if terminated is not None:
        if terminated.get("containerID"):
            return _attempt(terminated["containerID"], where), False
        if last and last.get("containerID"):
            return _attempt(last["containerID"], where), False
        raise LogRequestError(400, f"{where} is terminated")
    if last is not None:
        if not last.get("containerID"):
            raise LogRequestError(400, f"{where} is terminated")
        return _attempt(last["containerID"], where), False
    waiting = state.get("waiting") or {}
    raise LogRequestError(400, f"{where} is waiting to start: {waiting.get('reason', '')}")


def _attempt(container_id: str, where: str) -> int:
    """The run number at the end of nodelet's ``nodelet://<uid>/<name>/<attempt>`` IDs."""
    tail = container_id.rpartition("/")[2]
    if not tail.isdigit():
        raise LogRequestError(400, f"{where} is not available")
    return int(tail)


def run_log(pod_logs_dir: Path, meta: Mapping[str, Any], container: str, attempt: int) -> Path:
    """``<pod-logs-dir>/<ns>_<name>_<uid>/<container>/<attempt>.log`` (kubelet's layout)."""
    pod_dir = f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
    return pod_logs_dir / pod_dir / container / f"{attempt}.log"


# -- reading ---------------------------------------------------------------------------------


def messages(
    path: Path, options: LogOptions, stop: threading.Event, now_ns: int
) -> Iterator[LogMessage]:
    """The run's messages the options select, oldest first; with ``follow``, then new ones
    until ``stop`` is set, never into the container's next run."""
    since = options.since_ns(now_ns)
    wanted = STREAMS[options.stream]
    if options.follow:
        found: Iterator[LogMessage] = _this_run(
            follow_messages(path, stop=stop, history=True, tail=options.tail_lines, since_ns=since),
            path,
        )
    else:
        found = read_run(path, tail=options.tail_lines, since_ns=since)
    for message in found:
        if message.stream in wanted:
            yield message


def _this_run(found: Iterator[LogMessage], path: Path) -> Iterator[LogMessage]:
    """Ends where the next run's log begins: ``follow_messages`` goes on into later runs
    (as ``nodelet logs -f`` wants), kubelet's follow ends with the run. The next run's first
    timestamp marks the boundary (CRI timestamps of one node's clock, in nanoseconds)."""
    following = path.with_name(f"{int(path.stem) + 1}.log")
    boundary: int | None = None
    checked = 0.0
    for message in found:
        if boundary is None and time.monotonic() - checked > CHECK_SECONDS / 2:
            checked = time.monotonic()
            boundary = _first_timestamp(following)
        if boundary is not None and timestamp_ns(message.timestamp) >= boundary:
            return
        yield message


def _first_timestamp(path: Path) -> int | None:
    try:
        with path.open("rb") as file:
            line = file.readline()
    except FileNotFoundError:
        return None
    chunk = parse_line(line) if line.endswith(b"\n") else None
    return timestamp_ns(chunk.timestamp) if chunk is not None else None


def whole_run(options: LogOptions) -> bool:
    """The options ask for every message of the run, both streams, as written (plain
    ``kubectl logs``): the bytes can be converted by the block, not by the message."""
    return (
        not options.follow
        and not options.timestamps
        and options.tail_lines is None
        and options.since_seconds is None
        and options.since_time_ns is None
        and options.stream == "All"
    )


def run_bytes(current: Path) -> Iterator[bytes]:
    """What ``read_run(current)`` renders, by the block: the run's rotated files, then
    ``current`` as long as it was when opened. A block of plain full lines loses its prefixes
    in one regular-expression pass (~10x faster than a message per line); any other block
    (``P`` chunks, tags, malformed lines) and a stream left partial go through
    ``parse_line`` and ``Reassembler`` line by line, so the bytes are the same."""
    reassembler = Reassembler()
    pending: set[str] = set()
    for path in [*rotated_files(current), current]:
        for block in _blocks(path, is_current=path == current):
            if not pending and block.endswith(b"\n"):
                found = _FULL_LINE.findall(block)
                if len(found) == block.count(b"\n"):
                    yield b"".join(found)
                    continue
            out = []
            for line in split_lines(block):
                chunk = parse_line(line)
                if chunk is None:
                    continue
                message = reassembler.feed(chunk)
                if message is None:
                    pending.add(chunk.stream)
                else:
                    pending.discard(chunk.stream)
                    out.append(message.render())
            if out:
                yield b"".join(out)
    for message in reassembler.flush():
        yield message.render()


def _blocks(path: Path, is_current: bool) -> Iterator[bytes]:
    """The file in blocks of whole lines (the last may lack its newline); a rotated file
    decompressed; nothing when it is gone meanwhile."""
    try:
        file = path.open("rb") if is_current else open_rotated(path)
    except FileNotFoundError:
        return
    if file is None:
        return
    with file:
        left = os.fstat(file.fileno()).st_size if is_current else -1
        carry = b""
        while left != 0:
            data = file.read(READ_SIZE if left < 0 else min(READ_SIZE, left))
            if not data:
                break
            left -= len(data) if left > 0 else 0
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry += data
                continue
            yield carry + data[:cut]
            carry = data[cut:]
        if carry:
            yield carry


def render(message: LogMessage, timestamps: bool) -> bytes:
    if timestamps:
        return rfc3339_nano(message.timestamp).encode() + b" " + message.render()
    return message.render()


class _Buffer:
    """Bytes handed from the reading thread to the loop, at most ``HIGH_WATER`` ahead.

    Two ways to end: ``stop`` asks the follow to finish what the file holds and end (the run
    ended); ``cancel`` drops everything (the client left)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Condition()
        self._data = bytearray()
        self._done = False
        self._ready = asyncio.Event()
        self.stop = threading.Event()
        self.cancel = threading.Event()

    def put(self, data: bytes) -> bool:
        """In the thread; False once the client is gone. Wakes the loop only when it had
        taken everything, so a fast reader costs one wake-up per batch, not per line."""
        with self._lock:
            while len(self._data) >= HIGH_WATER and not self.cancel.is_set():
                self._lock.wait(CHECK_SECONDS)
            if self.cancel.is_set():
                return False
            wake = not self._data
            self._data += data
        if wake:
            self._wake()
        return True

    def finish(self) -> None:
        with self._lock:
            self._done = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self, idle: Callable[[], None]) -> bytes | None:
        """On the loop: what was read so far, or None at the end; ``idle`` runs every
        ``CHECK_SECONDS`` while nothing comes."""
        while True:
            with self._lock:
                self._ready.clear()
                if self._data:
                    data = bytes(self._data)
                    self._data.clear()
                    self._lock.notify_all()
                    return data
                if self._done:
                    return None
            try:
                await asyncio.wait_for(self._ready.wait(), CHECK_SECONDS)
            except TimeoutError:
                idle()


def _produce(found: Iterator[bytes], buffer: _Buffer) -> None:
    """The reading thread: every message (or block) as soon as it is read (a follow's new line
    reaches the client at once; the buffer batches them while the client is behind)."""
    try:
        for data in found:
            if not buffer.put(data):
                return
    except Exception:
        log.exception("reading a container log for /containerLogs failed")
    finally:
        buffer.finish()


async def stream(
    request: web.Request,
    path: Path,
    options: LogOptions,
    run_running: Callable[[], bool],
) -> web.StreamResponse:
    """Answer 200 at once (kubelet's zero-byte write), then the selected bytes, cut at
    ``limitBytes``; a follow ends once ``run_running()`` turns false and all of the run's
    output was sent, or when the client goes away."""
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    buffer = _Buffer(asyncio.get_running_loop())
    if whole_run(options):
        found = run_bytes(path)
    else:
        selected = messages(path, options, buffer.stop, time.time_ns())
        found = (render(message, options.timestamps) for message in selected)
    thread = threading.Thread(target=_produce, args=(found, buffer), name="containerLogs")
    thread.daemon = True
    thread.start()
    remaining = options.limit_bytes

    def idle() -> None:
        transport = request.transport
        if transport is None or transport.is_closing():
            buffer.cancel.set()
            buffer.stop.set()
        elif not run_running():
            buffer.stop.set()

    try:
        while (data := await buffer.take(idle)) is not None:
            if remaining is not None:
                data = data[:remaining]
                remaining -= len(data)
            await response.write(data)
            if remaining == 0:
                break
        await response.write_eof()
    finally:
        buffer.cancel.set()
        buffer.stop.set()
    return response
