"""A pod's resolv.conf, hostname and hosts files, against kubelet's ``dns.go`` and
``kubelet_pods.go`` and containerd's ``parseDNSOptions``; and the API server's DNS rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nodelet.manifest import fieldpolicy
from nodelet.manifest.validation import validate
from nodelet.model import StaticPod
from nodelet.pod import dns, hostsfile
from nodelet.pod.containerprep import PodContext, build_container_config
from nodelet.pod.dns import DnsConfig, DnsEvent, NodeDns
from nodelet.pod.network import hosts_file

pytestmark = pytest.mark.unit

HOST = DnsConfig(("192.0.2.53", "192.0.2.54"), ("corp.example", "example"), ("rotate",))
CLUSTER = NodeDns(cluster_dns=("10.96.0.10",), cluster_domain="cluster.local")
FALLBACK = (
    'pod: "web-n1_prod(u1)". kubelet does not have ClusterDNS IP configured and cannot create '
    'Pod using "ClusterFirst" policy. Falling back to "Default" policy.'
)
LOCALHOST = (
    "# Kubernetes-managed hosts file.\n"
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)


def make_pod(**spec: Any) -> StaticPod:
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-n1", "namespace": "prod", "uid": "u1"},
        "spec": {"containers": [{"name": "app", "image": "host"}], **spec},
    }
    return StaticPod("u1", "prod", "web-n1", "/m/web.yaml", manifest)


def resolv(pod: StaticPod, node: NodeDns, host: DnsConfig = HOST) -> tuple[str, list[DnsEvent]]:
    config, events = dns.pod_dns(pod, node, host)
    return dns.resolv_conf_text(config), events


# -- the node's file ---------------------------------------------------------------------------


def test_node_file_is_parsed_as_kubelet_does() -> None:
    text = (
        "# comment\n nameserver 10.0.0.1 ignored\nsearch old.example\nnameserver 10.0.0.2\n"
        "options ndots:1\n  # indented comment\nsearch a.example. b.example\noptions rotate\n"
        "domain ignored.example\n"
    )
    config, errors = dns.parse_resolv_conf(text)
    assert config == DnsConfig(("10.0.0.1", "10.0.0.2"), ("a.example", "b.example"), ("rotate",))
    assert errors == []
    _, errors = dns.parse_resolv_conf("nameserver\n")
    assert errors == ["nameserver list is empty "]


def test_node_file_errors_fail_the_pod(tmp_path: Path) -> None:
    bad = tmp_path / "resolv.conf"
    bad.write_text("nameserver\n")
    with pytest.raises(dns.DnsError, match="nameserver list is empty"):
        dns.read_node_dns(str(bad))
    with pytest.raises(dns.DnsError, match=r"open .*missing: No such file"):
        dns.read_node_dns(str(tmp_path / "missing"))
    assert dns.read_node_dns("") == DnsConfig()


# -- policies ----------------------------------------------------------------------------------


def test_cluster_first_uses_cluster_dns_its_search_domains_and_ndots_5() -> None:
    text, events = resolv(make_pod(dnsPolicy="ClusterFirst"), CLUSTER)
    assert text == (
        "search prod.svc.cluster.local svc.cluster.local cluster.local corp.example example\n"
        "nameserver 10.96.0.10\n"
        "options ndots:5\n"
    )
    assert events == []
    unset = make_pod()  # the API server's default is ClusterFirst
    assert resolv(unset, CLUSTER)[0] == text


def test_cluster_first_without_a_cluster_domain_keeps_the_node_search() -> None:
    text, _ = resolv(make_pod(), NodeDns(cluster_dns=("10.96.0.10", "10.96.0.11")))
    assert text == (
        "search corp.example example\nnameserver 10.96.0.10\nnameserver 10.96.0.11\n"
        "options ndots:5\n"
    )


def test_cluster_first_without_cluster_dns_falls_back_to_default_with_kubelets_warning() -> None:
    text, events = resolv(make_pod(dnsPolicy="ClusterFirst"), NodeDns(cluster_domain="c.local"))
    assert text == (
        "search corp.example example\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n"
        "options rotate\n"
    )
    assert events == [DnsEvent("MissingClusterDNS", FALLBACK)]
    with_host_net = make_pod(dnsPolicy="ClusterFirstWithHostNet", hostNetwork=True)
    assert resolv(with_host_net, NodeDns())[1] == [DnsEvent("MissingClusterDNS", FALLBACK)]


def test_host_network_pods_use_the_node_unless_they_ask_for_the_cluster() -> None:
    default = resolv(make_pod(hostNetwork=True), CLUSTER)
    assert default == (
        "search corp.example example\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n"
        "options rotate\n",
        [],
    )
    cluster = resolv(make_pod(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet"), CLUSTER)
    assert cluster[0].startswith("search prod.svc.cluster.local ")
    assert "nameserver 10.96.0.10\n" in cluster[0]


def test_default_is_the_node_file_even_with_cluster_dns() -> None:
    assert resolv(make_pod(dnsPolicy="Default"), CLUSTER)[0] == (
        "search corp.example example\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n"
        "options rotate\n"
    )


def test_no_node_file_means_the_node_itself() -> None:
    none = NodeDns(resolv_conf="", node_ips=("192.0.2.7",))
    assert resolv(make_pod(dnsPolicy="Default"), none, DnsConfig()) == (
        "search .\nnameserver 127.0.0.1\n",
        [],
    )
    v6 = NodeDns(resolv_conf="", node_ips=("fd00::7",))
    assert resolv(make_pod(dnsPolicy="Default"), v6, DnsConfig())[0] == "search .\nnameserver ::1\n"


def test_none_takes_only_dns_config_and_dns_config_merges_into_the_others() -> None:
    config = {
        "nameservers": ["10.0.0.9", "10.96.0.10"],
        "searches": ["x.example", "cluster.local"],
        "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
    }
    assert resolv(make_pod(dnsPolicy="None", dnsConfig=config), CLUSTER)[0] == (
        "search x.example cluster.local\nnameserver 10.0.0.9\nnameserver 10.96.0.10\n"
        "options ndots:2 edns0\n"
    )
    merged, _ = resolv(make_pod(dnsConfig=config), CLUSTER)
    assert merged == (
        "search prod.svc.cluster.local svc.cluster.local cluster.local corp.example example "
        "x.example\n"
        "nameserver 10.96.0.10\nnameserver 10.0.0.9\n"
        "options ndots:2 edns0\n"  # the pod's ndots replaces kubelet's 5
    )


# -- limits ------------------------------------------------------------------------------------


def test_more_than_three_nameservers_are_cut_with_kubelets_warning() -> None:
    pod = make_pod(dnsPolicy="Default", dnsConfig={"nameservers": ["10.0.0.1", "10.0.0.2"]})
    text, events = resolv(pod, NodeDns())
    assert text.count("nameserver") == 3
    assert events == [
        DnsEvent(
            "DNSConfigForming",
            "Nameserver limits were exceeded, some nameservers have been omitted, the applied "
            "nameserver line is: 192.0.2.53 192.0.2.54 10.0.0.1",
        )
    ]


def test_search_paths_are_cut_to_32_and_2048_characters_and_long_ones_dropped() -> None:
    many = tuple(f"d{i}.example" for i in range(40))
    config, events = dns.fit_limits(DnsConfig(searches=many))
    assert config.searches == many[:32]
    assert events == [
        DnsEvent(
            "DNSConfigForming",
            "Search Line limits were exceeded, some search paths have been omitted, the "
            f"applied search line is: {' '.join(many[:32])}",
        )
    ]
    long_one = "a" * 254
    config, _ = dns.fit_limits(DnsConfig(searches=("ok.example", long_one, "b.example")))
    assert config.searches == ("ok.example", "b.example")
    wide = tuple(f"{i:02d}" + "x" * 98 for i in range(25))  # 25 x 100 chars + 24 spaces
    config, events = dns.fit_limits(DnsConfig(searches=wide))
    assert config.searches == wide[:20]  # 20 x 100 + 19 = 2019 <= 2048; 21 would be 2120
    assert len(events) == 1
    exact = DnsConfig(searches=tuple("x" * 63 for _ in range(32)))  # 32 x 63 + 31 = 2047
    assert dns.fit_limits(exact) == (exact, [])


# -- files ---------------------------------------------------------------------------------------


def test_resolv_conf_file_is_containerds_or_the_nodes_copy(tmp_path: Path) -> None:
    node_file = tmp_path / "resolv.conf"
    node_file.write_text("nameserver 192.0.2.1\nsearch s.example\n")
    node = NodeDns(resolv_conf=str(node_file), cluster_dns=("10.96.0.10",), cluster_domain="c")
    data, events = dns.pod_resolv_conf(make_pod(), node)
    assert data == b"search prod.svc.c svc.c c s.example\nnameserver 10.96.0.10\noptions ndots:5\n"
    assert events == []
    node_file.write_text("# nothing but comments\n")
    data, _ = dns.pod_resolv_conf(make_pod(dnsPolicy="Default"), NodeDns(str(node_file)))
    assert data == Path("/etc/resolv.conf").read_bytes()  # containerd copies the node's own


def test_files_are_replaced_atomically_with_mode_0644(tmp_path: Path) -> None:
    target = tmp_path / dns.HOSTNAME_FILE
    target.write_text("old\n")
    inode = target.stat().st_ino
    dns.write_file(target, dns.hostname_text("web").encode())
    assert target.read_text() == "web\n"
    assert target.stat().st_ino != inode  # a rename, not a rewrite in place
    assert target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == [dns.HOSTNAME_FILE]


def test_managed_hosts_file_is_kubelets_byte_for_byte() -> None:
    aliases = [
        {"ip": "123.45.67.89", "hostnames": ["foo", "bar", "baz"]},
        {"ip": "456.78.90.123", "hostnames": ["park", "doo", "boo"]},
    ]
    assert hostsfile.managed_hosts(["203.0.113.1"], "podFoo", "domainFoo", aliases) == (
        LOCALHOST + "203.0.113.1\tpodFoo.domainFoo\tpodFoo\n"
        "\n"
        "# Entries added by HostAliases.\n"
        "123.45.67.89\tfoo\tbar\tbaz\n"
        "456.78.90.123\tpark\tdoo\tboo\n"
    )
    assert hostsfile.managed_hosts(["10.0.0.2", "fd00::2"], "web", "") == (
        LOCALHOST + "10.0.0.2\tweb\nfd00::2\tweb\n"
    )


def test_pod_hosts_for_each_kind_of_pod() -> None:
    node_text = "127.0.0.1 localhost\n10.1.1.1 node1\n"
    aliases = [{"ip": "10.9.9.9", "hostnames": ["db", "db.internal"]}]
    section = "\n# Entries added by HostAliases.\n10.9.9.9\tdb\tdb.internal\n"
    host_net = make_pod(hostNetwork=True, hostAliases=aliases)
    assert hostsfile.pod_hosts(host_net, "node1", ["10.1.1.1"], "c", node_text) == (
        "# Kubernetes-managed hosts file (host network).\n" + node_text + section
    )
    with_sub = make_pod(subdomain="sub", hostAliases=aliases)
    assert hostsfile.pod_hosts(with_sub, "web", ["10.0.0.2"], "cluster.local", node_text) == (
        LOCALHOST + "10.0.0.2\tweb.sub.prod.svc.cluster.local\tweb\n" + section
    )
    no_ip = make_pod(hostAliases=aliases)
    assert hostsfile.pod_hosts(no_ip, "web", [], "c", node_text) == node_text
    # network.hosts_file, the worker's entry point, gives the same managed file.
    assert hosts_file(with_sub, "web", ["10.0.0.2"], "cluster.local") == (
        hostsfile.pod_hosts(with_sub, "web", ["10.0.0.2"], "cluster.local", node_text)
    )


# -- the API server's rules ----------------------------------------------------------------------


def problems(**spec: Any) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    validate(make_pod(**spec).manifest, "n1", lambda path, why: found.append((path, why)))
    return found


def test_dns_none_needs_a_nameserver() -> None:
    assert problems(dnsPolicy="None") == [
        ("spec.dnsConfig", "Required value: must provide `dnsConfig` when `dnsPolicy` is None")
    ]
    assert problems(dnsPolicy="None", dnsConfig={"searches": ["a.example"]}) == [
        (
            "spec.dnsConfig.nameservers",
            "Required value: must provide at least one DNS nameserver when `dnsPolicy` is None",
        )
    ]
    assert problems(dnsPolicy="None", dnsConfig={"nameservers": ["10.0.0.1"]}) == []


def test_dns_config_limits_and_forms() -> None:
    config = {
        "nameservers": ["10.0.0.1", "10.0.0.2", "10.0.0.3", "dns.example"],
        "searches": ["ok.example.", ".", "under_score.example", "Upper.example"],
        "options": [{"name": "ndots", "value": "1"}, {"value": "x"}],
    }
    assert problems(dnsConfig=config) == [
        ("spec.dnsConfig.nameservers", "must not have more than 3 nameservers"),
        ("spec.dnsConfig.nameservers[3]", "must be a valid IP address"),
        (
            "spec.dnsConfig.searches[3]",
            "must be a lowercase RFC 1123 subdomain of at most 253 characters (letters, digits, "
            "'-', '_' and '.'), or '.'",
        ),
        ("spec.dnsConfig.options[1]", "Required value: must not be empty"),
    ]
    many = {"searches": [f"d{i}.example" for i in range(33)]}
    assert problems(dnsConfig=many) == [
        ("spec.dnsConfig.searches", "must not have more than 32 search paths")
    ]
    wide = {"searches": ["x" * 63 + "." + "y" * 63] * 16}  # 16 x 127 + 15 = 2047
    assert problems(dnsConfig=wide) == []
    wide["searches"].append("z")
    assert problems(dnsConfig=wide) == [
        (
            "spec.dnsConfig.searches",
            "must not have more than 2048 characters (including spaces) in the search list",
        )
    ]


def test_host_aliases_need_an_ip_and_subdomain_hostnames() -> None:
    aliases = [
        {"ip": "10.0.0.1", "hostnames": ["db", "db.internal"]},
        {"ip": "db", "hostnames": ["Bad_Name"]},
        {"hostnames": ["x"]},
    ]
    found = problems(hostAliases=aliases)
    assert [path for path, _ in found] == [
        "spec.hostAliases[1].ip",
        "spec.hostAliases[1].hostnames[0]",
        "spec.hostAliases[2].ip",
    ]
    assert found[0][1] == "must be a valid IP address"


def test_dns_config_and_host_aliases_are_honoured_fields_now() -> None:
    manifest = make_pod(
        dnsPolicy="None",
        dnsConfig={"nameservers": ["10.0.0.1"], "options": [{"name": "ndots", "value": "1"}]},
        hostAliases=[{"ip": "10.0.0.1", "hostnames": ["db"]}],
    ).manifest
    refused: list[tuple[str, str]] = []
    fieldpolicy.check(manifest, lambda path, why: refused.append((path, why)))
    assert refused == []


def test_managed_files_are_mounted_as_kubelet_and_containerd_mount_them() -> None:
    pod = make_pod(volumes=[{"name": "r", "emptyDir": {}}])
    context = PodContext(
        pod, "web-n1", "192.0.2.9", "", Path("/logs"), {"r": "/v/r"},
        hosts_file="/p/etc-hosts", hostname_file="/p/etc-hostname",
        resolv_conf_file="/p/etc-resolv.conf",
    )  # fmt: skip
    container: dict[str, Any] = {"name": "app", "image": "host", "command": ["true"]}
    mounts = build_container_config(context, container, 0).mounts
    assert [(m.source, m.target, m.read_only) for m in mounts] == [
        ("/p/etc-hostname", "/etc/hostname", False),
        ("/p/etc-hosts", "/etc/hosts", False),
        ("/p/etc-resolv.conf", "/etc/resolv.conf", False),
    ]
    container["securityContext"] = {"readOnlyRootFilesystem": True}
    container["volumeMounts"] = [{"name": "r", "mountPath": "/etc/resolv.conf"}]
    mounts = build_container_config(context, container, 0).mounts
    assert [(m.source, m.target, m.read_only) for m in mounts] == [
        ("/p/etc-hostname", "/etc/hostname", True),  # containerd: read-only with the root
        ("/p/etc-hosts", "/etc/hosts", False),  # kubelet's mount: always read-write
        ("/v/r", "/etc/resolv.conf", False),  # the container's own wins
    ]
