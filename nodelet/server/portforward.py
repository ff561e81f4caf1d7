"""kubelet's port-forward protocol over SPDY (``portforward.k8s.io``) and over WebSocket.

SPDY: for every connection the client opens a pair of streams, ``streamType`` ``error`` and
``data``, with the same ``requestID`` and ``port`` headers; once both are there, the data
stream is joined to a new TCP connection to ``127.0.0.1:<port>`` made inside the pod's network
namespace (the probes' socket-in-netns path: the socket is created in the pod's netns, then
connected from the agent's loop). A failure is written on the error stream as kubelet words it.
WebSocket (``v4.channel.k8s.io``, its base64 form, or none): ``?port=`` gives the ports;
channel 2i is port i's data, 2i+1 its errors, each opened with the port as 2 bytes
little-endian; one connection per port; the socket closes when every connection has ended.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from nodelet.probe.tcp import DialError, connect
from nodelet.server import spdy
from nodelet.server.remotecommand import StreamRequestError, negotiate

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
WEBSOCKET_PROTOCOLS = ("v4.channel.k8s.io", "v4.base64.channel.k8s.io")
READ_SIZE = 1 << 16
DIAL_TIMEOUT = 10.0
_NO_LINGER = struct.pack("ii", 0, 0)


def port_of(text: str) -> int:
    """kubelet's port checks on a ``port`` header or query value."""
    try:
        port = int(text)
    except ValueError:
        raise StreamRequestError(400, f'unable to parse "{text}" as a port') from None
    if not 0 < port < 65536:
        raise StreamRequestError(400, f'port "{text}" must be > 0')
    return port


async def dial(netns: str | None, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``127.0.0.1:port`` in ``netns`` (None: the agent's own, hostNetwork)."""
    loop = asyncio.get_running_loop()
    sock = await connect("127.0.0.1", port, netns=netns, deadline=loop.time() + DIAL_TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)  # the probes' RST off
    return await asyncio.open_connection(sock=sock, limit=READ_SIZE)


async def pump(
    read: Callable[[], Awaitable[bytes]], write: Callable[[bytes], Awaitable[None]]
) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await read():
            await write(chunk)


async def join(
    read_client: Callable[[], Awaitable[bytes]],
    write_client: Callable[[bytes], Awaitable[None]],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways; the client's end half-closes the pod connection (as kubelet's
    containerd does), the pod's end finishes the exchange."""

    async def to_pod(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def upstream() -> None:
        await pump(read_client, to_pod)
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()

    up = asyncio.create_task(upstream())
    try:
        await pump(lambda: reader.read(READ_SIZE), write_client)
    finally:
        up.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await up
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def failure(port: int, pod: str, uid: str, err: Exception) -> str:
    return f"error forwarding port {port} to pod {pod}, uid {uid}: {err}"


async def serve_spdy(
    request: web.Request, netns: str | None, pod: str = "", uid: str = ""
) -> web.StreamResponse:
    protocol = negotiate(request, (PROTOCOL,))
    pairs: dict[str, dict[str, spdy.Stream]] = {}
    tasks: set[asyncio.Task[None]] = set()

    def on_stream(stream: spdy.Stream) -> bool:
        request_id, kind = stream.header("requestID"), stream.header("streamType")
        try:
            port = port_of(stream.header("port"))
        except StreamRequestError as err:
            log.warning("port-forward: %s", err)
            return False
        pair = pairs.setdefault(request_id, {})
        if not request_id or kind not in ("data", "error") or kind in pair:
            return False
        pair[kind] = stream
        if len(pair) == 2:
            del pairs[request_id]
            task = asyncio.create_task(_forward(pair["data"], pair["error"], port))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return True

    async def _forward(data: spdy.Stream, error: spdy.Stream, port: int) -> None:
        try:
            reader, writer = await dial(netns, port)
        except (DialError, OSError) as err:
            with contextlib.suppress(ConnectionError):
                await error.write(failure(port, pod, uid, err).encode())
        else:
            await join(data.read, data.write, reader, writer)
        for stream in (data, error):
            with contextlib.suppress(ConnectionError):
                await stream.close()

    session, response = await spdy.upgrade(request, protocol, on_stream)
    try:
        await session.closed.wait()
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        spdy.hang_up(request)
    return response


async def serve_websocket(
    request: web.Request, netns: str | None, pod: str = "", uid: str = ""
) -> web.StreamResponse:
    ports = [port_of(value) for value in request.query.getall("port", ())]
    if not ports:
        raise StreamRequestError(400, "at least one port must be specified")
    ws = web.WebSocketResponse(protocols=WEBSOCKET_PROTOCOLS, max_msg_size=0)
    await ws.prepare(request)
    encoded = "base64" in (ws.ws_protocol or "")
    inbound: list[asyncio.Queue[bytes]] = [asyncio.Queue(maxsize=64) for _ in ports]

    async def send(channel: int, data: bytes) -> None:
        if ws.closed:
            raise ConnectionResetError("the WebSocket is closed")
        if encoded:
            await ws.send_str(str(channel) + base64.b64encode(data).decode())
        else:
            await ws.send_bytes(bytes([channel]) + data)

    async def forward(index: int, port: int) -> None:
        try:
            reader, writer = await dial(netns, port)
        except (DialError, OSError) as err:
            with contextlib.suppress(ConnectionError):
                await send(index * 2 + 1, failure(port, pod, uid, err).encode())
            return

        async def to_client(data: bytes) -> None:
            await send(index * 2, data)

        await join(inbound[index].get, to_client, reader, writer)

    async def read_loop() -> None:
        try:
            async for message in ws:
                data = b""
                if message.type == WSMsgType.BINARY:
                    data = bytes(message.data)
                elif message.type == WSMsgType.TEXT and encoded and message.data[:1].isdigit():
                    data = bytes([int(message.data[0])]) + base64.b64decode(message.data[1:])
                channel = data[0] if data else -1
                if channel % 2 == 0 and channel // 2 < len(ports) and data[1:]:
                    await inbound[channel // 2].put(data[1:])
        finally:
            for queue in inbound:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(b"")

    for index, port in enumerate(ports):
        opening = struct.pack("<H", port)
        await send(index * 2, opening)
        await send(index * 2 + 1, opening)
    reading = asyncio.create_task(read_loop())
    try:
        await asyncio.gather(*(forward(i, p) for i, p in enumerate(ports)))
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await ws.close()
    return ws
