"""The pod side of the pod network: which network the node runs, what a pod asks of it
(hostPorts), and the ``/etc/hosts`` kubelet writes for a pod with its own network namespace."""

from __future__ import annotations

from collections.abc import Iterable

from nodelet.config import AgentConfig
from nodelet.model import StaticPod
from nodelet.network.api import PodNetwork, PortMapping

HOSTS_HEADER = "# Kubernetes-managed hosts file.\n"
_HOSTS_DEFAULTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)
CLUSTER_DOMAIN = "cluster.local"


def node_network(config: AgentConfig) -> PodNetwork | None:
    """The network ``--network-plugin`` names; None for ``none`` (loopback only)."""
    if config.network_plugin == "none":
        return None
    if config.network_plugin == "cni":
        from nodelet.network.cni import CniNetwork

        return CniNetwork(
            config.cni_conf_dir, config.cni_bin_dirs, config.network_state_dir / "cni"
        )
    from nodelet.network.builtin import BuiltinNetwork

    return BuiltinNetwork(
        cidr=config.pod_cidr,
        state_dir=config.network_state_dir,
        bridge=config.pod_bridge,
        nft_table=config.network_table,
        pod_cidr_routes=dict(config.pod_cidr_routes),
        learn_cidr=learns_pod_cidr(config),
    )


def learns_pod_cidr(config: AgentConfig) -> bool:
    """The Node's ``spec.podCIDR`` becomes the built-in network's CIDR when the operator set
    none (kubelet's ``podCIDR`` is for standalone mode only) and there is an API server."""
    return (
        config.network_plugin == "builtin"
        and not config.pod_cidr_explicit
        and config.kubeconfig is not None
    )


def port_mappings(pod: StaticPod) -> tuple[PortMapping, ...]:
    """Every container port with a ``hostPort`` (kubelet's portmap capability)."""
    mappings = []
    for container in pod.containers:
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                mappings.append(
                    PortMapping(
                        container_port=int(port["containerPort"]),
                        host_port=int(port["hostPort"]),
                        protocol=str(port.get("protocol") or "TCP"),
                        host_ip=str(port.get("hostIP") or ""),
                    )
                )
    return tuple(mappings)


def hosts_file(pod: StaticPod, hostname: str, ips: Iterable[str]) -> str:
    """kubelet's ``managedHostsFileContent``: localhost lines, then the pod's IPs with its
    hostname (and FQDN when it has a subdomain)."""
    lines = [HOSTS_HEADER, _HOSTS_DEFAULTS]
    subdomain = pod.spec.get("subdomain")
    for ip in ips:
        if subdomain:
            fqdn = f"{hostname}.{subdomain}.{pod.namespace}.svc.{CLUSTER_DOMAIN}"
            lines.append(f"{ip}\t{fqdn}\t{hostname}\n")
        else:
            lines.append(f"{ip}\t{hostname}\n")
    return "".join(lines)
