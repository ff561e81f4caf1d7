"""One HTTP request and its response on a connected non-blocking socket, driven by the selector.

A probe makes one short exchange on a fresh loopback connection, hundreds per second on a busy
node, each woken from idle: every wake-up of the agent costs tens of microseconds of cold
caches, more than parsing the answer. asyncio's streams cost a protocol, a transport, a reader
and a writer per connection and a task step per read; a coroutine awaiting each read still
costs a task step per read. Here the selector's callback reads and parses what arrived, and
the probe's task wakes once: when the response is complete, or failed. TLS (``https``) runs
through memory BIOs in the same callbacks, so both schemes share one path and one parser.
"""

from __future__ import annotations

import asyncio
import functools
import select
import socket
import ssl
import weakref
from collections.abc import Callable

from nodelet.probe.httpresponse import BodyError, Response, ResponseParser

RECV_SIZE = 32 * 1024
"""Bytes asked of one ``recv``: a probe's whole answer (at most 10 KiB of body), or a TLS record."""


GATHER = 0.005
"""How long the poller lets the answers of a batch of probes gather before it looks at them,
and how long a plain exchange waits for the server's FIN before it reads what came instead.

The probes due in one tick slot (see the worker's ``TICK_SLACK``) send their requests in one
loop pass, and their servers answer within a few milliseconds of each other: woken at once,
the agent would wake once per answer; looking once, this long after the first request of the
batch, finds most of them in one wake-up. What has not come by then wakes the agent as it
arrives. An answer waits at most this long, far inside any probe's timeout.

A probe asks ``Connection: close``, so a server closes right after its answer: waiting for the
FIN (EPOLLRDHUP) alone finds the whole answer in one wake-up, where waking for data wakes once
for the answer and once more for the FIN that follows it a moment later. A server that keeps
the connection open anyway, or sends more than the socket buffer holds, is read as it comes
after the gathering: it only costs that server's probe these milliseconds."""


class _Poller:
    """The probe sockets' readiness through one epoll of their own. Watching a socket is one
    ``epoll_ctl``; the loop's own ``add_reader``/``remove_reader`` cost a handle, a selector
    key and a few caught exceptions per socket, more than the probe's parsing. One-shot: a
    callback runs once per watch.

    The epoll is looked at :data:`GATHER` after the first watch of a batch (then a watch's
    ``late`` callback runs if it has not fired); only while watches are still pending after
    that is the epoll in the loop's selector, as one reader."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._epoll = select.epoll()
        self._fd = self._epoll.fileno()
        self._registered: set[int] = set()
        self._pending: dict[int, Callable[[], None]] = {}
        """Armed watches: the callback of each socket not ready yet."""
        self._late: dict[int, Callable[[], None]] = {}
        """The ``late`` callbacks of pending watches, run at the next gathering."""
        self._gather: asyncio.TimerHandle | None = None
        self._reading = False
        """The epoll is in the loop's selector (watches outlived a gathering)."""
        self._gathering = False
        """The gathering timer fired and its callbacks run now."""
        weakref.finalize(self, self._epoll.close)

    def watch(
        self,
        fd: int,
        events: int,
        callback: Callable[[], None],
        late: Callable[[], None] | None = None,
    ) -> None:
        """Call ``callback`` once, when ``fd`` has one of the epoll ``events`` (or an error);
        ``late`` instead if that has not happened by the next gathering (at most
        :data:`GATHER` from now)."""
        events |= select.EPOLLONESHOT
        if fd in self._registered:
            self._epoll.modify(fd, events)
        else:
            self._epoll.register(fd, events)
            self._registered.add(fd)
        self._pending[fd] = callback
        if late is not None:
            self._late[fd] = late
        gather = late is not None or not self._reading
        if gather and not (self._gathering or self._gather):
            loop = self._loop
            self._gather = loop.call_at(loop.time() + GATHER, self._gathered)

    def forget(self, fd: int) -> None:
        """Before ``fd`` is closed: a forked child may still hold the socket, and epoll
        forgets a socket only when its last descriptor closes."""
        self._pending.pop(fd, None)
        self._late.pop(fd, None)
        if fd in self._registered:
            self._registered.discard(fd)
            self._epoll.unregister(fd)
        if not self._pending:
            self._idle()

    def _idle(self) -> None:
        """Nothing is watched: no reader, no timer."""
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._gather is not None:
            self._gather.cancel()
            self._gather = None

    def _gathered(self) -> None:
        self._gather = None
        self._gathering = True
        try:
            self._dispatch()
            late, self._late = self._late, {}
            for fd, callback in late.items():
                self._pending.pop(fd, None)  # its watch is over: ``late`` re-arms it if need be
                callback()
        finally:
            self._gathering = False
        if self._pending and not self._reading:
            self._loop.add_reader(self._fd, self._dispatch)
            self._reading = True

    def _dispatch(self) -> None:
        pending = self._pending
        while True:
            events = self._epoll.poll(0, 64)
            for fd, _ in events:
                callback = pending.pop(fd, None)
                if callback is not None:
                    self._late.pop(fd, None)
                    callback()
            if len(events) < 64:
                break
        if not pending:
            self._idle()


_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Poller] = (
    weakref.WeakKeyDictionary()
)


def _poller(loop: asyncio.AbstractEventLoop) -> _Poller:
    poller = _pollers.get(loop)
    if poller is None:
        poller = _pollers[loop] = _Poller(loop)
    return poller


@functools.cache
def tls_context() -> ssl.SSLContext:
    """kubelet's ``InsecureSkipVerify``: a probe checks the server answers, not who it is. One
    context for every probe (making one costs more than a probe)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _Tls:
    """A TLS client over memory BIOs: what is read from the socket goes in ``incoming``, what
    ``outgoing`` holds goes out on it."""

    __slots__ = ("incoming", "obj", "outgoing", "secure")

    def __init__(self, server_hostname: str | None) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = tls_context().wrap_bio(
            self.incoming, self.outgoing, server_hostname=server_hostname
        )
        self.secure = False
        """The handshake is over."""


class Exchange:
    """Sends ``request`` on ``sock`` (which it owns and closes) and reads the response, over TLS
    when ``tls`` (``server_hostname`` for SNI). Await :meth:`run` once."""

    __slots__ = (
        "_deadline", "_done", "_events", "_fd", "_loop", "_out", "_poller", "_request", "_sock",
        "_timer", "_tls", "_writing", "parser",
    )  # fmt: skip

    def __init__(
        self,
        sock: socket.socket,
        request: bytes,
        limit: int,
        *,
        tls: bool = False,
        server_hostname: str | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._poller = _poller(self._loop)
        self._sock = sock
        self._fd = sock.fileno()
        self._request = request
        self.parser = ResponseParser(limit)
        self._done: asyncio.Future[Response] = self._loop.create_future()
        self._out = bytearray()
        self._writing = False
        self._events = select.EPOLLIN
        """What the socket is watched for: the FIN first on plain HTTP, then data."""
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._tls = _Tls(server_hostname) if tls else None

    async def run(self, deadline: float) -> Response:
        """The response, by ``deadline`` (loop time; TimeoutError after it). Raises
        ProtocolError, BodyError (the body failed) or OSError; the socket is closed after."""
        self._deadline = deadline
        try:
            if self._tls is not None:
                self._timer = self._loop.call_at(deadline, self._expire)
                self._handshake()
            elif deadline > self._loop.time() + GATHER:
                # The FIN first (see GATHER): no timer of its own while it waits for one.
                self._events = select.EPOLLRDHUP
                self._send(self._request)
                self._poller.watch(self._fd, self._events, self._readable, self._fin_late)
                return await self._done
            else:
                self._timer = self._loop.call_at(deadline, self._expire)
                self._send(self._request)
            self._poller.watch(self._fd, self._events, self._readable)
            return await self._done
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._close()

    def _fin_late(self) -> None:
        """No FIN by the gathering (see GATHER): read the answer as it comes, until the
        deadline."""
        self._events = select.EPOLLIN
        self._timer = self._loop.call_at(self._deadline, self._expire)
        self._readable()

    def _expire(self) -> None:
        if not self._done.done():
            self._done.set_exception(TimeoutError())

    def _close(self) -> None:
        self._poller.forget(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
        self._sock.close()

    def _fail(self, err: Exception) -> None:
        if isinstance(err, ConnectionError) and self.parser.reading_body:
            err = BodyError(str(err) or type(err).__name__)
        if not self._done.done():
            self._done.set_exception(err)

    # -- sending: a request fits the socket's buffer, so the writer callback is rarely needed --

    def _send(self, data: bytes) -> None:
        if not self._out:  # the usual case: all of it goes at once, nothing is copied
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        self._out += data
        self._flush()

    def _flush(self) -> None:
        while self._out:
            try:
                sent = self._sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                break
            del self._out[:sent]
        if self._out and not self._writing:
            self._loop.add_writer(self._fd, self._writable)
            self._writing = True
        elif not self._out and self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _writable(self) -> None:
        try:
            self._flush()
        except OSError as err:
            self._fail(err)

    # -- receiving ---------------------------------------------------------------------------

    def _readable(self) -> None:
        """Everything the socket has now (an EOF that came with the answer saves a wake-up)."""
        try:
            while not self._done.done():
                try:
                    data = self._sock.recv(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    self._poller.watch(self._fd, self._events, self._readable)
                    return
                if self._tls is not None:
                    self._tls_received(data)
                else:
                    self._received(data)
                if not data:
                    return
        except Exception as err:  # ProtocolError, BodyError, OSError: the probe's answer
            self._fail(err)

    def _received(self, data: bytes) -> None:
        response = self.parser.feed(data)
        if response is not None and not self._done.done():
            self._done.set_result(response)

    # -- TLS ---------------------------------------------------------------------------------

    def _flush_tls(self) -> None:
        assert self._tls is not None
        if self._tls.outgoing.pending:
            self._send(self._tls.outgoing.read())

    def _handshake(self) -> bool:
        """Whether the handshake is over; then the request is sent."""
        assert self._tls is not None
        try:
            self._tls.obj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush_tls()
            return False
        self._tls.secure = True
        self._tls.obj.write(self._request)
        self._flush_tls()
        return True

    def _tls_received(self, data: bytes) -> None:
        """A server that closes without TLS's close_notify (most probe targets) reads as EOF,
        as asyncio's and Go's clients take it."""
        assert self._tls is not None
        if data:
            self._tls.incoming.write(data)
        else:
            self._tls.incoming.write_eof()
        if not self._tls.secure and not self._handshake():
            return
        while not self._done.done():
            try:
                plain = self._tls.obj.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                self._flush_tls()
                return
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                plain = b""
            self._received(plain)
            if not plain:
                return
