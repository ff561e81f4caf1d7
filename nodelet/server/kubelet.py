"""The kubelet API: HTTPS on ``--port`` (10250), where the API server sends ``kubectl logs``,
``exec``, ``port-forward`` and ``get --raw .../proxy/...``.

aiohttp serves it on the agent's loop. The routes come from installers (``kubeletroutes``,
``kubeletstream``, ``kubeletstats``), authentication and authorization from middlewares
(``kubeletauth``): this module only listens, with kubelet's TLS settings. The optional
read-only port is kubelet's too: plain HTTP, no auth, only the routes kubelet serves there.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from nodelet.server import servingcert

log = logging.getLogger(__name__)

Installer = Callable[[web.Application], None]
"""Adds routes to the app (called once per listener: the read-only port gets its own app)."""

TLS_VERSIONS = {
    "": ssl.TLSVersion.TLSv1_2,
    "VersionTLS10": ssl.TLSVersion.TLSv1,
    "VersionTLS11": ssl.TLSVersion.TLSv1_1,
    "VersionTLS12": ssl.TLSVersion.TLSv1_2,
    "VersionTLS13": ssl.TLSVersion.TLSv1_3,
}
"""kubelet's ``tlsMinVersion`` names; empty is Go's server default, TLS 1.2."""

READ_ONLY_PREFIXES = ("/healthz", "/pods", "/stats/", "/metrics", "/spec/")
"""What kubelet's read-only port serves (its ``InstallAuthNotRequiredHandlers``): no logs,
no exec, no configz. ``/pods`` there carries the full pod specs, env values included, which
is why the port is off unless asked for."""

SHUTDOWN_SECONDS = 2.0
"""Open streams (``logs -f``, exec) are cut after this long when the agent stops."""


class KubeletServerError(Exception):
    """The kubelet API cannot be served as configured; the message names the setting."""


@dataclass(frozen=True)
class KubeletServerSettings:
    address: str
    """``--address`` (``0.0.0.0``)."""
    port: int
    """``--port`` (10250); 0 turns the HTTPS server off."""
    cert_file: Path | None
    """``--tls-cert-file``; None (and no key) is the self-signed pair under the pki dir."""
    key_file: Path | None
    client_ca_file: Path | None
    """x509 client authentication: peers' certificates are verified against it (optional)."""
    tls_min_version: str
    """kubelet's names: ``VersionTLS12``, ``VersionTLS13``; empty is TLS 1.2."""
    read_only_port: int
    """Plain HTTP, no auth, read-only routes only; 0 (the default) is off."""


class KubeletServer:
    """The HTTPS listener (and the read-only one, when configured) of the kubelet API."""

    def __init__(
        self,
        settings: KubeletServerSettings,
        pki_dir: Path,
        node_name: str,
        installers: Sequence[Installer],
        middlewares: Sequence[Middleware],
        addresses: Sequence[str] = (),
    ) -> None:
        """``addresses`` (the Node's IPs and host name) go into a self-signed certificate."""
        if settings.tls_min_version not in TLS_VERSIONS:
            raise KubeletServerError(
                f"tlsMinVersion {settings.tls_min_version!r}: expected one of "
                f"{', '.join(v for v in TLS_VERSIONS if v)}"
            )
        if (settings.cert_file is None) != (settings.key_file is None):
            raise KubeletServerError(
                "--tls-cert-file and --tls-private-key-file must be given together"
            )
        self._settings = settings
        self._pki_dir = pki_dir
        self._node_name = node_name
        self._addresses = tuple(addresses)
        self._installers = tuple(installers)
        self._middlewares = tuple(middlewares)
        self._runners: list[web.AppRunner] = []
        self._port = 0

    @property
    def port(self) -> int:
        """The bound HTTPS port (0 while not serving)."""
        return self._port

    async def start(self) -> None:
        """Listen; ``OSError`` saying which port when it is taken, ``KubeletServerError`` when
        the certificate, key or client CA cannot be loaded."""
        settings = self._settings
        if settings.port:
            context = self.ssl_context()
            app = self._app(list(self._middlewares))
            await self._listen(app, settings.port, context, "kubelet API (HTTPS)")
            self._port = settings.port
        if settings.read_only_port:
            app = self._app([_read_only])
            await self._listen(app, settings.read_only_port, None, "kubelet read-only API")

    async def close(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners = []
        self._port = 0

    def ssl_context(self) -> ssl.SSLContext:
        """kubelet's TLS: its min version, HTTP/1.1 (upgrades to SPDY and WebSocket need it),
        client certificates verified against the client CA when one is set (optional: a
        request without one goes on to token or anonymous authentication)."""
        settings = self._settings
        cert, key = settings.cert_file, settings.key_file
        if cert is None or key is None:
            cert, key = servingcert.ensure_pair(self._pki_dir, self._node_name, self._addresses)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = TLS_VERSIONS[settings.tls_min_version]
        context.set_alpn_protocols(["http/1.1"])
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as err:
            raise KubeletServerError(f"serving certificate {cert} / key {key}: {err}") from None
        if settings.client_ca_file is not None:
            try:
                context.load_verify_locations(cafile=settings.client_ca_file)
            except (OSError, ssl.SSLError) as err:
                raise KubeletServerError(
                    f"--client-ca-file {settings.client_ca_file}: {err}"
                ) from None
            context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def _app(self, middlewares: list[Middleware]) -> web.Application:
        app = web.Application(middlewares=middlewares, handler_args={"max_field_size": 1 << 16})
        for install in self._installers:
            install(app)
        return app

    async def _listen(
        self, app: web.Application, port: int, context: ssl.SSLContext | None, what: str
    ) -> None:
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS, handle_signals=False
        )
        await runner.setup()
        site = web.TCPSite(
            runner, self._settings.address, port, ssl_context=context, reuse_address=True
        )
        try:
            await site.start()
        except OSError as err:
            with contextlib.suppress(Exception):
                await runner.cleanup()
            if err.errno == errno.EADDRINUSE:
                raise OSError(
                    err.errno, f"{what}: port {port} on {self._settings.address} is in use"
                ) from None
            raise OSError(err.errno, f"{what} on {self._settings.address}:{port}: {err}") from None
        self._runners.append(runner)
        scheme = "https" if context is not None else "http"
        log.info("%s on %s://%s:%d", what, scheme, self._settings.address, port)


def read_only_path(path: str) -> bool:
    return any(
        path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/")
        for prefix in READ_ONLY_PREFIXES
    )


@web.middleware
async def _read_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The read-only port: GET of kubelet's unauthenticated routes, 404 for the rest (kubelet
    never installs them there)."""
    if not read_only_path(request.path):
        return web.Response(status=404, text="404 page not found\n")
    if request.method not in ("GET", "HEAD"):
        return web.Response(status=405, text="Method Not Allowed", headers={"Allow": "GET"})
    return await handler(request)
