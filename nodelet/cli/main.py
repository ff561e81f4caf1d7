"""``nodelet`` command line: run the agent, validate manifests, list pods, read logs."""

from __future__ import annotations

import argparse
import http.client
import sys
import urllib.error
from pathlib import Path

from nodelet import __version__
from nodelet.cli.client import LocalAPIClient
from nodelet.config import SOCKET_NAME, AgentConfig


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
    from nodelet.cli.run import add_run_arguments

    parser = argparse.ArgumentParser(
        prog="nodelet", description="A kubelet-like node agent for static pods."
    )
    parser.add_argument("--version", action="version", version=f"nodelet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_arguments(sub)
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
        from nodelet.cli.run import run

        return run(args)
    if command == "validate":
        from nodelet.cli.validate import validate

        return validate(args)
    if command == "pods":
        from nodelet.cli.pods import pods

        return pods(args)
    return _logs(args)


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
