"""The pod side of the pod network: which network the node runs, what a pod asks of it
(hostPorts), and the ``/etc/hosts`` kubelet writes for a pod with its own network namespace
(``nodelet.pod.hostsfile`` has every form of it)."""

from __future__ import annotations

from collections.abc import Iterable

from nodelet.config import AgentConfig
from nodelet.model import StaticPod
from nodelet.network.api import PodNetwork, PortMapping
from nodelet.pod import hostsfile

CLUSTER_DOMAIN = "cluster.local"
"""The domain ``hosts_file`` names pods in; the worker passes ``--cluster-domain`` instead."""


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


def hosts_file(
    pod: StaticPod, hostname: str, ips: Iterable[str], cluster_domain: str = CLUSTER_DOMAIN
) -> str:
    """kubelet's ``managedHostsFileContent`` (``nodelet.pod.hostsfile``): localhost lines, the
    pod's IPs with its hostname (and FQDN when it has a subdomain), then its hostAliases."""
    domain = hostsfile.host_domain(pod, cluster_domain)
    return hostsfile.managed_hosts(list(ips), hostname, domain, pod.spec.get("hostAliases"))
