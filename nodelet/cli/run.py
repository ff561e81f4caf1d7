"""``nodelet run``: the agent's flags (kubelet's names, AgentConfig's defaults) and start-up."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from pathlib import Path
from typing import Any

from nodelet.config import AgentConfig

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(text: str) -> float:
    """Go-style durations as kubelet flags take them (``20s``, ``1m``, ``500ms``); bare = s."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (examples: 20s, 1m, 500ms)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def add_run_arguments(sub: Any) -> None:
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
        default=AgentConfig.file_check_frequency,
        help="relist period of the manifest dir (default: %(default)ss)",
    )
    run.add_argument(
        "--crashloop-backoff-initial",
        type=duration,
        default=AgentConfig.backoff_initial,
        help="first CrashLoopBackOff window, doubled per crash (default: %(default)ss)",
    )
    run.add_argument(
        "--crashloop-backoff-max",
        type=duration,
        default=AgentConfig.backoff_max,
        help="longest CrashLoopBackOff window (default: %(default)ss)",
    )
    run.add_argument(
        "--cgroup-root",
        default=AgentConfig.cgroup_root,
        help="cgroup under which pod cgroups go, in every hierarchy (default: %(default)s)",
    )
    run.add_argument(
        "--pod-max-pids",
        type=int,
        default=-1,
        help="most processes a pod may run, -1 for no limit (default: %(default)s)",
    )
    api = run.add_argument_group("API server (kubelet's flags; without --kubeconfig: standalone)")
    api.add_argument(
        "--kubeconfig",
        type=Path,
        help="API server and node credentials: register the Node and mirror pods",
    )
    api.add_argument(
        "--register-node",
        type=boolean,
        default=AgentConfig.register_node,
        metavar="BOOL",
        help="create the Node when missing (default: %(default)s)",
    )
    api.add_argument(
        "--node-labels",
        type=node_labels,
        default=(),
        metavar="K=V,...",
        help="labels added to the Node (kubernetes.io/ ones only as kubelet allows)",
    )
    api.add_argument(
        "--node-status-update-frequency",
        type=duration,
        help="how often the Node status is computed (default: 10s); an unchanged one is "
        "posted every 5 min, or this often when the flag is given (kubelet's defaulting)",
    )
    api.add_argument(
        "--kube-api-qps",
        type=float,
        default=AgentConfig.kube_api_qps,
        help="requests per second to the API server (default: %(default)s)",
    )
    api.add_argument(
        "--kube-api-burst",
        type=int,
        default=AgentConfig.kube_api_burst,
        help="request burst to the API server (default: %(default)s)",
    )
    api.add_argument(
        "--port",
        type=int,
        default=AgentConfig.kubelet_port,
        help="kubelet API port advertised in the Node's daemonEndpoints (default: %(default)s)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def boolean(text: str) -> bool:
    """Go's flag booleans, as kubelet takes them (``--register-node=false``)."""
    value = text.strip().lower()
    if value in ("1", "t", "true"):
        return True
    if value in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (true or false)")


def node_labels(text: str) -> tuple[tuple[str, str], ...]:
    from nodelet.cluster.nodeobject import NodeLabelError, parse_node_labels

    try:
        return tuple(sorted(parse_node_labels(text).items()))
    except NodeLabelError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def run(args: argparse.Namespace) -> int:
    from nodelet.agent import Agent
    from nodelet.cgroups.driver import root_parts
    from nodelet.cluster.sync import KubeconfigError
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
        cgroup_root=args.cgroup_root,
        pod_pids_limit=args.pod_max_pids if args.pod_max_pids > 0 else None,
        kubeconfig=args.kubeconfig.absolute() if args.kubeconfig else None,
        register_node=args.register_node,
        node_labels=args.node_labels,
        node_status_update_frequency=(
            args.node_status_update_frequency or AgentConfig.node_status_update_frequency
        ),
        node_status_report_frequency=(
            args.node_status_update_frequency or AgentConfig.node_status_report_frequency
        ),
        kube_api_qps=args.kube_api_qps,
        kube_api_burst=args.kube_api_burst,
        kubelet_port=args.port,
    )
    try:
        root_parts(config.cgroup_root)
    except ValueError as err:
        print(f"nodelet run: --cgroup-root: {err}", file=sys.stderr)
        return 2
    if config.kube_api_qps <= 0 or config.kube_api_burst < 1:
        print("nodelet run: --kube-api-qps must be > 0 and --kube-api-burst >= 1", file=sys.stderr)
        return 2
    try:
        asyncio.run(Agent(config, ProcessRuntime(config.run_dir)).run())
    except (UnsafeDirError, KubeconfigError) as err:
        print(f"nodelet run: {err}", file=sys.stderr)
        return 1
    return 0
