"""SPDY/3.1 framing against hand-made frames: exact bytes of each frame type, header blocks
compressed with SPDY/3's dictionary (one zlib stream per direction), and the server session's
stream handling (SYN_REPLY, data, FIN, RST, PING, back-pressure)."""

from __future__ import annotations

import asyncio
import hashlib
import struct
import zlib

import pytest

from nodelet.server import spdy

pytestmark = pytest.mark.unit

DICTIONARY_SHA256 = "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
"""sha256 of moby/spdystream's spdy/dictionary.go ``headerDictionary`` bytes."""


def hand_block(pairs: list[tuple[bytes, bytes]]) -> bytes:
    out = struct.pack(">I", len(pairs))
    for name, value in pairs:
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


class Deflater:
    """The client's side of the header zlib stream, made independently of the module."""

    def __init__(self) -> None:
        self.z = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)

    def __call__(self, block: bytes) -> bytes:
        return self.z.compress(block) + self.z.flush(zlib.Z_SYNC_FLUSH)


def hand_syn_stream(deflate: Deflater, stream_id: int, pairs: list[tuple[bytes, bytes]],
                    flags: int = 0) -> bytes:  # fmt: skip
    payload = struct.pack(">IIBB", stream_id, 0, 0, 0) + deflate(hand_block(pairs))
    return struct.pack(">HHI", 0x8003, 1, flags << 24 | len(payload)) + payload


def test_dictionary_is_spdystreams() -> None:
    assert len(spdy.DICTIONARY) == 1423
    assert hashlib.sha256(spdy.DICTIONARY).hexdigest() == DICTIONARY_SHA256


def test_fixed_frames_exact_bytes() -> None:
    assert spdy.data_frame(5, b"abc") == b"\x00\x00\x00\x05\x00\x00\x00\x03abc"
    assert spdy.data_frame(5, b"", fin=True) == b"\x00\x00\x00\x05\x01\x00\x00\x00"
    assert spdy.rst_stream(7, spdy.CANCEL) == bytes.fromhex("80030003 00000008 00000007 00000005")
    assert spdy.ping(2) == bytes.fromhex("80030006 00000004 00000002")
    assert spdy.goaway(9) == bytes.fromhex("80030007 00000008 00000009 00000000")
    assert spdy.window_update(3, 65536) == bytes.fromhex("80030009 00000008 00000003 00010000")
    assert spdy.settings([(0, 7, 65536)]) == bytes.fromhex(
        "80030004 0000000c 00000001 00000007 00010000"
    )


def test_hand_made_syn_stream_decodes_across_one_zlib_stream() -> None:
    deflate, codec = Deflater(), spdy.HeaderCodec()
    pairs = [(b"streamtype", b"stdout"), (b"x-multi", b"a\x00b")]
    reader = spdy.FrameReader()
    first = hand_syn_stream(deflate, 1, pairs)
    second = hand_syn_stream(deflate, 3, [(b"streamtype", b"stdout")], flags=spdy.FLAG_FIN)
    assert len(second) < len(first)  # the zlib stream carries over between frames
    frames = reader.feed(first + second)
    assert [type(f) for f in frames] == [spdy.ControlFrame, spdy.ControlFrame]
    one = spdy.parse_syn_stream(frames[0], codec)  # type: ignore[arg-type]
    two = spdy.parse_syn_stream(frames[1], codec)  # type: ignore[arg-type]
    assert (one.stream_id, one.headers) == (1, {"streamtype": ["stdout"], "x-multi": ["a", "b"]})
    assert (two.stream_id, two.flags, two.headers) == (3, 1, {"streamtype": ["stdout"]})


def test_header_blocks_need_spdys_dictionary() -> None:
    block = Deflater()(hand_block([(b"streamtype", b"error")]))
    with pytest.raises(zlib.error, match="Error 2"):  # Z_NEED_DICT
        zlib.decompressobj().decompress(block)  # FDICT: primed with the dictionary
    other = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, b"x" * 64)
    bad = other.compress(hand_block([(b"a", b"b")])) + other.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(spdy.SpdyError):
        spdy.HeaderCodec().decode(bad)


def test_syn_reply_inflates_with_an_independent_dictionary_stream() -> None:
    codec = spdy.HeaderCodec()
    inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)
    for stream_id in (1, 3):
        frame = spdy.syn_reply(codec, stream_id, {"x-a": ["1", "2"]})
        version, kind, flags_length = struct.unpack(">HHI", frame[:8])
        assert (version, kind, flags_length >> 24) == (0x8003, spdy.SYN_REPLY, 0)
        assert flags_length & 0xFFFFFF == len(frame) - 8
        assert struct.unpack(">I", frame[8:12])[0] == stream_id
        assert inflate.decompress(frame[12:]) == hand_block([(b"x-a", b"1\x002")])


def test_frame_reader_any_split() -> None:
    data = spdy.data_frame(1, b"x" * 300) + spdy.ping(1) + spdy.data_frame(3, b"", fin=True)
    for cut in range(len(data) + 1):
        reader = spdy.FrameReader()
        frames = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert frames == [
            spdy.DataFrame(1, 0, b"x" * 300),
            spdy.ControlFrame(spdy.PING, 0, b"\x00\x00\x00\x01"),
            spdy.DataFrame(3, 1, b""),
        ]


def test_other_versions_are_refused() -> None:
    with pytest.raises(spdy.SpdyError, match="version 2"):
        spdy.FrameReader().feed(struct.pack(">HHI", 0x8002, 6, 4) + b"\0\0\0\1")


def test_header_bomb_is_refused() -> None:
    deflate = Deflater()
    bomb = deflate(hand_block([(b"a", b"x" * (spdy.MAX_HEADER_BLOCK + 10))]))
    with pytest.raises(spdy.SpdyError, match="over"):
        spdy.HeaderCodec().decode(bomb)


class Wire:
    """The session's transport: what it wrote, decoded with an independent inflater."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.paused = 0
        self.resumed = 0

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def frames(self) -> list[spdy.Frame]:
        frames = spdy.FrameReader().feed(bytes(self.out))
        self.out.clear()
        return frames


def make_session(accept: bool = True) -> tuple[spdy.Session, Wire, list[spdy.Stream]]:
    wire, streams = Wire(), []

    def on_stream(stream: spdy.Stream) -> bool:
        streams.append(stream)
        return accept

    def pause() -> None:
        wire.paused += 1

    def resume() -> None:
        wire.resumed += 1

    return spdy.Session(wire.write, wire.drain, on_stream, pause, resume), wire, streams


async def test_session_replies_delivers_data_and_finishes() -> None:
    session, wire, streams = make_session()
    deflate = Deflater()
    session.feed_data(hand_syn_stream(deflate, 1, [(b"streamtype", b"stdin")]))
    (stream,) = streams
    assert stream.header("streamType") == "stdin"
    (reply,) = wire.frames()
    assert isinstance(reply, spdy.ControlFrame) and reply.kind == spdy.SYN_REPLY
    inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)
    assert reply.payload[:4] == b"\0\0\0\1" and inflate.decompress(reply.payload[4:]) == b"\0" * 4
    session.feed_data(spdy.data_frame(1, b"hello ") + spdy.data_frame(1, b"world", fin=True))
    assert [await stream.read(), await stream.read(), await stream.read()] == [
        b"hello ", b"world", b"",
    ]  # fmt: skip
    await stream.write(b"x" * (spdy.MAX_DATA + 1))
    await stream.close()
    assert wire.frames() == [
        spdy.DataFrame(1, 0, b"x" * spdy.MAX_DATA),
        spdy.DataFrame(1, 0, b"x"),
        spdy.DataFrame(1, spdy.FLAG_FIN, b""),
    ]


async def test_session_ping_reset_and_protocol_errors() -> None:
    session, wire, streams = make_session()
    deflate = Deflater()
    session.feed_data(spdy.ping(1) + spdy.ping(2))
    assert wire.frames() == [spdy.ControlFrame(spdy.PING, 0, b"\0\0\0\1")]  # only the client's
    session.feed_data(hand_syn_stream(deflate, 2, []))  # even: a server's id
    assert wire.frames() == [spdy.ControlFrame(spdy.RST_STREAM, 0, struct.pack(">II", 2, 1))]
    session.feed_data(hand_syn_stream(deflate, 5, []))
    wire.frames()
    reading = asyncio.ensure_future(streams[0].read())
    await asyncio.sleep(0)
    session.feed_data(spdy.rst_stream(5, spdy.CANCEL))
    assert await reading == b""
    with pytest.raises(ConnectionResetError):
        await streams[0].write(b"late")
    session.feed_data(hand_syn_stream(deflate, 3, []))  # not above the last id
    assert wire.frames() == [spdy.ControlFrame(spdy.RST_STREAM, 0, struct.pack(">II", 3, 1))]
    session.feed_data(spdy.window_update(5, 100) + spdy.settings([(0, 7, 1)]))
    assert wire.frames() == [] and not session.closed.is_set()


async def test_refused_stream_is_reset() -> None:
    session, wire, _ = make_session(accept=False)
    session.feed_data(hand_syn_stream(Deflater(), 1, []))
    assert wire.frames() == [spdy.ControlFrame(spdy.RST_STREAM, 0, struct.pack(">II", 1, 3))]


async def test_back_pressure_pauses_and_resumes_reading() -> None:
    session, wire, streams = make_session()
    session.feed_data(hand_syn_stream(Deflater(), 1, []))
    chunk = b"y" * 65536
    for _ in range(spdy.HIGH_WATER // len(chunk)):
        session.feed_data(spdy.data_frame(1, chunk))
    assert wire.paused == 0
    session.feed_data(spdy.data_frame(1, chunk))
    assert wire.paused == 1
    total = 0
    while streams[0].buffered > spdy.LOW_WATER:
        total += len(await streams[0].read())
    assert wire.resumed == 1 and total > 0


async def test_connection_loss_ends_every_stream() -> None:
    session, _, streams = make_session()
    deflate = Deflater()
    session.feed_data(hand_syn_stream(deflate, 1, []) + hand_syn_stream(deflate, 3, []))
    session.feed_eof()
    assert session.closed.is_set()
    assert [await s.read() for s in streams] == [b"", b""]


async def test_garbage_closes_the_session() -> None:
    session, wire, _ = make_session()
    eof, _ = session.feed_data(struct.pack(">HHI", 0x8001, 1, 0))
    assert eof and session.closed.is_set()
    assert wire.frames()[0] == spdy.ControlFrame(spdy.GOAWAY, 0, struct.pack(">II", 0, 1))
