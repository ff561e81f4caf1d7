"""The CNI protocol as data (``nodelet.network.cniconf``): which config file wins, what a plugin
gets on stdin and in its environment, how results chain and convert, how errors read, which IPs
are the pod's, and when a hostPort is taken."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nodelet.network import cniconf
from nodelet.network.api import NetworkError, PortMapping

pytestmark = pytest.mark.unit

BRIDGE = {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}}
PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}}


def write(directory: Path, name: str, data: Any) -> None:
    (directory / name).write_text(data if isinstance(data, str) else json.dumps(data))


def conflist(name: str = "net", version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": name, "plugins": [BRIDGE, PORTMAP], **extra}


def test_the_first_valid_file_in_lexical_order_wins_broken_ones_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, "30-last.conflist", conflist("last"))
    write(tmp_path, "05-broken.conflist", "{not json")
    write(tmp_path, "10-single.conf", {"cniVersion": "0.4.0", "name": "single", **BRIDGE})
    write(tmp_path, "20-json.json", {"cniVersion": "0.3.1", "name": "viajson", **BRIDGE})
    write(tmp_path, "00-ignored.txt", conflist("txt"))
    lists, skipped = cniconf.load_conf_lists(tmp_path)
    assert [c.name for c in lists] == ["single", "viajson", "last"]
    assert len(skipped) == 1 and "05-broken.conflist" in skipped[0]
    single = lists[0]
    assert single.cni_version == "0.4.0" and [p.type for p in single.plugins] == ["bridge"]
    assert single.plugins[0].conf["bridge"] == "cni0"
    assert cniconf.load_conf_lists(tmp_path / "missing") == ([], [])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (conflist(version="0.2.0"), "cniVersion '0.2.0' is not supported"),
        (conflist(version="1.1.0"), "cniVersion '1.1.0' is not supported"),
        ({"name": "n", "plugins": [BRIDGE]}, "cniVersion None is not supported"),
        (conflist(name="bad name"), "'name' must match"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": []}, "'plugins' must be a non-empty"),
        ({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../x"}]}, "binary name"),
        (conflist(disableCheck=3), "'disableCheck' must be a boolean"),
    ],
)
def test_lists_the_runtime_cannot_run_are_refused_with_the_file(
    tmp_path: Path, data: dict[str, Any], reason: str
) -> None:
    write(tmp_path, "a.conflist", data)
    with pytest.raises(NetworkError, match=r"a\.conflist") as caught:
        cniconf.parse_conf_file(tmp_path / "a.conflist")
    assert reason in str(caught.value)


def test_disable_check_as_a_string_is_accepted_as_libcni_does() -> None:
    assert cniconf.parse_conf_list(conflist(disableCheck="true"), "x").disable_check is True


def test_stdin_injects_name_version_prev_result_and_only_declared_capabilities() -> None:
    conf = cniconf.parse_conf_list(
        {"cniVersion": "1.0.0", "name": "net", "plugins": [{**BRIDGE, "name": "x"}, PORTMAP]},
        "x",
    )
    caps = cniconf.capability_args(
        [PortMapping(80, 8080, "TCP"), PortMapping(53, 53, "UDP", "1.2.3.4")]
    )
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}
    bridge = json.loads(cniconf.plugin_stdin(conf, conf.plugins[0], None, caps))
    assert bridge == {**BRIDGE, "name": "net", "cniVersion": "1.0.0"}
    portmap = json.loads(cniconf.plugin_stdin(conf, conf.plugins[1], prev, caps))
    assert portmap["prevResult"] == prev
    assert portmap["runtimeConfig"] == {
        "portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "1.2.3.4"},
        ]
    }
    off = cniconf.PluginConf(
        "portmap", {"type": "portmap", "capabilities": {"portMappings": False}}
    )
    assert "runtimeConfig" not in json.loads(cniconf.plugin_stdin(conf, off, prev, caps))


def test_environment_is_the_cni_variables_and_a_path_only() -> None:
    args = cniconf.cni_args("kube-system", "etcd-node1", "0123abcd")
    env = cniconf.plugin_env(
        "DEL", "0123abcd", "", "eth0", args, [Path("/opt/cni/bin"), Path("/usr/lib/cni")]
    )
    assert env == {
        "CNI_COMMAND": "DEL",
        "CNI_CONTAINERID": "0123abcd",
        "CNI_NETNS": "",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=etcd-node1;"
        "K8S_POD_INFRA_CONTAINER_ID=0123abcd;K8S_POD_UID=0123abcd",
        "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }


RESULT_040 = {
    "cniVersion": "0.4.0",
    "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
    "ips": [
        {"version": "6", "address": "fd00::5/64", "interface": 2},
        {"version": "4", "address": "10.0.0.5/24", "interface": 2, "gateway": "10.0.0.1"},
    ],
    "routes": [{"dst": "0.0.0.0/0"}],
}


def test_results_are_converted_to_the_list_version_for_chaining_and_the_cache() -> None:
    as_100 = cniconf.parse_result(json.dumps(RESULT_040).encode(), "1.0.0", "bridge")
    assert as_100["cniVersion"] == "1.0.0"
    assert all("version" not in ip for ip in as_100["ips"])
    assert as_100["interfaces"] == RESULT_040["interfaces"]
    back = cniconf.parse_result(json.dumps(as_100).encode(), "0.3.1", "bridge")
    assert [ip["version"] for ip in back["ips"]] == ["6", "4"]


@pytest.mark.parametrize(
    ("stdout", "reason"),
    [
        (b"", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"ip4": {"ip": "10.0.0.2/24"}}', "pre-0.3.0"),
        (b'{"ips": {}}', "'ips' is not a list"),
        (b'{"ips": [{"address": "nonsense"}]}', "nonsense"),
    ],
)
def test_malformed_results_name_the_plugin(stdout: bytes, reason: str) -> None:
    with pytest.raises(NetworkError, match="CNI plugin flannel") as caught:
        cniconf.parse_result(stdout, "1.0.0", "flannel")
    assert reason in str(caught.value)


def test_errors_read_from_the_spec_object_else_stderr_else_the_status() -> None:
    spec = b'{"cniVersion":"1.0.0","code":11,"msg":"try again later","details":"lock held"}'
    assert cniconf.parse_error(spec, b"noise", 1) == "try again later: lock held (code 11)"
    assert cniconf.parse_error(b'{"code": 7, "msg": "x"}', b"", 1) == "x (code 7)"
    assert cniconf.parse_error(b"garbage", b"first\nfailed to lock\n", 1) == "failed to lock"
    assert cniconf.parse_error(b"", b"", 2) == "exited with status 2 and no error"


def test_pod_ips_are_those_of_the_sandbox_interface_ipv4_first() -> None:
    result = {
        **RESULT_040,
        "ips": [*RESULT_040["ips"], {"address": "192.168.9.9/24", "interface": 0}],
    }
    assert cniconf.pod_ips(result, "eth0") == ("10.0.0.5", "fd00::5")
    no_index = {"ips": [{"address": "10.1.0.7/16"}]}
    assert cniconf.pod_ips(no_index, "eth0") == ("10.1.0.7",)
    assert cniconf.pod_ips({"ips": []}, "eth0") == ()


def test_host_port_conflicts_follow_the_schedulers_rule() -> None:
    taken = [
        (PortMapping(80, 8080, "TCP"), "ns/a"),
        (PortMapping(53, 5353, "UDP", "10.0.0.1"), "ns/b"),
    ]
    assert cniconf.hostport_conflict([PortMapping(1, 8080, "TCP", "127.0.0.1")], taken) == (
        "hostPort 8080/TCP is already used by pod ns/a"
    )
    assert cniconf.hostport_conflict([PortMapping(1, 5353, "UDP")], taken) == (
        "hostPort 5353/UDP is already used by pod ns/b"
    )
    assert cniconf.hostport_conflict([PortMapping(1, 8080, "UDP")], taken) is None
    assert cniconf.hostport_conflict([PortMapping(1, 5353, "UDP", "10.0.0.2")], taken) is None
    assert (
        cniconf.hostport_conflict([PortMapping(1, 0, "TCP")], [(PortMapping(2, 0, "TCP"), "x")])
        is None
    )


def test_check_needs_spec_0_4_0() -> None:
    assert cniconf.supports_check(cniconf.parse_conf_list(conflist(version="0.4.0"), "x"))
    assert not cniconf.supports_check(cniconf.parse_conf_list(conflist(version="0.3.1"), "x"))
    assert cniconf.version_tuple("1.0.0") > cniconf.version_tuple("0.4.0")
