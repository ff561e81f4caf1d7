"""The built-in pod network driven by the API server's Nodes, through a real kube-apiserver.

(a) The Node's ``spec.podCIDR`` becomes the pod CIDR of an agent that was given none, never
under a running pod, and stays across a restart while the API server is down. (b) Other Nodes'
pod CIDRs become host-gw routes via their InternalIP (merged with ``--pod-cidr-routes``, which
wins), and go when the Node goes; a peer whose gateway is unreachable is logged once.

Each test has a bridge ``nlt-br<hex>``, an nft table ``nlt-<hex>`` and test CIDRs of its own
(10.197.0.0/16 for pods, 10.196.0.0/16 for the peers' link); all are removed even on failure,
with the Nodes the test made or patched.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException
from pyroute2 import IPRoute

from nodelet.network.builtin import BuiltinNetwork
from tests.agentharness import Agent, agent_session, wait_for
from tests.e2e.apiserver import ApiServer, api_client, find_binaries, running_apiserver
from tests.system.test_wiring import manifest

pytestmark = pytest.mark.e2e

Json = dict[str, Any]
DEFAULT_CIDR = "10.85.0.0/24"
SLEEP = {
    "name": "sleep",
    "image": "host",
    "command": ["python3", "-c", "import time; time.sleep(3600)"],
}


class NetNode:
    """One agent with the built-in network on a bridge and nft table of the test's own."""

    def __init__(self, api: ApiServer, make: Any, node: str, bridge: str, table: str) -> None:
        self.api = api
        self.make = make
        self.node = node
        self.bridge = bridge
        self.table = table
        self.core = CoreV1Api(api_client(api.admin_kubeconfig))
        self.agent: Agent | None = None

    @property
    def a(self) -> Agent:
        assert self.agent is not None
        return self.agent

    def start(self) -> Agent:
        self.agent = self.make()
        self.agent.start()
        return self.agent

    def stop(self) -> None:
        self.a.signal(signal.SIGTERM)

    def pod(self, name: str) -> Json | None:
        for item in self.a.get("/pods")["items"]:
            if item["metadata"]["name"] == f"{name}-{self.node}":
                found: Json = item
                return found
        return None

    def pod_ip(self, name: str) -> str:
        """Writes the manifest if needed and waits for the pod's podIP."""
        if not (self.a.manifests / f"{name}.json").exists():
            self.a.write_manifest(f"{name}.json", manifest(name, [SLEEP]))

        def ip() -> str | None:
            pod = self.pod(name)
            return (pod or {}).get("status", {}).get("podIP") if pod else None

        return str(wait_for(ip, 30, f"{name}'s podIP"))

    def remove(self, name: str) -> None:
        (self.a.manifests / f"{name}.json").unlink()
        wait_for(lambda: self.pod(name) is None, 30, f"{name} removed")

    def bridge_addresses(self) -> list[str]:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=self.bridge)
            if not idx:
                return []
            return sorted(
                f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in ipr.get_addr(index=idx[0], family=2)
            )

    def log(self) -> str:
        return self.a.output.read_text(errors="replace")


def route_gateway(cidr: str) -> str | None:
    """The gateway of the route to exactly ``cidr`` in the node's main table (pyroute2)."""
    net = ipaddress.IPv4Network(cidr)
    with IPRoute() as ipr:
        for route in ipr.get_routes(family=2):
            if route.get("RTA_DST") == str(net.network_address) and route["dst_len"] == (
                net.prefixlen
            ):
                gateway = route.get("RTA_GATEWAY")
                return str(gateway) if gateway else None
    return None


def in_pod_cidrs(table: str, cidr: str) -> bool:
    """Whether the pod CIDR's first address is in the table's ``pod_cidrs`` set (traffic
    between pods of these CIDRs is not masqueraded)."""
    address = str(ipaddress.IPv4Network(cidr).network_address + 1)
    done = subprocess.run(
        ["nft", "get", "element", "inet", table, "pod_cidrs", f"{{ {address} }}"],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def a_cidr(third: int | None = None) -> str:
    return f"10.197.{third if third is not None else secrets.randbelow(250) + 1}.0/24"


@contextlib.contextmanager
def net_node(api: ApiServer, *extra: str) -> Iterator[NetNode]:
    tag = secrets.token_hex(3)
    node, bridge, table = f"nlt-e2e-{tag}", f"nlt-br{tag}", f"nlt-{tag}"
    scratch = Path(tempfile.mkdtemp(prefix="nlt-net-"))
    args = [
        "--hostname-override", node,
        "--kubeconfig", str(api.node_kubeconfig(node)),
        "--node-status-update-frequency", "1s",
        "--network-plugin", "builtin",
        "--pod-bridge", bridge,
        "--network-table", table,
        *extra,
    ]  # fmt: skip
    made = None
    try:
        with agent_session(args) as make:
            made = NetNode(api, make, node, bridge, table)
            yield made
    finally:
        leftover = BuiltinNetwork(
            cidr=DEFAULT_CIDR, state_dir=scratch, bridge=bridge, nft_table=table
        )
        asyncio.run(leftover.destroy())
        shutil.rmtree(scratch, ignore_errors=True)
        if made is not None:
            delete_node(made.core, node)


def delete_node(core: CoreV1Api, name: str) -> None:
    """Best effort: a private API server may already be gone."""
    with contextlib.suppress(ApiException, OSError, urllib3.exceptions.HTTPError):
        core.delete_node(name)


def test_the_nodes_pod_cidr_is_used_never_under_a_running_pod_and_kept_in_an_outage() -> None:
    """On an API server of its own: the agent session's clean-up kills the processes started
    during it, and ``outage`` starts a new kube-apiserver."""
    cidr = a_cidr()
    gateway = str(ipaddress.IPv4Network(cidr).network_address + 1)
    with running_apiserver(find_binaries()) as apiserver, net_node(apiserver) as n:
        n.start()
        wait_for(lambda: _node_exists(n), 20, "the Node registered")
        old_ip = n.pod_ip("early")
        assert ipaddress.ip_address(old_ip) in ipaddress.ip_network(DEFAULT_CIDR)

        n.core.patch_node(n.node, {"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
        wait_for(lambda: f"pod CIDR {cidr} (the Node's spec.podCIDR) waits" in n.log(), 15,
                 "the switch deferred while a pod holds an old address")  # fmt: skip
        # Never renumbered: the running pod keeps its address, the bridge its gateway, and a
        # pod started meanwhile still gets one of the old CIDR.
        assert n.bridge_addresses() == ["10.85.0.1/24"]
        also_old = n.pod_ip("meanwhile")
        assert ipaddress.ip_address(also_old) in ipaddress.ip_network(DEFAULT_CIDR)
        assert (n.pod("early") or {})["status"]["podIP"] == old_ip

        n.remove("early")
        n.remove("meanwhile")
        wait_for(
            lambda: n.bridge_addresses() == [f"{gateway}/24"], 20, "the bridge on the new CIDR"
        )
        new_ip = n.pod_ip("late")
        assert ipaddress.ip_address(new_ip) in ipaddress.ip_network(cidr)
        assert in_pod_cidrs(n.table, cidr)  # its pods' traffic to each other: no NAT

        # A restart while the API server is down (a self-hosted control plane) keeps the CIDR.
        with apiserver.outage():
            n.stop()
            n.start()
            assert n.bridge_addresses() == [f"{gateway}/24"]
            assert n.pod_ip("late") == new_ip
            during = n.pod_ip("during-outage")
            assert ipaddress.ip_address(during) in ipaddress.ip_network(cidr)
        assert f"-> {DEFAULT_CIDR}" not in n.log()


def _node_exists(n: NetNode) -> bool:
    try:
        n.core.read_node(n.node)
    except ApiException:
        return False
    return True


@contextlib.contextmanager
def peer_link() -> Iterator[str]:
    """A veth pair, one end holding 10.196.<x>.1/24: the peers' node network, made by the test
    (no dummy module here); yields the subnet's prefix (``10.196.<x>.``)."""
    name = f"nlt-v{secrets.token_hex(3)}"
    prefix = f"10.196.{secrets.randbelow(250) + 1}."
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="veth", peer=f"{name}p")
        try:
            idx = ipr.link_lookup(ifname=name)[0]
            ipr.addr("add", index=idx, address=prefix + "1", prefixlen=24)
            ipr.link("set", index=ipr.link_lookup(ifname=f"{name}p")[0], state="up")
            ipr.link("set", index=idx, state="up")
            yield prefix
        finally:
            with contextlib.suppress(Exception):
                ipr.link("del", index=ipr.link_lookup(ifname=name)[0])


def peer_node(name: str, cidr: str, internal_ip: str) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": internal_ip}]},
    }


def test_peer_nodes_become_host_gw_routes_and_go_with_them(apiserver: ApiServer) -> None:
    third = secrets.randbelow(200) + 1  # CIDRs two apart: the set merges no two
    own, peer_cidr, flag_cidr, lost_cidr = (a_cidr(third + 2 * i) for i in range(4))
    tag = secrets.token_hex(3)
    peer, flagged, lost = f"nlt-peer-{tag}", f"nlt-flagged-{tag}", f"nlt-lost-{tag}"
    with (
        peer_link() as subnet,
        net_node(apiserver, "--pod-cidr", own, "--pod-cidr-routes", f"{flag_cidr}={subnet}3") as n,
    ):
        try:
            n.start()
            wait_for(lambda: route_gateway(flag_cidr) == f"{subnet}3", 10, "the flag's route")
            n.core.create_node(peer_node(peer, peer_cidr, f"{subnet}2"))
            n.core.create_node(peer_node(flagged, flag_cidr, f"{subnet}4"))  # the flag wins
            n.core.create_node(peer_node(lost, lost_cidr, "203.0.113.7"))  # not on a link
            wait_for(lambda: route_gateway(peer_cidr) == f"{subnet}2", 15, "the peer's route")
            assert in_pod_cidrs(n.table, peer_cidr)  # pod to peer pod: not masqueraded
            assert route_gateway(flag_cidr) == f"{subnet}3"
            assert route_gateway(lost_cidr) is None
            wait_for(lambda: f"route {lost_cidr} via 203.0.113.7" in n.log(), 10, "logged")

            n.core.delete_node(peer)
            wait_for(lambda: route_gateway(peer_cidr) is None, 15, "the route removed")
            assert not in_pod_cidrs(n.table, peer_cidr)
            n.core.delete_node(flagged)
            n.core.create_node(peer_node(f"{peer}-2", a_cidr(third + 8), f"{subnet}5"))
            wait_for(lambda: route_gateway(a_cidr(third + 8)) == f"{subnet}5", 15, "a new peer")
            assert route_gateway(flag_cidr) == f"{subnet}3", "the flag's route outlives the Node"
            assert n.a.alive()
            unreachable = [ln for ln in n.log().splitlines() if f"route {lost_cidr} via" in ln]
            assert len(unreachable) == 1, unreachable
        finally:
            for name in (peer, flagged, lost, f"{peer}-2"):
                delete_node(n.core, name)
