"""Byte I/O of one probe connection: a non-blocking socket driven straight from the event loop.

A probe makes one short exchange on a fresh loopback-speed connection, hundreds per second on a
busy node. asyncio's streams and transports cost more in Python than the exchange itself (a
protocol, a transport, a reader, a writer, and several loop passes per connection), so a probe
reads and writes its socket itself: a call that would block parks the task on one future woken
by the selector, and everything else is a direct system call. :class:`TlsConn` runs TLS over
memory BIOs on the same socket, so HTTPS shares the code above it.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl

RECV_SIZE = 32 * 1024
"""Bytes asked of one ``recv``: a probe's whole answer (at most 10 KiB of body), or a TLS record."""


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def wait_readable(sock: socket.socket) -> None:
    """Until ``sock`` is readable (data, EOF or an error)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, _wake, future)
    try:
        await future
    finally:
        loop.remove_reader(fd)


async def wait_writable(sock: socket.socket) -> None:
    """Until ``sock`` is writable (a pending connect ended, or the send buffer has room)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    fd = sock.fileno()
    loop.add_writer(fd, _wake, future)
    try:
        await future
    finally:
        loop.remove_writer(fd)


async def recv(sock: socket.socket, size: int = RECV_SIZE) -> bytes:
    """What ``sock`` has, up to ``size`` bytes; ``b""`` at EOF."""
    while True:
        try:
            return sock.recv(size)
        except (BlockingIOError, InterruptedError):
            await wait_readable(sock)


async def sendall(sock: socket.socket, data: bytes) -> None:
    """All of ``data``; a probe request fits the send buffer, so this rarely waits."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except (BlockingIOError, InterruptedError):
            await wait_writable(sock)


class Conn:
    """A plain connection; owns ``sock`` and closes it in :meth:`close`."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def send(self, data: bytes) -> None:
        await sendall(self.sock, data)

    async def recv(self) -> bytes:
        return await recv(self.sock)

    def close(self) -> None:
        self.sock.close()


@functools.cache
def tls_context() -> ssl.SSLContext:
    """kubelet's ``InsecureSkipVerify``: a probe checks the server answers, not who it is. One
    context for every probe (making one costs more than a probe)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class TlsConn(Conn):
    """TLS over ``sock`` through memory BIOs. A server that closes without TLS's close_notify
    (most probe targets) reads as EOF, as asyncio's and Go's clients take it."""

    def __init__(self, sock: socket.socket, server_hostname: str | None) -> None:
        super().__init__(sock)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = tls_context().wrap_bio(
            self._incoming, self._outgoing, server_hostname=server_hostname
        )

    async def _flush(self) -> None:
        if self._outgoing.pending:
            await sendall(self.sock, self._outgoing.read())

    async def _feed(self) -> None:
        data = await recv(self.sock)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    async def handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._feed()
        await self._flush()

    async def send(self, data: bytes) -> None:
        self._tls.write(data)
        await self._flush()

    async def recv(self) -> bytes:
        while True:
            try:
                return self._tls.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                await self._flush()
                await self._feed()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
