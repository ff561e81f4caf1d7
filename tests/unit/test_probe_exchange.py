"""The probe's selector-driven HTTP exchange on a real socket pair and a real event loop."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from nodelet.probe.exchange import GATHER, Exchange, _poller
from nodelet.probe.httpresponse import BodyError, Response

pytestmark = pytest.mark.unit

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return ours, theirs


async def test_a_response_in_slow_pieces() -> None:
    ours, theirs = pair()
    loop = asyncio.get_running_loop()

    async def serve() -> bytes:
        await asyncio.sleep(0.02)
        request = theirs.recv(4096)
        for piece in (b"HTTP/1.1 200 OK\r\nConte", b"nt-Length: 4\r\n\r\nab", b"cd"):
            theirs.send(piece)
            await asyncio.sleep(0.02)  # each piece wakes the exchange on its own
        return request

    server = asyncio.ensure_future(serve())
    response = await Exchange(ours, REQUEST, 1024).run(loop.time() + 2)
    assert response == Response(200, {"content-length": "4"}, b"abcd")
    assert await server == REQUEST
    assert ours.fileno() == -1  # closed after the exchange
    theirs.close()


async def test_the_deadline_covers_the_whole_exchange() -> None:
    ours, theirs = pair()
    loop = asyncio.get_running_loop()
    theirs.send(b"HTTP/1.1 200 OK\r\n")  # and then nothing
    began = loop.time()
    exchange = Exchange(ours, REQUEST, 1024)
    with pytest.raises(TimeoutError):
        await exchange.run(began + 0.1)
    assert 0.09 < loop.time() - began < 1.0
    assert ours.fileno() == -1
    # The descriptor number is free for the next socket, which the poller watches afresh.
    again, peer = pair()
    peer.send(b"HTTP/1.0 204 No Content\r\n\r\n")
    assert (await Exchange(again, REQUEST, 1024).run(loop.time() + 2)).status == 204
    theirs.close()
    peer.close()


async def test_a_reset_in_the_body_is_a_body_error() -> None:
    ours, theirs = _tcp_pair()
    loop = asyncio.get_running_loop()
    theirs.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    await asyncio.sleep(0.02)
    exchange = Exchange(ours, REQUEST, 1024)
    run = asyncio.ensure_future(exchange.run(loop.time() + 2))
    await asyncio.sleep(0.05)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()  # an RST
    with pytest.raises(BodyError):
        await run


async def test_a_batch_is_read_at_one_gathering_and_the_poller_goes_idle() -> None:
    """Answers that came (FIN included) before the gathering are all read when it comes; then
    the poller keeps no reader and no timer in the loop."""
    loop = asyncio.get_running_loop()
    pairs = [_tcp_pair() for _ in range(3)]
    for _, theirs in pairs:
        theirs.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        theirs.close()
    began = loop.time()
    runs = [
        asyncio.ensure_future(Exchange(ours, REQUEST, 1024).run(began + 2)) for ours, _ in pairs
    ]
    responses = await asyncio.gather(*runs)
    assert [r.body for r in responses] == [b"ok"] * 3
    assert GATHER * 0.9 <= loop.time() - began < 1.0
    poller = _poller(loop)
    assert not poller._reading and poller._gather is None and not poller._pending
    assert loop._selector.get_map().get(poller._fd) is None  # type: ignore[attr-defined]


async def test_an_answer_without_fin_is_read_after_the_gathering() -> None:
    """A server that keeps the connection open: read as it comes once the FIN wait is over."""
    ours, theirs = _tcp_pair()
    loop = asyncio.get_running_loop()
    theirs.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    response = await Exchange(ours, REQUEST, 1024).run(loop.time() + 2)
    assert response.body == b"ok"
    theirs.close()


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    ours.setblocking(False)
    return ours, theirs
