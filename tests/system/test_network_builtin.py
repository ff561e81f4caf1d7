"""The built-in pod network on real namespaces: a bridge, veths, nftables, host-local IPAM.

Each test brings its own bridge (``nlt-br<hex>``), CIDR (10.199.<n>.0/24) and nft table
(``nlt-<hex>``); the fixture destroys them even when the test fails. Pods are named network
namespaces (``ip netns add nlt-...``); servers and clients are sockets opened inside them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nodelet.network.api import NetworkError, PodNetworkRequest, PortMapping
from nodelet.network.builtin import BuiltinNetwork, veth_name
from tests.system.nodeaddress import node_address

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[BuiltinNetwork]:
    tag = secrets.token_hex(3)
    network = BuiltinNetwork(
        cidr=f"10.199.{secrets.randbelow(200) + 20}.0/24",
        state_dir=tmp_path / "network",
        bridge=f"nlt-br{tag}",
        nft_table=f"nlt-{tag}",
    )
    try:
        await network.start()
        yield network
    finally:
        await network.destroy()


@pytest.fixture
def netns() -> Iterator[Callable[[], str]]:
    """A factory of named network namespaces (a stand-in for a holder's netns)."""
    made: list[str] = []

    def make() -> str:
        name = f"nlt-{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        return f"/run/netns/{name}"

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False)


def req(uid: str, path: str, *ports: PortMapping) -> PodNetworkRequest:
    return PodNetworkRequest(
        pod_uid=uid, namespace="nlt", name=uid, netns_path=path, port_mappings=ports
    )


@contextlib.contextmanager
def entered(path: str) -> Iterator[None]:
    """This thread inside the netns at ``path`` (sockets made here stay there)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        assert _libc.setns(target, _CLONE_NEWNET) == 0
        try:
            yield
        finally:
            assert _libc.setns(own, _CLONE_NEWNET) == 0
    finally:
        os.close(own)
        os.close(target)


def sock_in(path: str | None, kind: int = socket.SOCK_STREAM) -> socket.socket:
    if path is None:
        return socket.socket(socket.AF_INET, kind)
    with entered(path):
        return socket.socket(socket.AF_INET, kind)


class PeerServer:
    """TCP and UDP servers in a pod that answer every client with the address they saw."""

    def __init__(self, path: str, port: int = 80) -> None:
        self.tcp = sock_in(path)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("0.0.0.0", port))
        self.tcp.listen(16)
        self.udp = sock_in(path, socket.SOCK_DGRAM)
        self.udp.bind(("0.0.0.0", port))
        threading.Thread(target=self._serve_tcp, daemon=True).start()
        threading.Thread(target=self._serve_udp, daemon=True).start()

    def _serve_tcp(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, (peer, _) = self.tcp.accept()
                with conn:
                    conn.sendall(peer.encode())

    def _serve_udp(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                _, addr = self.udp.recvfrom(64)
                self.udp.sendto(addr[0].encode(), addr)

    def close(self) -> None:
        self.tcp.close()
        self.udp.close()


def seen_by_server(src_netns: str | None, host: str, port: int) -> str:
    """Connect from ``src_netns`` (None = the node) and return the peer address the server saw."""
    with sock_in(src_netns) as s:
        s.settimeout(5)
        s.connect((host, port))
        return s.recv(64).decode()


def seen_by_udp_server(src_netns: str | None, host: str, port: int) -> str:
    with sock_in(src_netns, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(b"?", (host, port))
        return s.recv(64).decode()


def ip_json(*args: str) -> list[dict[str, Any]]:
    """iproute2's view (independent of pyroute2, which the code under test uses)."""
    out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True).stdout
    return list(json.loads(out or "[]"))


def node_ip() -> str:
    """A local address of the node that is not loopback (see tests.system.nodeaddress)."""
    return node_address()


def links_in(path: str) -> dict[str, list[str]]:
    """ifname -> IPv4 addresses inside a named netns."""
    return {
        str(link["ifname"]): [a["local"] for a in link["addr_info"] if a["family"] == "inet"]
        for link in ip_json("-n", Path(path).name, "addr", "show")
    }


def bridge_ports(bridge: str) -> list[str]:
    return sorted(str(link["ifname"]) for link in ip_json("link", "show", "master", bridge))


def nft_table(net: BuiltinNetwork) -> str:
    return subprocess.run(
        ["nft", "list", "table", "inet", net.nft.name], check=True, capture_output=True, text=True
    ).stdout


def free_port() -> int:
    return 30000 + secrets.randbelow(20000)


async def test_two_pods_reach_each_other_and_the_node_without_nat(
    net: BuiltinNetwork, netns: Callable[[], str]
) -> None:
    a, b = netns(), netns()
    ip_a = (await net.setup(req("pod-a", a))).ips[0]
    ip_b = (await net.setup(req("pod-b", b))).ips[0]
    assert ip_a != ip_b
    cidr = ipaddress.ip_network(net.cidr)
    assert {ipaddress.ip_address(ip_a), ipaddress.ip_address(ip_b)} <= set(cidr.hosts())
    assert net.ips_of("pod-a") == (ip_a,)
    assert links_in(a)["eth0"] == [ip_a]
    assert bridge_ports(net.bridge) == sorted([veth_name("pod-a"), veth_name("pod-b")])
    server = PeerServer(a)
    try:
        assert seen_by_server(b, ip_a, 80) == ip_b  # A sees B's own IP: no NAT
        assert seen_by_server(None, ip_a, 80) == str(net.ipam.gateway)  # the node, via bridge
    finally:
        server.close()


async def test_host_port_from_loopback_node_ip_other_pod_and_hairpin(
    net: BuiltinNetwork, netns: Callable[[], str]
) -> None:
    a, b = netns(), netns()
    port = free_port()
    tcp = PortMapping(container_port=80, host_port=port, protocol="TCP")
    udp = PortMapping(container_port=80, host_port=port, protocol="UDP")
    ip_a = (await net.setup(req("pod-a", a, tcp, udp))).ips[0]
    ip_b = (await net.setup(req("pod-b", b))).ips[0]
    assert f"tcp . {port} : {ip_a} . 80" in nft_table(net)
    gateway = str(net.ipam.gateway)
    node = node_ip()
    server = PeerServer(a)
    try:
        assert seen_by_server(None, "127.0.0.1", port) == gateway  # masqueraded loopback
        assert seen_by_server(None, node, port) == node
        assert seen_by_server(b, node, port) == ip_b  # another pod keeps its address
        assert seen_by_server(a, node, port) == gateway  # hairpin: A reaches itself
        assert seen_by_udp_server(None, node, port) == node
        assert seen_by_udp_server(None, "127.0.0.1", port) == gateway
    finally:
        server.close()
    with pytest.raises(
        NetworkError, match=rf"^hostPort {port}/TCP is already used by pod nlt/pod-a$"
    ):
        await net.setup(req("pod-c", netns(), PortMapping(81, port, "TCP")))
    assert net.ips_of("pod-c") == ()  # a refused pod takes no address


async def test_host_ip_is_honoured(net: BuiltinNetwork, netns: Callable[[], str]) -> None:
    a = netns()
    port = free_port()
    await net.setup(req("pod-a", a, PortMapping(80, port, "TCP", host_ip="127.0.0.1")))
    server = PeerServer(a)
    try:
        assert seen_by_server(None, "127.0.0.1", port) == str(net.ipam.gateway)
        with pytest.raises(ConnectionRefusedError):
            seen_by_server(None, node_ip(), port)
    finally:
        server.close()
    with pytest.raises(
        NetworkError, match=rf"^hostPort {port}/TCP is already used by pod nlt/pod-a$"
    ):
        await net.setup(req("pod-b", netns(), PortMapping(80, port, "TCP")))


async def test_teardown_and_sweep_leave_nothing(
    net: BuiltinNetwork, netns: Callable[[], str]
) -> None:
    pods = {uid: netns() for uid in ("keep", "gone", "torn")}
    ips = {}
    for i, (uid, path) in enumerate(pods.items()):
        mapping = PortMapping(80, free_port() + i, "TCP")
        ips[uid] = (await net.setup(req(uid, path, mapping))).ips[0]
        assert ips[uid] in nft_table(net)
    await net.teardown("torn", pods["torn"])
    await net.teardown("torn", pods["torn"])  # idempotent
    assert veth_name("torn") not in bridge_ports(net.bridge)
    assert net.ips_of("torn") == ()
    assert ips["torn"] not in nft_table(net)
    assert "eth0" not in links_in(pods["torn"])

    await net.sweep({"keep"})
    assert bridge_ports(net.bridge) == [veth_name("keep")]
    assert net.ips_of("gone") == ()
    table = nft_table(net)
    assert ips["gone"] not in table
    assert ips["keep"] in table
    assert sorted(os.listdir(net.claims.dir)) == ["keep.json"]
    assert list(net.ipam.allocations().values()) == ["keep"]

    await net.teardown("keep", None)
    assert bridge_ports(net.bridge) == []
    assert net.ipam.allocations() == {}
    assert ips["keep"] not in nft_table(net)


async def test_resetup_after_a_crash_converges(
    net: BuiltinNetwork, netns: Callable[[], str], tmp_path: Path
) -> None:
    path = netns()
    mapping = PortMapping(80, free_port(), "TCP")
    first = (await net.setup(req("pod-a", path, mapping))).ips[0]
    # A restarted agent: new objects over the same state, start and setup again.
    again = BuiltinNetwork(
        cidr=net.cidr, state_dir=tmp_path / "network", bridge=net.bridge, nft_table=net.nft.name
    )
    await again.start()
    assert again.ips_of("pod-a") == (first,)
    assert (await again.setup(req("pod-a", path, mapping))).ips[0] == first
    assert bridge_ports(net.bridge) == [veth_name("pod-a")]
    assert links_in(path)["eth0"] == [first]
    assert list(again.ipam.allocations().values()) == ["pod-a"]
    assert nft_table(net).count(f"{first} . 80") == 1
    # The holder came back with a new netns: the pair moves there, the IP stays.
    moved = netns()
    assert (await again.setup(req("pod-a", moved, mapping))).ips[0] == first
    assert bridge_ports(net.bridge) == [veth_name("pod-a")]
    assert links_in(moved)["eth0"] == [first]
    assert "eth0" not in links_in(path)


async def test_exhausted_cidr_is_a_clear_error(tmp_path: Path, netns: Callable[[], str]) -> None:
    tag = secrets.token_hex(3)
    small = BuiltinNetwork(
        cidr=f"10.199.{secrets.randbelow(200) + 20}.{8 * secrets.randbelow(32)}/29",
        state_dir=tmp_path / "small",
        bridge=f"nlt-br{tag}",
        nft_table=f"nlt-{tag}",
    )
    try:
        await small.start()
        for i in range(5):
            await small.setup(req(f"p{i}", netns()))
        with pytest.raises(NetworkError, match=rf"^no free pod IP in {small.cidr}$"):
            await small.setup(req("p5", netns()))
        await small.teardown("p0", None)
        assert (await small.setup(req("p5", netns()))).ips
    finally:
        await small.destroy()


async def test_setup_time(net: BuiltinNetwork, netns: Callable[[], str]) -> None:
    """p50 of setup over 20 pods (netns created beforehand, as the holder does)."""
    paths = [netns() for _ in range(20)]
    times = []
    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        await net.setup(req(f"bench-{i}", path))
        times.append(time.perf_counter() - t0)
    p50 = statistics.median(times) * 1000
    print(f"builtin network setup: p50 {p50:.1f} ms, max {max(times) * 1000:.1f} ms over 20")
    assert p50 < 100


_NODE_SCRIPT = """
import asyncio, json, sys
from nodelet.network.api import PodNetworkRequest
from nodelet.network.builtin import BuiltinNetwork

args = json.loads(sys.argv[1])
async def main() -> None:
    net = BuiltinNetwork(cidr=args["cidr"], state_dir=args["state"], bridge=args["bridge"],
                         nft_table=args["table"], pod_cidr_routes=args["routes"])
    await net.start()
    result = await net.setup(PodNetworkRequest(args["uid"], "nlt", args["uid"], args["pod"]))
    print(result.ips[0])
asyncio.run(main())
"""


def run_node(node: str, **args: object) -> str:
    """One agent's network steps inside the node netns ``node``; returns the pod IP."""
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            Path(node).name,
            sys.executable,
            "-c",
            _NODE_SCRIPT,
            json.dumps(args),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_pods_on_two_nodes_reach_each_other_by_ip(
    netns: Callable[[], str], tmp_path: Path
) -> None:
    """Two nodes (netns joined by a veth), host-gw routes to each other's pod CIDR, no NAT."""
    n1, n2, p1, p2 = netns(), netns(), netns(), netns()
    link = 10 + secrets.randbelow(200)
    subprocess.run(
        [
            "ip",
            "link",
            "add",
            "nlt-n1",
            "netns",
            Path(n1).name,
            "type",
            "veth",
            "peer",
            "nlt-n2",
            "netns",
            Path(n2).name,
        ],
        check=True,
    )
    for node, name, addr in ((n1, "nlt-n1", 1), (n2, "nlt-n2", 2)):
        ns = Path(node).name
        subprocess.run(
            ["ip", "-n", ns, "addr", "add", f"10.198.{link}.{addr}/30", "dev", name], check=True
        )
        subprocess.run(["ip", "-n", ns, "link", "set", name, "up"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    c1, c2 = f"10.199.{link}.0/25", f"10.199.{link}.128/25"
    common = {"bridge": "nlt-br0", "table": "nlt-t"}
    ip1 = run_node(
        n1,
        cidr=c1,
        state=str(tmp_path / "n1"),
        uid="pod-1",
        pod=p1,
        routes={c2: f"10.198.{link}.2"},
        **common,
    )
    ip2 = run_node(
        n2,
        cidr=c2,
        state=str(tmp_path / "n2"),
        uid="pod-2",
        pod=p2,
        routes={c1: f"10.198.{link}.1"},
        **common,
    )
    server = PeerServer(p2)
    try:
        assert seen_by_server(p1, ip2, 80) == ip1  # the flat network: no NAT between pods
    finally:
        server.close()
    routes = ip_json("-n", Path(n1).name, "route", "show", c2)
    assert routes and routes[0]["gateway"] == f"10.198.{link}.2"


async def test_peer_routes_follow_the_wanted_set(net: BuiltinNetwork) -> None:
    peer = f"10.197.{secrets.randbelow(250)}.0/24"
    via = str(net.ipam.network.broadcast_address - 1)  # on-link through the test bridge
    await net.set_pod_cidr_routes({peer: via})
    await net.set_pod_cidr_routes({peer: via})  # idempotent
    assert [r["gateway"] for r in ip_json("route", "show", peer)] == [via]
    assert peer in nft_table(net)  # no masquerade towards the peer's pods
    await net.set_pod_cidr_routes({})
    assert ip_json("route", "show", peer) == []
    assert peer not in nft_table(net)
