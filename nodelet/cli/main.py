"""``nodelet`` command line: run the agent, validate manifests, list pods, read logs."""

from __future__ import annotations

import argparse
import asyncio
import calendar
import http.client
import json
import logging
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from nodelet import __version__
from nodelet.config import SOCKET_NAME, AgentConfig

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(text: str) -> float:
    """Go-style durations as kubelet flags take them (``20s``, ``1m``, ``500ms``); bare = s."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (examples: 20s, 1m, 500ms)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _add_run(sub: Any) -> None:
    run = sub.add_parser("run", help="run the agent in the foreground")
    run.add_argument(
        "--pod-manifest-path",
        type=Path,
        default=AgentConfig.pod_manifest_path,
        help="directory of static pod manifests (default: %(default)s)",
    )
    run.add_argument("--hostname-override", help="node name instead of the host name")
    run.add_argument("--node-ip", help="address reported as hostIP (default: default route's)")
    run.add_argument(
        "--root-dir",
        type=Path,
        default=AgentConfig.root_dir,
        help="persistent state: pod volumes (default: %(default)s)",
    )
    run.add_argument(
        "--run-dir",
        type=Path,
        default=AgentConfig.run_dir,
        help="runtime state: holders, sockets, exit journals (default: %(default)s)",
    )
    run.add_argument(
        "--pod-logs-dir",
        type=Path,
        default=AgentConfig.pod_logs_dir,
        help="container logs in CRI format (default: %(default)s)",
    )
    run.add_argument(
        "--healthz-port",
        type=int,
        default=AgentConfig.healthz_port,
        help="redacted local API port on 127.0.0.1, 0 to disable (default: %(default)s)",
    )
    run.add_argument(
        "--file-check-frequency",
        type=duration,
        default=20.0,
        help="relist period of the manifest dir (default: 20s)",
    )
    run.add_argument(
        "--crashloop-backoff-initial",
        type=duration,
        default=10.0,
        help="first CrashLoopBackOff window, doubled per crash (default: 10s)",
    )
    run.add_argument(
        "--crashloop-backoff-max",
        type=duration,
        default=300.0,
        help="longest CrashLoopBackOff window (default: 300s)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _add_client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=AgentConfig.run_dir,
        help=f"the agent's run dir, where its root-only socket {SOCKET_NAME} is "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--healthz-port",
        type=int,
        default=AgentConfig.healthz_port,
        help="the agent's redacted local API port, used when the socket is not (default: "
        "%(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    from nodelet.cli.logs import add_logs_arguments

    parser = argparse.ArgumentParser(
        prog="nodelet", description="A kubelet-like node agent for static pods."
    )
    parser.add_argument("--version", action="version", version=f"nodelet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    validate = sub.add_parser("validate", help="check manifests; print every error")
    validate.add_argument("files", nargs="+", type=Path)
    validate.add_argument("--hostname-override", help="node name used to default the pods")
    pods = sub.add_parser("pods", help="list pods and rejected manifests of the running agent")
    pods.add_argument("-o", "--output", choices=["wide", "json"], help="output format")
    _add_client_args(pods)
    logs = sub.add_parser("logs", help="print a container's logs")
    add_logs_arguments(logs)
    _add_client_args(logs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: str = args.command
    if command == "run":
        return _run(args)
    if command == "validate":
        return _validate(args)
    if command == "pods":
        return _pods(args)
    return _logs(args)


def _run(args: argparse.Namespace) -> int:
    from nodelet.agent import Agent
    from nodelet.config import UnsafeDirError
    from nodelet.runtime.process import ProcessRuntime
    from nodelet.util import nodeinfo

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = AgentConfig(
        node_name=nodeinfo.node_name(args.hostname_override),
        node_ip=nodeinfo.node_ip(args.node_ip),
        pod_manifest_path=args.pod_manifest_path.absolute(),
        root_dir=args.root_dir.absolute(),
        run_dir=args.run_dir.absolute(),
        pod_logs_dir=args.pod_logs_dir.absolute(),
        healthz_port=args.healthz_port,
        file_check_frequency=args.file_check_frequency,
        backoff_initial=args.crashloop_backoff_initial,
        backoff_max=args.crashloop_backoff_max,
    )
    try:
        asyncio.run(Agent(config, ProcessRuntime(config.run_dir)).run())
    except UnsafeDirError as err:
        print(f"nodelet run: {err}", file=sys.stderr)
        return 1
    return 0


def _validate(args: argparse.Namespace) -> int:
    from nodelet.manifest.load import load_manifest
    from nodelet.model import Rejection
    from nodelet.util import nodeinfo

    node = nodeinfo.node_name(args.hostname_override)
    failed = 0
    for path in args.files:
        result = load_manifest(str(path), node)
        if isinstance(result, Rejection):
            failed += 1
            for error in result.errors:
                print(error, file=sys.stderr)
        else:
            print(f"{path}: ok: pod {result.namespace}/{result.name} uid {result.uid}")
    return 1 if failed else 0


def fetch(port: int, path: str) -> Any:
    """GET from the TCP port: open to any local user, so redacted."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.load(response)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._socket_path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def fetch_unix(socket_path: Path, path: str, timeout: float = 5.0) -> Any:
    """GET from the agent's root-only unix socket: the full view, env values included."""
    connection = _UnixHTTPConnection(socket_path, timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status == 403:
        raise PermissionError(f"{socket_path}: the agent refused this user")
    if response.status != 200:
        raise OSError(f"{socket_path}{path}: HTTP {response.status}")
    return json.loads(body)


class LocalAPIClient:
    """The agent's local API as this user may see it: the unix socket (root: the full view),
    else the TCP port (anyone: env values, annotations and rejection reasons redacted)."""

    def __init__(self, run_dir: Path, port: int) -> None:
        self.socket_path = run_dir / SOCKET_NAME
        self.port = port
        self.redacted: bool | None = None
        """None until the first answer; then whether it came from the redacted TCP port."""
        self.socket_error: str | None = None

    def get(self, path: str) -> Any:
        if not self.redacted:
            try:
                result = fetch_unix(self.socket_path, path)
            except (OSError, http.client.HTTPException, ValueError) as err:
                if self.redacted is False:  # the socket answered before: don't mix views
                    raise
                self.socket_error = getattr(err, "strerror", None) or str(err)
            else:
                self.redacted = False
                return result
        result = fetch(self.port, path)
        self.redacted = True
        return result

    def where(self) -> str:
        return f"{self.socket_path} or 127.0.0.1:{self.port}"


def pod_display_status(pod: dict[str, Any]) -> tuple[str, int, int]:
    """kubectl's STATUS, READY count and RESTARTS for one pod (kubectl printPod)."""
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase", "Unknown")
    restarts = ready = 0
    init_statuses = status.get("initContainerStatuses") or []
    initializing = False
    for i, cs in enumerate(init_statuses):
        restarts += cs.get("restartCount", 0)
        state = cs.get("state") or {}
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated is not None and terminated.get("exitCode") == 0:
            continue
        initializing = True
        if terminated is not None:
            reason = "Init:" + (terminated.get("reason") or f"ExitCode:{terminated['exitCode']}")
        elif waiting and waiting.get("reason") not in (None, "", "PodInitializing"):
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{i}/{len(init_statuses)}"
        break
    has_running = False
    if not initializing:
        restarts = 0
        for cs in reversed(status.get("containerStatuses") or []):
            restarts += cs.get("restartCount", 0)
            state = cs.get("state") or {}
            if (state.get("waiting") or {}).get("reason"):
                reason = state["waiting"]["reason"]
            elif (state.get("terminated") or {}).get("reason"):
                reason = state["terminated"]["reason"]
            elif cs.get("ready") and "running" in state:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            reason = "Running"
    return reason, ready, restarts


def _age(pod: dict[str, Any]) -> str:
    start = (pod.get("status") or {}).get("startTime")
    if not start:
        return "<none>"
    seconds = max(0, int(time.time() - calendar.timegm(time.strptime(start, "%Y-%m-%dT%H:%M:%SZ"))))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _pods(args: argparse.Namespace) -> int:
    client = LocalAPIClient(args.run_dir, args.healthz_port)
    try:
        pods = client.get("/pods")
        rejected = client.get("/rejected")
    except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as err:
        print(f"nodelet pods: cannot reach the agent on {client.where()}: {err}", file=sys.stderr)
        return 1
    if client.redacted:
        print(
            f"nodelet pods: {client.socket_path}: {client.socket_error}; showing the redacted "
            f"view of 127.0.0.1:{args.healthz_port} (env values, annotations and rejection "
            "reasons hidden; run as root for the full view)",
            file=sys.stderr,
        )
    if args.output == "json":
        print(json.dumps({"pods": pods, "rejected": rejected["items"]}, indent=2))
        return 0
    wide = args.output == "wide"
    header = ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    if wide:
        header += ["IP", "NODE", "UID"]
    rows = [header]
    for pod in pods["items"]:
        meta, spec = pod["metadata"], pod["spec"]
        reason, ready, restarts = pod_display_status(pod)
        row = [
            meta["namespace"],
            meta["name"],
            f"{ready}/{len(spec['containers'])}",
            reason,
            str(restarts),
            _age(pod),
        ]
        if wide:
            row += [pod["status"].get("podIP", "<none>"), spec.get("nodeName", ""), meta["uid"]]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for item in rejected["items"]:
        print(
            f"\nREJECTED {item['path']}" + (f" (pod {item['podName']})" if item["podName"] else "")
        )
        for error in item["errors"]:
            print(f"  {error}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from nodelet.cli.logs import run_logs

    if getattr(args, "uid", None) is None:
        client = LocalAPIClient(args.run_dir, args.healthz_port)
        try:
            pods = client.get("/pods")  # names and UIDs only: the redacted view is enough
        except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError):
            pods = {"items": []}
        namespace, _, name = args.pod.rpartition("/")
        for pod in pods["items"]:
            meta = pod["metadata"]
            if meta["name"] == name and meta["namespace"] == (namespace or "default"):
                args.uid = meta["uid"]
                app_containers = pod["spec"]["containers"]
                if args.container is None and len(app_containers) == 1:
                    args.container = app_containers[0]["name"]  # kubectl's default
    code: int = run_logs(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
