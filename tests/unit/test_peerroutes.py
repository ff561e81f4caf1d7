"""The cluster's Nodes as pod network settings: which routes and which own pod CIDR they mean,
how they merge with ``--pod-cidr-routes``, and when the pod CIDR is the operator's."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from nodelet.cli.run import build_config
from nodelet.cluster.peerroutes import (
    PeerRoutes,
    first_ipv4_cidr,
    internal_ip,
    merge_routes,
    node_routes,
)
from nodelet.network.api import NetworkError
from nodelet.network.cidrstate import CidrFile, CidrState

pytestmark = pytest.mark.unit

Json = dict[str, Any]


def node(name: str, cidr: str | list[str] | None, *addresses: tuple[str, str]) -> Json:
    spec: Json = {}
    if isinstance(cidr, list):
        spec = {"podCIDR": cidr[0], "podCIDRs": cidr}
    elif cidr is not None:
        spec = {"podCIDR": cidr}
    return {
        "metadata": {"name": name},
        "spec": spec,
        "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]},
    }


def test_first_ipv4_cidr_prefers_the_ipv4_of_pod_cidrs() -> None:
    assert first_ipv4_cidr(node("a", ["fd00:1::/64", "10.244.1.0/24"])) == "10.244.1.0/24"
    assert first_ipv4_cidr(node("a", "10.244.2.0/24")) == "10.244.2.0/24"
    assert first_ipv4_cidr(node("a", ["fd00:1::/64"])) is None
    assert first_ipv4_cidr(node("a", None)) is None
    assert first_ipv4_cidr({"spec": {"podCIDR": "garbage"}}) is None


def test_internal_ip_is_the_first_ipv4_internal_address() -> None:
    n = node(
        "a", None, ("Hostname", "a"), ("InternalIP", "fd00::5"), ("InternalIP", "192.0.2.5"),
        ("InternalIP", "192.0.2.6"), ("ExternalIP", "198.51.100.1"),
    )  # fmt: skip
    assert internal_ip(n) == "192.0.2.5"
    assert internal_ip(node("a", None, ("ExternalIP", "198.51.100.1"))) is None
    assert internal_ip({"metadata": {"name": "x"}}) is None


def test_node_routes_skip_this_node_and_nodes_missing_a_cidr_or_an_address() -> None:
    nodes = [
        node("me", "10.244.0.0/24", ("InternalIP", "192.0.2.1")),
        node("b", "10.244.1.0/24", ("InternalIP", "192.0.2.2")),
        node("c", None, ("InternalIP", "192.0.2.3")),
        node("d", "10.244.3.0/24", ("Hostname", "d")),
        node("e", ["fd00:4::/64", "10.244.4.0/24"], ("InternalIP", "192.0.2.4")),
    ]
    assert node_routes(nodes, "me") == {
        "10.244.1.0/24": "192.0.2.2",
        "10.244.4.0/24": "192.0.2.4",
    }


def test_two_nodes_claiming_one_cidr_resolve_by_name() -> None:
    nodes = [
        node("z", "10.244.1.0/24", ("InternalIP", "192.0.2.26")),
        node("a", "10.244.1.0/24", ("InternalIP", "192.0.2.1")),
    ]
    assert node_routes(nodes, "me") == {"10.244.1.0/24": "192.0.2.1"}
    assert node_routes(list(reversed(nodes)), "me") == {"10.244.1.0/24": "192.0.2.1"}


def test_the_flag_wins_on_the_same_and_on_an_overlapping_cidr() -> None:
    from_nodes = {
        "10.244.1.0/24": "192.0.2.2",  # same CIDR as a flag route: the flag's gateway
        "10.244.2.0/24": "192.0.2.3",  # inside the flag's /23 below: left out
        "10.244.8.0/24": "192.0.2.8",  # no conflict: kept
    }
    from_flag = {"10.244.1.0/24": "192.0.2.99", "10.244.2.0/23": "192.0.2.98"}
    assert merge_routes(from_nodes, from_flag) == {
        "10.244.1.0/24": "192.0.2.99",
        "10.244.2.0/23": "192.0.2.98",
        "10.244.8.0/24": "192.0.2.8",
    }
    assert merge_routes({}, from_flag) == from_flag
    assert merge_routes(from_nodes, {}) == from_nodes


class RecordingNetwork:
    """The network's side of the interface, recording what PeerRoutes hands it."""

    def __init__(self, refuse: str | None = None) -> None:
        self.unreachable: dict[str, str] = {}
        self.routes: list[dict[str, str]] = []
        self.cidrs: list[str] = []
        self._refuse = refuse

    async def set_pod_cidr_routes(self, routes: Mapping[str, str]) -> None:
        self.routes.append(dict(routes))

    async def set_pod_cidr(self, cidr: str) -> None:
        self.cidrs.append(cidr)
        if cidr == self._refuse:
            raise NetworkError(f"pod CIDR {cidr} is too small")


def peer_routes(network: RecordingNetwork, *, learn: bool = True) -> PeerRoutes:
    caller: Any = None  # the watch thread is not started here: only the loop's side runs
    flag = {"10.244.9.0/24": "192.0.2.9"}
    return PeerRoutes(caller, "me", network, flag, learn_cidr=learn)


async def test_list_events_and_deletion_drive_the_routes_and_the_own_cidr() -> None:
    net = RecordingNetwork()
    routes = peer_routes(net)
    routes.on_event("ADDED", node("b", "10.244.1.0/24", ("InternalIP", "192.0.2.2")))
    await routes.apply_once()  # before the first list: the flag's routes only
    assert net.routes == [{"10.244.9.0/24": "192.0.2.9"}]
    routes.on_list(
        [
            node("me", "10.244.0.0/24", ("InternalIP", "192.0.2.1")),
            node("b", "10.244.1.0/24", ("InternalIP", "192.0.2.2")),
        ]
    )
    await routes.apply_once()
    assert net.cidrs == ["10.244.0.0/24"]
    assert net.routes[-1] == {"10.244.1.0/24": "192.0.2.2", "10.244.9.0/24": "192.0.2.9"}
    await routes.apply_once()  # nothing changed: nothing handed over again
    assert len(net.routes) == 2 and net.cidrs == ["10.244.0.0/24"]
    routes.on_event("MODIFIED", node("b", "10.244.1.0/24", ("InternalIP", "192.0.2.22")))
    routes.on_event("ADDED", node("c", "10.244.9.0/24", ("InternalIP", "192.0.2.3")))
    await routes.apply_once()
    assert net.routes[-1] == {"10.244.1.0/24": "192.0.2.22", "10.244.9.0/24": "192.0.2.9"}
    routes.on_event("DELETED", node("b", "10.244.1.0/24"))
    await routes.apply_once()
    assert net.routes[-1] == {"10.244.9.0/24": "192.0.2.9"}
    routes.on_list(
        [node("me", "10.244.0.0/24"), node("d", "10.244.4.0/24", ("InternalIP", "192.0.2.4"))]
    )
    await routes.apply_once()  # a relist replaces the set whole
    assert net.routes[-1] == {"10.244.4.0/24": "192.0.2.4", "10.244.9.0/24": "192.0.2.9"}
    assert net.cidrs == ["10.244.0.0/24"]


async def test_refused_routes_are_handed_over_again() -> None:
    net = RecordingNetwork()
    routes = peer_routes(net)
    routes.on_list([node("b", "10.244.1.0/24", ("InternalIP", "203.0.113.7"))])
    await routes.apply_once()
    net.unreachable = {"10.244.1.0/24": "route 10.244.1.0/24 via 203.0.113.7: unreachable"}
    await routes.apply_once()
    assert len(net.routes) == 2
    net.unreachable = {}
    await routes.apply_once()
    assert len(net.routes) == 2


async def test_a_configured_cidr_is_not_replaced_and_a_refused_one_not_retried() -> None:
    net = RecordingNetwork()
    routes = peer_routes(net, learn=False)
    routes.on_list([node("me", "10.244.0.0/24")])
    await routes.apply_once()
    assert net.cidrs == []
    net = RecordingNetwork(refuse="10.244.0.0/31")
    routes = peer_routes(net)
    routes.on_list([node("me", "10.244.0.0/31")])
    await routes.apply_once()
    await routes.apply_once()
    assert net.cidrs == ["10.244.0.0/31"]
    assert net.routes == [{"10.244.9.0/24": "192.0.2.9"}], "routes go on after a refused CIDR"


def args(*argv: str) -> argparse.Namespace:
    from nodelet.cli.main import build_parser

    return build_parser().parse_args(["run", *argv])


def test_only_a_flag_or_a_config_file_makes_the_pod_cidr_explicit(tmp_path: Path) -> None:
    config, _ = build_config(args(), "n", "192.0.2.1")
    assert not config.pod_cidr_explicit and config.pod_cidr == "10.85.0.0/24"
    config, _ = build_config(args("--pod-cidr", "10.85.0.0/24"), "n", "192.0.2.1")
    assert config.pod_cidr_explicit, "the default's value given as a flag is still a choice"
    file = tmp_path / "kubelet.yaml"
    file.write_text(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
        "podCIDR: 10.244.7.0/24\n"
    )
    config, _ = build_config(args("--config", str(file)), "n", "192.0.2.1")
    assert config.pod_cidr_explicit and config.pod_cidr == "10.244.7.0/24"


def test_the_cidr_state_file_round_trips_and_survives_garbage(tmp_path: Path) -> None:
    state = CidrFile(tmp_path / "network")
    assert state.load() == CidrState()
    state.save(CidrState(learned="10.244.1.0/24", active="10.85.0.0/24"))
    assert CidrFile(tmp_path / "network").load() == CidrState("10.244.1.0/24", "10.85.0.0/24")
    state.path.write_text('{"learned": "not a cidr", "active": 5}')
    assert state.load() == CidrState()
    state.path.write_text("{")
    assert state.load() == CidrState()
