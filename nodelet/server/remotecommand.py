"""kubelet's remote command protocol (``/exec``, ``/attach``) over SPDY and over WebSocket.

SPDY (``v4.channel.k8s.io``, kubectl before 1.30 and the API server's proxy): the client opens
one stream per channel, named by its ``streamType`` header (error, stdin, stdout, stderr,
resize); the exchange starts once every stream the query asked for is there (30 s, kubelet's
stream creation timeout). WebSocket (``v5``/``v4.channel.k8s.io``, their ``base64`` forms and
the pre-v4 ``channel.k8s.io``; the Python client's ``stream()``, kubectl 1.30+): one message per
chunk, its first byte the channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; v5's 255
closes the channel named by the second byte).

The error channel ends every exchange with the ``metav1.Status`` kubelet writes: Success; a
NonZeroExitCode failure whose cause ``ExitCode`` carries the code (what ``kubectl exec`` exits
with); an InternalError when the command could not be started. Pre-v4 protocols get the
message text only, and nothing on success. Resize events are JSON ``{"Width":..,"Height":..}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import WSMsgType, web
from multidict import MultiMapping

from nodelet.server import spdy
from nodelet.server.containerexec import Outcome, read_chunk

log = logging.getLogger(__name__)

STDIN, STDOUT, STDERR, ERROR, RESIZE = "stdin", "stdout", "stderr", "error", "resize"
SPDY_PROTOCOLS = ("v4.channel.k8s.io",)
WEBSOCKET_PROTOCOLS = (
    "v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io", "channel.k8s.io",
    "base64.channel.k8s.io",
)  # fmt: skip
CHANNELS = {STDIN: 0, STDOUT: 1, STDERR: 2, ERROR: 3, RESIZE: 4}
CLOSE_CHANNEL = 255
STREAM_CREATION_TIMEOUT = 30.0
DRAIN_AFTER_EXIT = 2.0
"""How long output is still copied after the command exited (a background process may hold
the pipe open for ever)."""
KILL_GRACE = 2.0
PROTOCOL_HEADER = "X-Stream-Protocol-Version"


class StreamRequestError(Exception):
    """A bad exec/attach request: ``status`` and kubelet's text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Options:
    """kubelet's ``remotecommand.Options`` from the query string: ``input``, ``output``,
    ``error``, ``tty`` (``=1``; what the API server sends) and ``command``; ``stdin``,
    ``stdout``, ``stderr`` are taken too (the names of ``PodExecOptions``)."""

    command: tuple[str, ...]
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool

    @classmethod
    def from_query(cls, query: MultiMapping[str], need_command: bool) -> Options:
        def flag(*names: str) -> bool:
            return any(query.get(name, "").lower() in ("1", "true") for name in names)

        command = tuple(query.getall("command", ()))
        stdin, stdout = flag("input", STDIN), flag("output", STDOUT)
        stderr, tty = flag("error", STDERR), flag("tty")
        if need_command and not command:
            raise StreamRequestError(400, "you must specify a command")
        if not (stdin or stdout or stderr):
            raise StreamRequestError(400, "you must specify at least 1 of stdin, stdout, stderr")
        return cls(command, stdin, stdout, stderr and not tty, tty)  # a TTY has no stderr

    def streams(self) -> set[str]:
        wanted = {ERROR}
        for name, on in ((STDIN, self.stdin), (STDOUT, self.stdout), (STDERR, self.stderr),
                         (RESIZE, self.tty)):  # fmt: skip
            if on:
                wanted.add(name)
        return wanted


class Process(Protocol):
    """What an exchange drives: a command (exec) or a container's output (attach)."""

    stdout: asyncio.StreamReader | None
    stderr: asyncio.StreamReader | None

    async def write(self, data: bytes) -> None: ...
    def close_stdin(self) -> None: ...
    def resize(self, width: int, height: int) -> None: ...
    async def wait(self) -> Outcome: ...
    def kill(self) -> None: ...
    def kill_all(self) -> None: ...
    def close(self) -> None: ...


Starter = Callable[[Options], Awaitable[Process]]
"""Starts the process; raises ``LookupError``/``ExecError`` (written as an InternalError)."""


def success() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_status(command: Sequence[str], code: int) -> dict[str, Any]:
    """kubelet's NonZeroExitCode status, with containerd's ``CodeExitError`` text."""
    detail = f"error executing command [{' '.join(command)}], exit code {code}"
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: {detail}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def internal_error(message: str) -> dict[str, Any]:
    """``apierrors.NewInternalError`` of kubelet's ``error executing command in container``."""
    text = f"error executing command in container: {message}"
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {text}",
        "reason": "InternalError",
        "details": {"causes": [{"message": text}]},
        "code": 500,
    }


def status_of(command: Sequence[str], outcome: Outcome) -> dict[str, Any]:
    if outcome.failure is not None:
        return internal_error(f"failed to exec in container: {outcome.failure}")
    return success() if outcome.code == 0 else exit_status(command, outcome.code)


@dataclass
class Ends:
    """The client's side of one exchange, whatever carries it."""

    read_stdin: Callable[[], Awaitable[bytes]] | None
    stdout: Callable[[bytes], Awaitable[None]] | None
    stderr: Callable[[bytes], Awaitable[None]] | None
    close_output: Callable[[str], Awaitable[None]]
    write_status: Callable[[dict[str, Any]], Awaitable[None]]
    gone: asyncio.Event
    read_resize: Callable[[], Awaitable[bytes]] | None = None
    """The raw resize stream (SPDY); WebSocket puts decoded sizes on ``resizes`` itself."""
    resizes: asyncio.Queue[tuple[int, int]] = field(default_factory=asyncio.Queue)


async def drive(options: Options, start: Starter, ends: Ends) -> None:
    """Start the process, copy stdin in and stdout/stderr out, apply resizes, and write the
    status once it ended; kill it if the client goes away first."""
    try:
        process = await start(options)
    except (LookupError, OSError, ValueError) as err:
        message = str(err.args[0]) if err.args else str(err)
        with contextlib.suppress(ConnectionError):
            await ends.write_status(internal_error(message))
        return
    tasks = [asyncio.create_task(_resize(process, ends.resizes))]
    if ends.read_resize is not None:
        tasks.append(asyncio.create_task(_decode_resizes(ends.read_resize, ends.resizes)))
    if ends.read_stdin is not None:
        tasks.append(asyncio.create_task(_copy_in(ends.read_stdin, process)))
    outputs = []
    for name, reader, write in ((STDOUT, process.stdout, ends.stdout),
                                (STDERR, process.stderr, ends.stderr)):  # fmt: skip
        if write is not None:
            outputs.append(asyncio.create_task(_copy_out(name, reader, write, ends)))
    waiting = asyncio.create_task(process.wait())
    gone = asyncio.create_task(ends.gone.wait())
    try:
        await asyncio.wait([waiting, gone], return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            await _stop(process, waiting)
            return
        if outputs:
            await asyncio.wait(outputs, timeout=DRAIN_AFTER_EXIT)
        with contextlib.suppress(ConnectionError):
            await ends.write_status(status_of(options.command, waiting.result()))
    finally:
        if not waiting.done():
            await _stop(process, waiting)
        for task in [*tasks, *outputs, gone, waiting]:
            task.cancel()
        await asyncio.gather(*tasks, *outputs, gone, waiting, return_exceptions=True)
        process.close()


async def _stop(process: Process, waiting: asyncio.Task[Outcome]) -> None:
    """Kill the command and let its leader reap it; the leader's session if that hangs."""
    process.kill()
    await asyncio.wait([waiting], timeout=KILL_GRACE)
    if not waiting.done():
        process.kill_all()
        await asyncio.wait([waiting], timeout=KILL_GRACE)


async def _copy_in(read: Callable[[], Awaitable[bytes]], process: Process) -> None:
    """The client's stdin to the process; once the process stops taking it, the rest is
    read and dropped (unread data would stall the connection)."""
    taking = True
    while chunk := await read():
        if taking:
            try:
                await process.write(chunk)
            except (ConnectionError, OSError):
                taking = False
    if taking:
        process.close_stdin()


async def _copy_out(
    name: str,
    reader: asyncio.StreamReader | None,
    write: Callable[[bytes], Awaitable[None]],
    ends: Ends,
) -> None:
    try:
        if reader is not None:
            while chunk := await read_chunk(reader):
                await write(chunk)
    except ConnectionError:
        return
    with contextlib.suppress(ConnectionError):
        await ends.close_output(name)


async def _resize(process: Process, sizes: asyncio.Queue[tuple[int, int]]) -> None:
    while True:
        width, height = await sizes.get()
        process.resize(width, height)


async def _decode_resizes(
    read: Callable[[], Awaitable[bytes]], sizes: asyncio.Queue[tuple[int, int]]
) -> None:
    decoder = ResizeDecoder()
    while chunk := await read():
        for size in decoder.feed(chunk.decode(errors="replace")):
            sizes.put_nowait(size)


class ResizeDecoder:
    """A stream of JSON ``TerminalSize`` values (Go's ``json.Decoder`` on the resize stream)."""

    def __init__(self) -> None:
        self._text = ""
        self._decoder = json.JSONDecoder()

    def feed(self, data: str) -> list[tuple[int, int]]:
        self._text += data
        sizes = []
        while self._text.strip():
            text = self._text.lstrip()
            try:
                value, end = self._decoder.raw_decode(text)
            except json.JSONDecodeError:
                break
            self._text = text[end:]
            if isinstance(value, Mapping):
                width, height = value.get("Width", 0), value.get("Height", 0)
                if isinstance(width, int) and isinstance(height, int):
                    sizes.append((width, height))
        return sizes


def negotiate(request: web.Request, server: Sequence[str]) -> str:
    """httpstream.Handshake: the first of the client's protocols the server speaks."""
    client = [p.strip() for v in request.headers.getall(PROTOCOL_HEADER, ()) for p in v.split(",")]
    if not client:
        raise StreamRequestError(400, f"unable to upgrade: {PROTOCOL_HEADER} is required")
    for protocol in client:
        if protocol in server:
            return protocol
    raise StreamRequestError(
        403,
        "unable to upgrade: unable to negotiate protocol: client supports "
        f"[{' '.join(client)}], server accepts [{' '.join(server)}]",
    )


async def serve_spdy(request: web.Request, options: Options, start: Starter) -> web.StreamResponse:
    """The SPDY exchange: upgrade, collect the streams, drive the process."""
    protocol = negotiate(request, SPDY_PROTOCOLS)
    wanted = options.streams()
    streams: dict[str, spdy.Stream] = {}
    complete = asyncio.Event()

    def on_stream(stream: spdy.Stream) -> bool:
        kind = stream.header("streamType")
        if kind not in wanted or kind in streams:
            log.warning("exec: unexpected stream type %r", kind)
            return False
        streams[kind] = stream
        if len(streams) == len(wanted):
            complete.set()
        return True

    session, response = await spdy.upgrade(request, protocol, on_stream)
    try:
        async with asyncio.timeout(STREAM_CREATION_TIMEOUT):
            await _first(complete.wait(), session.closed.wait())
        if not complete.is_set():
            return response
        await drive(options, start, _spdy_ends(streams, session))
    except TimeoutError:
        log.warning("exec: timed out waiting for client to create streams")
    finally:
        await session.close()
        spdy.hang_up(request)
    return response


def _spdy_ends(streams: dict[str, spdy.Stream], session: spdy.Session) -> Ends:
    error = streams[ERROR]

    async def write_status(status: dict[str, Any]) -> None:
        await error.write(json.dumps(status, separators=(",", ":")).encode())
        await error.close()

    async def close_output(name: str) -> None:
        await streams[name].close()

    return Ends(
        read_stdin=streams[STDIN].read if STDIN in streams else None,
        stdout=streams[STDOUT].write if STDOUT in streams else None,
        stderr=streams[STDERR].write if STDERR in streams else None,
        close_output=close_output,
        write_status=write_status,
        gone=session.closed,
        read_resize=streams[RESIZE].read if RESIZE in streams else None,
    )


async def _first(*waits: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def serve_websocket(
    request: web.Request, options: Options, start: Starter
) -> web.StreamResponse:
    """The WebSocket exchange, channel-prefixed messages (base64 text for ``base64.*``)."""
    ws = web.WebSocketResponse(protocols=WEBSOCKET_PROTOCOLS, max_msg_size=0)
    await ws.prepare(request)
    protocol = ws.ws_protocol or ""
    channels = WebSocketChannels(ws, protocol, options)
    reading = asyncio.create_task(channels.read_loop())
    try:
        await drive(options, start, channels.ends)
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await ws.close()
    return ws


class WebSocketChannels:
    """Channel framing on one WebSocket: writes ``[channel] + data`` (or base64 text), reads
    stdin, resize and v5's close messages."""

    def __init__(self, ws: web.WebSocketResponse, protocol: str, options: Options) -> None:
        self.ws = ws
        self.base64 = "base64" in protocol
        self.v5 = protocol.startswith("v5.")
        self.v4 = self.v5 or protocol.startswith("v4.")
        self.stdin: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)
        self._resize = ResizeDecoder()
        gone = asyncio.Event()
        self.ends = Ends(
            read_stdin=self.stdin.get if options.stdin else None,
            stdout=self._writer(STDOUT) if options.stdout else None,
            stderr=self._writer(STDERR) if options.stderr else None,
            close_output=self._close_output,
            write_status=self._write_status,
            gone=gone,
        )

    def _writer(self, name: str) -> Callable[[bytes], Awaitable[None]]:
        channel = CHANNELS[name]

        async def write(data: bytes) -> None:
            await self.send(channel, data)

        return write

    async def send(self, channel: int, data: bytes) -> None:
        if self.ws.closed:
            raise ConnectionResetError("the WebSocket is closed")
        if self.base64:
            await self.ws.send_str(str(channel) + base64.b64encode(data).decode())
        else:
            await self.ws.send_bytes(bytes([channel]) + data)

    async def _close_output(self, name: str) -> None:
        if self.v5:
            await self.ws.send_bytes(bytes([CLOSE_CHANNEL, CHANNELS[name]]))

    async def _write_status(self, status: dict[str, Any]) -> None:
        if self.v4:
            await self.send(CHANNELS[ERROR], json.dumps(status, separators=(",", ":")).encode())
        elif status["status"] != "Success":
            await self.send(CHANNELS[ERROR], status["message"].encode())

    async def read_loop(self) -> None:
        try:
            async for message in self.ws:
                if message.type == WSMsgType.BINARY:
                    await self._message(bytes(message.data))
                elif message.type == WSMsgType.TEXT and self.base64 and message.data:
                    channel = int(message.data[0]) if message.data[0].isdigit() else -1
                    await self._message(
                        bytes([channel & 0xFF]) + base64.b64decode(message.data[1:])
                    )
        finally:
            await self.stdin.put(b"")
            self.ends.gone.set()

    async def _message(self, data: bytes) -> None:
        if not data:
            return
        channel, payload = data[0], data[1:]
        if channel == CHANNELS[STDIN] and payload:
            await self.stdin.put(payload)
        elif channel == CHANNELS[RESIZE]:
            for size in self._resize.feed(payload.decode(errors="replace")):
                self.ends.resizes.put_nowait(size)
        elif channel == CLOSE_CHANNEL and self.v5 and payload[:1] == bytes([CHANNELS[STDIN]]):
            await self.stdin.put(b"")
