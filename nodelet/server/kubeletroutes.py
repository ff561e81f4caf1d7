"""kubelet's own read routes on the kubelet API: ``/healthz``, ``/pods``, ``/runningpods/``,
``/configz``, ``/metrics``, ``/metrics/probes``, ``/logs/`` and ``/containerLogs/``.

Paths, bodies and error texts are kubelet's (``pkg/kubelet/server/server.go``), so the API
server's proxy and ``kubectl`` read them as they read a kubelet's. What they show comes from
the agent through ``RoutesBackend``; authentication and authorization happened before (the
``kubeletauth`` middleware).
"""

from __future__ import annotations

import html
import json
import mimetypes
import os
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from nodelet.config import AgentConfig
from nodelet.configfile import effective_documents
from nodelet.ops import health
from nodelet.ops.health import Check
from nodelet.server import containerlogs
from nodelet.server.containerlogs import LogRequestError, go_quote

NODE_LOG_DIR = Path("/var/log")
"""What ``/logs/`` serves (kubelet's ``http.Dir("/var/log/")``)."""
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"


class RoutesBackend(Protocol):
    """What the routes read from the agent."""

    @property
    def config(self) -> AgentConfig: ...

    def health_checks(self) -> list[Check]: ...

    def pod_list(self) -> dict[str, Any]:
        """kubelet's ``/pods``: a v1 PodList of every pod with its latest status."""
        ...

    def metrics_text(self) -> str:
        """The agent's Prometheus registry, rendered (``/metrics``)."""
        ...

    def probe_metrics_text(self) -> str:
        """kubelet's prober registry (``/metrics/probes``), rendered."""
        ...


Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def install(app: web.Application, backend: RoutesBackend) -> None:
    routes = _Routes(backend)
    app.router.add_route("*", "/healthz", routes.healthz)
    app.router.add_route("*", "/healthz/{check}", routes.healthz_check)
    app.router.add_route("*", "/pods", get_only(routes.pods))
    app.router.add_route("*", "/runningpods/", get_only(routes.running_pods))
    app.router.add_route("*", "/configz", routes.configz)
    app.router.add_route("*", "/metrics", routes.metrics)
    app.router.add_route("*", "/metrics/probes", routes.probe_metrics)
    app.router.add_route("*", "/logs/{path:.*}", get_only(node_logs))
    app.router.add_route(
        "*", "/containerLogs/{namespace}/{pod}/{container}", get_only(routes.container_logs)
    )


def get_only(handler: Route) -> Route:
    """kubelet's ``GETOnlyRestfulFilter``: any other method is 405 with ``Allow: GET``."""

    async def only_get(request: web.Request) -> web.StreamResponse:
        if request.method != "GET":
            return web.Response(status=405, text="Method Not Allowed", headers={"Allow": "GET"})
        return await handler(request)

    return only_get


def text(body: str, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body.encode(), headers={"Content-Type": TEXT_TYPE})


def json_response(body: Any) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        headers={"Content-Type": "application/json"},
    )


class _Routes:
    def __init__(self, backend: RoutesBackend) -> None:
        self._backend = backend

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        verbose = "verbose" in request.query
        status, body = health.healthz(self._backend.health_checks(), verbose=verbose)
        return text(body, status)

    async def healthz_check(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["check"]
        for check in self._backend.health_checks():
            if check.name == name:
                status, body = health.single(check)
                return text(body, status)
        return text("404 page not found\n", 404)

    async def pods(self, request: web.Request) -> web.StreamResponse:
        return json_response(pod_list(self._backend.pod_list()))

    async def running_pods(self, request: web.Request) -> web.StreamResponse:
        return json_response(running_pods(self._backend.pod_list()))

    async def configz(self, request: web.Request) -> web.StreamResponse:
        return json_response({"kubeletconfig": kubelet_config(self._backend.config)})

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        body = self._backend.metrics_text().encode()
        return web.Response(body=body, headers={"Content-Type": METRICS_TYPE})

    async def probe_metrics(self, request: web.Request) -> web.StreamResponse:
        body = self._backend.probe_metrics_text().encode()
        return web.Response(body=body, headers={"Content-Type": METRICS_TYPE})

    async def container_logs(self, request: web.Request) -> web.StreamResponse:
        """kubelet's ``getContainerLogs``: decode and validate the query, find the pod by
        namespace and name (a static pod's name carries the node's), the container in its
        spec, the run from its status; then stream."""
        info = request.match_info
        namespace, name, container = info["namespace"], info["pod"], info["container"]
        query = {key: request.query.getall(key) for key in request.query}
        try:
            options = containerlogs.parse_options(query)
            pod = self._find_pod(namespace, name)
            if pod is None:
                raise LogRequestError(404, f"pod {go_quote(name)} does not exist")
            if not _has_container(pod, container):
                raise LogRequestError(
                    404, f"container {go_quote(container)} not found in pod {go_quote(name)}"
                )
            status = pod.get("status") or {}
            attempt, running = containerlogs.chosen_run(status, name, container, options.previous)
            path = containerlogs.run_log(
                self._backend.config.pod_logs_dir, pod["metadata"], container, attempt
            )
            if not path.is_file():
                raise LogRequestError(400, f"failed to open log file {go_quote(str(path))}")
        except LogRequestError as err:
            return text(err.text, err.status)
        still_running = self._run_check(namespace, name, container, attempt, running)
        return await containerlogs.stream(request, path, options, still_running)

    def _find_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        for pod in self._backend.pod_list().get("items") or []:
            meta = pod.get("metadata") or {}
            if (meta.get("namespace"), meta.get("name")) == (namespace, name):
                found: dict[str, Any] = pod
                return found
        return None

    def _run_check(
        self, namespace: str, name: str, container: str, attempt: int, running: bool
    ) -> Callable[[], bool]:
        """Whether the followed run still runs: its pod is there, the container's status
        says running, and with this run's ID."""

        def still_running() -> bool:
            if not running:
                return False
            pod = self._find_pod(namespace, name)
            found = containerlogs.container_status((pod or {}).get("status") or {}, container)
            if found is None or "running" not in (found.get("state") or {}):
                return False
            return str(found.get("containerID", "")).endswith(f"/{attempt}")

        return still_running


def _has_container(pod: dict[str, Any], name: str) -> bool:
    spec = pod.get("spec") or {}
    kinds = ("containers", "initContainers", "ephemeralContainers")
    return any(c.get("name") == name for kind in kinds for c in spec.get(kind) or [])


def pod_list(agent_list: dict[str, Any]) -> dict[str, Any]:
    """The agent's PodList as v1 Pods: nodelet's ``mirror`` column is not a Pod field."""
    items = [{k: v for k, v in pod.items() if k != "mirror"} for pod in agent_list["items"]]
    return {**agent_list, "items": items}


def running_pods(agent_list: dict[str, Any]) -> dict[str, Any]:
    """kubelet's ``/runningpods/``: pods with a running container, as the runtime knows them
    (name, namespace, UID, the running containers' names and images; no status)."""
    items = []
    for pod in agent_list["items"]:
        status = pod.get("status") or {}
        running = [
            {"name": c["name"], "image": c.get("image", ""), "resources": {}}
            for kind in ("initContainerStatuses", "containerStatuses")
            for c in status.get(kind) or []
            if "running" in (c.get("state") or {})
        ]
        if running:
            meta = pod["metadata"]
            items.append(
                {
                    "metadata": {
                        "name": meta["name"],
                        "namespace": meta["namespace"],
                        "uid": meta.get("uid", ""),
                        "creationTimestamp": None,
                    },
                    "spec": {"containers": running},
                    "status": {},
                }
            )
    return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}


def kubelet_config(config: AgentConfig) -> dict[str, Any]:
    """``/configz``'s ``kubeletconfig``: the effective KubeletConfiguration, with what
    follows ``--kubeconfig`` resolved (the authorization mode, token webhook)."""
    document = {"enableServer": config.kubelet_port != 0, **effective_documents(config)[0]}
    authentication = document["authentication"]
    authentication["webhook"] = {
        "enabled": config.effective_token_webhook,
        **authentication["webhook"],
    }
    document["authorization"] = {
        "mode": config.effective_authorization_mode,
        **document["authorization"],
    }
    return document


# -- /logs/ ------------------------------------------------------------------------------------


async def node_logs(request: web.Request) -> web.StreamResponse:
    """A file under /var/log, or a directory listing as Go's ``http.FileServer`` writes it.
    A symlink is followed only while it stays under /var/log (Go's follows it anywhere)."""
    return await serve_under(NODE_LOG_DIR, request.match_info["path"], request)


async def serve_under(root: Path, relative: str, request: web.Request) -> web.StreamResponse:
    if any(part == ".." for part in relative.split("/")):
        return text("invalid URL path\n", 400)
    base = Path(os.path.realpath(root))
    target = Path(os.path.realpath(base / relative))
    if target != base and base not in target.parents:
        return text("404 page not found\n", 404)
    if target.is_dir():
        if relative and not relative.endswith("/"):
            location = request.path + "/"
            return web.Response(status=301, headers={"Location": location})
        return _listing(target)
    if not target.is_file():
        return text("404 page not found\n", 404)
    if relative.endswith("/"):
        return text("404 page not found\n", 404)
    kind = mimetypes.guess_type(target.name)[0] or TEXT_TYPE
    return web.FileResponse(target, headers={"Content-Type": kind})


def _listing(directory: Path) -> web.Response:
    """Go's ``dirList``: ``<pre>``, one link per entry sorted by name, dirs with a slash."""
    lines = ["<!doctype html>", '<meta name="viewport" content="width=device-width">', "<pre>"]
    with os.scandir(directory) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            name = entry.name + ("/" if entry.is_dir() else "")
            href = urllib.parse.quote(name)
            lines.append(f'<a href="{href}">{html.escape(name)}</a>')
    lines.append("</pre>")
    body = "\n".join(lines) + "\n"
    return web.Response(body=body.encode(), headers={"Content-Type": "text/html; charset=utf-8"})
