"""The pod network through the real agent: manifests in, pods with IPs out.

Every test runs ``nodelet run`` with a network of its own: a bridge ``nlt-br<hex>``, an nft
table ``nlt-<hex>`` and a test CIDR in 10.197.0.0/16 (CNI: a bridge ``nlt-cni<hex>`` and a
host-local dir of the test's). Servers and clients are small python programs in pod containers;
the node side is this test process. Teardown removes the pods through the agent, then deletes
the bridge and the table (and CNI's portmap chains) even when the test failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from nodelet.network.builtin import BuiltinNetwork, veth_name
from tests.agentharness import NODE, Agent, agent_session, free_port, wait_for
from tests.system.nodeaddress import node_address
from tests.system.test_network_builtin import ip_json, seen_by_server
from tests.system.test_network_cni import conflist, iptables_rules, remove_idle_portmap_chains
from tests.system.test_wiring import manifest, marker, process_with

pytestmark = pytest.mark.system

PORT = 8080
SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(64)
print("listening=8080", flush=True)
while True:
    c, peer = s.accept()
    c.sendall((peer[0] + "\\n").encode())
    print("peer=" + peer[0], flush=True)
    c.close()
"""
CLIENT = """
import socket, sys, time
host, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + 30
answer = ""
while not answer:
    try:
        with socket.create_connection((host, port), timeout=2) as c:
            answer = c.recv(100).decode().strip()
    except OSError as err:
        if time.monotonic() > deadline:
            answer = "error " + repr(err)
        time.sleep(0.1)
print(key + "=" + answer, flush=True)
time.sleep(3600)
"""
HOSTS = """
import socket, time
print("hostname=" + socket.gethostname(), flush=True)
for line in open("/etc/hosts").read().splitlines():
    print("hosts=" + line, flush=True)
time.sleep(3600)
"""
SLEEP = "import time; time.sleep(3600)"
FAST_BACKOFF = ["--crashloop-backoff-initial", "1s", "--crashloop-backoff-max", "8s"]


def program(name: str, source: str, *args: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "host", "command": ["python3", "-c", source, *args], **extra}


def server(host_port: int | None = None) -> dict[str, Any]:
    port: dict[str, Any] = {"containerPort": PORT}
    if host_port is not None:
        port["hostPort"] = host_port
    return program("server", SERVER, ports=[port])


def client(name: str, host: str, port: int) -> dict[str, Any]:
    return program(name, CLIENT, host, str(port), name)


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@dataclass
class Node:
    """One agent on a pod network of the test's own."""

    bridge: str
    cidr: str
    table: str
    make: Callable[[], Agent]
    agent: Agent | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self) -> Agent:
        """Start (or restart: a new agent on the same dirs) the agent."""
        self.agent = self.make()
        self.agent.start()
        return self.agent

    @property
    def a(self) -> Agent:
        assert self.agent is not None
        return self.agent

    def pod_up(self, name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
        """Write the manifest and wait for every container running; the pod from /pods."""
        self.a.write_manifest(f"{name}.json", manifest(name, containers, **spec))
        pod = wait_for(lambda: self.a.running(name), 30, f"{name} running")
        if any(c["name"] == "server" for c in containers):
            self.value(name, "server", "listening")
        return pod

    def ip(self, name: str) -> str:
        pod = wait_for(lambda: self.a.pod(name), 20, f"{name} in /pods")
        ip = wait_for(lambda: (self.a.pod(name) or pod)["status"].get("podIP"), 20, "podIP")
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(self.cidr), ip
        return str(ip)

    def value(self, name: str, container: str, key: str) -> str:
        pod = wait_for(lambda: self.a.pod(name), 20, f"{name} in /pods")
        return self.a.log_value(pod, container, key)

    def waiting_message(self, name: str, container: str) -> str:
        status = self.a.container_status(name, container) or {}
        return str(status.get("state", {}).get("waiting", {}).get("message", ""))

    def setup_failures_logged(self, name: str) -> int:
        """How many times the agent logged a failed network setup of the pod ``name``."""
        pod = f"pod=default/{name}-{NODE} "
        text = self.a.output.read_text()
        return sum(pod in line and "set up the pod network" in line for line in text.splitlines())

    def remove_all(self) -> None:
        """Remove every manifest; wait until /pods is empty and every holder has ended."""
        for path in list(self.a.manifests.iterdir()):
            path.unlink()
        pods = self.a.run_dir / "pods"
        wait_for(lambda: not self.a.get("/pods")["items"], 40, "every pod removed")
        wait_for(lambda: not pods.exists() or not any(pods.iterdir()), 40, "every holder gone")

    def nothing_left(self, leftovers: Callable[[], dict[str, Any]]) -> None:
        """Wait until every kind of leftover is empty: /pods drops a pod as soon as its
        manifest goes (as kubelet's pod manager does); its network teardown ends a moment
        later, so a leak is what is still there after 15 s."""
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not any(leftovers().values()), 15, "nothing of the pods left")
        left = leftovers()
        assert not any(left.values()), f"left behind: {left}"

    def kill9(self) -> None:
        """SIGKILL the agent by its pid: no teardown of its own runs."""
        assert self.agent is not None and self.agent.proc is not None
        self.agent.proc.send_signal(signal.SIGKILL)
        self.agent.proc.wait(timeout=10)

    @property
    def state(self) -> Path:
        return self.a.root / "network"

    def ipam(self) -> dict[str, str]:
        """IP -> owner uid, from the built-in network's allocation files."""
        d = self.state / "ipam"
        out = {}
        for entry in d.iterdir() if d.exists() else []:
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(entry.name)
                out[entry.name] = entry.read_text().strip()
        return out

    def claims(self) -> list[str]:
        d = self.state / "hostports"
        return sorted(p.name for p in d.glob("*.json")) if d.exists() else []

    def ports(self) -> list[str]:
        return sorted(
            str(link["ifname"]) for link in ip_json("link", "show", "master", self.bridge)
        )

    def nft_elements(self) -> str:
        """The hostPort map elements of the test's table ('' when none)."""
        text = run("nft", "list", "table", "inet", self.table)
        return "\n".join(line for line in text.splitlines() if "elements" in line and ":" in line)


def builtin_args(bridge: str, cidr: str, table: str) -> list[str]:
    return ["--network-plugin", "builtin", "--pod-cidr", cidr, "--pod-bridge", bridge,
            "--network-table", table]  # fmt: skip


@contextlib.contextmanager
def builtin_node(prefixlen: int = 24) -> Iterator[Node]:
    tag = secrets.token_hex(3)
    bridge, table = f"nlt-br{tag}", f"nlt-{tag}"
    cidr = f"10.197.{secrets.randbelow(250) + 1}.0/{prefixlen}"
    scratch = Path(tempfile.mkdtemp(prefix="nlt-net-"))
    try:
        with agent_session([*builtin_args(bridge, cidr, table), *FAST_BACKOFF]) as make:
            yield Node(bridge, cidr, table, make)
    finally:
        leftover = BuiltinNetwork(cidr=cidr, state_dir=scratch, bridge=bridge, nft_table=table)
        asyncio.run(leftover.destroy())
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def node() -> Iterator[Node]:
    with builtin_node() as made:
        made.start()
        yield made


def eth0_addresses(pid: int) -> list[str]:
    """IPv4 addresses on eth0 in the netns of ``pid`` (iproute2's view)."""
    out = run("nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-j", "-4", "addr", "show", "eth0")
    return [a["local"] for link in json.loads(out) for a in link["addr_info"]]


# --- 1. two pods, pod to pod and node to pod, no NAT --------------------------------------


def test_two_pods_get_their_own_ips_and_reach_each_other_without_nat(node: Node) -> None:
    node.pod_up("a", [server()])
    ip_a = node.ip("a")
    node.pod_up("b", [client("client", ip_a, PORT)])
    ip_b = node.ip("b")
    assert ip_a != ip_b
    assert node.value("b", "client", "client") == ip_b, "A must see B's own pod IP"
    gateway = str(ipaddress.ip_network(node.cidr).network_address + 1)
    assert seen_by_server(None, ip_a, PORT).strip() == gateway  # the node, over the bridge
    pod_a = node.a.pod("a")
    assert pod_a is not None and pod_a["status"]["podIPs"] == [{"ip": ip_a}]
    assert len(node.ports()) == 2


# --- 2. hostPort --------------------------------------------------------------------------


def test_host_port_from_the_node_and_hairpin_and_a_taken_port_waits(node: Node) -> None:
    port = free_port()
    address = node_address()
    node.pod_up("a", [server(port), client("hairpin", address, port)])
    assert seen_by_server(None, "127.0.0.1", port).strip()
    assert seen_by_server(None, address, port).strip()
    assert node.value("a", "hairpin", "hairpin"), "A must reach its own hostPort"
    assert not node.value("a", "hairpin", "hairpin").startswith("error")
    node.a.write_manifest("c.json", manifest("c", [server(port)]))
    wait_for(lambda: node.setup_failures_logged("c"), 20, "c's network setup refused")
    before = node.setup_failures_logged("c")
    time.sleep(4)
    retries = node.setup_failures_logged("c") - before
    assert retries <= 4, f"{retries} setup attempts in 4 s: the retry is every 2 s, not a loop"
    message = node.waiting_message("c", "server")
    assert f"hostPort {port}/TCP is already used by pod default/a-{NODE}" in message, message
    assert node.claims() == [f"{node.a.pod('a')['metadata']['uid']}.json"]  # type: ignore[index]
    (node.a.manifests / "a.json").unlink()
    node.value("c", "server", "listening")  # c starts once A's hostPort is free
    assert wait_for(lambda: node.a.running("c"), 20, "c running")
    assert seen_by_server(None, "127.0.0.1", port).strip()  # now through c's mapping
    assert node.claims() == [f"{node.a.pod('c')['metadata']['uid']}.json"]  # type: ignore[index]


# --- 3. /etc/hosts ------------------------------------------------------------------------


def test_etc_hosts_in_the_pod_carries_its_ip_and_hostname(node: Node) -> None:
    node.pod_up("h", [program("main", HOSTS)])
    ip = node.ip("h")
    hostname = node.value("h", "main", "hostname")
    assert hostname == f"h-{NODE}"
    pod = node.a.pod("h")
    assert pod is not None
    wait_for(lambda: len(node.a.log_lines(pod, "main")) > 3, 10, "hosts lines")
    hosts = [line.removeprefix("hosts=") for line in node.a.log_lines(pod, "main")[1:]]
    assert hosts[0] == "# Kubernetes-managed hosts file."
    assert "127.0.0.1\tlocalhost" in hosts
    assert f"{ip}\t{hostname}" in hosts


# --- 4. re-adoption -----------------------------------------------------------------------


def test_a_killed_agent_comes_back_and_every_pod_keeps_its_ip(node: Node) -> None:
    port, mark = free_port(), marker("hosts")
    node.pod_up("a", [server(port)])
    node.pod_up("b", [program("main", HOSTS, mark)])
    before = {name: node.ip(name) for name in ("a", "b")}
    node.kill9()
    node.start()
    after = {name: node.a.pod(name)["status"].get("podIP") for name in ("a", "b")}  # type: ignore[index]
    assert after == before, "re-adoption must report each pod's own IP at once"
    assert node.a.running("a") and node.a.running("b")
    assert seen_by_server(None, before["a"], PORT).strip()  # the same pod, still reachable
    assert seen_by_server(None, "127.0.0.1", port).strip()  # and its hostPort still mapped
    assert len(node.ports()) == 2
    assert sorted(node.ipam()) == sorted(before.values())
    # A container restarted by the new agent gets the managed /etc/hosts with the same IP.
    psutil.Process(process_with(mark)).kill()
    pod_b = wait_for(lambda: node.a.pod("b"), 10, "b in /pods")
    node.a.log_value(pod_b, "main", "hostname", attempt=1)
    wait_for(lambda: len(node.a.log_lines(pod_b, "main", 1)) > 3, 10, "hosts lines")
    assert f"hosts={before['b']}\tb-{NODE}" in node.a.log_lines(pod_b, "main", 1)


# --- 5. kill -9 during ten starts ---------------------------------------------------------


def test_kill_during_ten_starts_converges_and_removal_leaves_nothing(node: Node) -> None:
    base_port = 31000 + secrets.randbelow(20000)
    marks = {f"p{i}": marker(f"p{i}") for i in range(10)}
    for i, (name, mark) in enumerate(marks.items()):
        container = program("main", SLEEP, mark, ports=[
            {"containerPort": PORT, "hostPort": base_port + i}])  # fmt: skip
        node.a.write_manifest(f"{name}.json", manifest(name, [container]))
    wait_for(node.ipam, 20, "a first allocation", interval=0.002)
    node.kill9()
    print(f"killed with {len(node.ipam())} of 10 addresses allocated")
    node.start()
    wait_for(lambda: all(node.a.running(n) for n in marks), 40, "all 10 running")
    ips = {name: node.ip(name) for name in marks}
    uids = {name: node.a.pod(name)["metadata"]["uid"] for name in marks}  # type: ignore[index]
    assert len(set(ips.values())) == 10, f"a duplicate pod IP: {ips}"
    assert node.ipam() == {ips[n]: uids[n] for n in marks}
    assert node.ports() == sorted(veth_name(uid) for uid in uids.values())
    for name, mark in marks.items():
        assert eth0_addresses(process_with(mark)) == [ips[name]], name
    assert len(node.claims()) == 10
    node.remove_all()
    node.nothing_left(lambda: {"veths": node.ports(), "ipam": node.ipam(),
                               "claims": node.claims(), "nft": node.nft_elements()})  # fmt: skip


# --- 6. IPAM exhaustion -------------------------------------------------------------------


def test_a_full_cidr_makes_pods_wait_until_an_address_frees() -> None:
    with builtin_node(prefixlen=29) as small:
        small.start()
        names = [f"x{i}" for i in range(8)]
        for name in names:
            small.a.write_manifest(f"{name}.json", manifest(name, [program("main", SLEEP)]))

        def split() -> tuple[list[str], list[str]] | None:
            running = [n for n in names if small.a.running(n)]
            waiting = [n for n in names if "no free pod IP" in small.waiting_message(n, "main")]
            return (running, waiting) if len(running) == 5 and len(waiting) == 3 else None

        running, waiting = wait_for(split, 40, "5 running, 3 without an IP")
        assert f"no free pod IP in {small.cidr}" in small.waiting_message(waiting[0], "main")
        assert len(set(small.ipam())) == 5
        (small.a.manifests / f"{running[0]}.json").unlink()
        wait_for(lambda: sum(bool(small.a.running(n)) for n in waiting) == 1, 30,
                 "a waiting pod taking the freed address")  # fmt: skip
        assert sum(bool(small.a.running(n)) for n in names if n != running[0]) == 5


# --- 7. CNI mode --------------------------------------------------------------------------


@contextlib.contextmanager
def cni_node() -> Iterator[Node]:
    assert Path("/usr/lib/cni/bridge").exists() and shutil.which("iptables-save"), (
        "needs Debian's containernetworking-plugins and iptables: run `make test`"
    )
    rand = secrets.token_hex(3)
    tag = bridge = f"nlt-cni{rand}"
    prefix = f"10.197.{secrets.randbelow(250) + 1}"
    scratch = Path(tempfile.mkdtemp(prefix="nlt-cni-"))
    conf_dir, ipam_dir = scratch / "net.d", scratch / "ipam" / tag
    conf_dir.mkdir()
    (conf_dir / "10-nlt.conflist").write_text(json.dumps(conflist(tag, bridge, prefix, ipam_dir)))
    args = ["--network-plugin", "cni", "--cni-conf-dir", str(conf_dir),
            "--cni-bin-dir", "/usr/lib/cni"]  # fmt: skip
    try:
        with agent_session(args) as make:
            made = Node(bridge, f"{prefix}.0/24", "", make, extra={"ipam": ipam_dir})
            made.start()
            yield made
    finally:
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)
        remove_idle_portmap_chains()
        shutil.rmtree(scratch, ignore_errors=True)


def test_cni_mode_reachability_host_port_and_nothing_left() -> None:
    with cni_node() as cni:
        prefix = cni.cidr.removesuffix(".0/24")
        port, address = free_port(), node_address()
        cni.pod_up("a", [server(port), client("hairpin", address, port)])
        ip_a = cni.ip("a")
        cni.pod_up("b", [client("client", ip_a, PORT)])
        ip_b = cni.ip("b")
        assert ip_a != ip_b
        assert cni.value("b", "client", "client") == ip_b, "A must see B's own pod IP"
        assert seen_by_server(None, ip_a, PORT).strip() == f"{prefix}.1"
        assert seen_by_server(None, "127.0.0.1", port).strip()
        assert seen_by_server(None, address, port).strip()
        hairpin = cni.value("a", "hairpin", "hairpin")
        assert hairpin and not hairpin.startswith("error"), hairpin
        cni.a.write_manifest("c.json", manifest("c", [server(port)]))
        wait_for(lambda: "is already used by pod" in cni.waiting_message("c", "server"), 20,
                 "c waiting on its hostPort")  # fmt: skip
        ipam_dir: Path = cni.extra["ipam"]
        assert len(cni.ports()) == 2 and len(list(ipam_dir.glob(f"{prefix}.*"))) == 2
        assert f"--dport {port}" in iptables_rules()
        cni.remove_all()
        cni.nothing_left(lambda: {
            "veths": cni.ports(),
            "host-local": sorted(p.name for p in ipam_dir.glob(f"{prefix}.*")),
            "iptables": [r for r in iptables_rules().splitlines()
                         if prefix + "." in r or f"--dport {port} " in r],
        })  # fmt: skip


def test_cni_kill_during_ten_starts_converges_and_removal_leaves_nothing() -> None:
    with cni_node() as cni:
        prefix = cni.cidr.removesuffix(".0/24")
        ipam_dir: Path = cni.extra["ipam"]
        state = cni.a.root / "network" / "cni"

        def host_local() -> list[str]:
            return sorted(p.name for p in ipam_dir.glob(f"{prefix}.*"))

        base_port = 31000 + secrets.randbelow(20000)
        marks = {f"p{i}": marker(f"p{i}") for i in range(10)}
        for i, (name, mark) in enumerate(marks.items()):
            container = program("main", SLEEP, mark, ports=[
                {"containerPort": PORT, "hostPort": base_port + i}])  # fmt: skip
            cni.a.write_manifest(f"{name}.json", manifest(name, [container]))
        wait_for(host_local, 20, "a first host-local allocation", interval=0.002)
        cni.kill9()
        print(f"killed with {len(host_local())} of 10 addresses allocated")
        cni.start()
        wait_for(lambda: all(cni.a.running(n) for n in marks), 60, "all 10 running")
        ips = {name: cni.ip(name) for name in marks}
        assert len(set(ips.values())) == 10, f"a duplicate pod IP: {ips}"
        assert host_local() == sorted(ips.values())
        assert len(cni.ports()) == 10
        for name, mark in marks.items():
            assert eth0_addresses(process_with(mark)) == [ips[name]], name
        cni.remove_all()
        cni.nothing_left(lambda: {
            "veths": cni.ports(),
            "host-local": host_local(),
            "iptables": [r for r in iptables_rules().splitlines()
                         if prefix + "." in r or f"--dport {base_port}" in r],
            "cache": sorted(p.name for p in (state / "results").glob("*")),
            "pins": sorted(p.name for p in (state / "netns").glob("*")),
        })  # fmt: skip


# --- 8. two nodes -------------------------------------------------------------------------


@contextlib.contextmanager
def two_netns() -> Iterator[tuple[str, str, str, str]]:
    """Two network namespaces joined by a veth: (ns1, ns2, node1 IP, node2 IP)."""
    tag = secrets.token_hex(3)
    ns1, ns2 = f"nlt-n1{tag}", f"nlt-n2{tag}"
    net = f"172.31.{secrets.randbelow(250) + 1}"
    try:
        for ns in (ns1, ns2):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", f"nlt-a{tag}", "netns", ns1, "type", "veth",
            "peer", "name", f"nlt-b{tag}", "netns", ns2)  # fmt: skip
        for ns, link, ip in ((ns1, f"nlt-a{tag}", f"{net}.1"), (ns2, f"nlt-b{tag}", f"{net}.2")):
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", link)
            run("ip", "-n", ns, "link", "set", link, "up")
        yield ns1, ns2, f"{net}.1", f"{net}.2"
    finally:
        for ns in (ns1, ns2):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def test_two_nodes_pod_to_pod_by_ip_across_a_veth() -> None:
    with contextlib.ExitStack() as stack:
        ns1, ns2, ip1, ip2 = stack.enter_context(two_netns())
        cidr1, cidr2 = (f"10.197.{n}.0/24" for n in secrets.SystemRandom().sample(range(1, 251), 2))
        nodes = []
        for ns, cidr, peer_cidr, node_ip, peer_ip in (
            (ns1, cidr1, cidr2, ip1, ip2),
            (ns2, cidr2, cidr1, ip2, ip1),
        ):
            tag = secrets.token_hex(3)
            args = [*builtin_args(f"nlt-br{tag}", cidr, f"nlt-{tag}"), "--node-ip", node_ip,
                    "--pod-cidr-routes", f"{peer_cidr}={peer_ip}"]  # fmt: skip
            # nsenter switches the netns only (``ip netns exec`` would also remount /sys,
            # hiding the cgroup mounts from the agent).
            prefix = ["nsenter", f"--net=/run/netns/{ns}"]
            make = stack.enter_context(agent_session(args, prefix=prefix))
            made = Node(f"nlt-br{tag}", cidr, f"nlt-{tag}", make)
            made.start()
            nodes.append(made)
        one, two = nodes
        two.pod_up("server", [server()])
        server_ip = two.ip("server")
        one.pod_up("client", [client("client", server_ip, PORT)])
        client_ip = one.ip("client")
        assert ipaddress.ip_address(client_ip) in ipaddress.ip_network(cidr1)
        assert one.value("client", "client", "client") == client_ip, "no NAT between nodes"


def test_harness_runs_agents_under_a_prefix() -> None:
    """The prefix really wraps the agent (its netns differs from ours)."""
    with (
        two_netns() as (ns1, _, _, _),
        agent_session(prefix=["nsenter", f"--net=/run/netns/{ns1}"]) as make,
    ):
        agent = make()
        agent.start()
        assert agent.proc is not None
        mine = Path("/proc/self/ns/net").readlink()
        assert Path(f"/proc/{agent.proc.pid}/ns/net").readlink() != mine
        assert sys.executable in Path(f"/proc/{agent.proc.pid}/cmdline").read_text()
