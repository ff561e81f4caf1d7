"""``nodelet run``: the agent's flags (kubelet's names, AgentConfig's defaults) and start-up."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import re
import sys
from pathlib import Path
from typing import Any

from nodelet.config import AgentConfig
from nodelet.configfile import (
    AUTHORIZATION_MODES,
    HOST_IMAGE_ROOTS,
    MANIFEST_VALIDATION_MODES,
    TLS_VERSIONS,
    format_duration,
    go_duration,
    manifest_url_problem,
)
from nodelet.security import userns

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(text: str) -> float:
    """Go durations as kubelet flags take them (``20s``, ``1m30s``, ``500ms``); a bare number
    is seconds, as nodelet always took it."""
    match = _DURATION.match(text.strip())
    if match:
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        seconds = go_duration(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r} (examples: 20s, 1m30s, 500ms)"
        ) from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must not be negative")
    return seconds


def add_run_arguments(sub: Any) -> None:
    """kubelet's flags. Those a ``--config`` file can set default to None here, so that only
    a flag actually given overrides the file (``build_config``)."""
    run = sub.add_parser("run", help="run the agent in the foreground")
    run.add_argument(
        "--config",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="KubeletConfiguration (kubeadm's /var/lib/kubelet/config.yaml) and/or "
        "NodeletConfiguration file; repeatable; flags given override it",
    )
    run.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration as YAML and exit",
    )
    run.add_argument(
        "--pod-manifest-path",
        type=Path,
        help=f"directory of static pod manifests (default: {AgentConfig.pod_manifest_path})",
    )
    run.add_argument("--hostname-override", help="node name instead of the host name")
    run.add_argument("--node-ip", help="address reported as hostIP (default: default route's)")
    run.add_argument(  # flag only (no config key), as in kubelet
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
        help=f"container logs in CRI format (default: {AgentConfig.pod_logs_dir})",
    )
    run.add_argument(
        "--healthz-port",
        type=int,
        help="redacted local API port on 127.0.0.1, 0 to disable "
        f"(default: {AgentConfig.healthz_port})",
    )
    run.add_argument(
        "--file-check-frequency",
        type=duration,
        help="relist period of the manifest dir "
        f"(default: {format_duration(AgentConfig.file_check_frequency)})",
    )
    run.add_argument(
        "--manifest-url",
        type=manifest_url,
        help="URL of a Pod or PodList to run as static pods, polled (kubelet's staticPodURL)",
    )
    run.add_argument(
        "--manifest-url-header",
        type=url_headers,
        action="append",
        metavar="KEY:VALUE,...",
        help="HTTP header(s) for --manifest-url; repeatable",
    )
    run.add_argument(
        "--http-check-frequency",
        type=duration,
        help="poll period of --manifest-url "
        f"(default: {format_duration(AgentConfig.http_check_frequency)})",
    )
    run.add_argument(
        "--manifest-validation",
        choices=MANIFEST_VALIDATION_MODES,
        help="Strict refuses a manifest with unknown fields; Warn drops them, runs the pod and "
        f"shows a warning (default: {AgentConfig.manifest_validation})",
    )
    run.add_argument(
        "--host-images",
        type=comma_list,
        metavar="GLOB,...",
        help="image references (globs) that run on the node's own filesystem, like image: host, "
        "and are never pulled (default: none)",
    )
    run.add_argument(
        "--registry-mirrors",
        type=registry_mirrors,
        metavar="REGISTRY=URL,...",
        help="mirrors tried in order before a registry (docker.io=https://mirror:5000); "
        "the image keeps its own name (default: none)",
    )
    run.add_argument(
        "--host-image-root",
        choices=HOST_IMAGE_ROOTS,
        help="Overlay: the host image runs on an overlay of the node's /, its writes stay in "
        "the container; Node: on the node's / itself, writes land on the node "
        f"(default: {AgentConfig.host_image_root})",
    )
    run.add_argument(
        "--insecure-registries",
        type=comma_list,
        metavar="HOST[:PORT],...",
        help="registries pulled from over plain HTTP; loopback ones always may (default: none)",
    )
    run.add_argument(
        "--crashloop-backoff-initial",
        type=duration,
        help="first CrashLoopBackOff window, doubled per crash "
        f"(default: {format_duration(AgentConfig.backoff_initial)})",
    )
    run.add_argument(
        "--crashloop-backoff-max",
        type=duration,
        help="longest CrashLoopBackOff window "
        f"(default: {format_duration(AgentConfig.backoff_max)})",
    )
    run.add_argument(
        "--cgroup-root",
        help="cgroup under which pod cgroups go, in every hierarchy "
        f"(default: {AgentConfig.cgroup_root})",
    )
    run.add_argument(
        "--pod-max-pids",
        type=int,
        help="most processes a pod may run, -1 for no limit (default: -1)",
    )
    run.add_argument(
        "--allowed-unsafe-sysctls",
        type=comma_list,
        metavar="NAME,...",
        help="unsafe sysctls or patterns ending in * that pods may set (default: none)",
    )
    run.add_argument(
        "--seccomp-default",
        type=boolean,
        nargs="?",
        const=True,
        metavar="BOOL",
        help="RuntimeDefault seccomp for containers that name no profile (default: false)",
    )
    run.add_argument(
        "--user-namespaces-range",
        type=user_namespaces_range,
        metavar="FIRST:COUNT",
        help="host ids for pods with hostUsers: false, 65536 per pod; FIRST a multiple of "
        "65536, at least 65536 (default: 65536:7208960, 110 pods)",
    )
    net = run.add_argument_group("pod network")
    net.add_argument(
        "--network-plugin",
        choices=("builtin", "cni", "none"),
        help="builtin: a bridge and an IP per pod; cni: the plugins of --cni-conf-dir; none: "
        "loopback only (default: builtin)",
    )
    net.add_argument("--pod-cidr", help=f"built-in network's pod CIDR ({AgentConfig.pod_cidr})")
    net.add_argument("--pod-bridge", help=f"built-in network's bridge ({AgentConfig.pod_bridge})")
    net.add_argument(
        "--pod-cidr-routes",
        type=cidr_routes,
        metavar="CIDR=NODEIP,...",
        help="other nodes' pod CIDRs and node IPs: host-gw routes to them",
    )
    net.add_argument("--network-table", help=argparse.SUPPRESS)  # tests: a table of their own
    net.add_argument("--cni-conf-dir", type=Path, help="CNI configs (default: /etc/cni/net.d)")
    net.add_argument(
        "--cni-bin-dir",
        type=comma_list,
        metavar="DIR,...",
        help="CNI plugin dirs (default: /opt/cni/bin,/usr/lib/cni)",
    )
    dns = run.add_argument_group("pod DNS (kubelet's flags)")
    dns.add_argument(
        "--resolv-conf",
        metavar="FILE",
        help="resolver file pods' resolv.conf starts from; '' for none "
        f"(default: {AgentConfig.resolv_conf})",
    )
    dns.add_argument(
        "--cluster-dns",
        type=ip_list,
        metavar="IP,...",
        help="nameservers for ClusterFirst pods (default: none: they fall back to Default)",
    )
    dns.add_argument(
        "--cluster-domain",
        help="cluster's DNS domain: ClusterFirst pods search it (default: none)",
    )
    run.add_argument(
        "--container-log-max-size",
        type=log_max_size,
        metavar="QUANTITY",
        help="size a container log file may reach before it is rotated "
        f"(default: {AgentConfig.container_log_max_size >> 20}Mi)",
    )
    run.add_argument(
        "--container-log-max-files",
        type=log_max_files,
        metavar="N",
        help="log files kept per container, the current one included, at least 2 "
        f"(default: {AgentConfig.container_log_max_files})",
    )
    run.add_argument(
        "--image-gc-high-threshold",
        type=percent,
        metavar="PERCENT",
        help="image fs usage at which unused images are removed, least recently used first; "
        f"100 turns image GC off (default: {AgentConfig.image_gc_high_threshold})",
    )
    run.add_argument(
        "--image-gc-low-threshold",
        type=percent,
        metavar="PERCENT",
        help="image fs usage image GC frees down to "
        f"(default: {AgentConfig.image_gc_low_threshold})",
    )
    run.add_argument(
        "--minimum-image-ttl-duration",
        type=duration,
        metavar="DURATION",
        help="minimum age of an unused image before image GC may remove it "
        f"(default: {format_duration(AgentConfig.image_minimum_gc_age)})",
    )
    run.add_argument(
        "--log-format",
        "--logging-format",
        choices=("text", "json"),
        default="text",
        help="the agent's own log: text, or json (one object per line) (default: %(default)s)",
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
        metavar="BOOL",
        help=f"create the Node when missing (default: {AgentConfig.register_node})",
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
        help=f"requests per second to the API server (default: {AgentConfig.kube_api_qps:g})",
    )
    api.add_argument(
        "--kube-api-burst",
        type=int,
        help=f"request burst to the API server (default: {AgentConfig.kube_api_burst})",
    )
    server = run.add_argument_group("kubelet API (HTTPS; kubelet's flags)")
    server.add_argument(
        "--port",
        type=port,
        help="kubelet API port, advertised in the Node's daemonEndpoints; 0 turns it off "
        f"(default: {AgentConfig.kubelet_port})",
    )
    server.add_argument(
        "--address",
        help=f"address the kubelet API listens on (default: {AgentConfig.address})",
    )
    server.add_argument(
        "--read-only-port",
        type=port,
        help="plain-HTTP port without auth for /healthz, /pods, /stats, /metrics; 0 is off "
        "(default: 0)",
    )
    server.add_argument(
        "--tls-cert-file",
        type=Path,
        help="serving certificate (default: a self-signed one written once under <root-dir>/pki)",
    )
    server.add_argument("--tls-private-key-file", type=Path, help="key of --tls-cert-file")
    server.add_argument(
        "--tls-min-version",
        choices=TLS_VERSIONS,
        help="lowest TLS version accepted (default: VersionTLS12)",
    )
    server.add_argument(
        "--client-ca-file",
        type=Path,
        help="client certificates signed by this CA authenticate (CN user, O groups)",
    )
    server.add_argument(
        "--anonymous-auth",
        type=boolean,
        nargs="?",
        const=True,
        metavar="BOOL",
        help="requests without credentials run as system:anonymous (default: false)",
    )
    server.add_argument(
        "--authentication-token-webhook",
        type=boolean,
        nargs="?",
        const=True,
        metavar="BOOL",
        help="check bearer tokens with a TokenReview (default: true with --kubeconfig)",
    )
    server.add_argument(
        "--authentication-token-webhook-cache-ttl",
        type=duration,
        help="how long TokenReview answers are kept (default: 2m0s)",
    )
    server.add_argument(
        "--authorization-mode",
        choices=AUTHORIZATION_MODES,
        help="Webhook asks the API server with a SubjectAccessReview (default: Webhook with "
        "--kubeconfig, else AlwaysAllow)",
    )
    server.add_argument(
        "--authorization-webhook-cache-authorized-ttl",
        type=duration,
        help="how long an allowing SubjectAccessReview answer is kept (default: 5m0s)",
    )
    server.add_argument(
        "--authorization-webhook-cache-unauthorized-ttl",
        type=duration,
        help="how long a denying SubjectAccessReview answer is kept (default: 30s)",
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


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r} (0-65535)")
    return value


def node_labels(text: str) -> tuple[tuple[str, str], ...]:
    from nodelet.cluster.nodeobject import NodeLabelError, parse_node_labels

    try:
        return tuple(sorted(parse_node_labels(text).items()))
    except NodeLabelError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def log_max_size(text: str) -> int:
    """kubelet's ``--container-log-max-size``: a quantity (``10Mi``), at least 1 byte."""
    from nodelet.cgroups.quantity import QuantityError, bytes_of

    try:
        size = bytes_of(text.strip())
    except (QuantityError, ValueError):
        size = 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (a quantity such as 10Mi)")
    return size


def registry_mirrors(text: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    from nodelet.image.registry import parse_mirrors

    try:
        return tuple(parse_mirrors(comma_list(text)).items())
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def percent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"invalid percentage {text!r}: must be 0 to 100")
    return value


def log_max_files(text: str) -> int:
    """kubelet's ``--container-log-max-files``: the current file and at least one rotated."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 2:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: must be greater than 1")
    return count


def user_namespaces_range(text: str) -> tuple[int, int]:
    try:
        return userns.parse_range(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def ip_list(text: str) -> tuple[str, ...]:
    items = comma_list(text)
    for item in items:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not an IP address") from None
    return items


def manifest_url(text: str) -> str:
    if why := manifest_url_problem(text):
        raise argparse.ArgumentTypeError(why)
    return text


def url_headers(text: str) -> tuple[tuple[str, str], ...]:
    """kubelet's ``--manifest-url-header``: ``Key:Value`` pairs, comma-separated."""
    pairs = []
    for item in comma_list(text):
        name, colon, value = item.partition(":")
        if not colon or not name.strip():
            raise argparse.ArgumentTypeError(f"invalid header {item!r} (expected Key:Value)")
        pairs.append((name.strip(), value.strip()))
    return tuple(pairs)


def cidr_routes(text: str) -> tuple[tuple[str, str], ...]:
    """``10.85.1.0/24=192.0.2.11,...`` -> ((cidr, node ip), ...), each checked."""
    routes = []
    for item in comma_list(text):
        cidr, equals, gateway = item.partition("=")
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=True)
            address = ipaddress.ip_address(gateway.strip())
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{item!r}: {err}") from None
        if not equals:
            raise argparse.ArgumentTypeError(f"{item!r}: expected CIDR=NODEIP")
        routes.append((str(network), str(address)))
    return tuple(routes)


_FLAG_FIELDS = {
    "file_check_frequency": "file_check_frequency",
    "http_check_frequency": "http_check_frequency",
    "healthz_port": "healthz_port",
    "crashloop_backoff_initial": "backoff_initial",
    "crashloop_backoff_max": "backoff_max",
    "cgroup_root": "cgroup_root",
    "register_node": "register_node",
    "kube_api_qps": "kube_api_qps",
    "kube_api_burst": "kube_api_burst",
    "port": "kubelet_port",
    "address": "address",
    "read_only_port": "read_only_port",
    "tls_min_version": "tls_min_version",
    "anonymous_auth": "anonymous_auth",
    "authentication_token_webhook": "authentication_token_webhook",
    "authentication_token_webhook_cache_ttl": "authentication_token_webhook_cache_ttl",
    "authorization_mode": "authorization_mode",
    "authorization_webhook_cache_authorized_ttl": "authorization_webhook_cache_authorized_ttl",
    "authorization_webhook_cache_unauthorized_ttl": "authorization_webhook_cache_unauthorized_ttl",
    "allowed_unsafe_sysctls": "allowed_unsafe_sysctls",
    "seccomp_default": "seccomp_default",
    "user_namespaces_range": "user_namespaces_range",
    "manifest_url": "manifest_url",
    "manifest_validation": "manifest_validation",
    "host_images": "host_images",
    "host_image_root": "host_image_root",
    "insecure_registries": "insecure_registries",
    "registry_mirrors": "registry_mirrors",
    "container_log_max_size": "container_log_max_size",
    "container_log_max_files": "container_log_max_files",
    "image_gc_high_threshold": "image_gc_high_threshold",
    "image_gc_low_threshold": "image_gc_low_threshold",
    "minimum_image_ttl_duration": "image_minimum_gc_age",
    "network_plugin": "network_plugin",
    "pod_cidr": "pod_cidr",
    "pod_bridge": "pod_bridge",
    "pod_cidr_routes": "pod_cidr_routes",
    "network_table": "network_table",
    "resolv_conf": "resolv_conf",
    "cluster_dns": "cluster_dns",
    "cluster_domain": "cluster_domain",
}
"""Flag dest -> AgentConfig field, for flags whose value is taken as it is."""
_FLAG_PATHS = {
    "pod_manifest_path": "pod_manifest_path",
    "root_dir": "root_dir",
    "run_dir": "run_dir",
    "pod_logs_dir": "pod_logs_dir",
    "kubeconfig": "kubeconfig",
    "tls_cert_file": "tls_cert_file",
    "tls_private_key_file": "tls_private_key_file",
    "client_ca_file": "client_ca_file",
}


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """AgentConfig fields from the flags actually given (a flag left out is None)."""
    values: dict[str, Any] = {}
    for dest, name in _FLAG_FIELDS.items():
        if getattr(args, dest, None) is not None:
            values[name] = getattr(args, dest)
    for dest, name in _FLAG_PATHS.items():
        if getattr(args, dest, None) is not None:
            values[name] = getattr(args, dest).absolute()
    if args.pod_max_pids is not None:
        values["pod_pids_limit"] = args.pod_max_pids if args.pod_max_pids > 0 else None
    if args.manifest_url_header:
        values["manifest_url_headers"] = tuple(
            p for group in args.manifest_url_header for p in group
        )
    if args.node_labels:
        values["node_labels"] = args.node_labels
    if args.cni_conf_dir is not None:
        values["cni_conf_dir"] = args.cni_conf_dir.absolute()
    if args.cni_bin_dir:
        values["cni_bin_dirs"] = tuple(Path(d).absolute() for d in args.cni_bin_dir)
    if args.node_status_update_frequency is not None:
        values["node_status_update_frequency"] = args.node_status_update_frequency
    return values


def build_config(
    args: argparse.Namespace, node_name: str, node_ip: str
) -> tuple[AgentConfig, list[str]]:
    """Flags over ``--config`` files over AgentConfig's defaults; and the files' warnings.
    Raises ``ConfigFileError``."""
    from nodelet.configfile import load_files

    settings = load_files(list(args.config))
    flags = flag_values(args)
    values = {**settings.values, **flags}
    if "node_status_report_frequency" not in settings.values:
        # kubelet: an unset report frequency follows an explicitly set update frequency.
        update = flags.get("node_status_update_frequency") or settings.values.get(
            "node_status_update_frequency"
        )
        if update:
            values["node_status_report_frequency"] = update
    if "pod_cidr" in values:  # an operator's choice: the Node's spec.podCIDR does not win
        values["pod_cidr_explicit"] = True
    config = AgentConfig(node_name=node_name, node_ip=node_ip, **values)
    return config, settings.warnings


def run(args: argparse.Namespace) -> int:
    from nodelet.agent import Agent
    from nodelet.cgroups.driver import root_parts
    from nodelet.cluster.sync import KubeconfigError
    from nodelet.config import UnsafeDirError
    from nodelet.configfile import ConfigFileError, print_config
    from nodelet.image.gc import policy_problem
    from nodelet.image.registry import mirror_problem
    from nodelet.logs import agentlog
    from nodelet.network.api import NetworkError
    from nodelet.runtime.process import ProcessRuntime
    from nodelet.security.sysctls import allowlist_errors
    from nodelet.server.kubelet import KubeletServerError
    from nodelet.util import nodeinfo

    agentlog.configure(args.log_format, args.verbose)
    try:
        config, warnings = build_config(
            args, nodeinfo.node_name(args.hostname_override), nodeinfo.node_ip(args.node_ip)
        )
    except ConfigFileError as err:
        print(f"nodelet run: --config: {err}", file=sys.stderr)
        return 2
    for warning in warnings:
        log.warning("%s", warning)
    try:
        root_parts(config.cgroup_root)
    except ValueError as err:
        print(f"nodelet run: --cgroup-root: {err}", file=sys.stderr)
        return 2
    for registry, urls in config.registry_mirrors:
        for url in urls:
            if why := mirror_problem(registry, url, config.insecure_registries):
                print(f"nodelet run: registryMirrors: {why}", file=sys.stderr)
                return 2
    if gc_problem := policy_problem(
        config.image_gc_high_threshold,
        config.image_gc_low_threshold,
        config.image_minimum_gc_age,
        config.image_maximum_gc_age,
    ):
        print(f"nodelet run: {gc_problem}", file=sys.stderr)
        return 2
    if config.kube_api_qps <= 0 or config.kube_api_burst < 1:
        print("nodelet run: --kube-api-qps must be > 0 and --kube-api-burst >= 1", file=sys.stderr)
        return 2
    sysctl_errors = allowlist_errors(config.allowed_unsafe_sysctls)
    if sysctl_errors:  # kubelet refuses to start on these too
        print(f"nodelet run: --allowed-unsafe-sysctls: {'; '.join(sysctl_errors)}", file=sys.stderr)
        return 2
    if args.print_config:
        sys.stdout.write(print_config(config))
        return 0
    try:
        asyncio.run(Agent(config, ProcessRuntime(config.run_dir)).run())
    except (UnsafeDirError, KubeconfigError, NetworkError, KubeletServerError) as err:
        print(f"nodelet run: {err}", file=sys.stderr)
        return 1
    return 0
