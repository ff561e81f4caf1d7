"""``nodelet ps``: the containers the agent runs, as ``crictl ps`` lists them (kubectl's ``-o``)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from nodelet.cli.ops import OpsError, add_socket_args, agent_get, pod_key, render, table


def add_ps_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-a", "--all", action="store_true", help="exited containers too")
    parser.add_argument("--pod", help="only this pod's (NAME or NAMESPACE/NAME)")
    parser.add_argument("-o", "--output", choices=["wide", "json", "yaml"], help="output format")
    add_socket_args(parser)


def started(run: dict[str, Any], now: float) -> str:
    """How long ago it started, as crictl's CREATED column reads."""
    if run.get("startedAt") is None:
        return "<none>"
    seconds = max(0, int(now - run["startedAt"]))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def rows(runs: list[dict[str, Any]], wide: bool, now: float) -> list[list[str]]:
    header = ["NAMESPACE", "POD", "CONTAINER", "STATE", "ATTEMPT", "PID", "STARTED"]
    if wide:
        header += ["EXIT", "INIT", "HOLDER", "UID"]
    found = [header]
    for run in runs:
        row = [
            run["namespace"],
            run["pod"],
            run["container"],
            run["state"],
            _text(run["attempt"]),
            _text(run["pid"]),
            started(run, now),
        ]
        if wide:
            row += [_text(run["exitCode"]), str(run["init"]).lower(), _text(run["holderPid"])]
            row.append(run["uid"])
        found.append(row)
    return found


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def ps(args: argparse.Namespace) -> int:
    try:
        query = {"pod": pod_key(args.pod)} if args.pod else {}
        runs = agent_get(args.run_dir, "/containers", **query)["items"]
    except OpsError as err:
        print(f"nodelet ps: {err}", file=sys.stderr)
        return 1
    if not args.all:
        runs = [r for r in runs if r["state"] == "Running"]
    if args.output in ("json", "yaml"):
        sys.stdout.write(render({"containers": runs}, args.output))
    else:
        sys.stdout.write(table(rows(runs, args.output == "wide", time.time())))
    return 0
