"""kubelet's TCP prober (``pkg/probe/tcp``): the port accepts a connection, or it does not.

The connection is made from the pod's network namespace (``netns``), so ``127.0.0.1`` is the
pod's loopback, not the node's. Messages are Go's dial errors, which kubelet passes on as the
failure reason: ``dial tcp 127.0.0.1:81: connect: connection refused``, ``... i/o timeout``.
"""

from __future__ import annotations

import asyncio
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


async def _resolve(host: str, port: int) -> tuple[int, str]:
    """The address family and literal of ``host``. Names are resolved by the agent, as kubelet
    resolves them on the node, not in the pod."""
    try:
        return (socket.AF_INET6 if ":" in host else socket.AF_INET), str(ipaddress.ip_address(host))
    except ValueError:
        pass
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


async def dial(host: str, port: int, *, netns: str | None, timeout: float) -> socket.socket:
    """A connected, non-blocking TCP socket to ``host:port`` made in ``netns``. Raises
    DialError with Go's message when the connection fails or ``timeout`` passes first."""
    address = join_host_port(host, port)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            family, literal = await _resolve(host, port)
            try:
                sock = socket_in_netns(netns, family, socket.SOCK_STREAM)
            except OSError as err:
                raise DialError(
                    f"dial tcp {address}: network namespace {netns}: {_go_errno_text(err)}"
                ) from err
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER)
                await loop.sock_connect(sock, (literal, port))
            except BaseException:
                sock.close()
                raise
    except TimeoutError:
        raise DialError(f"dial tcp {address}: i/o timeout") from None
    except DialError:
        raise
    except OSError as err:
        raise DialError(f"dial tcp {address}: connect: {_go_errno_text(err)}") from err
    return sock


async def tcp_probe(host: str, port: int, *, netns: str | None, timeout: float) -> ProbeResult:
    """kubelet's ``DoTCPProbe``: any dial error, timeouts included, is a failure."""
    try:
        sock = await dial(host, port, netns=netns, timeout=timeout)
    except DialError as err:
        return ProbeResult(Outcome.FAILURE, str(err))
    sock.close()
    return ProbeResult(Outcome.SUCCESS)
