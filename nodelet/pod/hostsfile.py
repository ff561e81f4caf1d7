"""The ``/etc/hosts`` a pod's containers see, byte for byte as kubelet writes it
(``kubelet_pods.go``: ``managedHostsFileContent``, ``nodeHostsFileContent``,
``hostsEntriesFromHostAliases``).

A pod with its own network namespace and an IP gets kubelet's managed file (localhost lines,
its IPs with its hostname and, with a ``subdomain``, its FQDN); a hostNetwork pod gets the
node's own file under kubelet's host-network header. Either way ``hostAliases`` come last, in
their own section. A pod with its own netns but no IP (``--network-plugin none``) gets the
node's file as it is: kubelet mounts nothing then and containerd's sandbox copy shows through.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nodelet.model import StaticPod

HOSTS_HEADER = "# Kubernetes-managed hosts file.\n"
HOST_NETWORK_HEADER = "# Kubernetes-managed hosts file (host network).\n"
ALIASES_HEADER = "# Entries added by HostAliases.\n"
LOCALHOST_LINES = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)
NODE_HOSTS = "/etc/hosts"
HOSTS_FILE = "etc-hosts"
"""Its name in the pod's dir, as kubelet's ``getEtcHostsPath``."""


def host_domain(pod: StaticPod, cluster_domain: str) -> str:
    """kubelet's ``GeneratePodHostNameAndDomain`` domain: ``<subdomain>.<ns>.svc.<domain>``
    when the pod has a subdomain (even with an empty cluster domain, as kubelet formats it)."""
    subdomain = pod.spec.get("subdomain")
    if not subdomain:
        return ""
    return f"{subdomain}.{pod.namespace}.svc.{cluster_domain}"


def alias_lines(host_aliases: Sequence[Mapping[str, Any]] | None) -> str:
    """One line per alias entry, its hostnames tab-separated, after a blank line and a
    header; nothing at all when there are none."""
    if not host_aliases:
        return ""
    lines = ["\n", ALIASES_HEADER]
    for alias in host_aliases:
        names = "\t".join(alias.get("hostnames") or [])
        lines.append(f"{alias.get('ip', '')}\t{names}\n")
    return "".join(lines)


def managed_hosts(
    ips: Iterable[str],
    hostname: str,
    domain: str,
    host_aliases: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """kubelet's file for a pod on the pod network."""
    lines = [HOSTS_HEADER, LOCALHOST_LINES]
    for ip in ips:
        names = f"{hostname}.{domain}\t{hostname}" if domain else hostname
        lines.append(f"{ip}\t{names}\n")
    lines.append(alias_lines(host_aliases))
    return "".join(lines)


def node_hosts(node_text: str, host_aliases: Sequence[Mapping[str, Any]] | None = None) -> str:
    """kubelet's file for a hostNetwork pod: the node's file, unchanged, between its header
    and the aliases."""
    return HOST_NETWORK_HEADER + node_text + alias_lines(host_aliases)


def pod_hosts(
    pod: StaticPod, hostname: str, ips: Sequence[str], cluster_domain: str, node_text: str
) -> str:
    """What the pod's containers see at ``/etc/hosts`` (see the module docstring)."""
    aliases = pod.spec.get("hostAliases")
    if pod.host_network:
        return node_hosts(node_text, aliases)
    if not ips:
        return node_text
    return managed_hosts(ips, hostname, host_domain(pod, cluster_domain), aliases)
