"""A pod's ``/etc/resolv.conf``, ``/etc/hostname`` and ``/etc/hosts`` through the real agent:
what a container reads is what the pod asks for (kubelet's and containerd's bytes), for a pod
with its own network and for a hostNetwork pod; the node's own files stay untouched."""

from __future__ import annotations

import base64
import hashlib
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agentharness import NODE, Agent, agent_session, wait_for
from tests.system.test_network_agent import builtin_node
from tests.system.test_wiring import manifest

pytestmark = pytest.mark.system

FILES = ("/etc/resolv.conf", "/etc/hostname", "/etc/hosts")
SHOW = """
import base64, time
for path in ("/etc/resolv.conf", "/etc/hostname", "/etc/hosts"):
    print(path + "=" + base64.b64encode(open(path, "rb").read()).decode(), flush=True)
time.sleep(3600)
"""
ALIASES = [
    {"ip": "10.9.9.9", "hostnames": ["db", "db.internal"]},
    {"ip": "fd00::9", "hostnames": ["v6"]},
]
ALIAS_SECTION = "\n# Entries added by HostAliases.\n10.9.9.9\tdb\tdb.internal\nfd00::9\tv6\n"
LOCALHOST = (
    "# Kubernetes-managed hosts file.\n"
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)
NODE_RESOLV = "# the node's resolver\nnameserver 192.0.2.53\nsearch corp.example\noptions rotate\n"


def show(name: str = "main") -> dict[str, Any]:
    return {"name": name, "image": "host", "command": ["python3", "-c", SHOW]}


def seen(agent: Agent, pod_name: str, container: str = "main") -> dict[str, str]:
    """The three files as the container read them."""
    pod = wait_for(lambda: agent.running(pod_name), 30, f"{pod_name} running")
    return {
        path: base64.b64decode(agent.log_value(pod, container, path)).decode() for path in FILES
    }


def digests() -> dict[str, str]:
    return {path: hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in FILES}


@pytest.fixture
def resolv_conf() -> Iterator[Path]:
    """A node resolver file of the test's own (``--resolv-conf``)."""
    with tempfile.TemporaryDirectory(prefix="nlt-dns-") as scratch:
        path = Path(scratch) / "resolv.conf"
        path.write_text(NODE_RESOLV)
        yield path


def test_a_pod_on_the_pod_network_sees_kubelets_files(resolv_conf: Path) -> None:
    before = digests()
    with builtin_node() as node:
        agent = node.make()
        agent.extra_args.extend(["--resolv-conf", str(resolv_conf), "--cluster-dns",
                                 "10.96.0.10", "--cluster-domain", "cluster.local"])  # fmt: skip
        agent.start()
        node.agent = agent
        spec = {
            "hostname": "web",
            "subdomain": "sub",
            "hostAliases": ALIASES,
            "dnsConfig": {"searches": ["x.example"], "options": [{"name": "edns0"}]},
        }
        agent.write_manifest("p.json", manifest("p", [show()], **spec))
        files = seen(agent, "p")
        ip = node.ip("p")
        assert files["/etc/resolv.conf"] == (
            "search default.svc.cluster.local svc.cluster.local cluster.local corp.example "
            "x.example\nnameserver 10.96.0.10\noptions ndots:5 edns0\n"
        )
        assert files["/etc/hostname"] == "web\n"
        assert files["/etc/hosts"] == (
            LOCALHOST + f"{ip}\tweb.sub.default.svc.cluster.local\tweb\n" + ALIAS_SECTION
        )
        node.remove_all()
    assert digests() == before


def test_a_host_network_pod_sees_the_nodes_files_and_its_aliases(resolv_conf: Path) -> None:
    node_hosts = Path("/etc/hosts").read_text()
    before = digests()
    args = ["--resolv-conf", str(resolv_conf), "--cluster-dns", "10.96.0.10,10.96.0.11"]
    with agent_session(args) as make:
        agent = make()
        agent.start()
        agent.write_manifest("h.json", manifest("h", [show()], hostNetwork=True,
                                                 hostAliases=ALIASES))  # fmt: skip
        cluster = manifest("c", [show()], hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet")
        agent.write_manifest("c.json", cluster)
        files = seen(agent, "h")
        assert files["/etc/resolv.conf"] == (
            "search corp.example\nnameserver 192.0.2.53\noptions rotate\n"
        )  # ClusterFirst on the host network is Default: the node's file, as containerd writes it
        assert files["/etc/hostname"] == socket.gethostname() + "\n"
        assert files["/etc/hosts"] == (
            "# Kubernetes-managed hosts file (host network).\n" + node_hosts + ALIAS_SECTION
        )
        files = seen(agent, "c")
        assert files["/etc/resolv.conf"] == (
            "search corp.example\nnameserver 10.96.0.10\nnameserver 10.96.0.11\noptions ndots:5\n"
        )
        assert files["/etc/hosts"] == "# Kubernetes-managed hosts file (host network).\n" + (
            node_hosts
        )
    assert digests() == before


def test_cluster_first_without_cluster_dns_falls_back_with_kubelets_warning(
    resolv_conf: Path,
) -> None:
    """No --cluster-dns: the node's resolver, and kubelet's warning; a container that mounts
    its own /etc/hosts keeps it; a broken resolver file holds the pod back."""
    with agent_session(["--resolv-conf", str(resolv_conf)]) as make:
        agent = make()
        agent.start()
        own_hosts = resolv_conf.with_name("own-hosts")
        own_hosts.write_text("10.1.2.3\town\n")
        own = show()
        own["volumeMounts"] = [{"name": "own", "mountPath": "/etc/hosts"}]
        volumes = [{"name": "own", "hostPath": {"path": str(own_hosts), "type": "File"}}]
        agent.write_manifest("f.json", manifest("f", [own], volumes=volumes))
        pod = wait_for(lambda: agent.pod("f"), 20, "f in /pods")
        files = seen(agent, "f")
        assert files["/etc/resolv.conf"] == (
            "search corp.example\nnameserver 192.0.2.53\noptions rotate\n"
        )
        assert files["/etc/hostname"] == f"f-{NODE}\n"
        assert files["/etc/hosts"] == "10.1.2.3\town\n"  # the container's own, not the pod's
        uid = pod["metadata"]["uid"]
        warning = (
            f'MissingClusterDNS: pod: "f-{NODE}_default({uid})". kubelet does not have '
            'ClusterDNS IP configured and cannot create Pod using "ClusterFirst" policy. '
            'Falling back to "Default" policy.'
        )
        wait_for(lambda: warning in agent.output.read_text(), 10, "the fallback warning")
        resolv_conf.write_text("nameserver\n")
        agent.write_manifest("b.json", manifest("b", [show()]))
        message = wait_for(
            lambda: (
                ((agent.container_status("b", "main") or {}).get("state") or {})
                .get("waiting", {})
                .get("message")
            ),
            20,
            "b waiting",
        )
        assert "nameserver list is empty" in message
        assert message.startswith(f'Failed to generate sandbox config for pod "b-{NODE}_default(')
