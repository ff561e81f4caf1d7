"""The Node object and node Lease kubelet posts, built as plain JSON for the ``kubernetes`` client.

Pure: the caller samples the machine (``noderesources``) and passes the clock and the previous
status. The shapes follow kubelet 1.20's node status setters (pkg/kubelet/nodestatus), its
initial Node (kubelet_node_status.go) and its lease controller (pkg/kubelet/nodelease).

Condition reasons and messages are kubelet's, word for word ("kubelet has sufficient memory
available"): the reasons start with ``Kubelet``, tools and alerts written for kubelet may match
either, and a "nodelet" message beside a ``KubeletReady`` reason would be neither kubelet's nor
consistent.
The node says who it really is in ``nodeInfo``: ``containerRuntimeVersion: nodelet://<version>``
and the ``-nodelet.<version>`` suffix of ``kubeletVersion``.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from nodelet.util.timefmt import rfc3339

if TYPE_CHECKING:
    from nodelet.cluster.noderesources import NodeResources, NodeSystemInfo

Json = dict[str, Any]

KUBELET_COMPAT_VERSION = "v1.20.2"
MAX_PODS = 110
"""kubelet's default ``maxPods``."""
LEASE_DURATION_SECONDS = 40
"""kubelet's default ``nodeLeaseDurationSeconds``."""
LEASE_NAMESPACE = "kube-node-lease"
_LEASE_RENEW_FRACTION = 0.25
"""kubelet's ``nodeLeaseRenewIntervalFraction``."""

_MI = 1024 * 1024
EVICTION_MEMORY_AVAILABLE_BYTES = 100 * _MI
"""kubelet's default hard eviction ``memory.available<100Mi``."""
EVICTION_NODEFS_AVAILABLE_PERCENT = 10
"""kubelet's default hard eviction ``nodefs.available<10%``."""
EVICTION_PID_AVAILABLE_PERCENT = 10
"""kubelet has no default ``pid.available`` threshold: unconfigured, it never reports
PIDPressure. nodelet has no eviction configuration, so it takes nodefs's 10 % of ``pid_max``
rather than report a node out of PIDs as healthy."""

# --- version ---------------------------------------------------------------------------------


def kubelet_version(nodelet_version: str) -> str:
    """``v1.20.2-nodelet.<nodelet_version>``: the kubelet API nodelet speaks, then who it is.

    kubectl shows it as is, and version-skew checks (``ParseSemantic``/``ParseGeneric``) see
    1.20. The pre-release form sorts just below v1.20.2, so a component gating a feature at
    exactly 1.20.2 assumes nodelet lacks it: nodelet implements a subset of kubelet, and claiming
    less is the safe side (EKS's ``v1.20.4-eks-…`` does the same). The nodelet version (PEP 440,
    e.g. ``0.1.0.dev3+g1a2b``) is cut into dot-separated semver identifiers, numeric ones without
    leading zeros, so the result always parses.
    """
    idents = [p for p in re.split(r"[^0-9A-Za-z-]+", nodelet_version) if p]
    idents = [str(int(p)) if p.isdigit() else p for p in idents]
    return f"{KUBELET_COMPAT_VERSION}-{'.'.join(['nodelet', *idents])}"


# --- labels ----------------------------------------------------------------------------------


class NodeLabelError(ValueError):
    """A ``--node-labels`` entry kubelet's flag validation would refuse."""


_KUBELET_LABELS = frozenset(
    {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
    }
)
"""k8s.io/kubelet/pkg/apis well_known_labels.go: the keys NodeRestriction lets a node set."""
_KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")

_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")
_NAME_RULE = (
    "must consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)


def _namespace(key: str) -> str:
    prefix, sep, _ = key.partition("/")
    return prefix if sep else ""


def _in_domain(namespace: str, domain: str) -> bool:
    return namespace == domain or namespace.endswith("." + domain)


def _is_kubernetes_label(key: str) -> bool:
    return any(_in_domain(_namespace(key), d) for d in ("kubernetes.io", "k8s.io"))


def _is_kubelet_label(key: str) -> bool:
    return key in _KUBELET_LABELS or any(
        _in_domain(_namespace(key), ns) for ns in _KUBELET_LABEL_NAMESPACES
    )


def _key_problems(key: str) -> list[str]:
    """apimachinery's IsQualifiedName."""
    parts = key.split("/")
    if len(parts) > 2:
        return [f"key {_NAME_RULE}, with an optional DNS subdomain prefix and one '/'"]
    problems = []
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            problems.append("prefix part must be non-empty")
        elif len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix):
            problems.append(
                "prefix part must be a lowercase DNS subdomain of at most 253 characters"
            )
    name = parts[-1]
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > 63:
        problems.append("name part must be no more than 63 characters")
    elif not _NAME.match(name):
        problems.append(f"name part {_NAME_RULE}")
    return problems


def _value_problems(value: str) -> list[str]:
    """apimachinery's IsValidLabelValue: empty is allowed."""
    if len(value) > 63:
        return ["value must be no more than 63 characters"]
    if value and not _NAME.match(value):
        return [f"value {_NAME_RULE}"]
    return []


def _label_problems(key: str, value: str) -> list[str]:
    problems = _key_problems(key) + _value_problems(value)
    if _is_kubernetes_label(key) and not _is_kubelet_label(key):
        problems.append(
            "the kubernetes.io and k8s.io namespaces are reserved: NodeRestriction lets a node "
            f"set only the {' and '.join(_KUBELET_LABEL_NAMESPACES)} prefixes and "
            f"{', '.join(sorted(_KUBELET_LABELS))}; label the node with kubectl instead"
        )
    return problems


def parse_node_labels(text: str) -> dict[str, str]:
    """``--node-labels "k=v,k2=v2"``, refused whole as kubelet refuses to start on a bad one.

    Keys and values are trimmed, empty entries skipped, a later key wins (cliflag's
    MapStringString). The checks are ValidateKubeletFlags': label syntax, and no
    kubernetes.io/k8s.io key outside what NodeRestriction (1.20) admits, because the API server
    would refuse to create a Node carrying it.
    """
    labels: dict[str, str] = {}
    problems: list[str] = []
    for entry in text.split(","):
        if not entry.strip():
            continue
        key, sep, value = entry.partition("=")
        if not sep:
            problems.append(f"{entry.strip()!r}: malformed pair, expected key=value")
            continue
        labels[key.strip()] = value.strip()
    for key, value in labels.items():
        problems.extend(f"{key!r}: {why}" for why in _label_problems(key, value))
    if problems:
        raise NodeLabelError("invalid --node-labels: " + "; ".join(problems))
    return labels


def node_labels(node_name: str, info: NodeSystemInfo, extra: Mapping[str, str]) -> dict[str, str]:
    """kubelet's initial labels; ``--node-labels`` are applied after them and win."""
    labels = {
        "kubernetes.io/hostname": node_name,
        "kubernetes.io/os": info.operating_system,
        "kubernetes.io/arch": info.architecture,
        "beta.kubernetes.io/os": info.operating_system,
        "beta.kubernetes.io/arch": info.architecture,
    }
    labels.update(extra)
    return labels


# --- status ----------------------------------------------------------------------------------


def node_addresses(node_ip: str, hostname: str) -> list[dict[str, str]]:
    """Without a cloud provider kubelet reports exactly these two, InternalIP first."""
    return [
        {"type": "InternalIP", "address": node_ip},
        {"type": "Hostname", "address": hostname},
    ]


def binary_quantity(n: int) -> str:
    """A BinarySI ``resource.Quantity`` in canonical form, as kubelet writes byte counts:
    every whole factor of 1024 becomes a suffix ("16302424Ki", "2Gi", "93492209510").
    Go prints values under 1024 as DecimalSI, so 1000 is "1k"."""
    if -1024 < n < 1024:
        return f"{n // 1000}k" if n and n % 1000 == 0 else str(n)
    suffixes = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
    exponent = 0
    while n % 1024 == 0 and exponent < len(suffixes) - 1:
        n //= 1024
        exponent += 1
    return f"{n}{suffixes[exponent]}"


def _percent_of(total: int, percent: int) -> int:
    """kubelet's GetThresholdQuantity: ``int64(float64(capacity) * float64(pct))`` with the
    percentage parsed into a float32, so 10 % is 0.10000000149011612 and the byte counts match
    kubelet's exactly."""
    fraction = struct.unpack("f", struct.pack("f", percent / 100))[0]
    return int(total * fraction)


def _resources(r: NodeResources) -> tuple[Json, Json]:
    """Capacity and allocatable: kubelet reserves its hard eviction thresholds (no kube- or
    system-reserved by default), never going below zero."""
    storage_reserved = _percent_of(r.ephemeral_storage_bytes, EVICTION_NODEFS_AVAILABLE_PERCENT)
    capacity = {
        "cpu": str(r.cpu_count),
        "memory": binary_quantity(r.memory_bytes),
        "ephemeral-storage": binary_quantity(r.ephemeral_storage_bytes),
        "pods": str(MAX_PODS),
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
    }
    allocatable = dict(capacity)
    allocatable["memory"] = binary_quantity(
        max(0, r.memory_bytes - EVICTION_MEMORY_AVAILABLE_BYTES)
    )
    allocatable["ephemeral-storage"] = binary_quantity(
        max(0, r.ephemeral_storage_bytes - storage_reserved)
    )
    return capacity, allocatable


def pressures(r: NodeResources) -> dict[str, bool]:
    """The eviction manager's verdicts: a signal is met when its available amount is below the
    threshold (strictly, as ``thresholdsMet`` compares)."""
    pids_available = r.pids_max - r.pids_in_use
    return {
        "MemoryPressure": r.memory_available_bytes < EVICTION_MEMORY_AVAILABLE_BYTES,
        "DiskPressure": r.ephemeral_available_bytes
        < _percent_of(r.ephemeral_storage_bytes, EVICTION_NODEFS_AVAILABLE_PERCENT),
        "PIDPressure": pids_available < _percent_of(r.pids_max, EVICTION_PID_AVAILABLE_PERCENT),
    }


# (reason, message) when the pressure is on / off; kubelet's setters.go, verbatim.
_PRESSURE_TEXT = {
    "MemoryPressure": (
        ("KubeletHasInsufficientMemory", "kubelet has insufficient memory available"),
        ("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ),
    "DiskPressure": (
        ("KubeletHasDiskPressure", "kubelet has disk pressure"),
        ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ),
    "PIDPressure": (
        ("KubeletHasInsufficientPID", "kubelet has insufficient PID available"),
        ("KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ),
}


def _wire_time(value: Any) -> Any:
    """A kept timestamp as the API takes it; a status read back through the client's
    ``sanitize_for_serialization`` may carry datetimes."""
    return rfc3339(value.timestamp()) if isinstance(value, datetime) else value


def _condition(
    ctype: str, status: bool, reason: str, message: str, now: float, previous: Mapping[str, Any]
) -> Json:
    """lastTransitionTime moves only when the status does, as every kubelet setter does."""
    wire = "True" if status else "False"
    before = previous.get(ctype) or {}
    kept = before.get("lastTransitionTime") if before.get("status") == wire else None
    return {
        "type": ctype,
        "status": wire,
        "lastHeartbeatTime": rfc3339(now),
        "lastTransitionTime": _wire_time(kept) if kept else rfc3339(now),
        "reason": reason,
        "message": message,
    }


def node_conditions(r: NodeResources, now: float, previous: Mapping[str, Any] | None) -> list[Json]:
    """MemoryPressure, DiskPressure, PIDPressure, then Ready: kubelet keeps Ready last for
    version-skewed masters (kubernetes#16961). Ready has no failing input here: nodelet posts
    status only while its runtime is up."""
    before = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
    conditions = []
    for ctype, pressed in pressures(r).items():
        reason, message = _PRESSURE_TEXT[ctype][0 if pressed else 1]
        conditions.append(_condition(ctype, pressed, reason, message, now, before))
    conditions.append(
        _condition("Ready", True, "KubeletReady", "kubelet is posting ready status", now, before)
    )
    return conditions


def node_status(
    resources: NodeResources,
    info: NodeSystemInfo,
    *,
    node_ip: str,
    hostname: str,
    kubelet_port: int,
    nodelet_version: str,
    now: float,
    previous: Mapping[str, Any] | None,
) -> Json:
    """A full NodeStatus. ``previous`` is the status last posted (or read back), for the
    conditions' transition times.

    ``kubeProxyVersion`` is "": nodelet runs no kube-proxy. kubelet 1.20 copied its own version
    there; newer kubelets leave it empty (KEP-4004, DisableNodeKubeProxyVersion).
    """
    capacity, allocatable = _resources(resources)
    return {
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": node_conditions(resources, now, previous),
        "addresses": node_addresses(node_ip, hostname),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "machineID": info.machine_id,
            "systemUUID": info.system_uuid,
            "bootID": info.boot_id,
            "kernelVersion": info.kernel_version,
            "osImage": info.os_image,
            "containerRuntimeVersion": f"nodelet://{nodelet_version}",
            "kubeletVersion": kubelet_version(nodelet_version),
            "kubeProxyVersion": "",
            "operatingSystem": info.operating_system,
            "architecture": info.architecture,
        },
    }


def build_node(node_name: str, labels: Mapping[str, str], status: Mapping[str, Any]) -> Json:
    """The body kubelet's registerWithAPIServer creates. The attach/detach annotation tells the
    attach-detach controller that it, not the node, attaches volumes (kubelet's default)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name,
            "labels": dict(labels),
            "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": {},
        "status": dict(status),
    }


# --- lease -----------------------------------------------------------------------------------


def micro_time(epoch: float) -> str:
    """metav1.MicroTime's wire format: RFC 3339, UTC, six fractional digits."""
    seconds, micros = divmod(round(epoch * 1_000_000), 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def lease_body(
    node_name: str, node_uid: str, now: float, *, resource_version: str | None = None
) -> Json:
    """The node's Lease in kube-node-lease, renewed as its heartbeat.

    Owned by the Node, as kubelet's setNodeOwnerFunc makes it, so deleting the Node collects
    the Lease. Without a UID (the Node not read yet) the reference is left out, as kubelet does,
    to be added on a later renewal. ``resource_version`` makes the body an optimistic update.
    """
    metadata: Json = {"name": node_name, "namespace": LEASE_NAMESPACE}
    if node_uid:
        metadata["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}
        ]
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": node_name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": micro_time(now),
        },
    }


def renew_interval(duration: int = LEASE_DURATION_SECONDS) -> float:
    """kubelet renews every quarter of the lease (10 s of 40 s): three renewals may fail before
    the node controller sees the lease expire."""
    return duration * _LEASE_RENEW_FRACTION
