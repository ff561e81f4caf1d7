"""A SPDY/3.1 server subset, the framing ``kubectl`` (before 1.30) and the API server speak to
kubelet for exec, attach and port-forward (``k8s.io/apimachinery/pkg/util/httpstream/spdy`` on
top of ``moby/spdystream``); no maintained Python library implements it.

Frames: SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE and
DATA. Header blocks are zlib streams (one per direction for the whole connection, each frame
sync-flushed) primed with SPDY/3's dictionary. Flow control is spdystream's: none at the SPDY
level (it neither sends nor honours WINDOW_UPDATE; SETTINGS and WINDOW_UPDATE are read and
ignored); back-pressure is TCP's: when a stream's unread data passes a high-water mark the
session asks its transport to stop reading until the reader catches up.

The session sits on an upgraded aiohttp connection: it is the connection's payload parser
(``feed_data``/``feed_eof``) and writes whole frames through the 101 response.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

DICTIONARY = (
    b"\x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\x00"
    b"\x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-cha"
    b"rset\x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\x00\x00\x00\raccept-"
    b"ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\x00\x00\x00\rauthorization\x00\x00\x00\r"
    b"cache-control\x00\x00\x00\nconnection\x00\x00\x00\x0ccontent-base\x00\x00\x00\x10conten"
    b"t-encoding\x00\x00\x00\x10content-language\x00\x00\x00\x0econtent-length\x00\x00\x00"
    b"\x10content-location\x00\x00\x00\x0bcontent-md5\x00\x00\x00\rcontent-range\x00\x00\x00"
    b"\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect\x00\x00"
    b"\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\x00\x00\x08if-match\x00\x00"
    b"\x00\x11if-modified-since\x00\x00\x00\rif-none-match\x00\x00\x00\x08if-range\x00\x00"
    b"\x00\x13if-unmodified-since\x00\x00\x00\rlast-modified\x00\x00\x00\x08location\x00\x00"
    b"\x00\x0cmax-forwards\x00\x00\x00\x06pragma\x00\x00\x00\x12proxy-authenticate\x00\x00"
    b"\x00\x13proxy-authorization\x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0b"
    b"retry-after\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\x00\x00\x00"
    b"\x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\nuser-agent\x00\x00\x00\x04var"
    b"y\x00\x00\x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10www-authenticate\x00\x00\x00"
    b"\x06method\x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\x06200 OK\x00\x00\x00"
    b"\x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\x00\x00"
    b"\x00\nset-cookie\x00\x00\x00\nkeep-alive\x00\x00\x00\x06origin1001012012022052063003023"
    b"03304305306307402405406407408409410411412413414415416417502504505203 Non-Authoritative "
    b"Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbid"
    b"den404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan "
    b"Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun"
    b", GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+"
    b"xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8chars"
    b"et=iso-8859-1,utf-,*,enq=0."
)
"""SPDY/3's header compression dictionary (spdystream's ``headerDictionary``, 1423 bytes)."""

VERSION = 3
UPGRADE = "SPDY/3.1"
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS = 1, 2, 3, 4
PING, GOAWAY, HEADERS, WINDOW_UPDATE = 6, 7, 8, 9
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
MAX_LENGTH = (1 << 24) - 1
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, CANCEL = 1, 2, 3, 5
GOAWAY_OK = 0
MAX_DATA = 1 << 16
"""Bytes per DATA frame we send."""
MAX_HEADER_BLOCK = 1 << 20
"""An inflated header block larger than this ends the connection (a zlib bomb)."""
HIGH_WATER = 1 << 20
LOW_WATER = 1 << 18
"""Unread bytes of one stream past which the transport stops reading, and under which it
reads again once every stream is under it."""

Headers = dict[str, list[str]]


class SpdyError(Exception):
    """The peer broke the protocol; the connection ends."""


@dataclass(frozen=True)
class ControlFrame:
    kind: int
    flags: int
    payload: bytes


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    flags: int
    data: bytes


Frame = ControlFrame | DataFrame


def control(kind: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_LENGTH:
        raise SpdyError(f"control frame of {len(payload)} bytes")
    return struct.pack(">HHI", 0x8000 | VERSION, kind, flags << 24 | len(payload)) + payload


def data_frame(stream_id: int, data: bytes, fin: bool = False) -> bytes:
    header = struct.pack(">II", stream_id & 0x7FFFFFFF, (FLAG_FIN if fin else 0) << 24 | len(data))
    return header + data


def rst_stream(stream_id: int, status: int) -> bytes:
    return control(RST_STREAM, 0, struct.pack(">II", stream_id, status))


def ping(ping_id: int) -> bytes:
    return control(PING, 0, struct.pack(">I", ping_id))


def goaway(last_good: int, status: int = GOAWAY_OK) -> bytes:
    return control(GOAWAY, 0, struct.pack(">II", last_good, status))


def settings(entries: Iterable[tuple[int, int, int]]) -> bytes:
    """SETTINGS from (flags, id, value) triples."""
    items = list(entries)
    body = b"".join(struct.pack(">II", flags << 24 | ident, value) for flags, ident, value in items)
    return control(SETTINGS, 0, struct.pack(">I", len(items)) + body)


def window_update(stream_id: int, delta: int) -> bytes:
    return control(WINDOW_UPDATE, 0, struct.pack(">II", stream_id, delta))


def pack_headers(headers: Mapping[str, Sequence[str]]) -> bytes:
    """A name/value header block (uncompressed): names lowercased, values joined by NUL."""
    parts = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        key, value = name.lower().encode(), "\0".join(values).encode()
        parts += [struct.pack(">I", len(key)), key, struct.pack(">I", len(value)), value]
    return b"".join(parts)


def unpack_headers(block: bytes) -> Headers:
    try:
        (count,) = struct.unpack_from(">I", block)
        pos, headers = 4, Headers()
        for _ in range(count):
            fields = []
            for _ in range(2):
                (size,) = struct.unpack_from(">I", block, pos)
                if pos + 4 + size > len(block):
                    raise SpdyError("truncated header block")
                fields.append(block[pos + 4 : pos + 4 + size].decode())
                pos += 4 + size
            headers.setdefault(fields[0].lower(), []).extend(fields[1].split("\0"))
    except (struct.error, UnicodeDecodeError) as err:
        raise SpdyError(f"bad header block: {err}") from None
    return headers


class HeaderCodec:
    """One connection's header compression: a zlib stream per direction, primed with the
    dictionary, one sync flush per frame (spdystream's framer)."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(
            zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY
        )
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)

    def encode(self, headers: Mapping[str, Sequence[str]]) -> bytes:
        block = pack_headers(headers)
        return self._deflate.compress(block) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def decode(self, data: bytes) -> Headers:
        try:
            block = self._inflate.decompress(data, MAX_HEADER_BLOCK)
        except zlib.error as err:
            raise SpdyError(f"header block: {err}") from None
        if self._inflate.unconsumed_tail:
            raise SpdyError(f"header block over {MAX_HEADER_BLOCK} bytes")
        return unpack_headers(block)


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    associated_id: int
    priority: int
    flags: int
    headers: Headers


def syn_stream(
    codec: HeaderCodec, stream_id: int, headers: Mapping[str, Sequence[str]], flags: int = 0
) -> bytes:
    """A SYN_STREAM (the client's; tests use it)."""
    return control(
        SYN_STREAM, flags, struct.pack(">IIBB", stream_id, 0, 0, 0) + codec.encode(headers)
    )


def parse_syn_stream(frame: ControlFrame, codec: HeaderCodec) -> SynStream:
    if len(frame.payload) < 10:
        raise SpdyError("short SYN_STREAM")
    stream_id, associated, priority, _slot = struct.unpack_from(">IIBB", frame.payload)
    headers = codec.decode(frame.payload[10:])
    return SynStream(stream_id & 0x7FFFFFFF, associated & 0x7FFFFFFF, priority >> 5, frame.flags,
                     headers)  # fmt: skip


def syn_reply(
    codec: HeaderCodec, stream_id: int, headers: Mapping[str, Sequence[str]], fin: bool = False
) -> bytes:
    body = struct.pack(">I", stream_id) + codec.encode(headers)
    return control(SYN_REPLY, FLAG_FIN if fin else 0, body)


def parse_syn_reply(frame: ControlFrame, codec: HeaderCodec) -> tuple[int, Headers]:
    if len(frame.payload) < 4:
        raise SpdyError("short SYN_REPLY")
    (stream_id,) = struct.unpack_from(">I", frame.payload)
    return stream_id & 0x7FFFFFFF, codec.decode(frame.payload[4:])


class FrameReader:
    """Cuts a byte stream into frames; ``feed`` returns those complete so far."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        pos, end = 0, len(buffer)
        while end - pos >= 8:
            first, second = struct.unpack_from(">II", buffer, pos)
            length = second & 0xFFFFFF
            if end - pos - 8 < length:
                break
            body = bytes(buffer[pos + 8 : pos + 8 + length])
            if first & 0x80000000:
                version = first >> 16 & 0x7FFF
                if version != VERSION:
                    raise SpdyError(f"SPDY version {version} is not supported")
                frames.append(ControlFrame(first & 0xFFFF, second >> 24, body))
            else:
                frames.append(DataFrame(first & 0x7FFFFFFF, second >> 24, body))
            pos += 8 + length
        del buffer[:pos]
        return frames


class Stream:
    """One client-initiated stream: its headers, the data the client sent (``read``), and
    data back (``write``, ``close`` half-closes with FIN)."""

    def __init__(self, session: Session, stream_id: int, headers: Headers, fin: bool) -> None:
        self.id = stream_id
        self.headers = headers
        self._session = session
        self._chunks: deque[bytes] = deque()
        self.buffered = 0
        self.remote_done = fin
        self.local_done = False
        self._readable = asyncio.Event()

    def header(self, name: str) -> str:
        return (self.headers.get(name.lower()) or [""])[0]

    async def read(self) -> bytes:
        """The next chunk the client sent; b"" once it finished, reset or went away."""
        while not self._chunks:
            if self.remote_done:
                self._session._forget_if_done(self)
                return b""
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks.popleft()
        self.buffered -= len(chunk)
        self._session._drained(self)
        return chunk

    async def write(self, data: bytes) -> None:
        if self.local_done:
            raise ConnectionResetError(f"stream {self.id} is closed")
        view = memoryview(data)
        for start in range(0, len(view), MAX_DATA):
            await self._session.send(data_frame(self.id, bytes(view[start : start + MAX_DATA])))

    async def close(self) -> None:
        """Half-close: no more data from us (the client may still send)."""
        if not self.local_done:
            self.local_done = True
            await self._session.send(data_frame(self.id, b"", fin=True))
            self._session._forget_if_done(self)

    def reset(self, status: int = CANCEL) -> None:
        if not (self.local_done and self.remote_done):
            self._session.write(rst_stream(self.id, status))
        self._end()

    def _receive(self, data: bytes, fin: bool) -> None:
        if data and not self.remote_done:
            self._chunks.append(data)
            self.buffered += len(data)
        if fin:
            self.remote_done = True
        self._readable.set()

    def _end(self) -> None:
        self.remote_done = self.local_done = True
        self._chunks.clear()
        self.buffered = 0
        self._readable.set()
        self._session._forget(self)


class Session:
    """The server side of one SPDY connection. ``write`` puts bytes on the transport without
    blocking and ``drain`` waits while its buffer is full; ``on_stream`` gets each new stream
    and accepts it (SYN_REPLY) or refuses it (RST_STREAM) by its return value; ``pause`` and
    ``resume`` stop and restart reading from the transport."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        drain: Callable[[], Awaitable[None]],
        on_stream: Callable[[Stream], bool],
        pause: Callable[[], None] = lambda: None,
        resume: Callable[[], None] = lambda: None,
    ) -> None:
        self.write = write
        self._drain = drain
        self._on_stream = on_stream
        self._pause, self._resume = pause, resume
        self._codec = HeaderCodec()
        self._reader = FrameReader()
        self._streams: dict[int, Stream] = {}
        self._full: set[int] = set()
        self._last_id = 0
        self.going_away = False
        self.closed = asyncio.Event()

    async def send(self, frame: bytes) -> None:
        if self.closed.is_set():
            raise ConnectionResetError("the SPDY connection is closed")
        self.write(frame)
        await self._drain()

    # aiohttp's payload parser interface
    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self.closed.is_set():
            return True, b""
        try:
            for frame in self._reader.feed(data):
                self._handle(frame)
        except SpdyError:
            with contextlib.suppress(Exception):
                self.write(goaway(self._last_id, 1))
            self._lost()
            return True, b""
        return False, b""

    def feed_eof(self) -> None:
        self._lost()

    async def close(self, linger: float = 5.0) -> None:
        """GOAWAY, then wait (up to ``linger`` seconds) for the client to hang up, as
        spdystream's Close does; the caller closes the transport afterwards."""
        if not self.closed.is_set():
            with contextlib.suppress(ConnectionError):
                await self.send(goaway(self._last_id))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(linger):
                    await self.closed.wait()
        self._lost()

    def _handle(self, frame: Frame) -> None:
        if isinstance(frame, DataFrame):
            stream = self._streams.get(frame.stream_id)
            if stream is None:
                return  # spdystream drops data of a stream that is gone
            stream._receive(frame.data, bool(frame.flags & FLAG_FIN))
            if stream.buffered > HIGH_WATER and stream.id not in self._full:
                if not self._full:
                    self._pause()
                self._full.add(stream.id)
            self._forget_if_done(stream)
        elif frame.kind == SYN_STREAM:
            self._syn_stream(parse_syn_stream(frame, self._codec))
        elif frame.kind == RST_STREAM:
            stream_id = struct.unpack_from(">I", frame.payload)[0] if len(frame.payload) >= 4 else 0
            stream = self._streams.get(stream_id & 0x7FFFFFFF)
            if stream is not None:
                stream._end()
        elif frame.kind == PING:
            (ping_id,) = struct.unpack_from(">I", frame.payload)
            if ping_id % 2 == 1:  # the client's (odd): answered; ours are even
                self.write(ping(ping_id))
        elif frame.kind == GOAWAY:
            self.going_away = True
        elif frame.kind in (SYN_REPLY, HEADERS):
            parse_syn_reply(frame, self._codec)  # keeps the inflate stream in step
        # SETTINGS, WINDOW_UPDATE and unknown types: ignored, as spdystream does

    def _syn_stream(self, syn: SynStream) -> None:
        if syn.stream_id % 2 == 0 or syn.stream_id <= self._last_id:
            self.write(rst_stream(syn.stream_id, PROTOCOL_ERROR))
            return
        self._last_id = syn.stream_id
        if self.going_away:
            self.write(rst_stream(syn.stream_id, REFUSED_STREAM))
            return
        stream = Stream(self, syn.stream_id, syn.headers, bool(syn.flags & FLAG_FIN))
        if bool(syn.flags & FLAG_UNIDIRECTIONAL):
            stream.local_done = True
        self._streams[stream.id] = stream
        if not self._on_stream(stream):
            stream.reset(REFUSED_STREAM)
            return
        self.write(syn_reply(self._codec, stream.id, {}))

    def _drained(self, stream: Stream) -> None:
        if stream.id in self._full and stream.buffered <= LOW_WATER:
            self._full.discard(stream.id)
            if not self._full:
                self._resume()

    def _forget_if_done(self, stream: Stream) -> None:
        if stream.local_done and stream.remote_done and not stream.buffered:
            self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]
        if stream.id in self._full:
            self._full.discard(stream.id)
            if not self._full:
                self._resume()

    def _lost(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for stream in list(self._streams.values()):
            stream._end()


async def upgrade(
    request: web.Request, protocol: str, on_stream: Callable[[Stream], bool]
) -> tuple[Session, web.StreamResponse]:
    """Answer 101 Switching Protocols (as k8s' SPDY upgrader: ``Connection: Upgrade``,
    ``Upgrade: SPDY/3.1`` and the negotiated ``X-Stream-Protocol-Version``) and make a session
    the connection's reader, as aiohttp's own WebSocketResponse takes a connection over."""
    response = web.StreamResponse(
        status=101,
        headers={
            "Connection": "Upgrade",
            "Upgrade": UPGRADE,
            "X-Stream-Protocol-Version": protocol,
        },
    )
    await response.prepare(request)
    handler, transport = request.protocol, request.transport
    if handler is None or transport is None:
        raise ConnectionResetError("the connection is gone")

    def write(data: bytes) -> None:
        if not transport.is_closing():
            transport.write(data)

    # the transport's own pause: aiohttp's would pause its HTTP parser (SPDY is no upgrade
    # it knows), and nothing in aiohttp resumes a transport it did not pause itself
    session = Session(write, handler._drain_helper, on_stream, transport.pause_reading,
                      transport.resume_reading)  # fmt: skip
    handler.keep_alive(False)
    handler.set_parser(session)  # type: ignore[arg-type]  # a payload parser, duck-typed
    return session, response


def hang_up(request: web.Request) -> None:
    """Close the upgraded connection (aiohttp would otherwise wait for another request)."""
    if request.transport is not None:
        request.transport.close()


def is_upgrade(request: web.Request) -> bool:
    """The request asks for SPDY/3.1 (k8s' upgrader checks both headers, case-blind)."""
    connection = request.headers.get("Connection", "").lower()
    return "upgrade" in connection and UPGRADE.lower() in request.headers.get("Upgrade", "").lower()
