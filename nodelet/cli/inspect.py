"""``nodelet inspect POD``: the pod's full spec and status as the agent holds them, with its
containers' runs (pids, attempts, exit codes), like ``crictl inspectp`` (json or yaml)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from nodelet.cli.ops import OpsError, add_socket_args, agent_get, pod_key, render


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pod", help="NAME or NAMESPACE/NAME as 'nodelet pods' shows it")
    parser.add_argument("-o", "--output", choices=["json", "yaml"], default="json")
    add_socket_args(parser)


def find_pod(pods: dict[str, Any], key: str) -> dict[str, Any]:
    namespace, _, name = key.partition("/")
    for pod in pods["items"]:
        meta = pod["metadata"]
        if (meta["namespace"], meta["name"]) == (namespace, name):
            found: dict[str, Any] = pod
            return found
    raise OpsError(f"pod {key} not found; static pod names end with the node name")


def inspect(args: argparse.Namespace) -> int:
    try:
        key = pod_key(args.pod)
        pod = find_pod(agent_get(args.run_dir, "/pods"), key)
        runs = agent_get(args.run_dir, "/containers", pod=key)["items"]
    except OpsError as err:
        print(f"nodelet inspect: {err}", file=sys.stderr)
        return 1
    info = {"holderPid": runs[0]["holderPid"] if runs else None, "containers": runs}
    sys.stdout.write(render({**pod, "nodelet": info}, args.output))
    return 0
