"""kubelet's HTTP prober (``pkg/probe/http``): a GET whose status is 200-399 is a success.

As kubelet: HTTPS without certificate checks; ``host`` defaults to the pod IP; ``httpHeaders``
are sent with Go's canonical names and a ``Host`` entry sets the Host; ``User-Agent:
kube-probe/<major.minor>`` and ``Accept: */*`` unless overridden (an empty Accept removes it);
``Connection: close``; redirects are followed to the same host name (at most 10), a redirect to
another host ends the probe with a success and a warning; at most 10 KiB of body are read; one
timeout covers the whole exchange. Failures carry Go's error text, as kubelet's do.

The connection is made from the pod's network namespace, with a small HTTP/1.1 client written
here: asyncio streams over a socket from :func:`~nodelet.probe.netns.socket_in_netns`.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodelet.cluster.nodeobject import KUBELET_COMPAT_VERSION
from nodelet.probe.result import Outcome, ProbeResult
from nodelet.probe.tcp import DialError, dial, join_host_port

MAX_BODY = 10 * 1024
"""kubelet's ``maxRespBodyLength``: the rest of a longer body is never read."""
MAX_REDIRECTS = 10
"""Go's client default, which kubelet's redirect checker keeps."""
_MAX_HEADER_LINES = 1000
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SENSITIVE = ("Authorization", "Www-Authenticate", "Cookie", "Cookie2")
"""Headers Go drops when a redirect goes to another host:port."""
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

USER_AGENT = "kube-probe/" + ".".join(KUBELET_COMPAT_VERSION.lstrip("v").split(".")[:2])


class _ProtocolError(Exception):
    """The server's answer is not HTTP/1.x; ``str()`` is the reason."""


class _BodyError(Exception):
    """The body could not be read: kubelet treats this as a prober error, not a verdict."""


@dataclass(frozen=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


def resolve_port(port: int | str, container: Mapping[str, Any]) -> int:
    """kubelet's ``probe.ResolveContainerPort``: a number, or the name of one of the container's
    ``ports`` (its ``containerPort``), or a number written as a string; 1-65535. Raises
    ValueError naming the port otherwise."""
    if isinstance(port, bool):
        raise ValueError(f"invalid port: {port!r}")
    if isinstance(port, str):
        for entry in container.get("ports") or ():
            if entry.get("name") == port:
                number = entry.get("containerPort")
                break
        else:
            try:
                number = int(port, 10)
            except ValueError:
                raise ValueError(f"port {port} not found in the container's ports") from None
    else:
        number = port
    if not isinstance(number, int) or not 0 < number < 65536:
        raise ValueError(f"invalid port number: {number}")
    return number


def canonical_header_key(name: str) -> str:
    """Go's ``CanonicalMIMEHeaderKey``: ``x-custom-header`` -> ``X-Custom-Header``; a name with
    characters outside the token set is left as written."""
    if not name or any(ch not in _TOKEN for ch in name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def probe_headers(http_headers: Sequence[Mapping[str, Any]] | None) -> dict[str, list[str]]:
    """kubelet's ``newProbeRequest`` headers: the manifest's, plus its User-Agent and Accept
    defaults. ``Host`` stays in the map; the request line writer takes it from there."""
    headers: dict[str, list[str]] = {}
    for entry in http_headers or ():
        headers.setdefault(canonical_header_key(str(entry["name"])), []).append(
            str(entry.get("value", ""))
        )
    if "User-Agent" not in headers:
        headers["User-Agent"] = [USER_AGENT]
    if "Accept" not in headers:
        headers["Accept"] = ["*/*"]
    elif not headers["Accept"][0]:
        del headers["Accept"]
    return headers


def probe_url(scheme: str, host: str, port: int, path: str) -> str:
    """kubelet's ``formatURL``: the path may carry a query; a missing leading slash is added."""
    if not path.startswith("/"):
        path = "/" + path
    return f"{scheme}://{join_host_port(host, port)}{path}"


def _request_bytes(
    url: urllib.parse.SplitResult, host: str, headers: Mapping[str, list[str]]
) -> bytes:
    target = url.path or "/"
    if url.query:
        target += "?" + url.query
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}"]
    user_agent = headers.get("User-Agent", [""])[0]
    if user_agent:
        lines.append(f"User-Agent: {user_agent}")
    for name in sorted(headers):
        if name in ("Host", "User-Agent", "Connection"):
            continue
        lines.extend(f"{name}: {value}" for value in headers[name])
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


async def _readline(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readline()
    except ValueError as err:  # the StreamReader's line limit (64 KiB)
        raise _ProtocolError("header line too long") from err


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and headers (lowercase names) of the final response; 1xx ones are skipped."""
    while True:
        line = await _readline(reader)
        if not line:
            raise _ProtocolError("EOF")
        parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        code = parts[1] if len(parts) > 1 else ""
        if not parts[0].startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise _ProtocolError(f"malformed HTTP response {line.decode('latin-1')!r}")
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADER_LINES):
            raw = await _readline(reader)
            if raw in (b"\r\n", b"\n"):
                break
            if not raw:
                raise _ProtocolError("unexpected EOF")
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep:
                raise _ProtocolError(f"malformed MIME header line: {raw.decode('latin-1')!r}")
            headers[name.strip().lower()] = value.strip()
        else:
            raise _ProtocolError("too many header lines")
        status = int(code)
        if 100 <= status < 200 and status != 101:
            continue
        return status, headers


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    body = bytearray()
    while len(body) < limit:
        line = await _readline(reader)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _BodyError(f"malformed chunk size {line!r}") from None
        if size == 0:
            break
        body += await reader.readexactly(min(size, limit - len(body)))
        if len(body) < limit:
            await reader.readexactly(2)  # the chunk's CRLF
    return bytes(body)


async def _read_body(
    reader: asyncio.StreamReader, status: int, headers: Mapping[str, str], limit: int
) -> bytes:
    """At most ``limit`` bytes of the body (kubelet's ``ReadAtMost``: a longer body is cut, which
    is no error). A body cut short by the server is an error (Go's ``unexpected EOF``)."""
    if status in (204, 304) or 100 <= status < 200:
        return b""
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await _read_chunked(reader, limit)
        if "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise _BodyError(f"bad Content-Length {headers['content-length']!r}") from None
            return await reader.readexactly(min(length, limit))
        body = bytearray()
        while len(body) < limit:
            data = await reader.read(limit - len(body))
            if not data:
                break
            body += data
        return bytes(body)
    except asyncio.IncompleteReadError:
        raise _BodyError("unexpected EOF") from None
    except (ConnectionError, _ProtocolError) as err:
        raise _BodyError(str(err) or type(err).__name__) from err


def _tls_context() -> ssl.SSLContext:
    """kubelet's ``InsecureSkipVerify``: a probe checks the server answers, not who it is."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class _Progress:
    """Where a timeout struck: before the headers (a failure) or in the body (an error)."""

    reading_body: bool = False


async def _exchange(
    url: urllib.parse.SplitResult,
    host_header: str,
    headers: Mapping[str, list[str]],
    *,
    netns: str | None,
    deadline: float,
    progress: _Progress,
) -> _Response:
    """One request on one connection, closed after it (kubelet disables keep-alives)."""
    loop = asyncio.get_running_loop()
    hostname = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    sock = await dial(hostname, port, netns=netns, timeout=max(deadline - loop.time(), 0.0))
    try:
        reader, writer = await asyncio.open_connection(
            sock=sock,
            ssl=_tls_context() if url.scheme == "https" else None,
            server_hostname=hostname if url.scheme == "https" else None,
        )
    except BaseException:
        sock.close()
        raise
    try:
        writer.write(_request_bytes(url, host_header, headers))
        await writer.drain()
        status, response_headers = await _read_head(reader)
        progress.reading_body = True
        body = await _read_body(reader, status, response_headers, MAX_BODY)
        return _Response(status, response_headers, body)
    finally:
        writer.transport.abort()


def _redirect_headers(
    headers: Mapping[str, list[str]],
    old: urllib.parse.SplitResult,
    new: urllib.parse.SplitResult,
    referer: str,
) -> dict[str, list[str]]:
    """Go's client on a redirect: the headers again, minus credentials when host:port changes,
    plus a Referer unless going from https to http."""
    copied = {name: list(values) for name, values in headers.items()}
    if (old.hostname, old.port) != (new.hostname, new.port):
        for name in _SENSITIVE:
            copied.pop(name, None)
    if not (old.scheme == "https" and new.scheme == "http"):
        copied["Referer"] = [referer]
    return copied


class _RedirectLimitError(Exception):
    """Go's ``stopped after 10 redirects``; the argument is the URL not followed."""


async def _do(
    url: str,
    headers: dict[str, list[str]],
    *,
    netns: str | None,
    deadline: float,
    progress: _Progress,
) -> _Response:
    """Go's ``Client.Do`` with kubelet's redirect checker (same host name only, at most 10
    requests). Raises _RedirectLimitError, _ProtocolError, _BodyError, DialError, OSError."""
    first = urllib.parse.urlsplit(url)
    custom_host = headers.get("Host", [""])[0]
    current, host, requests = first, custom_host or first.netloc, 1
    while True:
        if current.scheme not in ("http", "https"):
            raise _ProtocolError(f"unsupported protocol scheme {current.scheme!r}")
        progress.reading_body = False
        response = await _exchange(
            current, host, headers, netns=netns, deadline=deadline, progress=progress
        )
        location = response.headers.get("location")
        if response.status not in _REDIRECTS or not location:
            return response
        target = urllib.parse.urlsplit(urllib.parse.urljoin(current.geturl(), location))
        if target.hostname != first.hostname:
            return response  # kubelet's checker: http.ErrUseLastResponse
        if requests >= MAX_REDIRECTS:
            raise _RedirectLimitError(target.geturl())
        # Go keeps a custom Host only through a relative redirect.
        relative = not urllib.parse.urlsplit(location).scheme
        keep = custom_host and custom_host != first.netloc and relative
        host = custom_host if keep else target.netloc
        headers = _redirect_headers(headers, current, target, current.geturl())
        current, requests = target, requests + 1


async def http_probe(
    http_get: Mapping[str, Any], *, pod_ip: str, port: int, netns: str | None, timeout: float
) -> ProbeResult:
    """Run one ``httpGet`` probe. ``port`` is already resolved (:func:`resolve_port`); ``netns``
    is the pod's network namespace (None for ``hostNetwork``). A pod with no IP yet is probed on
    its own loopback. Failures (status, connection, timeout) are ``FAILURE`` with Go's message;
    a body that cannot be read is ``UNKNOWN``, which kubelet treats as a prober error."""
    scheme = str(http_get.get("scheme") or "HTTP").lower()
    host = str(http_get.get("host") or pod_ip or "127.0.0.1")
    url = probe_url(scheme, host, port, str(http_get.get("path") or ""))
    headers = probe_headers(http_get.get("httpHeaders"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    awaiting = "(Client.Timeout exceeded while awaiting headers)"
    progress = _Progress()
    try:
        async with asyncio.timeout_at(deadline):
            response = await _do(url, headers, netns=netns, deadline=deadline, progress=progress)
    except TimeoutError:
        if progress.reading_body:
            reading = "(Client.Timeout or context cancellation while reading body)"
            return ProbeResult(Outcome.UNKNOWN, f"context deadline exceeded {reading}")
        return ProbeResult(Outcome.FAILURE, f'Get "{url}": context deadline exceeded {awaiting}')
    except DialError as err:
        suffix = f" {awaiting}" if str(err).endswith("i/o timeout") else ""
        return ProbeResult(Outcome.FAILURE, f'Get "{url}": {err}{suffix}')
    except _RedirectLimitError as err:
        return ProbeResult(Outcome.FAILURE, f'Get "{err}": stopped after 10 redirects')
    except _BodyError as err:
        return ProbeResult(Outcome.UNKNOWN, f'Get "{url}": reading the body: {err}')
    except (_ProtocolError, OSError) as err:
        return ProbeResult(Outcome.FAILURE, f'Get "{url}": {err}')
    body = response.body.decode("utf-8", "replace")
    if 200 <= response.status < 400:
        if response.status >= 300:
            return ProbeResult(
                Outcome.SUCCESS, f"Probe terminated redirects, Response body: {body}", warning=True
            )
        return ProbeResult(Outcome.SUCCESS, body)
    return ProbeResult(Outcome.FAILURE, f"HTTP probe failed with statuscode: {response.status}")
