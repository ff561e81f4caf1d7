"""The agent's side of the zygote: start it, ask it for holders, replace it when it dies.

The zygote is the agent's child; a pidfd tells the agent the moment it dies, so it is reaped at
once (no zombie) and a fresh one is started for the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import nodelet
from nodelet.holder import protocol

log = logging.getLogger(__name__)

REPLY_TIMEOUT = 10.0


class ZygoteClient:
    def __init__(self, python: str) -> None:
        self._python = python
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self._pidfd: int | None = None
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        package_parent = str(Path(nodelet.__file__).resolve().parent.parent)
        bootstrap = (
            f"import sys; sys.path.insert(0, {package_parent!r}); "
            f"from nodelet.holder import zygote; zygote.main({theirs.fileno()}, {os.getpid()})"
        )
        self._proc = subprocess.Popen(
            [self._python, "-I", "-S", "-c", bootstrap],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        ours.setblocking(False)
        self._channel = ours
        with contextlib.suppress(OSError):
            self._pidfd = os.pidfd_open(self._proc.pid)
            asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit, self._proc)

    def _on_exit(self, proc: subprocess.Popen[bytes]) -> None:
        """Reap a zygote that died on its own (OOM kill, say); the next request starts one."""
        if proc is self._proc:
            log.warning("zygote pid %d ended unexpectedly; a new one starts on demand", proc.pid)
            self.stop()

    async def ask(self, request: protocol.SandboxRequest) -> dict[str, Any]:
        """One request; a zygote that is gone or broken is replaced once."""
        async with self._lock:
            try:
                if self._proc is None:
                    self.start()
                return await self._exchange(request)
            except (OSError, TimeoutError) as err:
                log.warning("zygote failed (%s); starting a new one", err)
                self.stop()
                self.start()
                return await self._exchange(request)

    async def _exchange(self, request: protocol.SandboxRequest) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if self._channel is None:
            raise OSError("no zygote")
        await loop.sock_sendall(self._channel, protocol.encode(request))
        data = b""
        while not data.endswith(b"\n"):
            async with asyncio.timeout(REPLY_TIMEOUT):
                chunk = await loop.sock_recv(self._channel, 65536)
            if not chunk:
                raise OSError("the zygote exited")
            data += chunk
        return protocol.decode(data)

    def stop(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._proc is not None:
            proc, self._proc = self._proc, None
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
