"""The built-in pod network: a bridge, a veth per pod, host-local IPAM, nftables NAT.

Pods on one node talk to each other and to the node by pod IP with no NAT (L3 on the bridge);
egress is masqueraded; hostPorts are DNAT map entries; ``pod_cidr_routes`` are host-gw routes
to other nodes' pod CIDRs, so pods on different nodes also talk without NAT. Every step is
idempotent and keyed by the pod uid, so the agent can re-run setup after a crash, and sweep
removes what a pod that no longer exists left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
import threading
from collections.abc import Collection, Mapping
from pathlib import Path

from nodelet.network import links
from nodelet.network.api import NetworkError, PodNetworkRequest, PodNetworkResult, PortMapping
from nodelet.network.hostports import Claim, HostPortClaims
from nodelet.network.ipam import HostLocalIPAM
from nodelet.network.nft import NftTable, check_mapping

log = logging.getLogger(__name__)

_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")

DEFAULT_ROUTE_PROTOCOL = 0x4E
"""rtnetlink ``proto`` that tags nodelet's host-gw routes (unused by iproute2's well-known
list), so start() can remove the routes of peers that are no longer wanted and nothing else."""


def veth_name(pod_uid: str) -> str:
    """The host end of a pod's veth: 15 chars (IFNAMSIZ-1), from a hash so any uid fits."""
    return "veth" + hashlib.sha256(pod_uid.encode()).hexdigest()[:11]


class BuiltinNetwork:
    """:class:`nodelet.network.api.PodNetwork` on a Linux bridge."""

    def __init__(
        self,
        *,
        cidr: str = "10.85.0.0/24",
        state_dir: str | Path,
        bridge: str = "nodelet0",
        nft_table: str = "nodelet",
        pod_cidr_routes: Mapping[str, str] | None = None,
        route_protocol: int = DEFAULT_ROUTE_PROTOCOL,
    ) -> None:
        """``state_dir`` holds ``ipam/`` and ``hostports/`` (e.g. ``<root>/network``)."""
        if not _IFNAME.fullmatch(bridge):
            raise NetworkError(f"bridge name {bridge!r}: 1-15 of [A-Za-z0-9_.-]")
        self.ipam = HostLocalIPAM(cidr, Path(state_dir) / "ipam")
        if self.ipam.network.version != 4:
            raise NetworkError(f"pod CIDR {cidr}: the built-in network is IPv4 only")
        self.cidr = str(self.ipam.network)
        self.bridge = bridge
        self.claims = HostPortClaims(Path(state_dir) / "hostports")
        self.nft = NftTable(nft_table)
        self.pod_cidr_routes = _routes(pod_cidr_routes or {})
        self.route_protocol = route_protocol
        self._mtu = 1500
        self._ports_lock = threading.Lock()

    async def start(self) -> None:
        await asyncio.to_thread(self._start)

    async def setup(self, req: PodNetworkRequest) -> PodNetworkResult:
        return await asyncio.to_thread(self._setup, req)

    async def teardown(self, pod_uid: str, netns_path: str | None) -> None:
        await asyncio.to_thread(self._teardown, pod_uid)

    async def sweep(self, keep: Collection[str]) -> None:
        await asyncio.to_thread(self._sweep, frozenset(keep))

    def ips_of(self, pod_uid: str) -> tuple[str, ...]:
        ip = self.ipam.lookup(pod_uid)
        return (str(ip),) if ip is not None else ()

    async def set_pod_cidr_routes(self, routes: Mapping[str, str]) -> None:
        """Replace the host-gw routes (peer pod CIDR -> peer node IP), e.g. when Nodes change."""
        self.pod_cidr_routes = _routes(routes)
        await asyncio.to_thread(self._routes)

    async def destroy(self) -> None:
        """Remove the node-level objects: pod veths, bridge, nft table, host-gw routes.

        For tests and for an operator leaving the built-in network; IPAM files stay.
        """
        await asyncio.to_thread(self._destroy)

    def _start(self) -> None:
        with links.host() as ipr:
            links.ensure_bridge(ipr, self.bridge, str(self.ipam.gateway), self.ipam.prefixlen)
            self._mtu = links.uplink_mtu(ipr)
            links.set_routes(ipr, self.pod_cidr_routes, self.route_protocol)
        links.write_sysctl("net/ipv4/ip_forward", "1")
        # A client of 127.0.0.1:hostPort: after DNAT its packet leaves through the bridge with a
        # loopback source, which the kernel drops as martian unless route_localnet is on.
        links.write_sysctl(f"net/ipv4/conf/{self.bridge}/route_localnet", "1")
        self.nft.ensure(self.cidr, self.bridge, self.pod_cidr_routes)
        log.info("pod network ready: bridge %s %s, mtu %d", self.bridge, self.cidr, self._mtu)

    def _routes(self) -> None:
        with links.host() as ipr:
            links.set_routes(ipr, self.pod_cidr_routes, self.route_protocol)
        self.nft.ensure(self.cidr, self.bridge, self.pod_cidr_routes)

    def _setup(self, req: PodNetworkRequest) -> PodNetworkResult:
        who = f"{req.namespace}/{req.name} ({req.pod_uid})"
        mappings = tuple(_normalize(m) for m in req.port_mappings)
        for m in mappings:
            check_mapping(m)
        with self._ports_lock:
            self.claims.check(req.pod_uid, mappings)  # a refused pod takes no address
        ip = self.ipam.allocate(req.pod_uid)
        with links.host() as ipr:
            bridge_idx = links.index_of(ipr, self.bridge)
            if bridge_idx is None:
                raise NetworkError(f"bridge {self.bridge} is missing: the network was not started")
            links.ensure_veth(ipr, veth_name(req.pod_uid), req.netns_path, bridge_idx, self._mtu)
        with links.in_netns(req.netns_path) as pod:
            links.configure_pod(
                pod, str(ip), self.ipam.prefixlen, str(self.ipam.gateway), self._mtu
            )
        self._map_ports(req, str(ip), mappings)
        log.debug("pod %s: %s on %s", who, ip, veth_name(req.pod_uid))
        return PodNetworkResult(ips=(str(ip),))

    def _map_ports(
        self, req: PodNetworkRequest, ip: str, mappings: tuple[PortMapping, ...]
    ) -> None:
        with self._ports_lock:
            old = self.claims.get(req.pod_uid)
            if old is None and not mappings:
                return
            self.claims.check(req.pod_uid, mappings)
            claim = Claim(req.pod_uid, req.namespace, req.name, mappings)
            self.claims.put(claim)
            label = f"pod {req.namespace}/{req.name}"
            self.nft.replace_pod(ip, old.mappings if old else (), mappings, label)
            if not mappings:
                self.claims.remove(req.pod_uid)

    def _teardown(self, uid: str) -> None:
        with links.host() as ipr:
            links.delete_link(ipr, veth_name(uid))
        self._unmap_ports(uid)
        self.ipam.release(uid)

    def _unmap_ports(self, uid: str) -> None:
        with self._ports_lock:
            old = self.claims.get(uid)
            if old is None:
                return
            ip = self.ipam.lookup(uid)
            if ip is not None:
                self.nft.replace_pod(str(ip), old.mappings, (), f"pod {old.namespace}/{old.name}")
            self.claims.remove(uid)

    def _sweep(self, keep: frozenset[str]) -> None:
        wanted = {veth_name(uid) for uid in keep}
        with links.host() as ipr:
            bridge_idx = links.index_of(ipr, self.bridge)
            ports = links.ports_of(ipr, bridge_idx) if bridge_idx is not None else []
            for port in ports:
                if port.startswith("veth") and port not in wanted:
                    links.delete_link(ipr, port)
                    log.info("sweep: removed veth %s of a pod that no longer exists", port)
        for claim in list(self.claims.all()):
            if claim.uid not in keep:
                self._unmap_ports(claim.uid)
        for uid in self.ipam.sweep(keep):
            log.info("sweep: released the pod IP of %s, a pod that no longer exists", uid)

    def _destroy(self) -> None:
        with links.host() as ipr:
            bridge_idx = links.index_of(ipr, self.bridge)
            if bridge_idx is not None:
                for port in links.ports_of(ipr, bridge_idx):
                    links.delete_link(ipr, port)
                links.delete_link(ipr, self.bridge)
            links.set_routes(ipr, {}, self.route_protocol)
        self.nft.delete()


def _normalize(m: PortMapping) -> PortMapping:
    """kubelet's reading: hostIP 0.0.0.0 means every address; protocol is upper case."""
    host_ip = "" if m.host_ip in ("", "0.0.0.0") else m.host_ip
    return PortMapping(m.container_port, m.host_port, m.protocol.upper() or "TCP", host_ip)


def _routes(routes: Mapping[str, str]) -> dict[str, str]:
    """Peer pod CIDR -> peer node IP, validated and in canonical form."""
    out: dict[str, str] = {}
    for cidr, gateway in routes.items():
        try:
            net = ipaddress.IPv4Network(cidr)
            out[str(net)] = str(ipaddress.IPv4Address(gateway))
        except ValueError as exc:
            raise NetworkError(f"pod CIDR route {cidr} via {gateway}: {exc}") from exc
    return out
