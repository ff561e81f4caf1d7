"""CNI mode with Debian's reference plugins (``containernetworking-plugins``): bridge +
host-local + portmap run by ``CniNetwork`` against network namespaces held by real processes,
as pod holders hold them. Each test has its own bridge ``nlt-cni<rand>``, subnet
10.198.<rand>.0/24 and host-local dir; the plugins' own DEL cleans up, and the test checks it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nodelet.network.api import NetworkError, PodNetworkRequest, PortMapping
from nodelet.network.cni import CniNetwork
from tests.agentharness import free_port
from tests.system.nodeaddress import node_address

pytestmark = pytest.mark.system


@pytest.fixture(autouse=True)
def _plugins_installed() -> None:
    """`make test` installs Debian's plugins (and iptables): missing, it is a failure."""
    assert Path("/usr/lib/cni/bridge").exists() and shutil.which("iptables-save"), (
        "needs Debian's containernetworking-plugins and iptables: run `make test`"
    )


PLUGINS = Path("/usr/lib/cni")
SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(64)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall((peer[0] + "\\n").encode())
    c.close()
"""
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(c.recv(100).decode().strip())
"""


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def iptables_rules() -> str:
    return run("iptables-save")


def node_ip() -> str:
    """A local address of the node that is not loopback (see tests.system.nodeaddress)."""
    return node_address()


@dataclass
class Pod:
    uid: str
    holder: subprocess.Popen[bytes]
    netns: str
    ip: str = ""

    def request(self, *ports: PortMapping) -> PodNetworkRequest:
        return PodNetworkRequest(self.uid, "nlt", f"pod-{self.uid[:6]}", self.netns, ports)


@dataclass
class Lab:
    tmp: Path
    tag: str
    bridge: str
    prefix: str
    network: CniNetwork
    pods: list[Pod] = field(default_factory=list)
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def ipam_dir(self) -> Path:
        return self.tmp / "ipam" / self.tag

    def new_network(self) -> CniNetwork:
        """Another agent's view of the same node (same conf, bins and state dir)."""
        return CniNetwork(self.tmp / "net.d", [PLUGINS], self.tmp / "state")

    def pod(self) -> Pod:
        """A process in a new netns, as a pod's holder; its netns path is /proc/<pid>/ns/net."""
        mine = os.stat("/proc/self/ns/net").st_ino
        holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
        path = f"/proc/{holder.pid}/ns/net"
        deadline = time.monotonic() + 5
        while os.stat(path).st_ino == mine:
            assert time.monotonic() < deadline, "unshare never made its netns"
            time.sleep(0.005)
        pod = Pod(secrets.token_hex(16), holder, path)
        self.pods.append(pod)
        return pod

    async def attach(self, pod: Pod, *ports: PortMapping) -> str:
        result = await self.network.setup(pod.request(*ports))
        pod.ip = result.ips[0]
        return pod.ip

    def serve(self, pod: Pod) -> None:
        """A server on :8080 in the pod that answers each connection with the peer's address."""
        server = subprocess.Popen(
            ["nsenter", f"--net={pod.netns}", sys.executable, "-c", SERVER],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.servers.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"

    async def ask_from(self, pod: Pod | None, ip: str, port: int) -> str:
        """The peer address the server saw, connecting from ``pod``'s netns (None: the node)."""
        if pod is None:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 5)
            line = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            return line.decode().strip()
        proc = await asyncio.create_subprocess_exec(
            "nsenter",
            f"--net={pod.netns}",
            sys.executable,
            "-c",
            CLIENT,
            ip,
            str(port),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, f"no answer from {ip}:{port} in pod {pod.uid}"
        return out.decode().strip()

    def kill(self, pod: Pod) -> None:
        if pod.holder.poll() is None:
            pod.holder.kill()
            pod.holder.wait()

    def host_veths(self) -> list[str]:
        return re.findall(
            r"^\d+: (\S+?)@", run("ip", "-o", "link", "show", "master", self.bridge), re.M
        )


def conflist(tag: str, bridge: str, prefix: str, ipam_dir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": tag,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": f"{prefix}.0/24"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir.parent),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }


def remove_idle_portmap_chains() -> None:
    """portmap never deletes its top-level chains; once no pod mapping is left in them they
    are ours to remove (no other user of portmap runs on a test node)."""
    rules = iptables_rules()
    if re.search(r"^-A CNI-HOSTPORT-DNAT ", rules, re.M):
        return
    for chain, parent in (
        ("CNI-HOSTPORT-DNAT", "PREROUTING"),
        ("CNI-HOSTPORT-DNAT", "OUTPUT"),
        ("CNI-HOSTPORT-MASQ", "POSTROUTING"),
    ):
        for rule in re.findall(rf"^-A {parent} (.*-j {chain})$", rules, re.M):
            delete = ["iptables", "-t", "nat", "-D", parent, *shlex.split(rule)]
            subprocess.run(delete, check=False)
    for chain in ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK"):
        subprocess.run(["iptables", "-t", "nat", "-F", chain], check=False, capture_output=True)
        subprocess.run(["iptables", "-t", "nat", "-X", chain], check=False, capture_output=True)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    rand = secrets.token_hex(3)
    tag, bridge = f"nlt-cni{rand}", f"nlt-cni{rand}"
    prefix = f"10.198.{secrets.randbelow(256)}"
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    (conf_dir / "10-nlt.conflist").write_text(
        json.dumps(conflist(tag, bridge, prefix, tmp_path / "ipam" / tag))
    )
    network = CniNetwork(conf_dir, [PLUGINS], tmp_path / "state")
    await network.start()
    lab = Lab(tmp_path, tag, bridge, prefix, network)
    try:
        yield lab
    finally:
        for server in lab.servers:
            server.kill()
            server.wait()
        for pod in lab.pods:
            lab.kill(pod)
        cleaner = lab.new_network()
        await cleaner.start()
        await cleaner.sweep(())
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)
        remove_idle_portmap_chains()
        left = [line for line in iptables_rules().splitlines() if prefix + "." in line]
        assert not left, f"iptables rules of {prefix}.0/24 left behind: {left}"
        assert not list(lab.ipam_dir.glob(f"{prefix}.*")), "host-local allocations left behind"


async def test_two_pods_reach_each_other_and_the_node_by_ip_without_nat(lab: Lab) -> None:
    a, b = lab.pod(), lab.pod()
    ip_a, ip_b = await lab.attach(a), await lab.attach(b)
    subnet = ipaddress.ip_network(f"{lab.prefix}.0/24")
    assert ip_a != ip_b
    assert ipaddress.ip_address(ip_a) in subnet and ipaddress.ip_address(ip_b) in subnet
    assert lab.network.ips_of(a.uid) == (ip_a,)
    lab.serve(a)
    assert await lab.ask_from(b, ip_a, 8080) == ip_b, "A must see B's own pod IP"
    assert await lab.ask_from(None, ip_a, 8080) == f"{lab.prefix}.1"  # the node, via the bridge
    inside = run("nsenter", f"--net={a.netns}", "ip", "-4", "-o", "addr", "show", "eth0")
    assert f"inet {ip_a}/24" in inside


async def test_setup_again_keeps_the_ip_and_check_finds_a_broken_pod(lab: Lab) -> None:
    a = lab.pod()
    ip = await lab.attach(a)
    assert (await lab.network.setup(a.request())).ips == (ip,)
    assert len(lab.host_veths()) == 1
    await lab.network.check(a.uid, a.netns)
    run("nsenter", f"--net={a.netns}", "ip", "route", "del", "default")
    with pytest.raises(NetworkError, match=r"CNI plugin bridge .*CHECK"):
        await lab.network.check(a.uid, a.netns)


async def test_host_port_from_localhost_the_node_ip_and_the_pod_itself(lab: Lab) -> None:
    a, b = lab.pod(), lab.pod()
    port = free_port()
    ip_a = await lab.attach(a, PortMapping(8080, port, "TCP"))
    await lab.attach(b)
    lab.serve(a)
    assert await lab.ask_from(None, "127.0.0.1", port) == f"{lab.prefix}.1"
    assert await lab.ask_from(None, node_ip(), port) in (node_ip(), f"{lab.prefix}.1")
    gateway = f"{lab.prefix}.1"
    # portmap's snat marks traffic from the pod's whole subnet (its "-s <pod IP/24>" rule).
    assert await lab.ask_from(b, node_ip(), port) == gateway
    assert await lab.ask_from(a, node_ip(), port) == gateway  # hairpin
    assert ip_a in iptables_rules()


async def test_a_second_pod_asking_for_a_taken_host_port_gets_a_clear_error(lab: Lab) -> None:
    a, c = lab.pod(), lab.pod()
    port = free_port()
    await lab.attach(a, PortMapping(8080, port, "TCP"))
    with pytest.raises(NetworkError, match=rf"hostPort {port}/TCP is already used by pod nlt/pod-"):
        await lab.network.setup(c.request(PortMapping(80, port, "TCP", "127.0.0.1")))
    assert lab.network.ips_of(c.uid) == ()
    assert len(list(lab.ipam_dir.glob(f"{lab.prefix}.*"))) == 1, "c must get no address"
    udp = await lab.network.setup(c.request(PortMapping(80, port, "UDP")))
    assert udp.ips and udp.ips[0] != a.ip


async def test_del_removes_veth_allocation_and_port_rules(lab: Lab) -> None:
    a = lab.pod()
    port = free_port()
    ip = await lab.attach(a, PortMapping(8080, port, "TCP"))
    assert lab.host_veths() and (lab.ipam_dir / ip).exists()
    assert f"--dport {port}" in iptables_rules()
    await lab.network.teardown(a.uid, a.netns)
    assert lab.host_veths() == []
    assert not (lab.ipam_dir / ip).exists()
    rules = iptables_rules()
    assert ip not in rules and a.uid not in rules and f"--dport {port}" not in rules
    assert lab.network.ips_of(a.uid) == ()
    await lab.network.teardown(a.uid, a.netns)  # again: nothing left, no error


async def test_del_works_when_the_netns_is_already_gone(lab: Lab) -> None:
    b = lab.pod()
    ip = await lab.attach(b, PortMapping(8080, free_port(), "TCP"))
    lab.kill(b)
    await lab.network.teardown(b.uid, b.netns)
    assert not (lab.ipam_dir / ip).exists()
    assert ip not in iptables_rules() and b.uid not in iptables_rules()


async def test_sweep_after_a_restart_dels_leftovers_from_the_cache_and_keeps_the_rest(
    lab: Lab,
) -> None:
    gone, kept = lab.pod(), lab.pod()
    gone_ip = await lab.attach(gone, PortMapping(8080, free_port(), "TCP"))
    kept_ip = await lab.attach(kept)
    (lab.tmp / "net.d" / "10-nlt.conflist").unlink()  # DEL must not need the current config
    lab.kill(gone)
    restarted = lab.new_network()
    await restarted.start()
    assert restarted.ips_of(kept.uid) == (kept_ip,)
    await restarted.sweep({kept.uid})
    assert not (lab.ipam_dir / gone_ip).exists() and gone.uid not in iptables_rules()
    assert (lab.ipam_dir / kept_ip).exists() and restarted.ips_of(kept.uid) == (kept_ip,)
    assert restarted.ips_of(gone.uid) == ()


async def test_concurrent_adds_get_distinct_ips_and_add_p50(lab: Lab) -> None:
    pods = [lab.pod() for _ in range(5)]
    ips = await asyncio.gather(*(lab.attach(p) for p in pods))
    assert len(set(ips)) == 5
    times = []
    for _ in range(10):
        pod = lab.pod()
        started = time.perf_counter()
        await lab.attach(pod)
        times.append(time.perf_counter() - started)
    p50 = statistics.median(times)
    print(f"CNI ADD (bridge+host-local+portmap) p50 over 10: {p50 * 1000:.1f} ms")
    assert p50 < 2.0


# -- the protocol as plugins see it, with a fake plugin that logs what it was given ----------

FAKE = """#!{python} -I
import json, os, sys, time
conf = json.loads(sys.stdin.read() or "{{}}")
cmd = os.environ["CNI_COMMAND"]
if cmd == "VERSION":
    print(json.dumps({{"cniVersion": "1.0.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0"]}}))
    sys.exit(0)
with open("/proc/self/environ", "rb") as environ:  # as exec'd, before Python's locale coercion
    env = dict(v.decode().split("=", 1) for v in environ.read().split(b"\\0") if v)
entry = {{"plugin": os.path.basename(sys.argv[0]), "pid": os.getpid(), "env": env}}
with open(conf["log"], "a") as log:
    log.write(json.dumps({{**entry, "stdin": conf}}) + "\\n")
if conf.get("fail") == cmd:
    print(json.dumps({{"cniVersion": "1.0.0", "code": 7, "msg": "boom", "details": "on purpose"}}))
    sys.exit(1)
if conf.get("hang") == cmd:
    time.sleep(60)
if cmd == "ADD":
    prev = conf.get("prevResult")
    if prev is None:
        eth0 = {{"name": "eth0", "sandbox": os.environ["CNI_NETNS"]}}
        prev = {{"cniVersion": conf["cniVersion"], "interfaces": [eth0],
                "ips": [{{"address": conf["ip"], "interface": 0}}]}}
    print(json.dumps(prev))
"""


@dataclass
class Fake:
    tmp: Path
    holder: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        return self.tmp / "calls.log"

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def conf(self, version: str = "1.0.0", **second: Any) -> None:
        plugins = [
            {"type": "fakea", "ip": "10.9.0.7/24", "log": str(self.log)},
            {
                "type": "fakeb",
                "log": str(self.log),
                "capabilities": {"portMappings": True},
                **second,
            },
        ]
        data = {"cniVersion": version, "name": "fakenet", "plugins": plugins}
        (self.tmp / "net.d" / "50-fake.conflist").write_text(json.dumps(data))

    def network(self, **kwargs: Any) -> CniNetwork:
        return CniNetwork(self.tmp / "net.d", [self.tmp / "bin"], self.tmp / "state", **kwargs)

    def request(self, *ports: PortMapping) -> PodNetworkRequest:
        return PodNetworkRequest("uid1", "ns", "web", f"/proc/{self.holder.pid}/ns/net", ports)


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[Fake]:
    (tmp_path / "bin").mkdir()
    (tmp_path / "net.d").mkdir()
    script = tmp_path / "bin" / "fakea"
    script.write_text(FAKE.format(python=sys.executable))
    script.chmod(0o755)
    (tmp_path / "bin" / "fakeb").symlink_to(script)
    mine = os.stat("/proc/self/ns/net").st_ino
    holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
    while os.stat(f"/proc/{holder.pid}/ns/net").st_ino == mine:
        time.sleep(0.005)
    lab = Fake(tmp_path, holder)
    try:
        yield lab
    finally:
        holder.kill()
        holder.wait()
        cleaner = lab.network()
        await cleaner.start()
        with contextlib.suppress(NetworkError):
            await cleaner.sweep(())
        pins = [
            line
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if str(tmp_path) in line
        ]
        for pin in (tmp_path / "state" / "netns").glob("*"):
            subprocess.run(["umount", "-l", str(pin)], check=False, capture_output=True)
        assert not pins, f"netns pins left mounted: {pins}"


async def test_add_chains_results_and_del_replays_the_cached_add_in_reverse(fake: Fake) -> None:
    fake.conf()
    network = fake.network()
    await network.start()
    result = await network.setup(fake.request(PortMapping(80, 8080, "TCP")))
    assert result.ips == ("10.9.0.7",)
    add_a, add_b = fake.calls()
    assert (add_a["plugin"], add_b["plugin"]) == ("fakea", "fakeb")
    assert "prevResult" not in add_a["stdin"] and "runtimeConfig" not in add_a["stdin"]
    first = add_b["stdin"]["prevResult"]
    assert first["ips"] == [{"address": "10.9.0.7/24", "interface": 0}]
    assert add_b["stdin"]["runtimeConfig"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    }
    assert add_b["stdin"]["name"] == "fakenet" and add_b["stdin"]["cniVersion"] == "1.0.0"
    env = add_a["env"]
    assert set(env) == {
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_ARGS",
        "CNI_PATH",
        "PATH",
    }
    assert (env["CNI_COMMAND"], env["CNI_CONTAINERID"], env["CNI_IFNAME"]) == (
        "ADD",
        "uid1",
        "eth0",
    )
    assert "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;" in env["CNI_ARGS"]
    assert os.stat(env["CNI_NETNS"]).st_ino == os.stat(fake.request().netns_path).st_ino

    fake.conf(ip_ignored=True)  # DEL must replay the ADD's config, not the current file
    await network.teardown("uid1", None)
    del_b, del_a = fake.calls()[2:]
    assert (del_b["plugin"], del_a["plugin"]) == ("fakeb", "fakea")
    assert del_b["env"]["CNI_COMMAND"] == "DEL" and "ip_ignored" not in del_b["stdin"]
    assert del_a["stdin"]["prevResult"] == first and del_b["stdin"]["runtimeConfig"]
    assert network.ips_of("uid1") == ()
    assert not list((fake.tmp / "state" / "results").iterdir())


async def test_del_without_the_netns_passes_an_empty_cni_netns(fake: Fake) -> None:
    fake.conf()
    network = fake.network()
    await network.start()
    await network.setup(fake.request())
    fake.holder.kill()
    fake.holder.wait()
    for pin in (fake.tmp / "state" / "netns").iterdir():  # as after a reboot: no pin either
        subprocess.run(["umount", str(pin)], check=True)
    await network.teardown("uid1", fake.request().netns_path)
    assert [c["env"]["CNI_NETNS"] for c in fake.calls()[2:]] == ["", ""]


async def test_a_failing_plugin_is_named_and_what_ran_is_deleted(fake: Fake) -> None:
    fake.conf(fail="ADD")
    network = fake.network()
    await network.start()
    with pytest.raises(
        NetworkError,
        match=r"CNI plugin fakeb \(network fakenet\): ADD for pod ns/web failed: "
        r"boom: on purpose \(code 7\)",
    ):
        await network.setup(fake.request())
    assert [(c["plugin"], c["env"]["CNI_COMMAND"]) for c in fake.calls()] == [
        ("fakea", "ADD"),
        ("fakeb", "ADD"),
        ("fakeb", "DEL"),
        ("fakea", "DEL"),
    ]
    assert network.ips_of("uid1") == () and not list((fake.tmp / "state" / "results").iterdir())


async def test_a_hanging_plugin_is_killed_at_the_timeout(fake: Fake) -> None:
    fake.conf(hang="ADD")
    network = fake.network(plugin_timeout=0.5)
    await network.start()
    with pytest.raises(NetworkError, match=r"fakeb .*: ADD: no answer within 0.5s"):
        await network.setup(fake.request())
    hung = fake.calls()[1]
    assert hung["env"]["CNI_COMMAND"] == "ADD" and not Path(f"/proc/{hung['pid']}").exists()


async def test_spec_0_3_1_has_no_check_and_no_prev_result_on_del(fake: Fake) -> None:
    fake.conf(version="0.3.1")
    network = fake.network()
    await network.start()
    await network.setup(fake.request())
    assert fake.calls()[1]["stdin"]["prevResult"]["ips"][0]["version"] == "4"
    with pytest.raises(NetworkError, match="does not support CHECK"):
        await network.check("uid1", fake.request().netns_path)
    await network.teardown("uid1", None)
    assert all("prevResult" not in c["stdin"] for c in fake.calls()[2:])


async def test_check_runs_every_plugin_with_the_cached_result(fake: Fake) -> None:
    fake.conf()
    network = fake.network()
    await network.start()
    await network.setup(fake.request())
    await network.check("uid1", fake.request().netns_path)
    checks = fake.calls()[2:]
    assert [(c["plugin"], c["env"]["CNI_COMMAND"]) for c in checks] == [
        ("fakea", "CHECK"),
        ("fakeb", "CHECK"),
    ]
    assert checks[0]["stdin"]["prevResult"]["ips"][0]["address"] == "10.9.0.7/24"
    await network.teardown("uid1", None)


async def test_a_list_whose_plugins_are_missing_or_too_old_is_skipped(fake: Fake) -> None:
    network = fake.network()
    await network.start()
    with pytest.raises(NetworkError, match="no usable CNI network config"):
        await network.setup(fake.request())
    conf_dir = fake.tmp / "net.d"
    missing = {"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "nosuch"}]}
    (conf_dir / "10-missing.conflist").write_text(json.dumps(missing))
    old = {"cniVersion": "0.3.0", "name": "b", "plugins": [{"type": "fakea"}]}
    (conf_dir / "20-old.conflist").write_text(json.dumps(old))
    fake.conf()
    assert (await network.network()).name == "fakenet"
    (conf_dir / "50-fake.conflist").unlink()
    with pytest.raises(NetworkError, match=r"nosuch not found.*does not support cniVersion 0.3.0"):
        await network.network()


async def test_an_add_cut_short_converges_after_a_restart_with_one_veth_and_one_ip(
    lab: Lab,
) -> None:
    pods = [lab.pod() for _ in range(4)]
    for delay, pod in zip((0.0, 0.005, 0.015, 0.03), pods, strict=True):
        task = asyncio.ensure_future(lab.network.setup(pod.request()))
        await asyncio.sleep(delay)
        task.cancel()  # as a kill -9 of the agent: whatever the plugins had done stays
        with contextlib.suppress(asyncio.CancelledError, NetworkError):
            await task
    restarted = lab.new_network()
    await restarted.start()
    ips = [(await restarted.setup(pod.request())).ips[0] for pod in pods]
    assert len(set(ips)) == 4
    assert sorted(p.name for p in lab.ipam_dir.glob(f"{lab.prefix}.*")) == sorted(ips)
    assert len(lab.host_veths()) == 4
    for pod, ip in zip(pods, ips, strict=True):
        inside = run("nsenter", f"--net={pod.netns}", "ip", "-4", "-o", "addr", "show")
        assert inside.count("inet ") == 1 and f"inet {ip}/24" in inside
