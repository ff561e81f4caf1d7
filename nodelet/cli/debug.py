"""``nodelet debug POD``: a shell in the pod's network, IPC, UTS and PID namespaces, with the
node's filesystem, tools and full root: the ephemeral-container idea for static pods, where
the only image is ``host``. ``--target C`` takes C's PID namespace instead of the pod's, as
``kubectl debug --target`` does."""

from __future__ import annotations

import argparse
import os
import sys

from nodelet.cli import enter
from nodelet.cli.exec import running_pid
from nodelet.cli.ops import OpsError, add_socket_args, agent_get, container, pod_key

HOST_IMAGE = "host"
POD_NAMESPACES = ("ipc", "uts", "net", "pid")
DEFAULT_SHELL = "/bin/sh"


def add_debug_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pod", help="NAME or NAMESPACE/NAME as 'nodelet pods' shows it")
    parser.add_argument(
        "--image", default=HOST_IMAGE, help="only 'host': the node's own filesystem and tools"
    )
    parser.add_argument("--target", metavar="CONTAINER", help="share this container's PIDs")
    parser.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the shell")
    parser.add_argument("-t", "--tty", action="store_true", help="the shell keeps this terminal")
    add_socket_args(parser)
    parser.add_argument(
        "cmd", nargs="*", metavar="CMD", help=f"-- CMD [ARGS...] (default: {DEFAULT_SHELL})"
    )


def debug_command(args: argparse.Namespace) -> int:
    argv = list(args.cmd)
    try:
        if args.image != HOST_IMAGE:
            raise OpsError(f"image {args.image!r} is not available: only '{HOST_IMAGE}' exists")
        key = pod_key(args.pod)
        runs = agent_get(args.run_dir, "/containers", pod=key)["items"]
        holder = runs[0]["holderPid"] if runs else None
        if holder is None:
            raise OpsError(f"pod {key} has no running sandbox")
        plan = enter.Plan(
            pid=holder,
            argv=argv or [DEFAULT_SHELL],
            env=dict(os.environ),
            namespaces=POD_NAMESPACES if args.target is None else POD_NAMESPACES[:-1],
            join_cgroups=False,
            root=False,
            stdin=args.stdin,
        )
        enter.open_target(plan)
        if args.target is not None:
            target = running_pid(container(args.run_dir, key, args.target))
            pids = enter.Plan(pid=target, argv=[], env={}, namespaces=("pid",), root=False)
            enter.open_target(pids)
            plan.fds.update(pids.fds)
        return enter.run(plan)
    except (OpsError, enter.EnterError, OSError) as err:
        print(f"nodelet debug: {err}", file=sys.stderr)
        return 1
