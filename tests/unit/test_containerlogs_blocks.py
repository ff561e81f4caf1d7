"""The block-wise reader behind plain ``kubectl logs`` (``containerlogs.run_bytes``) gives the
very bytes of the message-wise one (``read_run``, rendered) on real files: full lines across
block edges, ``P`` chunks of two streams interleaved, extra tags, malformed and empty lines,
carriage returns, rotated files plain and gzipped, a last line without its newline, a stream
left partial; a file that grows while it is read is read as it was when opened. Over HTTP, a
plain request takes the block path and still ends with the same bytes."""

from __future__ import annotations

import gzip
import random
import threading
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from nodelet.logs.reader import read_run
from nodelet.server import containerlogs
from nodelet.server.containerlogs import LogOptions, render, run_bytes

pytestmark = pytest.mark.unit


def messages(path: Path) -> bytes:
    return b"".join(render(message, False) for message in read_run(path))


def random_line(rng: random.Random) -> bytes:
    stamp = b"2026-12-02T16:30:00.%09dZ" % rng.randrange(10**9)
    stream = rng.choice([b"stdout", b"stderr"])
    content = bytes(rng.choice(b"ab \t\r\xff") for _ in range(rng.randrange(30)))
    kind = rng.random()
    if kind < 0.7:
        return stamp + b" " + stream + b" F " + content.replace(b"\r", b"x") + b"\n"
    if kind < 0.8:
        return stamp + b" " + stream + b" P " + content + b"\n"
    if kind < 0.85:
        return stamp + b" " + stream + b" F:x " + content + b"\n"
    if kind < 0.9:
        return b"not a cri line " + content + b"\n"
    if kind < 0.93:
        return b"\n"
    return stamp + b" " + stream + b" F\n"


@pytest.mark.parametrize("read_size", [7, 64, 1000, 1 << 20])
def test_blocks_give_the_bytes_of_the_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_size: int
) -> None:
    monkeypatch.setattr(containerlogs, "READ_SIZE", read_size)
    for seed in range(60):
        rng = random.Random(seed)
        directory = tmp_path / str(seed)
        directory.mkdir()
        current = directory / "0.log"
        rotated = rng.randrange(3)
        for n in range(rotated):
            data = b"".join(random_line(rng) for _ in range(rng.randrange(200)))
            name = directory / f"0.log.20261202-16300{n}"
            if n < rotated - 1:
                Path(f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                name.write_bytes(data)
        data = b"".join(random_line(rng) for _ in range(rng.randrange(300)))
        data += rng.choice([b"", b"2026-12-02T16:30:01Z stdout F no newline"])
        data += rng.choice([b"", b"2026-12-02T16:30:01Z stdout P partial at the end"])
        current.write_bytes(data)
        assert b"".join(run_bytes(current)) == messages(current), f"seed {seed}"


def test_many_full_lines_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containerlogs, "READ_SIZE", 4096)
    current = tmp_path / "0.log"
    lines = [b"2026-12-02T16:30:00.1%08dZ stdout F line %d" % (n, n) for n in range(5000)]
    current.write_bytes(b"".join(line + b"\n" for line in lines))
    blocks = list(run_bytes(current))
    assert len(blocks) > 10
    assert b"".join(blocks) == b"".join(b"line %d\n" % n for n in range(5000))


def test_a_file_growing_meanwhile_is_read_as_it_was(tmp_path: Path) -> None:
    current = tmp_path / "0.log"
    current.write_bytes(b"2026-12-02T16:30:00Z stdout F before\n")
    found = run_bytes(current)
    first = next(found)
    with current.open("ab") as file:
        file.write(b"2026-12-02T16:30:01Z stdout F after\n")
    assert first + b"".join(found) == b"before\n"


async def test_a_plain_request_over_http(tmp_path: Path) -> None:
    current = tmp_path / "0.log"
    lines = [b"2026-12-02T16:30:00.%09dZ stdout F %s" % (n, b"x" * (n % 300)) for n in range(30000)]
    lines[20000] = b"2026-12-02T16:30:00Z stderr P half "
    current.write_bytes(b"".join(line + b"\n" for line in lines))

    async def handler(request: web.Request) -> web.StreamResponse:
        return await containerlogs.stream(request, current, LogOptions(), threading.Event().is_set)

    app = web.Application()
    app.router.add_get("/logs", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}/logs"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            assert await response.read() == messages(current)
    finally:
        await runner.cleanup()
