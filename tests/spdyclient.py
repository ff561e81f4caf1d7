"""A minimal SPDY/3.1 client, as k8s' ``httpstream/spdy`` round tripper drives kubelet: an
HTTP/1.1 upgrade, then client streams (odd ids) opened with SYN_STREAM, fed with DATA and
half-closed with FIN. The framing is nodelet's own (``tests/unit/test_spdy.py`` checks it
against hand-made frames; the e2e tests use the real kubectl)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Mapping
from typing import Any

from nodelet.server import spdy


class ClientStream:
    def __init__(self, client: SpdyClient, stream_id: int) -> None:
        self.client = client
        self.id = stream_id
        self.replied = asyncio.Event()
        self.reset = False
        self._data: asyncio.Queue[bytes] = asyncio.Queue()
        self.received: list[bytes] = []

    async def write(self, data: bytes) -> None:
        for start in range(0, len(data), 1 << 16):
            await self.client.send(spdy.data_frame(self.id, data[start : start + (1 << 16)]))

    async def close(self) -> None:
        await self.client.send(spdy.data_frame(self.id, b"", fin=True))

    async def read(self) -> bytes:
        """The next chunk; b"" at FIN, RST or the connection's end."""
        return await self._data.get()

    async def read_all(self) -> bytes:
        """Everything up to the end (``received`` holds what came, should it never end)."""
        while chunk := await self.read():
            self.received.append(chunk)
        return b"".join(self.received)


class SpdyClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.codec = spdy.HeaderCodec()
        self.streams: dict[int, ClientStream] = {}
        self.next_id = 1
        self.goaway = asyncio.Event()
        self.headers: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str,
        protocols: list[str],
        context: ssl.SSLContext | None = None,
    ) -> SpdyClient:
        """Upgrade ``path`` (a POST, as kubectl's exec); raises ``UpgradeRefusedError`` with the
        status and body when the server does not answer 101."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: Upgrade",
                 "Upgrade: SPDY/3.1", "Content-Length: 0"]  # fmt: skip
        lines += [f"X-Stream-Protocol-Version: {p}" for p in protocols]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        status_line, *header_lines = head.strip().split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split()[1])
        if status != 101:
            body = await reader.read(int(headers.get("content-length", "0") or 0))
            writer.close()
            raise UpgradeRefusedError(status, body.decode(errors="replace"), headers)
        client = cls(reader, writer)
        client.headers = headers
        client._task = asyncio.create_task(client._read_loop())
        return client

    async def send(self, frame: bytes) -> None:
        self.writer.write(frame)
        await self.writer.drain()

    async def open(self, headers: Mapping[str, str], fin: bool = False) -> ClientStream:
        stream = ClientStream(self, self.next_id)
        self.streams[stream.id] = stream
        self.next_id += 2
        block = {name: [value] for name, value in headers.items()}
        frame = spdy.syn_stream(self.codec, stream.id, block, spdy.FLAG_FIN if fin else 0)
        await self.send(frame)
        return stream

    async def _read_loop(self) -> None:
        frames = spdy.FrameReader()
        try:
            while data := await self.reader.read(1 << 16):
                for frame in frames.feed(data):
                    self._handle(frame)
        except (ConnectionError, OSError):
            pass
        finally:
            for stream in self.streams.values():
                stream._data.put_nowait(b"")

    def _handle(self, frame: spdy.Frame) -> None:
        if isinstance(frame, spdy.DataFrame):
            stream = self.streams[frame.stream_id]
            if frame.data:
                stream._data.put_nowait(frame.data)
            if frame.flags & spdy.FLAG_FIN:
                stream._data.put_nowait(b"")
        elif frame.kind == spdy.SYN_REPLY:
            stream_id, _ = spdy.parse_syn_reply(frame, self.codec)
            self.streams[stream_id].replied.set()
        elif frame.kind == spdy.RST_STREAM:
            stream = self.streams[int.from_bytes(frame.payload[:4], "big")]
            stream.reset = True
            stream.replied.set()
            stream._data.put_nowait(b"")
        elif frame.kind == spdy.GOAWAY:
            self.goaway.set()

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.send(spdy.goaway(0))
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class UpgradeRefusedError(Exception):
    def __init__(self, status: int, body: str, headers: dict[str, str]) -> None:
        super().__init__(f"{status}: {body}")
        self.status, self.body, self.headers = status, body, headers


async def exec_streams(
    client: SpdyClient, stdin: bool, stdout: bool, stderr: bool, tty: bool
) -> dict[str, ClientStream]:
    """The streams kubectl's v4 executor opens, in its order (error first)."""
    wanted = (("stdin", stdin), ("stdout", stdout), ("stderr", stderr and not tty), ("resize", tty))
    kinds = ["error"] + [kind for kind, on in wanted if on]
    streams = {}
    for kind in kinds:
        streams[kind] = await client.open({"streamType": kind})
    for stream in streams.values():
        await stream.replied.wait()
    return streams


def status_of(raw: bytes) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(raw)
    return status
