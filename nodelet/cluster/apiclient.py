"""The agent's only door to the API server: the official ``kubernetes`` client, off the loop.

Every request runs on a small thread pool (the client is synchronous), waits for a token of a
client-go style rate limiter first (``--kube-api-qps`` / ``--kube-api-burst``), has a timeout,
and comes back as plain JSON: the agent builds and reads v1 objects as dicts, as it does for
manifests, so no typed-model round trip can drop or rename a field.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import config as kubeconfig
from kubernetes.client import ApiClient, Configuration
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

Json = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
CONNECT_TIMEOUT_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 10.0
"""kubelet's client has no overall timeout but its node status and lease calls use 10 s."""
POOL_THREADS = 8


class ApiError(Exception):
    """A request the API server answered with an error status (or could not be sent)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")

    @property
    def transient(self) -> bool:
        """Worth retrying as is: the server was unreachable, overloaded or failed."""
        return self.status in {0, 429} or self.status >= 500

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


class TokenBucket:
    """client-go's token bucket rate limiter: ``qps`` tokens a second, at most ``burst`` saved.

    ``acquire`` reserves a token and sleeps until it is due, so concurrent callers queue in
    order instead of all retrying at once.
    """

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError("qps must be > 0 and burst >= 1")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def reserve(self) -> float:
        """Take a token; returns how long to wait before using it (0 when one was saved)."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    async def acquire(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


def jittered(base: float, attempt: int, cap: float) -> float:
    """Exponential back-off with full jitter (``base`` * 2^attempt, at most ``cap``): many
    nodes that lost the same API server do not all come back in the same instant."""
    return random.uniform(base, min(cap, base * 2.0 ** min(attempt, 30)))


@dataclass(frozen=True)
class WatchEvent:
    type: str
    """ADDED, MODIFIED, DELETED, BOOKMARK or ERROR."""
    object: Json


def load_configuration(kubeconfig_path: Path) -> Configuration:
    """A client configuration from a kubeconfig file (its current context), as kubelet reads
    ``--kubeconfig``; without urllib3's own retries, since callers retry with back-off."""
    configuration = Configuration()
    kubeconfig.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig_path), client_configuration=configuration
    )
    configuration.retries = 0
    return configuration


class ApiCaller:
    """Rate-limited, timed, off-loop JSON requests through one ``kubernetes`` ApiClient."""

    def __init__(
        self,
        configuration: Configuration,
        qps: float,
        burst: int,
        user_agent: str,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        configuration.connection_pool_maxsize = POOL_THREADS + 2
        self._client = ApiClient(configuration)
        self._client.user_agent = user_agent
        self._limiter = TokenBucket(qps, burst)
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="apiserver")
        self.requests: collections.Counter[str] = collections.Counter()
        """Requests sent, by ``VERB resource`` (``POST pods``): the bench reads it."""
        self.forbidden = 0
        """403 answers: the Node authorizer or NodeRestriction refused a write (a bug)."""

    @property
    def api_client(self) -> ApiClient:
        """The client itself, for callers outside the sync loops (the kubelet API's
        TokenReviews and SubjectAccessReviews)."""
        return self._client

    @property
    def server(self) -> str:
        host: str = self._client.configuration.host
        return host

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> Json:
        """One request; the decoded JSON answer, or ``ApiError`` (status 0: not sent)."""
        await self._limiter.acquire()
        self.requests[f"{method} {_resource_of(path)}"] += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, self._send, method, path, body, query, content_type
        )

    def request_sync(self, method: str, path: str, *, query: Mapping[str, str]) -> Json:
        """A blocking read for a thread of its own (the pod watch's lists); not rate-limited,
        as the watch's lists are rare."""
        self.requests[f"{method} {_resource_of(path)}"] += 1
        return self._send(method, path, None, query, None)

    def _open(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        body: Mapping[str, Any] | None,
        content_type: str | None,
        read_timeout: float,
    ) -> Any:
        """Sends one request through the client (its auth and TLS); the unread response, or
        ``ApiError`` (status 0) when nothing could be sent or received."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        try:
            _, url, headers, _, _ = self._client.param_serialize(
                method,
                path,
                query_params=list(query.items()),
                header_params=headers,
                auth_settings=["BearerToken"],
            )
            return self._client.call_api(
                method, url, headers, body, _request_timeout=(CONNECT_TIMEOUT_SECONDS, read_timeout)
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as err:
            raise ApiError(0, "Unreachable", _short(err)) from None

    def _send(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        query: Mapping[str, str] | None,
        content_type: str | None,
    ) -> Json:
        response = self._open(method, path, query or {}, body, content_type, self._timeout)
        try:
            data = response.read()
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise ApiError(0, "Unreachable", _short(err)) from None
        if response.status >= 300:
            raise self._error(method, path, response.status, response.reason, data)
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            raise ApiError(response.status, "BadResponse", "not JSON") from None
        return decoded if isinstance(decoded, dict) else {}

    def _error(self, method: str, path: str, status: int, reason: str, data: bytes) -> ApiError:
        message = ""
        try:
            decoded = json.loads(data)
            if isinstance(decoded, dict):
                message = str(decoded.get("message", ""))
                reason = str(decoded.get("reason", reason))
        except ValueError:
            message = data[:200].decode(errors="replace")
        if status == 403:
            self.forbidden += 1
            log.error("API server refused %s %s: 403 %s", method, path, message)
        return ApiError(status, reason, message)

    def watch(
        self, path: str, query: Mapping[str, str], stop: threading.Event, timeout: float
    ) -> Iterator[WatchEvent]:
        """A blocking watch stream (call it on a thread of its own, not the pool): yields
        events until the server ends it, ``timeout`` passes, or ``stop`` is set."""
        self.requests[f"WATCH {_resource_of(path)}"] += 1
        params = {**query, "watch": "true", "timeoutSeconds": str(int(timeout))}
        response = self._open("GET", path, params, None, None, timeout + 30)
        if response.status >= 300:
            data = response.read()
            raise self._error("WATCH", path, response.status, response.reason, data)
        raw = response.response
        try:
            for line in iter_resp_lines(raw):  # type: ignore[no-untyped-call]
                if stop.is_set():
                    return
                if not line:
                    continue
                event = json.loads(line)
                if isinstance(event, dict) and isinstance(event.get("object"), dict):
                    yield WatchEvent(str(event.get("type", "")), event["object"])
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as err:
            raise ApiError(0, "WatchBroken", _short(err)) from None
        finally:
            raw.release_conn()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()  # type: ignore[no-untyped-call]


def path_of(*segments: str) -> str:
    """An API path from segments, each quoted: names come from manifests and from the server."""
    return "/" + "/".join(quote(segment, safe="") for segment in segments)


def _resource_of(path: str) -> str:
    """``pods``, ``pods/status``, ``nodes``, ``leases``, ``events`` for the request counters:
    the segment after the group version (and after ``namespaces/<ns>``), plus a subresource."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        rest = parts[2:]
    elif parts[:1] == ["apis"]:
        rest = parts[3:]
    else:
        return path
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    if not rest:
        return path
    return rest[0] + ("/" + rest[2] if len(rest) > 2 else "")


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) < 300 else text[:300] + "…"
