"""``nodelet`` command line: run the agent, validate manifests, list pods, read logs, and the
operator commands (``ps``, ``inspect``, ``exec``, ``debug``, ``version``)."""

from __future__ import annotations

import argparse
import http.client
import platform
import sys
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    _add_operator_commands(sub)
    from nodelet.cli.image import add_image_arguments

    add_image_arguments(sub.add_parser("image", help="import, pull, list and remove images"))
    return parser


def _add_operator_commands(sub: Any) -> None:
    """crictl's verbs with kubectl's flags; each needs the agent's root-only socket."""
    from nodelet.cli.debug import add_debug_arguments
    from nodelet.cli.exec import add_exec_arguments
    from nodelet.cli.inspect import add_inspect_arguments
    from nodelet.cli.ps import add_ps_arguments

    add_ps_arguments(sub.add_parser("ps", help="list the containers the agent runs"))
    add_inspect_arguments(sub.add_parser("inspect", help="a pod's full spec, status and runs"))
    add_exec_arguments(
        sub.add_parser("exec", help="run a command in a container, as kubectl exec does")
    )
    add_debug_arguments(
        sub.add_parser("debug", help="a shell in a pod's namespaces with the node's tools")
    )
    version = sub.add_parser("version", help="nodelet, Python and holder protocol versions")
    version.add_argument("-o", "--output", choices=["json", "yaml"], help="output format")


def version_info() -> dict[str, Any]:
    from nodelet.holder.protocol import VERSION

    return {
        "nodeletVersion": __version__,
        "pythonVersion": platform.python_version(),
        "pythonImplementation": platform.python_implementation(),
        "holderProtocolVersion": VERSION,
    }


def _version(args: argparse.Namespace) -> int:
    info = version_info()
    if args.output:
        from nodelet.cli.ops import render

        sys.stdout.write(render(info, args.output))
        return 0
    print(f"nodelet {info['nodeletVersion']}")
    print(f"python {info['pythonVersion']} ({info['pythonImplementation']})")
    print(f"holder protocol {info['holderProtocolVersion']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
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
    if command == "image":
        from nodelet.cli.image import image_command

        return image_command(args)
    if command in _OPERATOR_COMMANDS:
        return _OPERATOR_COMMANDS[command](args)
    return _logs(args)


def _parse(argv: list[str]) -> argparse.Namespace:
    """``exec``/``debug``'s CMD is everything after ``--``, options included (argparse would
    stop a positional list at the first option, as in ``exec POD -c C -- ls -l``)."""
    head, tail = argv, None
    if "--" in argv and argv[:1] in (["exec"], ["debug"]):
        cut = argv.index("--")
        head, tail = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(head)
    if tail is not None:
        args.cmd = [*args.cmd, *tail]
    return args


def _ps(args: argparse.Namespace) -> int:
    from nodelet.cli.ps import ps

    return ps(args)


def _inspect(args: argparse.Namespace) -> int:
    from nodelet.cli.inspect import inspect

    return inspect(args)


def _exec(args: argparse.Namespace) -> int:
    from nodelet.cli.exec import exec_command

    return exec_command(args)


def _debug(args: argparse.Namespace) -> int:
    from nodelet.cli.debug import debug_command

    return debug_command(args)


_OPERATOR_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "ps": _ps,
    "inspect": _inspect,
    "exec": _exec,
    "debug": _debug,
    "version": _version,
}


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
