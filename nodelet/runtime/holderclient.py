"""The agent's connection to one holder: requests with replies, and pushed start/exit events."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from nodelet.holder import protocol

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 10.0


class HolderGoneError(Exception):
    """The holder closed the connection or stopped answering."""


class HolderClient:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        hello: dict[str, Any],
        peer_pid: int,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.hello = hello
        self.peer_pid = peer_pid
        """The holder's pid in the agent's pid namespace (SO_PEERCRED)."""
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._on_event: Callable[[dict[str, Any]], None] = lambda _e: None
        self._on_close: Callable[[], None] = lambda: None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        path: str,
        on_peer: Callable[[int], None] = lambda _pid: None,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> HolderClient:
        """Connect and wait for ``hello``. ``on_peer`` learns the holder's pid first (the kernel
        knows it at connect time), so even a holder too stalled to answer is recognised."""
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
        try:
            sock = writer.get_extra_info("socket")
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            peer_pid = struct.unpack("3i", creds)[0]
            on_peer(peer_pid)
            async with asyncio.timeout(timeout):
                line = await reader.readline()
            hello = protocol.decode(line)
        except (OSError, ValueError, TimeoutError) as err:
            writer.close()
            raise HolderGoneError(f"no hello from holder at {path}: {err!r}") from err
        except asyncio.CancelledError:
            writer.close()
            raise
        if hello.get("type") != "hello":
            writer.close()
            raise HolderGoneError(f"holder at {path} did not say hello: {hello}")
        return cls(reader, writer, hello, peer_pid)

    def start(
        self, on_event: Callable[[dict[str, Any]], None], on_close: Callable[[], None]
    ) -> None:
        self._on_event, self._on_close = on_event, on_close
        self._task = asyncio.create_task(self._read_loop(), name=f"holder-{self.peer_pid}")

    async def _read_loop(self) -> None:
        try:
            while line := await self._reader.readline():
                try:
                    message = protocol.decode(line)
                except ValueError:
                    log.warning("holder pid=%d sent garbage: %r", self.peer_pid, line[:200])
                    continue
                future = self._pending.pop(message.get("id") or 0, None)
                if future is not None:
                    if not future.done():
                        future.set_result(message)
                elif message.get("type") in ("start", "exit", "log_dropped"):
                    self._on_event(message)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(HolderGoneError("holder connection closed"))
            self._pending.clear()
            self._writer.close()  # the holder is gone: free the socket now, not at GC
            self._on_close()

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._writer.write(protocol.encode({"id": request_id, "op": op, **fields}))
            await self._writer.drain()
            return await asyncio.wait_for(future, REQUEST_TIMEOUT_SECONDS)
        except (OSError, TimeoutError) as err:
            raise HolderGoneError(f"holder pid={self.peer_pid} did not answer {op}: {err}") from err
        finally:
            self._pending.pop(request_id, None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
