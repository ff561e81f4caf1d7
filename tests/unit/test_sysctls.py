"""kubelet's sysctl admission (safe set, namespaces, ``--allowed-unsafe-sysctls``) and the
holder's sysctl paths."""

from __future__ import annotations

from typing import Any

import pytest

from nodelet.holder.sysctl import proc_path
from nodelet.security.sysctls import (
    allowlist_errors,
    check_sysctls,
    kernel_version,
    namespace_of,
    normalize,
    safe_sysctls,
    sandbox_sysctls,
)

pytestmark = pytest.mark.unit

NEW = (6, 18)
SAFE = [
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_notsent_lowat",
]  # fmt: skip


def entries(*names: str) -> list[dict[str, Any]]:
    return [{"name": name, "value": "1"} for name in names]


def test_the_safe_set_is_kubelets() -> None:
    assert list(safe_sysctls(NEW)) == SAFE


def test_an_older_kernel_drops_what_it_does_not_namespace() -> None:
    assert safe_sysctls((4, 4)) == (*SAFE[:6],)
    assert "net.ipv4.tcp_rmem" not in safe_sysctls((4, 14))
    assert "net.ipv4.tcp_rmem" in safe_sysctls((4, 15))
    assert safe_sysctls(None) == (*SAFE[:5],)


def test_kernel_version() -> None:
    assert kernel_version("6.18.44-fc-v1045") == (6, 18)
    assert kernel_version("garbage") is None
    assert kernel_version() is not None


@pytest.mark.parametrize("name", SAFE)
def test_every_safe_sysctl_is_admitted_in_its_own_namespaces(name: str) -> None:
    assert check_sysctls(entries(name), False, False, kernel=NEW) == []


@pytest.mark.parametrize(
    ("name", "host_network", "host_ipc", "reason"),
    [
        ("net.ipv4.ip_local_port_range", True, False,
         'forbidden sysctl: "net.ipv4.ip_local_port_range" not allowed with host net enabled'),
        ("kernel.shm_rmid_forced", False, True,
         'forbidden sysctl: "kernel.shm_rmid_forced" not allowed with host ipc enabled'),
        ("net.core.somaxconn", False, False,
         'forbidden sysctl: "net.core.somaxconn" not allowlisted'),
        ("vm.swappiness", False, False, 'forbidden sysctl: "vm.swappiness" not allowlisted'),
        ("kernel.hostname", False, False,
         'forbidden sysctl: "kernel.hostname" not allowlisted'),
    ],
)  # fmt: skip
def test_kubelet_refuses_with_its_message(
    name: str, host_network: bool, host_ipc: bool, reason: str
) -> None:
    assert check_sysctls(entries(name), host_network, host_ipc, kernel=NEW) == [reason]


def test_safe_ipc_sysctl_is_fine_with_host_network_and_net_with_host_ipc() -> None:
    assert check_sysctls(entries("kernel.shm_rmid_forced"), True, False, kernel=NEW) == []
    assert check_sysctls(entries("net.ipv4.tcp_syncookies"), False, True, kernel=NEW) == []


def test_every_refused_entry_is_reported() -> None:
    refused = check_sysctls(entries("a.b", "net.ipv4.tcp_rmem", "c.d"), False, False, kernel=NEW)
    assert refused == [
        'forbidden sysctl: "a.b" not allowlisted',
        'forbidden sysctl: "c.d" not allowlisted',
    ]


def test_allowed_unsafe_names_and_prefixes() -> None:
    allowed = ["net.core.somaxconn", "kernel.msg*", "net/ipv6/*"]
    assert (
        check_sysctls(entries("net.core.somaxconn", "kernel.msgmax"), False, False, allowed) == []
    )
    assert check_sysctls(entries("net.ipv6.conf.all.forwarding"), False, False, allowed) == []
    assert check_sysctls(entries("net.core.somaxconn"), True, False, allowed) == [
        'forbidden sysctl: "net.core.somaxconn" not allowed with host net enabled'
    ]
    assert check_sysctls(entries("kernel.msgmax"), False, True, allowed) == [
        'forbidden sysctl: "kernel.msgmax" not allowed with host ipc enabled'
    ]
    assert check_sysctls(entries("net.core.rmem_max"), False, False, allowed) == [
        'forbidden sysctl: "net.core.rmem_max" not allowlisted'
    ]


def test_an_unnamespaced_pattern_allows_nothing() -> None:
    """kubelet refuses to start with it; here it is left out (the config check reports it)."""
    assert check_sysctls(entries("vm.swappiness"), False, False, ["vm.swappiness", "*"]) == [
        'forbidden sysctl: "vm.swappiness" not allowlisted'
    ]


def test_allowlist_errors_are_kubelets_startup_errors() -> None:
    assert allowlist_errors(["net.*", "kernel.sem", "kernel.shm_rmid_forced", "fs.mqueue.*"]) == []
    assert allowlist_errors(["vm.swappiness", "vm.*", "Net.x", "a.*.b"]) == [
        'the sysctl "vm.swappiness" are not known to be namespaced',
        'the sysctls "vm.*" are not known to be namespaced',
        'sysctl "Net.x" must have at most 253 characters and match regex '
        "([a-z0-9]([-_a-z0-9]*[a-z0-9])?[./])*([a-z0-9][-_a-z0-9]*)?[a-z0-9*]",
        'sysctl "a.*.b" must have at most 253 characters and match regex '
        "([a-z0-9]([-_a-z0-9]*[a-z0-9])?[./])*([a-z0-9][-_a-z0-9]*)?[a-z0-9*]",
    ]


def test_slash_form_is_normalised_like_kubelet() -> None:
    assert normalize("net/ipv4/conf/eno2.100/rp_filter") == "net.ipv4.conf.eno2/100.rp_filter"
    assert normalize("net.ipv4.conf.eno2/100.rp_filter") == "net.ipv4.conf.eno2/100.rp_filter"
    assert normalize("kernel/shm_rmid_forced") == "kernel.shm_rmid_forced"
    assert check_sysctls(entries("net/ipv4/ip_local_port_range"), False, False, kernel=NEW) == []


def test_namespaces() -> None:
    assert namespace_of("kernel.sem") == "ipc"
    assert namespace_of("kernel.semx") is None
    assert namespace_of("kernel.shmmax") == "ipc"
    assert namespace_of("fs.mqueue.queues_max") == "ipc"
    assert namespace_of("net.core.somaxconn") == "net"
    assert namespace_of("fs.file-max") is None


def test_malformed_entries_are_refused_not_crashed_on() -> None:
    assert check_sysctls([{"value": "1"}, 3], False, False, kernel=NEW) == [
        "forbidden sysctl: None is not a sysctl name",
        "forbidden sysctl: None is not a sysctl name",
    ]
    assert check_sysctls(None, False, False) == []


def test_sandbox_sysctls_are_the_pods_in_dot_form_and_order() -> None:
    spec = {
        "securityContext": {
            "sysctls": [
                {"name": "net/ipv4/ip_local_port_range", "value": "1024 2048"},
                {"name": "kernel.shm_rmid_forced", "value": "1"},
            ]
        }
    }
    assert sandbox_sysctls(spec) == (
        ("net.ipv4.ip_local_port_range", "1024 2048"),
        ("kernel.shm_rmid_forced", "1"),
    )
    assert sandbox_sysctls({}) == ()
    assert sandbox_sysctls({"securityContext": {"sysctls": [{"name": 1}]}}) == ()


def test_holder_paths_stay_in_proc_sys() -> None:
    assert proc_path("net.ipv4.ip_local_port_range") == "/proc/sys/net/ipv4/ip_local_port_range"
    assert proc_path("net.ipv4.conf.eno2/100.rp_filter") == (
        "/proc/sys/net/ipv4/conf/eno2.100/rp_filter"
    )
    for bad in ("net..x", "net.//.x", ".net", "net.", "a.\0"):
        with pytest.raises(ValueError, match="invalid sysctl name"):
            proc_path(bad)
