"""The gzip layer stream the unpacker inflates itself (members inflated raw, headers parsed
here): every gzip form a layer may take gives exactly the bytes ``gzip`` gives, whatever the
read sizes, and a stream that is cut or damaged is refused. Through ``unpack_layer``, so the
diff_id check and the files written are the real ones."""

import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import pytest

from nodelet.image.unpack import UnsafeLayerError, unpack_layer
from tests.imagebuild import file_entry, sha, tar_bytes

pytestmark = pytest.mark.unit

FHCRC, FEXTRA, FNAME, FCOMMENT = 2, 4, 8, 16


class Trickle:
    """A blob that hands out at most ``step`` bytes per read (a slow download)."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step = io.BytesIO(data), step

    def read(self, size: int = -1) -> bytes:
        return self.data.read(self.step if size < 0 else min(size, self.step))


def member(data: bytes, flags: int = 0, level: int = 6) -> bytes:
    """One gzip member with the optional header fields ``flags`` names."""
    head = b"\x1f\x8b\x08" + bytes([flags]) + b"\0\0\0\0\0\xff"
    if flags & FEXTRA:
        head += struct.pack("<H", 5) + b"extra"
    if flags & FNAME:
        head += b"layer.tar\0"
    if flags & FCOMMENT:
        head += b"a comment\0"
    if flags & FHCRC:
        head += b"\0\0"
    packer = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = packer.compress(data) + packer.flush()
    return head + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def layer(files: dict[str, bytes]) -> bytes:
    return tar_bytes([file_entry(name, data) for name, data in files.items()])


def unpack_from(blob: object, dest: Path, diff_id: str) -> None:
    unpack_layer(blob, str(dest), diff_id)  # type: ignore[arg-type]


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
def test_members_header_fields_and_padding_at_any_read_size(tmp_path: Path, step: int) -> None:
    tar = layer({"a": os.urandom(70_000), "b": b"abc" * 50_000, "c": b""})
    thirds = [
        tar[: len(tar) // 3],
        tar[len(tar) // 3 : 2 * len(tar) // 3],
        tar[2 * len(tar) // 3 :],
    ]
    blob = (
        member(thirds[0], FNAME | FEXTRA, level=1)
        + b"\0" * 100  # zero padding between members, as gzip allows
        + member(thirds[1], FCOMMENT | FHCRC, level=9)
        + member(thirds[2])
        + b"\0" * 3
    )
    assert gzip.decompress(blob) == tar
    unpack_from(Trickle(blob, step), tmp_path, sha(tar))
    assert (tmp_path / "a").stat().st_size == 70_000
    assert (tmp_path / "b").read_bytes() == b"abc" * 50_000


def test_a_tail_that_expands_far_past_a_chunk(tmp_path: Path) -> None:
    """10 MiB of zeros from a few KiB of input: inflated a chunk at a time (the input left
    over after each chunk is kept and fed again), every byte of it."""
    tar = layer({"zeros": b"\0" * (10 << 20), "end": b"x"})
    for n, blob in enumerate([gzip.compress(tar, 9), member(tar, level=9)]):
        dest = tmp_path / str(n)
        dest.mkdir()
        unpack_from(io.BytesIO(blob), dest, sha(tar))
        assert (dest / "zeros").stat().st_size == 10 << 20


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-4],  # cut inside the trailer
        lambda b: b[: len(b) // 2],  # cut inside the deflate body
        lambda b: b[:12],  # cut inside the header (a name without its end)
        lambda b: b + b"garbage",  # not a member after the first one
        lambda b: b[:3] + b"\x28" + b[4:],  # a reserved flag bit
        lambda b: b[:2] + b"\x07" + b[3:],  # not deflate
        lambda b: b[:40] + bytes([b[40] ^ 0xFF]) + b[41:],  # a flipped body byte
    ],
)
def test_cut_or_damaged_streams_are_refused(tmp_path: Path, damage: object) -> None:
    tar = layer({"f": b"some text " * 1000})
    blob = damage(member(tar, FNAME))  # type: ignore[operator]
    with pytest.raises(UnsafeLayerError):
        unpack_from(io.BytesIO(blob), tmp_path, sha(tar))
