"""The local HTTP API: ``/healthz``, ``/pods`` (a v1 PodList), ``/rejected``.

Two listeners, two audiences (README "Security model"):
- TCP on 127.0.0.1 (``--healthz-port``), open to every local user, like kubelet's healthz port.
  It serves the *public* routes: ``/healthz``, ``/pods`` with every env value and every
  annotation value but kubelet's own replaced by ``REDACTED`` (the PodList shape, phases and
  container states stay, status tools read them), and ``/rejected`` with file paths, pod names
  and field paths only, never a reason (a reason can quote the file's content).
- A unix socket (``<run-dir>/nodelet.sock``), mode 0600 in the 0700 run dir, so root only; it
  also checks the peer's uid. It serves the *private* routes: the full pods and rejections.

A deliberately tiny HTTP/1.1 server on asyncio streams: GET only, one response per connection,
so the agent needs no web framework and a stuck client costs one coroutine, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import socket
import struct
import tempfile
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from nodelet.model import Rejection

log = logging.getLogger(__name__)

Handler = Callable[[], tuple[int, Any]]
"""Returns (HTTP status, JSON-able body or plain text)."""
Routes = dict[str, Handler]
QueryHandler = Callable[[dict[str, str]], Awaitable[tuple[int, Any]]]
"""A private route that reads its query string (``?pod=ns/name``) and may await the runtime."""

_REASONS = {
    200: "OK",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}
READ_TIMEOUT_SECONDS = 5.0
SOCKET_MODE = 0o600

REDACTED = "<redacted>"
"""Replaces a value the TCP port does not show; the full value is on the unix socket."""
KEPT_ANNOTATION_PREFIX = "kubernetes.io/config."
"""kubelet's own annotations (hash, source, seen): derived by the agent, never secret."""
_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PATH_TOKEN = re.compile(r"\[\d+\]|\.?[A-Za-z][A-Za-z0-9]*(?=[.\[]|$)")


class LocalServer:
    """``public`` routes on TCP ``host:port`` (none when ``port`` is 0), ``private`` routes on
    the unix socket ``socket_path`` (none when it is None)."""

    def __init__(
        self,
        host: str,
        port: int,
        public: Routes,
        private: Routes | None = None,
        socket_path: Path | None = None,
        queries: dict[str, QueryHandler] | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._public = public
        self._private = private or {}
        self._queries = queries or {}
        """Private routes with a query string: the unix socket (root) only."""
        self._socket_path = socket_path
        self._socket_inode: int | None = None
        self._servers: list[asyncio.Server] = []

    async def start(self) -> None:
        if self._socket_path is not None:
            sock = bind_private_socket(self._socket_path)
            self._socket_inode = self._socket_path.lstat().st_ino
            serve = functools.partial(self._serve, self._private, True)
            self._servers.append(await asyncio.start_unix_server(serve, sock=sock))
            log.info("local API (full, root only) on unix socket %s", self._socket_path)
        if self._port:
            serve = functools.partial(self._serve, self._public, False)
            self._servers.append(await asyncio.start_server(serve, self._host, self._port))
            log.info("local API (redacted) on http://%s:%d", self._host, self._port)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers = []
        if self._socket_path is not None and self._socket_inode is not None:
            with contextlib.suppress(FileNotFoundError):
                if self._socket_path.lstat().st_ino == self._socket_inode:  # still ours
                    self._socket_path.unlink()
            self._socket_inode = None

    async def _serve(
        self,
        routes: Routes,
        private: bool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_SECONDS)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if private and not _peer_is_trusted(writer):
                status, body = 403, "forbidden\n"
            elif private and target.split("?", 1)[0] in self._queries:
                status, body = await _dispatch_query(self._queries, method, target)
            else:
                status, body = _dispatch(routes, method, target.split("?", 1)[0])
            payload = body if isinstance(body, str) else json.dumps(body)
            data = payload.encode()
            kind = "text/plain" if isinstance(body, str) else "application/json"
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            )
            if method != "HEAD":
                writer.write(data)
            await writer.drain()
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _dispatch(routes: Routes, method: str, path: str) -> tuple[int, Any]:
    if method not in ("GET", "HEAD"):
        return 405, "method not allowed\n"
    handler = routes.get(path.rstrip("/") or "/")
    if handler is None:
        return 404, "not found\n"
    try:
        return handler()
    except Exception:
        log.exception("handler for %s failed", path)
        return 500, "internal error\n"


async def _dispatch_query(routes: dict[str, QueryHandler], method: str, target: str) -> Any:
    if method not in ("GET", "HEAD"):
        return 405, "method not allowed\n"
    path, _, query = target.partition("?")
    try:
        return await routes[path](dict(urllib.parse.parse_qsl(query)))
    except Exception:
        log.exception("handler for %s failed", path)
        return 500, "internal error\n"


def _peer_is_trusted(writer: asyncio.StreamWriter) -> bool:
    """Defence in depth behind the socket's mode: the peer is root or the agent's own user."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.geteuid())


def bind_private_socket(path: Path) -> socket.socket:
    """A unix socket bound at ``path`` that only the agent's user can connect to, never
    reachable with a looser mode: it is bound inside a fresh 0700 dir next to ``path``,
    chmod'ed 0600, then renamed into place (replacing a stale socket of a killed agent).

    A private staging dir rather than a tightened umask: the umask is process-wide, and the
    agent's threads create files and dirs meanwhile.
    """
    staging = tempfile.mkdtemp(prefix=".s", dir=path.parent)  # shorter than path: AF_UNIX limit
    temporary = os.path.join(staging, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(temporary)
        os.chmod(temporary, SOCKET_MODE)
        os.rename(temporary, path)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        os.rmdir(staging)
    return sock


# -- what each audience sees ----------------------------------------------------------------


def redact_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``pod`` for any local user: every env ``value`` of every container (init
    containers included) and every annotation value but kubelet's ``kubernetes.io/config.*``
    become ``REDACTED``. Keys, list lengths, the rest of the spec and the status are kept.
    ``pod`` itself is never modified (it is the agent's live record)."""
    redacted = dict(pod)
    meta = pod.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("annotations"), dict):
        redacted["metadata"] = {
            **meta,
            "annotations": {
                key: value if str(key).startswith(KEPT_ANNOTATION_PREFIX) else REDACTED
                for key, value in meta["annotations"].items()
            },
        }
    spec = pod.get("spec")
    if isinstance(spec, dict):
        redacted["spec"] = {
            **spec,
            **{
                kind: [_redact_container(c) for c in spec[kind]]
                for kind in _CONTAINER_LISTS
                if isinstance(spec.get(kind), list)
            },
        }
    return redacted


def _redact_container(container: Any) -> Any:
    if not isinstance(container, dict) or not isinstance(container.get("env"), list):
        return container
    env = [
        {**var, "value": REDACTED} if isinstance(var, dict) and "value" in var else var
        for var in container["env"]
    ]
    return {**container, "env": env}


def redact_pod_list(pod_list: dict[str, Any]) -> dict[str, Any]:
    return {**pod_list, "items": [redact_pod(pod) for pod in pod_list.get("items") or []]}


def rejection_list(rejections: Iterable[Rejection]) -> dict[str, Any]:
    """The full ``/rejected``: every error with its reason (root only)."""
    return {
        "items": [
            {"path": r.path, "podName": r.pod_name, "errors": [str(e) for e in r.errors]}
            for r in rejections
        ]
    }


def redacted_rejection_list(rejections: Iterable[Rejection]) -> dict[str, Any]:
    """``/rejected`` for any local user, same shape: the file path (the name in the manifest
    dir, never a link's target), the pod name when it is a valid DNS name, and per error only
    its field path made of schema field names and indexes. A reason can quote the file (a
    YAML error shows the line, a link to ``/etc/shadow`` would publish it), and so can a field
    path (an unknown key, a map key): the path is cut at the first segment that is not a v1
    field name."""
    items = []
    for r in rejections:
        name = r.pod_name if r.pod_name and _is_dns_subdomain(r.pod_name) else None
        errors = []
        for error in r.errors:
            where = f"{error.path}: {public_field_path(error.field)}" if error.field else error.path
            errors.append(f"{where}: {REDACTED}")
        items.append({"path": r.path, "podName": name, "errors": errors})
    return {"items": items}


def _is_dns_subdomain(name: str) -> bool:
    return len(name) <= 253 and _DNS_SUBDOMAIN.fullmatch(name) is not None


def public_field_path(field: str) -> str:
    """``field`` up to its first segment that is not a v1 schema field name or a list index,
    then ``*``: ``spec.containers[0].comand`` -> ``spec.containers[0].*``,
    ``metadata.labels['x']`` -> ``metadata.labels[*]``, ``hunter2`` -> ``*``."""
    names = _schema_field_names()
    kept: list[str] = []
    position = 0
    while position < len(field):
        match = _PATH_TOKEN.match(field, position)
        if match is None or (
            not match.group().startswith("[") and match.group().lstrip(".") not in names
        ):
            cut = {".": ".*", "[": "[*]"}.get(field[position], "*") if kept else "*"
            return "".join(kept) + cut
        kept.append(match.group())
        position = match.end()
    return field


@functools.cache
def _schema_field_names() -> frozenset[str]:
    """Every JSON field name of the v1 models a Pod is made of (the generated client's)."""
    from kubernetes.client import models

    names: set[str] = set()
    seen: set[str] = set()
    todo = ["V1Pod"]
    while todo:
        model = todo.pop()
        cls = getattr(models, model, None)
        if model in seen or cls is None:
            continue
        seen.add(model)
        for attr, kind in cls.openapi_types.items():
            names.add(cls.attribute_map[attr])
            todo.extend(re.findall(r"V\d\w*", kind))
    return frozenset(names)
