"""``nodelet exec POD [-c C] [-i] [-t] -- CMD...``: ``kubectl exec`` for static pods, done as
``runc exec`` does it: CMD joins the container's namespaces, cgroups and root, runs as its user
with its capability sets, no_new_privs and seccomp filter, and its exit code is ours.

The agent (root-only socket) gives the pid and what ``/proc`` does not show: the prepared env
and the compiled seccomp program. A container with a filter the agent cannot give back (it was
restarted after starting it) is refused: CMD never runs less confined than the container.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from typing import Any

from nodelet.cli import enter
from nodelet.cli.ops import OpsError, add_socket_args, container, pod_key

TTY_TERM = "xterm"
"""containerd sets TERM for a TTY exec when the env has none."""


def add_exec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pod", help="NAME or NAMESPACE/NAME as 'nodelet pods' shows it")
    parser.add_argument("-c", "--container", help="container name (default: the first)")
    parser.add_argument("-i", "--stdin", action="store_true", help="pass stdin to CMD")
    parser.add_argument("-t", "--tty", action="store_true", help="CMD keeps this terminal")
    add_socket_args(parser)
    parser.add_argument("cmd", nargs="*", metavar="CMD", help="-- CMD [ARGS...]")


def command_of(args: argparse.Namespace) -> list[str]:
    argv: list[str] = list(args.cmd)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise OpsError("a command is required: nodelet exec POD -- CMD [ARGS...]")
    return argv


def running_pid(run: dict[str, Any]) -> int:
    """The run's pid, once it is checked to be running and still the holder's child."""
    where = f"container {run['container']} of pod {run['namespace']}/{run['pod']}"
    if run["state"] != "Running" or run["pid"] is None:
        raise OpsError(f"{where} is not running ({run['state']})")
    pid: int = run["pid"]
    if enter.parent_of(pid) != run["holderPid"]:
        raise OpsError(f"{where}: process {pid} is no longer the container")
    return pid


def plan_for(run: dict[str, Any], argv: list[str], stdin: bool, tty: bool) -> enter.Plan:
    pid = running_pid(run)
    spec = run.get("exec") or {"known": False}
    identity = enter.identity_of(pid)
    program = base64.b64decode(spec["seccompBPF"]) if spec.get("seccompBPF") else None
    if identity.seccomp and program is None:
        raise OpsError(
            f"container {run['container']} runs under a seccomp filter the agent cannot give "
            "back (it was restarted after starting the container); refusing to run the "
            "command without it"
        )
    env = dict(spec["env"]) if spec["known"] else enter.environ_of(pid)
    if tty:
        env.setdefault("TERM", TTY_TERM)
    return enter.Plan(
        pid=pid,
        argv=argv,
        env=env,
        working_dir=spec.get("workingDir"),
        identity=identity,
        seccomp_program=program,
        stdin=stdin,
    )


def exec_command(args: argparse.Namespace) -> int:
    try:
        argv = command_of(args)
        key = pod_key(args.pod)
        if args.tty and not os.isatty(0):
            print("Unable to use a TTY - input is not a terminal", file=sys.stderr)
        run = container(args.run_dir, key, args.container)
        plan = plan_for(run, argv, args.stdin, args.tty)
        enter.open_target(plan)
        running_pid(run)  # the fds are of the container, not of a reused pid
        return enter.run(plan)
    except (OpsError, enter.EnterError, OSError) as err:
        print(f"nodelet exec: {err}", file=sys.stderr)
        return 1
