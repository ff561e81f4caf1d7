"""The local HTTP API on 127.0.0.1: ``/healthz``, ``/pods`` (a v1 PodList), ``/rejected``.

A deliberately tiny HTTP/1.1 server on asyncio streams: GET only, one response per connection,
so the agent needs no web framework and a stuck client costs one coroutine, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Handler = Callable[[], tuple[int, Any]]
"""Returns (HTTP status, JSON-able body or plain text)."""

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}
READ_TIMEOUT_SECONDS = 5.0


class LocalServer:
    def __init__(self, host: str, port: int, routes: dict[str, Handler]) -> None:
        self._host = host
        self._port = port
        self._routes = routes
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        log.info("local API listening on http://%s:%d", self._host, self._port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_SECONDS)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            status, body = self._dispatch(method, target.split("?", 1)[0])
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

    def _dispatch(self, method: str, path: str) -> tuple[int, Any]:
        if method not in ("GET", "HEAD"):
            return 405, "method not allowed\n"
        handler = self._routes.get(path.rstrip("/") or "/")
        if handler is None:
            return 404, "not found\n"
        try:
            return handler()
        except Exception:
            log.exception("handler for %s failed", path)
            return 500, "internal error\n"
