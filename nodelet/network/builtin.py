"""The built-in pod network: a bridge, a veth per pod, host-local IPAM, nftables NAT.

Pods on one node talk to each other and to the node by pod IP with no NAT (L3 on the bridge);
egress is masqueraded; hostPorts are DNAT map entries; ``pod_cidr_routes`` are host-gw routes
to other nodes' pod CIDRs, so pods on different nodes also talk without NAT. Every step is
idempotent and keyed by the pod uid, so the agent can re-run setup after a crash, and sweep
removes what a pod that no longer exists left behind.

The pod CIDR may change while the agent runs (the Node's ``spec.podCIDR``, see
:meth:`BuiltinNetwork.set_pod_cidr`), but never under a running pod: the switch waits until no
pod holds an address of the current CIDR, so no pod is ever renumbered.
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
from nodelet.network.cidrstate import CidrFile, CidrState
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
        learn_cidr: bool = False,
    ) -> None:
        """``state_dir`` holds ``ipam/`` and ``hostports/`` (e.g. ``<root>/network``).

        With ``learn_cidr`` (no pod CIDR set by the operator, an API server to ask), ``cidr``
        is only the fallback: the CIDR learned by :meth:`set_pod_cidr`, saved in
        ``<state_dir>/pod-cidr.json``, wins, also across restarts while the API server is down.
        """
        if not _IFNAME.fullmatch(bridge):
            raise NetworkError(f"bridge name {bridge!r}: 1-15 of [A-Za-z0-9_.-]")
        self._ipam_dir = Path(state_dir) / "ipam"
        self._cidr_file = CidrFile(state_dir) if learn_cidr else None
        saved = self._cidr_file.load() if self._cidr_file is not None else CidrState()
        self._wanted = saved.learned
        """The learned CIDR the network switches to once no pod holds an old address."""
        self._use_cidr(saved.active if saved.learned and saved.active else cidr)
        self.bridge = bridge
        self.claims = HostPortClaims(Path(state_dir) / "hostports")
        self.nft = NftTable(nft_table)
        self.pod_cidr_routes = _routes(pod_cidr_routes or {})
        self._flat_peers: frozenset[str] = frozenset()
        """The peer CIDRs in the nft table's unmasqueraded set, as last written."""
        self.route_protocol = route_protocol
        self.unreachable: dict[str, str] = {}
        """Peer routes the kernel refused (dst -> why), each logged once; retried by callers."""
        self._mtu = 1500
        self._ports_lock = threading.Lock()
        self._node_lock = threading.Lock()
        """Node-level changes (bridge address, routes, the nft chains) one at a time."""
        self._cidr_cond = threading.Condition()
        self._setups = 0
        """Setups between taking the IPAM and finishing: a CIDR switch waits for them."""
        self._started = False
        self._deferred_logged: str | None = None

    def _use_cidr(self, cidr: str) -> None:
        ipam = HostLocalIPAM(cidr, self._ipam_dir)
        if ipam.network.version != 4:
            raise NetworkError(f"pod CIDR {cidr}: the built-in network is IPv4 only")
        self.ipam = ipam
        self.cidr = str(ipam.network)

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
        """Replace the host-gw routes (peer pod CIDR -> peer node IP), e.g. when Nodes change.

        A route the kernel refuses (its gateway is not on a connected network) is logged once
        and kept in :attr:`unreachable`; the others are set all the same.
        """
        self.pod_cidr_routes = _routes(routes)
        await asyncio.to_thread(self._routes)

    async def set_pod_cidr(self, cidr: str) -> None:
        """The Node's ``spec.podCIDR`` (only with ``learn_cidr``): saved, and used at once when
        no pod holds an address of the current CIDR, else as soon as none does (or at the next
        start). Running pods keep their addresses."""
        await asyncio.to_thread(self._want_cidr, cidr)

    @property
    def learns_cidr(self) -> bool:
        """The CIDR follows the Node's ``spec.podCIDR`` (the operator set none)."""
        return self._cidr_file is not None

    @property
    def pending_cidr(self) -> str | None:
        """The learned CIDR waiting for the pods of the current one to go, if any."""
        wanted = self._wanted
        return wanted if wanted is not None and wanted != self.cidr else None

    async def destroy(self) -> None:
        """Remove the node-level objects: pod veths, bridge, nft table, host-gw routes.

        For tests and for an operator leaving the built-in network; IPAM files stay.
        """
        await asyncio.to_thread(self._destroy)

    def _start(self) -> None:
        self._switch_if_free()  # a CIDR learned before a restart, if no pod holds an old address
        with self._node_lock:
            with links.host() as ipr:
                links.ensure_bridge(ipr, self.bridge, str(self.ipam.gateway), self.ipam.prefixlen)
                self._mtu = links.uplink_mtu(ipr)
            links.write_sysctl("net/ipv4/ip_forward", "1")
            # A client of 127.0.0.1:hostPort: after DNAT its packet leaves through the bridge
            # with a loopback source, which the kernel drops as martian unless route_localnet
            # is on.
            links.write_sysctl(f"net/ipv4/conf/{self.bridge}/route_localnet", "1")
            self._apply_routes()
            self._started = True
        log.info("pod network ready: bridge %s %s, mtu %d", self.bridge, self.cidr, self._mtu)
        if self.pending_cidr is not None:
            self._log_deferred()

    def _routes(self) -> None:
        with self._node_lock:
            self._apply_routes()

    def _apply_routes(self) -> None:
        """The host-gw routes and the nft chains for the current CIDR (under the node lock).

        A peer CIDR overlapping this node's own is left out: its route would take the bridge's
        place and cut the node off from its own pods.
        """
        own = ipaddress.IPv4Network(self.cidr)
        routes = {}
        for dst, gateway in self.pod_cidr_routes.items():
            if ipaddress.IPv4Network(dst).overlaps(own):
                self._note_unreachable(dst, f"route {dst}: overlaps this node's pod CIDR {own}")
            else:
                routes[dst] = gateway
        kept = [dst for dst in routes if dst in self._flat_peers]
        if set(kept) != self._flat_peers:
            # A peer leaves the unmasqueraded set before its route goes (and joins it only
            # after its route is set): a pod's packet to it never takes the default route
            # with its pod source address.
            self.nft.ensure(self.cidr, self.bridge, kept)
            self._flat_peers = frozenset(kept)
        with links.host() as ipr:
            failed = links.set_routes(ipr, routes, self.route_protocol)
        for dst, why in failed.items():
            self._note_unreachable(dst, why)
        for dst in [d for d in self.unreachable if d not in self.pod_cidr_routes]:
            del self.unreachable[dst]  # no longer wanted
        for dst in [d for d in self.unreachable if d in routes and d not in failed]:
            log.info("pod CIDR route %s via %s set", dst, routes[dst])
            del self.unreachable[dst]
        self.nft.ensure(self.cidr, self.bridge, routes)
        self._flat_peers = frozenset(routes)

    def _note_unreachable(self, dst: str, why: str) -> None:
        if self.unreachable.get(dst) != why:
            log.warning("pod CIDR route left out, retried later: %s", why)
        self.unreachable[dst] = why

    def _want_cidr(self, cidr: str) -> None:
        try:
            network = ipaddress.IPv4Network(cidr)
        except ValueError as exc:
            raise NetworkError(f"pod CIDR {cidr!r} from the Node: {exc}") from exc
        HostLocalIPAM(str(network), self._ipam_dir)  # too small is refused before it is saved
        if self._cidr_file is None:
            raise NetworkError("the pod CIDR was set by the operator; it is not learned")
        with self._cidr_cond:
            if self._wanted != str(network):
                self._wanted = str(network)
                self._cidr_file.save(CidrState(learned=self._wanted, active=self.cidr))
                log.info("pod CIDR %s assigned by the API server (now %s)", network, self.cidr)
        self._switch_if_free()

    def _switch_if_free(self) -> None:
        """Switch to the learned CIDR when no pod holds, or is taking, an address."""
        with self._cidr_cond:
            wanted = self.pending_cidr
            if wanted is None or self._cidr_file is None:
                return
            if self._setups or self.ipam.allocations():
                if self._started:
                    self._log_deferred()
                return
            old = self.cidr
            with self._node_lock:
                self._use_cidr(wanted)
                self._cidr_file.save(CidrState(learned=wanted, active=self.cidr))
                if self._started:
                    with links.host() as ipr:
                        links.ensure_bridge(
                            ipr, self.bridge, str(self.ipam.gateway), self.ipam.prefixlen
                        )
                    self._apply_routes()
        log.info("pod CIDR %s -> %s (the Node's spec.podCIDR)", old, self.cidr)

    def _log_deferred(self) -> None:
        wanted = self.pending_cidr
        if wanted is None or self._deferred_logged == wanted:
            return
        self._deferred_logged = wanted
        held = len(self.ipam.allocations())
        log.warning(
            "pod CIDR %s (the Node's spec.podCIDR) waits: %d pod(s) hold addresses of %s and "
            "are never renumbered; new pods get addresses of %s until they are all gone",
            wanted,
            held,
            self.cidr,
            self.cidr,
        )

    def _setup(self, req: PodNetworkRequest) -> PodNetworkResult:
        with self._cidr_cond:
            self._setups += 1
            ipam = self.ipam
        try:
            return self._setup_in(req, ipam)
        finally:
            with self._cidr_cond:
                self._setups -= 1

    def _setup_in(self, req: PodNetworkRequest, ipam: HostLocalIPAM) -> PodNetworkResult:
        who = f"{req.namespace}/{req.name} ({req.pod_uid})"
        mappings = tuple(_normalize(m) for m in req.port_mappings)
        for m in mappings:
            check_mapping(m)
        with self._ports_lock:
            self.claims.check(req.pod_uid, mappings)  # a refused pod takes no address
        ip = ipam.allocate(req.pod_uid)
        with links.host() as ipr:
            bridge_idx = links.index_of(ipr, self.bridge)
            if bridge_idx is None:
                raise NetworkError(f"bridge {self.bridge} is missing: the network was not started")
            links.ensure_veth(ipr, veth_name(req.pod_uid), req.netns_path, bridge_idx, self._mtu)
        with links.in_netns(req.netns_path) as pod:
            links.configure_pod(pod, str(ip), ipam.prefixlen, str(ipam.gateway), self._mtu)
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
        self._switch_if_free()

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
        self._switch_if_free()

    def _destroy(self) -> None:
        with links.host() as ipr:
            bridge_idx = links.index_of(ipr, self.bridge)
            if bridge_idx is not None:
                for port in links.ports_of(ipr, bridge_idx):
                    links.delete_link(ipr, port)
                links.delete_link(ipr, self.bridge)
            links.set_routes(ipr, {}, self.route_protocol)
        self.nft.delete()
        self._started = False


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
