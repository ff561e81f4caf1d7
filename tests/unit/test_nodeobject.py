"""The Node object and Lease as kubelet 1.20 posts them: labels, capacity, conditions, lease."""

from __future__ import annotations

import dataclasses
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from nodelet.cluster.nodeobject import (
    KUBELET_COMPAT_VERSION,
    LEASE_DURATION_SECONDS,
    NodeLabelError,
    binary_quantity,
    build_node,
    kubelet_version,
    lease_body,
    node_addresses,
    node_labels,
    node_status,
    parse_node_labels,
    renew_interval,
)
from nodelet.cluster.noderesources import (
    NodeResources,
    NodeSystemInfo,
    _os_image,
    read_system_info,
    sample_resources,
)

pytestmark = pytest.mark.unit

# semver.org's own regex, with Kubernetes' leading "v".
SEMVER = re.compile(
    r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)

KI = 1024
MI = 1024 * KI
GI = 1024 * MI
NOW = 1796205600.0  # 2026-12-02T10:00:00Z
NOW_TEXT = "2026-12-02T10:00:00Z"
LATER = NOW + 10
LATER_TEXT = "2026-12-02T10:00:10Z"
# kubelet's 10 % of 100Gi: int64(float64(capacity) * float64(float32(0.1))).
DISK = 100 * GI
DISK_THRESHOLD = 10737418400
PID_MAX = 32768
PID_THRESHOLD = 3276  # int(32768 * float32(0.1))

INFO = NodeSystemInfo(
    machine_id="m-id",
    system_uuid="s-uuid",
    boot_id="b-id",
    kernel_version="6.1.0-18-amd64",
    os_image="Debian GNU/Linux 12 (bookworm)",
    architecture="arm64",
)


def res(**changes: int) -> NodeResources:
    base = NodeResources(
        cpu_count=4,
        memory_bytes=16302424 * KI,
        memory_available_bytes=8 * GI,
        ephemeral_storage_bytes=DISK,
        ephemeral_available_bytes=50 * GI,
        pids_max=PID_MAX,
        pids_in_use=400,
    )
    return dataclasses.replace(base, **changes)


def status(
    r: NodeResources | None = None, now: float = NOW, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    return node_status(
        r or res(),
        INFO,
        node_ip="192.0.2.7",
        hostname="worker-1",
        kubelet_port=10250,
        nodelet_version="0.1.0",
        now=now,
        previous=previous,
    )


def condition(st: dict[str, Any], ctype: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in st["conditions"] if c["type"] == ctype)
    return found


# --- version ---------------------------------------------------------------------------------


def test_kubelet_version_names_the_kubelet_api_then_nodelet() -> None:
    assert kubelet_version("0.1.0") == "v1.20.2-nodelet.0.1.0"
    assert kubelet_version("0.1.0").startswith(KUBELET_COMPAT_VERSION + "-")


@pytest.mark.parametrize(
    "version", ["0.1.0", "0.1.0.dev3+g1a2b3c.d20261202", "1.2rc1", "01.002.0", "", "0.1.0+local_x"]
)
def test_kubelet_version_is_always_semver(version: str) -> None:
    built = kubelet_version(version)
    assert SEMVER.match(built), built
    assert built.startswith("v1.20.2-nodelet")


def test_kubelet_version_drops_leading_zeros_and_keeps_local_parts() -> None:
    assert kubelet_version("01.002.0") == "v1.20.2-nodelet.1.2.0"
    assert kubelet_version("0.1.0.dev3+g1a2b") == "v1.20.2-nodelet.0.1.0.dev3.g1a2b"
    assert kubelet_version("") == "v1.20.2-nodelet"


# --- labels ----------------------------------------------------------------------------------


def test_parse_node_labels_accepts_what_node_restriction_admits() -> None:
    text = (
        " tier=edge, node.kubernetes.io/pool=a,kubelet.kubernetes.io/x=,"
        "foo.node.kubernetes.io/y=1,topology.kubernetes.io/zone=z1,kubernetes.io/hostname=h,"
        "example.com/Team_A=blue.green,,"
    )
    assert parse_node_labels(text) == {
        "tier": "edge",
        "node.kubernetes.io/pool": "a",
        "kubelet.kubernetes.io/x": "",
        "foo.node.kubernetes.io/y": "1",
        "topology.kubernetes.io/zone": "z1",
        "kubernetes.io/hostname": "h",
        "example.com/Team_A": "blue.green",
    }


def test_parse_node_labels_empty_and_last_wins() -> None:
    assert parse_node_labels("") == {}
    assert parse_node_labels("a=1,a=2") == {"a": "2"}


@pytest.mark.parametrize(
    "label",
    [
        "node-role.kubernetes.io/worker",
        "kubernetes.io/role",
        "app.kubernetes.io/name",
        "k8s.io/thing",
        "x.k8s.io/thing",
        "node.k8s.io/thing",
    ],
)
def test_parse_node_labels_refuses_reserved_namespaces(label: str) -> None:
    with pytest.raises(NodeLabelError) as err:
        parse_node_labels(f"ok=1,{label}=v")
    message = str(err.value)
    assert repr(label) in message
    assert "reserved" in message
    assert "node.kubernetes.io" in message
    assert "'ok'" not in message


@pytest.mark.parametrize(
    ("text", "label", "why"),
    [
        ("-bad=1", "-bad", "name part must consist of alphanumeric"),
        ("a/b/c=1", "a/b/c", "one '/'"),
        ("Example.com/a=1", "Example.com/a", "prefix part must be a lowercase DNS subdomain"),
        ("/a=1", "/a", "prefix part must be non-empty"),
        ("example.com/=1", "example.com/", "name part must be non-empty"),
        ("k" * 64 + "=1", "k" * 64, "name part must be no more than 63 characters"),
        ("k=-v", "k", "value must consist of alphanumeric"),
        ("k=" + "v" * 64, "k", "value must be no more than 63 characters"),
        ("k=a b", "k", "value must consist"),
        ("novalue", "novalue", "malformed pair, expected key=value"),
    ],
)
def test_parse_node_labels_refuses_bad_syntax(text: str, label: str, why: str) -> None:
    with pytest.raises(NodeLabelError) as err:
        parse_node_labels(text)
    assert f"{label!r}: " in str(err.value)
    assert why in str(err.value)


def test_parse_node_labels_accepts_limits() -> None:
    key = "a" * 63
    assert parse_node_labels(f"{key}={'v' * 63}") == {key: "v" * 63}


def test_node_labels_are_kubelets_then_extra_wins() -> None:
    assert node_labels("worker-1", INFO, {}) == {
        "kubernetes.io/hostname": "worker-1",
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "arm64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "arm64",
    }
    labels = node_labels("worker-1", INFO, {"tier": "edge", "kubernetes.io/hostname": "alias"})
    assert labels["tier"] == "edge"
    assert labels["kubernetes.io/hostname"] == "alias"


# --- status ----------------------------------------------------------------------------------


def test_addresses_internal_ip_then_hostname() -> None:
    expected = [
        {"type": "InternalIP", "address": "192.0.2.7"},
        {"type": "Hostname", "address": "worker-1"},
    ]
    assert node_addresses("192.0.2.7", "worker-1") == expected
    assert status()["addresses"] == expected


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (1000, "1k"),
        (1023, "1023"),
        (1024, "1Ki"),
        (1536, "1536"),
        (16302424 * KI, "16302424Ki"),
        (3 * GI, "3Gi"),
        (5 * GI + 512 * MI, "5632Mi"),
        (96636764000, "96636764000"),
    ],
)
def test_binary_quantity_is_canonical(n: int, text: str) -> None:
    assert binary_quantity(n) == text


def test_capacity_in_kubelets_units() -> None:
    assert status()["capacity"] == {
        "cpu": "4",
        "memory": "16302424Ki",
        "ephemeral-storage": "100Gi",
        "pods": "110",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
    }


def test_allocatable_reserves_hard_eviction_thresholds() -> None:
    assert status()["allocatable"] == {
        "cpu": "4",
        "memory": f"{16302424 - 102400}Ki",
        "ephemeral-storage": str(DISK - DISK_THRESHOLD),
        "pods": "110",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
    }


def test_allocatable_never_negative() -> None:
    st = status(res(memory_bytes=50 * MI, memory_available_bytes=GI))
    assert st["allocatable"]["memory"] == "0"
    assert st["capacity"]["memory"] == "50Mi"


def test_conditions_in_kubelets_order_with_kubelets_words() -> None:
    st = status()
    assert [c["type"] for c in st["conditions"]] == [
        "MemoryPressure",
        "DiskPressure",
        "PIDPressure",
        "Ready",
    ]
    text = {c["type"]: (c["status"], c["reason"], c["message"]) for c in st["conditions"]}
    assert text == {
        "MemoryPressure": (
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        "DiskPressure": ("False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        "PIDPressure": ("False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        "Ready": ("True", "KubeletReady", "kubelet is posting ready status"),
    }
    for c in st["conditions"]:
        assert c["lastHeartbeatTime"] == NOW_TEXT
        assert c["lastTransitionTime"] == NOW_TEXT


@pytest.mark.parametrize(
    ("ctype", "ok", "pressed", "reason", "message"),
    [
        (
            "MemoryPressure",
            res(memory_available_bytes=100 * MI),
            res(memory_available_bytes=100 * MI - 1),
            "KubeletHasInsufficientMemory",
            "kubelet has insufficient memory available",
        ),
        (
            "DiskPressure",
            res(ephemeral_available_bytes=DISK_THRESHOLD),
            res(ephemeral_available_bytes=DISK_THRESHOLD - 1),
            "KubeletHasDiskPressure",
            "kubelet has disk pressure",
        ),
        (
            "PIDPressure",
            res(pids_in_use=PID_MAX - PID_THRESHOLD),
            res(pids_in_use=PID_MAX - PID_THRESHOLD + 1),
            "KubeletHasInsufficientPID",
            "kubelet has insufficient PID available",
        ),
    ],
)
def test_pressure_flips_at_threshold_both_ways(
    ctype: str, ok: NodeResources, pressed: NodeResources, reason: str, message: str
) -> None:
    calm = status(ok)
    assert [c["status"] for c in calm["conditions"]] == ["False", "False", "False", "True"]

    hot = status(pressed, now=LATER, previous=calm)
    cond = condition(hot, ctype)
    assert (cond["status"], cond["reason"], cond["message"]) == ("True", reason, message)
    assert cond["lastTransitionTime"] == LATER_TEXT
    others = [c for c in hot["conditions"] if c["type"] != ctype]
    assert all(c["lastTransitionTime"] == NOW_TEXT for c in others)

    back = status(ok, now=LATER + 10, previous=hot)
    assert condition(back, ctype)["status"] == "False"
    assert condition(back, ctype)["lastTransitionTime"] == "2026-12-02T10:00:20Z"
    assert condition(back, "Ready")["lastTransitionTime"] == NOW_TEXT


def test_unchanged_condition_keeps_transition_and_moves_heartbeat() -> None:
    first = status()
    second = status(now=LATER, previous=first)
    for c in second["conditions"]:
        assert c["lastHeartbeatTime"] == LATER_TEXT
        assert c["lastTransitionTime"] == NOW_TEXT


def test_transition_kept_from_a_status_read_back_as_datetimes() -> None:
    read_back = status()
    for c in read_back["conditions"]:
        c["lastTransitionTime"] = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    st = status(now=LATER, previous=read_back)
    assert condition(st, "Ready")["lastTransitionTime"] == "2026-01-02T03:04:05Z"


def test_previous_without_conditions_starts_transitions_now() -> None:
    st = status(now=LATER, previous={"capacity": {}})
    assert all(c["lastTransitionTime"] == LATER_TEXT for c in st["conditions"])


def test_node_info_and_daemon_endpoints() -> None:
    st = status()
    assert st["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
    assert st["nodeInfo"] == {
        "machineID": "m-id",
        "systemUUID": "s-uuid",
        "bootID": "b-id",
        "kernelVersion": "6.1.0-18-amd64",
        "osImage": "Debian GNU/Linux 12 (bookworm)",
        "containerRuntimeVersion": "nodelet://0.1.0",
        "kubeletVersion": "v1.20.2-nodelet.0.1.0",
        "kubeProxyVersion": "",
        "operatingSystem": "linux",
        "architecture": "arm64",
    }


def test_build_node_body() -> None:
    st = status()
    labels = node_labels("worker-1", INFO, {"tier": "edge"})
    assert build_node("worker-1", labels, st) == {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "worker-1",
            "labels": labels,
            "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": {},
        "status": st,
    }


# --- lease -----------------------------------------------------------------------------------


def test_lease_body_for_create() -> None:
    assert lease_body("worker-1", "uid-1", NOW + 0.123456) == {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "worker-1",
            "namespace": "kube-node-lease",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": "worker-1", "uid": "uid-1"}
            ],
        },
        "spec": {
            "holderIdentity": "worker-1",
            "leaseDurationSeconds": 40,
            "renewTime": "2026-12-02T10:00:00.123456Z",
        },
    }


def test_lease_body_for_update_carries_resource_version() -> None:
    body = lease_body("worker-1", "uid-1", NOW, resource_version="42")
    assert body["metadata"]["resourceVersion"] == "42"
    assert body["spec"]["renewTime"] == "2026-12-02T10:00:00.000000Z"


def test_lease_without_node_uid_has_no_owner() -> None:
    assert "ownerReferences" not in lease_body("worker-1", "", NOW)["metadata"]


@pytest.mark.parametrize(
    ("now", "text"),
    [
        (NOW + 0.9999996, "2026-12-02T10:00:01.000000Z"),
        (NOW + 0.000001, "2026-12-02T10:00:00.000001Z"),
        (NOW + 59.5, "2026-12-02T10:00:59.500000Z"),
    ],
)
def test_lease_renew_time_is_micro_time(now: float, text: str) -> None:
    renew = lease_body("n", "u", now)["spec"]["renewTime"]
    assert renew == text
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", renew)


def test_renew_interval_is_a_quarter_of_the_lease() -> None:
    assert LEASE_DURATION_SECONDS == 40
    assert renew_interval() == 10.0
    assert renew_interval(60) == 15.0


# --- this machine ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "image"),
    [
        (
            'NAME="Debian"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n',
            "Debian GNU/Linux 12 (bookworm)",
        ),
        ("PRETTY_NAME='Alpine Linux v3.19'\n", "Alpine Linux v3.19"),
        ("PRETTY_NAME=Gentoo\n", "Gentoo"),
        ('NAME="NixOS"\n', "Linux"),
        ('PRETTY_NAME=""\n', "Linux"),
    ],
)
def test_os_image_is_pretty_name_unquoted(tmp_path: Path, text: str, image: str) -> None:
    release = tmp_path / "os-release"
    release.write_text(text)
    assert _os_image(release) == image
    assert _os_image(tmp_path / "missing") == "Linux"


def test_sample_and_system_info_on_this_machine(tmp_path: Path) -> None:
    r = sample_resources(tmp_path / "not" / "yet")
    assert r.cpu_count == os.cpu_count()
    assert r.memory_bytes == psutil.virtual_memory().total
    assert 0 < r.memory_available_bytes <= r.memory_bytes
    fs = os.statvfs(tmp_path)
    assert r.ephemeral_storage_bytes == fs.f_blocks * fs.f_frsize
    assert 0 <= r.ephemeral_available_bytes <= r.ephemeral_storage_bytes
    assert r.pids_max == int(Path("/proc/sys/kernel/pid_max").read_text())
    assert 0 < r.pids_in_use < r.pids_max

    info = read_system_info()
    assert info.kernel_version == os.uname().release
    assert info.operating_system == "linux"
    assert info.architecture == {"x86_64": "amd64", "aarch64": "arm64"}.get(
        os.uname().machine, info.architecture
    )
    assert info.architecture in {"amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64"}
    assert re.fullmatch(r"[0-9a-f-]{36}", info.boot_id)
    assert info.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    if Path("/etc/machine-id").exists():
        assert info.machine_id == Path("/etc/machine-id").read_text().strip()
    assert info.os_image
    assert '"' not in info.os_image
    st = node_status(
        r,
        info,
        node_ip="192.0.2.7",
        hostname="h",
        kubelet_port=10250,
        nodelet_version="0.1.0",
        now=NOW,
        previous=None,
    )
    assert st["capacity"]["cpu"] == str(os.cpu_count())
