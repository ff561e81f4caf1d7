"""A pod's ``/etc/resolv.conf`` and ``/etc/hostname``, as kubelet decides them and containerd
writes them.

The decision is kubelet's ``GetPodDNS`` (``pkg/kubelet/network/dns/dns.go``): the node's
resolv.conf (``--resolv-conf``) is the base; ``ClusterFirst`` (off the host network) and
``ClusterFirstWithHostNet`` replace its nameservers with ``--cluster-dns``, put the cluster's
search domains first and use ``ndots:5``; without ``--cluster-dns`` they fall back to
``Default`` with a warning; ``None`` starts empty; ``dnsConfig`` is appended last; then the
libc limits (3 nameservers, 32 search paths, 2048 characters) cut what does not fit, with
kubelet's warning. The file is containerd's (``parseDNSOptions``): search, nameserver and
options lines, or the node's ``/etc/resolv.conf`` copied when there is nothing to write.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodelet.config import AgentConfig
from nodelet.model import StaticPod

DEFAULT_RESOLV_CONF = "/etc/resolv.conf"
"""kubelet's ``--resolv-conf`` default, and the file containerd copies when it has no lines."""
DEFAULT_OPTIONS = ("ndots:5",)
MAX_NAMESERVERS = 3
MAX_SEARCH_PATHS = 32
MAX_SEARCH_CHARS = 2048
MAX_SEARCH_LENGTH = 253
"""A DNS-1123 subdomain's length; glibc 2.28 aborts on a longer search path."""
MAX_RESOLV_CONF_BYTES = 10 << 20
DNS_CONFIG_FORMING = "DNSConfigForming"
MISSING_CLUSTER_DNS = "MissingClusterDNS"
MISSING_CLUSTER_DNS_MESSAGE = (
    'kubelet does not have ClusterDNS IP configured and cannot create Pod using "ClusterFirst" '
    'policy. Falling back to "Default" policy.'
)

RESOLV_CONF_FILE = "etc-resolv.conf"
HOSTNAME_FILE = "etc-hostname"


class DnsError(Exception):
    """The node's resolv.conf cannot be read or parsed: kubelet then fails the sandbox."""


@dataclass(frozen=True)
class NodeDns:
    """The node's DNS settings (kubelet's ``resolvConf``, ``clusterDNS``, ``clusterDomain``)."""

    resolv_conf: str = DEFAULT_RESOLV_CONF
    """The base file; empty means none: lookups go to the node itself (127.0.0.1)."""
    cluster_dns: tuple[str, ...] = ()
    cluster_domain: str = ""
    node_ips: tuple[str, ...] = ()


def node_dns(config: AgentConfig) -> NodeDns:
    return NodeDns(config.resolv_conf, config.cluster_dns, config.cluster_domain, (config.node_ip,))


@dataclass(frozen=True)
class DnsConfig:
    """What a resolver is told: the CRI's ``DNSConfig``."""

    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class DnsEvent:
    """A Warning event kubelet records on the pod while forming its DNS."""

    reason: str
    message: str


def parse_resolv_conf(text: str) -> tuple[DnsConfig, list[str]]:
    """kubelet's ``parseResolvConf``: nameservers accumulate, the last ``search`` and the last
    ``options`` line win, a search domain loses one trailing dot; also the errors found."""
    servers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    errors: list[str] = []
    for line in text.split("\n"):
        trimmed = line.strip()
        if trimmed.startswith("#"):
            continue
        fields = trimmed.split()
        if not fields:
            continue
        if fields[0] == "nameserver":
            if len(fields) >= 2:
                servers.append(fields[1])
            else:
                errors.append("nameserver list is empty ")
        elif fields[0] == "search":
            searches = [s.removesuffix(".") for s in fields[1:]]
        elif fields[0] == "options":
            options = fields[1:]
    return DnsConfig(tuple(servers), tuple(searches), tuple(options)), errors


def read_node_dns(path: str) -> DnsConfig:
    """The node's resolv.conf as kubelet reads it (none when ``path`` is empty)."""
    if not path:
        return DnsConfig()
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_RESOLV_CONF_BYTES + 1)
    except OSError as err:
        raise DnsError(f"open {path}: {err.strerror}") from None
    if len(data) > MAX_RESOLV_CONF_BYTES:
        raise DnsError(f"{path}: larger than {MAX_RESOLV_CONF_BYTES} bytes")
    config, errors = parse_resolv_conf(data.decode("utf-8", "replace"))
    if errors:
        raise DnsError(errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]")
    return config


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _merge_options(existing: tuple[str, ...], extra: list[dict[str, Any]]) -> tuple[str, ...]:
    """kubelet's ``mergeDNSOptions``: a pod's option replaces the node's of the same name.
    kubelet's order is a Go map's (random); this keeps first-seen order."""
    merged: dict[str, str] = {}
    for option in existing:
        name, _, value = option.partition(":")
        merged[name] = value
    for pod_option in extra:
        merged[str(pod_option.get("name", ""))] = str(pod_option.get("value") or "")
    return tuple(f"{name}:{value}" if value else name for name, value in merged.items())


def fit_limits(config: DnsConfig) -> tuple[DnsConfig, list[DnsEvent]]:
    """kubelet's ``formDNSConfigFitsLimits``: cut nameservers to 3, search paths to 32, drop
    paths over 253 characters, then drop paths from the end until the line fits 2048."""
    events: list[DnsEvent] = []
    servers = config.servers
    if len(servers) > MAX_NAMESERVERS:
        servers = servers[:MAX_NAMESERVERS]
        events.append(
            DnsEvent(
                DNS_CONFIG_FORMING,
                "Nameserver limits were exceeded, some nameservers have been omitted, the "
                f"applied nameserver line is: {' '.join(servers)}",
            )
        )
    exceeded = len(config.searches) > MAX_SEARCH_PATHS
    searches = list(config.searches[:MAX_SEARCH_PATHS])
    kept = [s for s in searches if len(s) <= MAX_SEARCH_LENGTH]
    exceeded = exceeded or len(kept) != len(searches)
    line_length = len(" ".join(kept))
    if line_length > MAX_SEARCH_CHARS:
        cut = 0
        while kept and line_length - cut > MAX_SEARCH_CHARS:
            cut += len(kept.pop()) + 1
        exceeded = True
    if exceeded:
        events.append(
            DnsEvent(
                DNS_CONFIG_FORMING,
                "Search Line limits were exceeded, some search paths have been omitted, the "
                f"applied search line is: {' '.join(kept)}",
            )
        )
    return DnsConfig(servers, tuple(kept), config.options), events


def _loopback_servers(node_ips: tuple[str, ...]) -> tuple[str, ...]:
    servers = tuple(
        "::1" if ipaddress.ip_address(ip).version == 6 else "127.0.0.1" for ip in node_ips
    )
    return servers or ("127.0.0.1",)


def pod_dns(pod: StaticPod, node: NodeDns, host: DnsConfig) -> tuple[DnsConfig, list[DnsEvent]]:
    """kubelet's ``GetPodDNS`` for ``pod`` given the node's parsed resolv.conf (pure)."""
    spec = pod.spec
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    events: list[DnsEvent] = []
    cluster = policy == "ClusterFirstWithHostNet" or (
        policy not in ("None", "Default") and not pod.host_network
    )
    config = host
    if policy == "None":
        config = DnsConfig()
    elif cluster and node.cluster_dns:
        searches = host.searches
        if node.cluster_domain:
            domain = node.cluster_domain
            ours = (f"{pod.namespace}.svc.{domain}", f"svc.{domain}", domain)
            searches = _unique(ours + host.searches)
        config = DnsConfig(node.cluster_dns, searches, DEFAULT_OPTIONS)
    else:
        if cluster:
            who = f'pod: "{pod.name}_{pod.namespace}({pod.uid})". '
            events.append(DnsEvent(MISSING_CLUSTER_DNS, who + MISSING_CLUSTER_DNS_MESSAGE))
        if not node.resolv_conf:
            config = DnsConfig(_loopback_servers(node.node_ips), (".",), host.options)
    extra = spec.get("dnsConfig")
    if isinstance(extra, dict):
        config = DnsConfig(
            _unique(config.servers + tuple(extra.get("nameservers") or ())),
            _unique(config.searches + tuple(extra.get("searches") or ())),
            _merge_options(config.options, list(extra.get("options") or ())),
        )
    fitted, limit_events = fit_limits(config)
    return fitted, events + limit_events


def resolv_conf_text(config: DnsConfig) -> str:
    """containerd's ``parseDNSOptions``; empty when there is nothing to say."""
    text = ""
    if config.searches:
        text += f"search {' '.join(config.searches)}\n"
    if config.servers:
        text += "".join(f"nameserver {server}\n" for server in config.servers)
    if config.options:
        text += f"options {' '.join(config.options)}\n"
    return text


def pod_resolv_conf(pod: StaticPod, node: NodeDns) -> tuple[bytes, list[DnsEvent]]:
    """The bytes of the pod's resolv.conf and the warnings kubelet records. Raises DnsError."""
    config, events = pod_dns(pod, node, read_node_dns(node.resolv_conf))
    text = resolv_conf_text(config)
    if text:
        return text.encode(), events
    try:
        return Path(DEFAULT_RESOLV_CONF).read_bytes(), events
    except OSError as err:
        raise DnsError(f"copy {DEFAULT_RESOLV_CONF}: {err.strerror}") from None


def hostname_text(hostname: str) -> str:
    """containerd's sandbox ``hostname`` file."""
    return hostname + "\n"


def write_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically (a container reading it sees the old or the new file)
    with mode 0644, as kubelet and containerd leave these files."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as file:
        file.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
