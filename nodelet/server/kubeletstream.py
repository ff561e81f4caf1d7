"""kubelet's streaming routes: ``/exec``, ``/attach`` and ``/portForward``.

Paths as kubelet's (``/exec/{ns}/{pod}[/{uid}]/{container}``, GET or POST, ``command``,
``input``, ``output``, ``error``, ``tty`` in the query; ``/portForward/{ns}/{pod}[/{uid}]``
with ``port``). The pod and container are looked up before the upgrade, so an unknown one is a
plain 404 with kubelet's text; then the connection becomes SPDY/3.1 or a WebSocket, whichever
the client asked for.

exec runs the command through the holder's ``enter`` (``containerexec``), the path exec probes
take. attach has no live stdio to join (the holder gives containers no stdin and writes their
output to the CRI log), so it follows the container's log from its current end: stdout and
stderr lines as they are written, until the container exits; stdin, if sent, is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web

from nodelet.logs.reader import follow_messages
from nodelet.pod.probes import ProbeTarget
from nodelet.probe.exec import start_time
from nodelet.server import containerexec, portforward, remotecommand, spdy
from nodelet.server.containerexec import Outcome
from nodelet.server.remotecommand import Options, StreamRequestError

EXIT_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class StreamTarget:
    """A running container as the streaming routes need it."""

    target: ProbeTarget
    """Its process, pod netns, user, cgroups and prepared config (what exec probes get)."""
    log_path: Path | None = None
    """Its current CRI log file (attach follows it)."""


class StreamBackend(Protocol):
    async def stream_target(
        self, namespace: str, pod: str, uid: str | None, container: str | None
    ) -> StreamTarget:
        """The running container (for ``container`` None, port-forward: any running one of
        the pod, whose netns is the pod's). Raises ``LookupError`` with kubelet's text:
        ``pod does not exist``, ``container not found ("c")``, or why it is not running."""
        ...


def install(app: web.Application, backend: StreamBackend) -> None:
    exec_handler = _remote_command(backend, _start_exec, need_command=True)
    attach_handler = _remote_command(backend, _start_attach, need_command=False)
    forward_handler = _port_forward(backend)
    for method in ("GET", "POST"):
        for prefix, handler in (("/exec", exec_handler), ("/attach", attach_handler)):
            app.router.add_route(method, prefix + "/{ns}/{pod}/{container}", handler)
            app.router.add_route(method, prefix + "/{ns}/{pod}/{uid}/{container}", handler)
        app.router.add_route(method, "/portForward/{ns}/{pod}", forward_handler)
        app.router.add_route(method, "/portForward/{ns}/{pod}/{uid}", forward_handler)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
StartFor = Callable[[StreamTarget, Options], Awaitable[remotecommand.Process]]


def _remote_command(backend: StreamBackend, start_for: StartFor, need_command: bool) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        info = request.match_info
        try:
            options = Options.from_query(request.query, need_command)
            found = await backend.stream_target(
                info["ns"], info["pod"], info.get("uid"), info["container"]
            )
        except StreamRequestError as err:
            return web.Response(status=err.status, text=str(err))
        except LookupError as err:
            return web.Response(status=404, text=str(err.args[0]) if err.args else str(err))

        async def start(options: Options) -> remotecommand.Process:
            return await start_for(found, options)

        try:
            if _is_websocket(request):
                return await remotecommand.serve_websocket(request, options, start)
            if spdy.is_upgrade(request):
                return await remotecommand.serve_spdy(request, options, start)
        except StreamRequestError as err:
            return web.Response(status=err.status, text=str(err))
        return _missing_upgrade(request)

    return handle


def _port_forward(backend: StreamBackend) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        info = request.match_info
        try:
            found = await backend.stream_target(info["ns"], info["pod"], info.get("uid"), None)
            netns, pod, uid = found.target.netns, f"{info['pod']}_{info['ns']}", info.get("uid", "")
            if _is_websocket(request):
                return await portforward.serve_websocket(request, netns, pod, uid)
            if spdy.is_upgrade(request):
                return await portforward.serve_spdy(request, netns, pod, uid)
        except StreamRequestError as err:
            return web.Response(status=err.status, text=str(err))
        except LookupError as err:
            return web.Response(status=404, text=str(err.args[0]) if err.args else str(err))
        return _missing_upgrade(request)

    return handle


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _missing_upgrade(request: web.Request) -> web.Response:
    text = f"unable to upgrade: missing upgrade headers in request: {dict(request.headers)!r}"
    return web.Response(status=400, text=text)


async def _start_exec(found: StreamTarget, options: Options) -> remotecommand.Process:
    try:
        return await containerexec.start(
            found.target, options.command, stdin=options.stdin, tty=options.tty
        )
    except containerexec.ExecError as err:
        raise LookupError(str(err)) from None


async def _start_attach(found: StreamTarget, options: Options) -> remotecommand.Process:
    if found.log_path is None:
        raise LookupError("the container has no log to attach to")
    return LogAttach(found.target, found.log_path)


class LogAttach:
    """attach as a process: the container's log lines from now on as stdout/stderr (a thread
    runs the blocking follower), ended when the container's process is gone."""

    def __init__(self, target: ProbeTarget, log_path: Path) -> None:
        self.stdout: asyncio.StreamReader | None = asyncio.StreamReader()
        self.stderr: asyncio.StreamReader | None = asyncio.StreamReader()
        self._target = target
        self._started = target.start_time or start_time(target.pid)
        self._stop = threading.Event()
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._follow, args=(loop, log_path), name="attach", daemon=True
        )
        self._thread.start()

    def _follow(self, loop: asyncio.AbstractEventLoop, path: Path) -> None:
        try:
            for message in follow_messages(path, stop=self._stop, tail=0):
                reader = self.stderr if message.stream == "stderr" else self.stdout
                if reader is not None:
                    loop.call_soon_threadsafe(reader.feed_data, message.render())
        finally:
            for reader in (self.stdout, self.stderr):
                if reader is not None:
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(reader.feed_eof)

    async def write(self, data: bytes) -> None:
        return None

    def close_stdin(self) -> None:
        return None

    def resize(self, width: int, height: int) -> None:
        return None

    async def wait(self) -> Outcome:
        while self._started is not None and start_time(self._target.pid) == self._started:
            await asyncio.sleep(EXIT_POLL_SECONDS)
        await asyncio.sleep(EXIT_POLL_SECONDS * 2)  # the follower's last poll
        self._stop.set()
        return Outcome(0)

    def kill(self) -> None:
        self._stop.set()

    def kill_all(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
