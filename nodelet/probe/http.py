"""kubelet's HTTP prober (``pkg/probe/http``): a GET whose status is 200-399 is a success.

As kubelet: HTTPS without certificate checks; ``host`` defaults to the pod IP; ``httpHeaders``
are sent with Go's canonical names and a ``Host`` entry sets the Host; ``User-Agent:
kube-probe/<major.minor>`` and ``Accept: */*`` unless overridden (an empty Accept removes it);
``Connection: close``; redirects are followed to the same host name (at most 10), a redirect to
another host ends the probe with a success and a warning; at most 10 KiB of body are read; one
timeout covers the whole exchange. Failures carry Go's error text, as kubelet's do.

The connection is made from the pod's network namespace, with a small HTTP/1.1 client written
here for the one request a probe makes (:mod:`~nodelet.probe.exchange` drives the socket from
the selector, :mod:`~nodelet.probe.httpresponse` parses the answer). The request of a probe
is built once and kept: the same few probes run every period, and building it cost more than
sending it.
"""

from __future__ import annotations

import asyncio
import functools
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodelet.cluster.nodeobject import KUBELET_COMPAT_VERSION
from nodelet.probe.exchange import Exchange
from nodelet.probe.httpresponse import BodyError, ProtocolError, Response, ResponseParser
from nodelet.probe.result import Outcome, ProbeResult
from nodelet.probe.tcp import DialError, connect, dial_timeout_error, join_host_port

MAX_BODY = 10 * 1024
"""kubelet's ``maxRespBodyLength``: the rest of a longer body is never read."""
MAX_REDIRECTS = 10
"""Go's client default, which kubelet's redirect checker keeps."""
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SENSITIVE = ("Authorization", "Www-Authenticate", "Cookie", "Cookie2")
"""Headers Go drops when a redirect goes to another host:port."""
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

USER_AGENT = "kube-probe/" + ".".join(KUBELET_COMPAT_VERSION.lstrip("v").split(".")[:2])


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


@dataclass
class _Progress:
    """Where a timeout struck: dialing ``dialing`` (host, port), awaiting the headers (both
    failures), or in the body (an error)."""

    dialing: tuple[str, int] | None = None
    parser: ResponseParser | None = None

    @property
    def reading_body(self) -> bool:
        return self.parser is not None and self.parser.reading_body


def _endpoint(url: urllib.parse.SplitResult) -> tuple[str, int]:
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


async def _exchange(
    url: urllib.parse.SplitResult,
    endpoint: tuple[str, int],
    request: bytes,
    *,
    netns: str | None,
    deadline: float,
    progress: _Progress,
) -> Response:
    """One request on one connection, closed after it (kubelet disables keep-alives)."""
    progress.dialing, progress.parser = endpoint, None
    sock = await connect(*endpoint, netns=netns, deadline=deadline)
    progress.dialing = None
    https = url.scheme == "https"
    try:
        exchange = Exchange(sock, request, MAX_BODY, tls=https, server_hostname=endpoint[0])
    except BaseException:
        sock.close()
        raise
    progress.parser = exchange.parser
    return await exchange.run(deadline)


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


@dataclass(frozen=True)
class _Probe:
    """What a probe spec asks for, ready to send: built once per spec (see the module doc)."""

    url: str
    first: urllib.parse.SplitResult
    headers: dict[str, list[str]]
    host: str
    """The Host header: a custom ``Host`` entry, else the URL's host:port."""
    request: bytes
    endpoint: tuple[str, int]
    """The first request's host name and port."""


@functools.lru_cache(maxsize=1024)
def _prepare(
    scheme: str, host: str, port: int, path: str, pairs: tuple[tuple[str, str], ...]
) -> _Probe:
    url = probe_url(scheme, host, port, path)
    headers = probe_headers([{"name": name, "value": value} for name, value in pairs])
    first = urllib.parse.urlsplit(url)
    host_header = headers.get("Host", [""])[0] or first.netloc
    request = _request_bytes(first, host_header, headers)
    return _Probe(url, first, headers, host_header, request, _endpoint(first))


def _probe_of(http_get: Mapping[str, Any], pod_ip: str, port: int) -> _Probe:
    pairs = tuple(
        (str(entry["name"]), str(entry.get("value", "")))
        for entry in http_get.get("httpHeaders") or ()
    )
    return _prepare(
        str(http_get.get("scheme") or "HTTP").lower(),
        str(http_get.get("host") or pod_ip or "127.0.0.1"),
        port,
        str(http_get.get("path") or ""),
        pairs,
    )


async def _do(
    probe: _Probe, *, netns: str | None, deadline: float, progress: _Progress
) -> Response:
    """Go's ``Client.Do`` with kubelet's redirect checker (same host name only, at most 10
    requests). Raises _RedirectLimitError, ProtocolError, BodyError, DialError, OSError."""
    first, headers = probe.first, probe.headers
    custom_host = headers.get("Host", [""])[0]
    current, endpoint, request, requests = first, probe.endpoint, probe.request, 1
    while True:
        if current.scheme not in ("http", "https"):
            raise ProtocolError(f"unsupported protocol scheme {current.scheme!r}")
        response = await _exchange(
            current, endpoint, request, netns=netns, deadline=deadline, progress=progress
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
        endpoint, request = _endpoint(current), _request_bytes(current, host, headers)


_AWAITING = "(Client.Timeout exceeded while awaiting headers)"
_READING = "(Client.Timeout or context cancellation while reading body)"


def _timed_out(url: str, progress: _Progress) -> ProbeResult:
    if progress.reading_body:
        return ProbeResult(Outcome.UNKNOWN, f"context deadline exceeded {_READING}")
    if progress.dialing is not None:
        err = dial_timeout_error(*progress.dialing)
        return ProbeResult(Outcome.FAILURE, f'Get "{url}": {err} {_AWAITING}')
    return ProbeResult(Outcome.FAILURE, f'Get "{url}": context deadline exceeded {_AWAITING}')


async def http_probe(
    http_get: Mapping[str, Any], *, pod_ip: str, port: int, netns: str | None, timeout: float
) -> ProbeResult:
    """Run one ``httpGet`` probe. ``port`` is already resolved (:func:`resolve_port`); ``netns``
    is the pod's network namespace (None for ``hostNetwork``). A pod with no IP yet is probed on
    its own loopback. Failures (status, connection, timeout) are ``FAILURE`` with Go's message;
    a body that cannot be read is ``UNKNOWN``, which kubelet treats as a prober error."""
    probe = _probe_of(http_get, pod_ip, port)
    url = probe.url
    progress = _Progress()
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        response = await _do(probe, netns=netns, deadline=deadline, progress=progress)
    except TimeoutError:
        return _timed_out(url, progress)
    except DialError as err:
        return ProbeResult(Outcome.FAILURE, f'Get "{url}": {err}')
    except _RedirectLimitError as err:
        return ProbeResult(Outcome.FAILURE, f'Get "{err}": stopped after 10 redirects')
    except BodyError as err:
        return ProbeResult(Outcome.UNKNOWN, f'Get "{url}": reading the body: {err}')
    except (ProtocolError, OSError) as err:
        return ProbeResult(Outcome.FAILURE, f'Get "{url}": {err}')
    body = response.body.decode("utf-8", "replace")
    if 200 <= response.status < 400:
        if response.status >= 300:
            return ProbeResult(
                Outcome.SUCCESS, f"Probe terminated redirects, Response body: {body}", warning=True
            )
        return ProbeResult(Outcome.SUCCESS, body)
    return ProbeResult(Outcome.FAILURE, f"HTTP probe failed with statuscode: {response.status}")
