"""kubelet's TCP prober (``pkg/probe/tcp``): the port accepts a connection, or it does not.

The connection is made from the pod's network namespace (``netns``), so ``127.0.0.1`` is the
pod's loopback, not the node's. Messages are Go's dial errors, which kubelet passes on as the
failure reason: ``dial tcp 127.0.0.1:81: connect: connection refused``, ``... i/o timeout``.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import socket
import struct

from nodelet.probe.netns import socket_in_netns
from nodelet.probe.result import Outcome, ProbeResult

_LINGER = struct.pack("ii", 1, 1)
"""kubelet's ProbeDialer: SO_LINGER on, 1 s, so a probe's close leaves no TIME_WAIT behind."""


class DialError(Exception):
    """A connection that could not be made; ``str()`` is Go's ``net.Dial`` message."""


def join_host_port(host: str, port: int) -> str:
    """Go's ``net.JoinHostPort``: IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _go_errno_text(err: OSError) -> str:
    """Go prints syscall errors lowercase (``connection refused``); libc capitalises them."""
    text = os.strerror(err.errno) if err.errno else str(err)
    return text[:1].lower() + text[1:]


@functools.lru_cache(maxsize=256)
def _literal(host: str) -> tuple[int, str] | None:
    """The address family and canonical text of an IP literal; None for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return (socket.AF_INET6 if address.version == 6 else socket.AF_INET), str(address)


async def _resolve(host: str, port: int) -> tuple[int, str]:
    """The address family and literal of the name ``host``. Names are resolved by the agent, as
    kubelet resolves them on the node, not in the pod."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except OSError as err:
        raise DialError(f"dial tcp: lookup {host}: {_go_errno_text(err)}") from err
    if not infos:
        raise DialError(f"dial tcp: lookup {host}: no such host")
    family, _, _, _, sockaddr = infos[0]
    return int(family), str(sockaddr[0])


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _writable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    fd = sock.fileno()
    loop.add_writer(fd, _wake, future)
    try:
        await future
    finally:
        loop.remove_writer(fd)


_UNDER_WAY = frozenset({errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY, errno.EINTR})
"""``connect`` errors that mean "not over yet" (Python's BlockingIOError and InterruptedError)."""


def _connected(sock: socket.socket, address: tuple[str, int]) -> bool:
    """Start a non-blocking connect; whether it is already over. On loopback the handshake is
    done when ``connect`` returns EINPROGRESS, which ``getpeername`` tells for one cheap system
    call; otherwise the socket turns writable once the connect ended."""
    code = sock.connect_ex(address)  # no exception object for the usual EINPROGRESS
    if code == 0:
        return True
    if code not in _UNDER_WAY:
        raise OSError(code, os.strerror(code))
    try:
        sock.getpeername()
        return True
    except OSError:
        return False


async def connect(
    host: str, port: int, *, netns: str | None, deadline: float | None = None
) -> socket.socket:
    """A connected, non-blocking TCP socket to ``host:port`` made in ``netns``; TimeoutError at
    ``deadline`` (loop time; None: the caller's limit covers it). Raises DialError with Go's
    message. Only the slow paths (a name lookup, a connect still under way) set a timer."""
    literal = _literal(host)
    if literal is None:
        async with asyncio.timeout_at(deadline):
            literal = await _resolve(host, port)
    family, address = literal
    try:
        sock = socket_in_netns(netns, family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    except OSError as err:
        raise DialError(
            f"dial tcp {join_host_port(host, port)}: network namespace {netns}: "
            f"{_go_errno_text(err)}"
        ) from err
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER)
        if not _connected(sock, (address, port)):
            async with asyncio.timeout_at(deadline):
                await _writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
    except TimeoutError:  # an OSError too, but the caller words it (Go's i/o timeout)
        sock.close()
        raise
    except OSError as err:
        sock.close()
        raise DialError(
            f"dial tcp {join_host_port(host, port)}: connect: {_go_errno_text(err)}"
        ) from err
    except BaseException:
        sock.close()
        raise
    return sock


def dial_timeout_error(host: str, port: int) -> DialError:
    """Go's message for a dial that ran out of time."""
    return DialError(f"dial tcp {join_host_port(host, port)}: i/o timeout")


async def dial(host: str, port: int, *, netns: str | None, timeout: float) -> socket.socket:
    """:func:`connect` within ``timeout`` seconds; DialError with Go's message otherwise."""
    try:
        async with asyncio.timeout(timeout):
            return await connect(host, port, netns=netns)
    except TimeoutError:
        raise dial_timeout_error(host, port) from None


async def tcp_probe(host: str, port: int, *, netns: str | None, timeout: float) -> ProbeResult:
    """kubelet's ``DoTCPProbe``: any dial error, timeouts included, is a failure."""
    try:
        sock = await dial(host, port, netns=netns, timeout=timeout)
    except DialError as err:
        return ProbeResult(Outcome.FAILURE, str(err))
    sock.close()
    return ProbeResult(Outcome.SUCCESS)
