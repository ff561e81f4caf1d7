"""From a pod's ``resources`` to its QoS class and cgroup limits, with kubelet's formulas.

Pure: no IO. The references are kubelet's ``cm/helpers_linux.go`` (``MilliCPUToShares``,
``MilliCPUToQuota``, ``ResourceConfigForPod``), ``kuberuntime``'s ``calculateLinuxResources``
(a container's own cgroup), ``apis/core/v1/helper/qos`` (``GetPodQOS``), component-helpers'
``PodRequests``/``PodLimits`` (sums with init and sidecar containers) and runc's
``ConvertCPUSharesToCgroupV2Value``.

Only ``cpu`` and ``memory`` matter here. Pod-level ``spec.resources`` (the PodLevelResources
feature) and pod ``overhead`` (set by a RuntimeClass) are not read: the manifest layer refuses
the first and nodelet has no RuntimeClass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from nodelet.cgroups.quantity import QuantityError, bytes_of, milli_cpu, parse_quantity

GUARANTEED = "Guaranteed"
BURSTABLE = "Burstable"
BEST_EFFORT = "BestEffort"
QOS_CLASSES = (GUARANTEED, BURSTABLE, BEST_EFFORT)

MIN_SHARES = 2
MAX_SHARES = 262144
SHARES_PER_CPU = 1024
MILLI_CPU_TO_CPU = 1000
QUOTA_PERIOD_US = 100000
MIN_QUOTA_PERIOD_US = 1000
"""The kernel refuses a CFS quota below 1 ms."""

_QOS_RESOURCES = ("cpu", "memory")

ResourceList = dict[str, Fraction]


@dataclass(frozen=True)
class ContainerResources:
    """One container's cpu (millicores) and memory (bytes), after kubelet's defaulting."""

    cpu_request_milli: int | None
    cpu_limit_milli: int | None
    memory_request: int | None
    memory_limit: int | None


@dataclass(frozen=True)
class CgroupLimits:
    """What a cgroup is given: ``None`` means unlimited (the kernel default)."""

    cpu_shares: int
    cpu_quota_us: int | None
    cpu_period_us: int
    memory_limit: int | None
    pids_limit: int | None


def container_resources(container: Mapping[str, Any]) -> ContainerResources:
    """``container["resources"]`` in kubelet's units: a limit without a request makes the
    request (API defaulting, which kubelet applies to static pods too)."""
    requests, limits = _defaulted(container)
    return ContainerResources(
        cpu_request_milli=_milli(requests.get("cpu")),
        cpu_limit_milli=_milli(limits.get("cpu")),
        memory_request=_bytes(requests.get("memory")),
        memory_limit=_bytes(limits.get("memory")),
    )


def qos_class(pod_spec: Mapping[str, Any]) -> str:
    """kubelet's ``GetPodQOS``: BestEffort without any cpu/memory request or limit above zero;
    Guaranteed when every container (init containers too) has both a cpu and a memory limit
    and the pod's summed requests equal its summed limits; Burstable otherwise."""
    requests: ResourceList = {}
    limits: ResourceList = {}
    guaranteed = True
    for container in _all_containers(pod_spec):
        container_requests, container_limits = _defaulted(container)
        for name, value in container_requests.items():
            if value > 0:
                requests[name] = requests.get(name, Fraction(0)) + value
        found = set()
        for name, value in container_limits.items():
            if value > 0:
                found.add(name)
                limits[name] = limits.get(name, Fraction(0)) + value
        if found != set(_QOS_RESOURCES):
            guaranteed = False
    if not requests and not limits:
        return BEST_EFFORT
    if guaranteed and requests == limits:
        return GUARANTEED
    return BURSTABLE


def cpu_shares(milli: int | None) -> int:
    """``MilliCPUToShares``: 1024 per CPU, at least 2 (also for no request), at most 262144."""
    if not milli:
        return MIN_SHARES
    return max(MIN_SHARES, min(MAX_SHARES, milli * SHARES_PER_CPU // MILLI_CPU_TO_CPU))


def cpu_quota(milli: int | None, period_us: int = QUOTA_PERIOD_US) -> int | None:
    """``MilliCPUToQuota``: the CFS quota for ``milli`` over ``period_us``, at least 1 ms;
    ``None`` (no quota) without a limit."""
    if not milli:
        return None
    return max(MIN_QUOTA_PERIOD_US, milli * period_us // MILLI_CPU_TO_CPU)


def cpu_weight(shares: int) -> int:
    """cgroup v2 ``cpu.weight`` for v1 ``shares``, runc's linear map of [2, 262144] onto
    [1, 10000]; 0 stays 0 (unset), as in runc. Shares outside the kernel's range are clamped
    first (runc would wrap a 1 around as an unsigned number)."""
    if shares == 0:
        return 0
    shares = max(MIN_SHARES, min(MAX_SHARES, shares))
    return 1 + ((shares - 2) * 9999) // 262142


def container_limits(res: ContainerResources, pids_limit: int | None) -> CgroupLimits:
    """A container's own cgroup, as kuberuntime's ``calculateLinuxResources`` fills it (CFS
    quota enforced, the default 100 ms period)."""
    request = res.cpu_request_milli or res.cpu_limit_milli
    return CgroupLimits(
        cpu_shares=cpu_shares(request),
        cpu_quota_us=cpu_quota(res.cpu_limit_milli),
        cpu_period_us=QUOTA_PERIOD_US,
        memory_limit=res.memory_limit or None,
        pids_limit=pids_limit,
    )


def pod_limits(pod_spec: Mapping[str, Any], pids_limit: int | None) -> CgroupLimits:
    """kubelet's ``ResourceConfigForPod`` (CFS quota enforced, 100 ms period).

    Requests and limits are summed over the containers and the restartable (sidecar) init
    containers, then raised to what any one init container needs while it runs (itself plus
    the sidecars started before it). A Burstable pod gets a CPU quota only when every
    container, and every init container with its sidecars, declares a CPU limit, and a memory
    limit likewise; a BestEffort pod gets 2 shares and nothing else.
    """
    requests = _aggregate(pod_spec, 0)
    declared = {"cpu": True, "memory": True}
    limits = _aggregate(pod_spec, 1, declared)
    qos = qos_class(pod_spec)
    shares = cpu_shares(_milli(requests.get("cpu")))
    quota = cpu_quota(_milli(limits.get("cpu")))
    memory = _bytes(limits.get("memory"))
    if qos == BEST_EFFORT:
        return CgroupLimits(MIN_SHARES, None, QUOTA_PERIOD_US, None, pids_limit)
    if qos == BURSTABLE:
        quota = quota if declared["cpu"] else None
        memory = memory if declared["memory"] else None
    return CgroupLimits(shares, quota, QUOTA_PERIOD_US, memory or None, pids_limit)


def _aggregate(
    pod_spec: Mapping[str, Any], which: int, declared: dict[str, bool] | None = None
) -> ResourceList:
    """component-helpers' ``AggregateContainerRequests`` (``which`` 0) or ``...Limits`` (1);
    ``declared`` is cleared for a resource some container (as ``ContainerFn`` sees it) lacks."""

    def seen(resources: ResourceList) -> None:
        if declared is not None:
            for name in declared:
                if not resources.get(name):
                    declared[name] = False

    total: ResourceList = {}
    for container in _list(pod_spec, "containers"):
        own = _defaulted(container)[which]
        seen(own)
        _add(total, own)
    sidecars: ResourceList = {}
    init_peak: ResourceList = {}
    for container in _list(pod_spec, "initContainers"):
        own = _defaulted(container)[which]
        if container.get("restartPolicy") == "Always":
            _add(total, own)
            _add(sidecars, own)
            running = dict(sidecars)
        else:
            running = dict(own)
            _add(running, sidecars)
        seen(running)
        _max(init_peak, running)
    _max(total, init_peak)
    return total


def _defaulted(container: Mapping[str, Any]) -> tuple[ResourceList, ResourceList]:
    """(requests, limits) of cpu and memory, a missing request defaulted to its limit."""
    resources = container.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise QuantityError(f"container {container.get('name')!r}: resources must be a mapping")
    requests = _resource_list(container, resources, "requests")
    limits = _resource_list(container, resources, "limits")
    for name, limit in limits.items():
        requests.setdefault(name, limit)
        if requests[name] > limit:
            raise QuantityError(
                f"container {container.get('name')!r}: resources.requests.{name} must be less "
                f"than or equal to {name} limit"
            )
    return requests, limits


def _resource_list(
    container: Mapping[str, Any], resources: Mapping[str, Any], key: str
) -> ResourceList:
    raw = resources.get(key) or {}
    if not isinstance(raw, Mapping):
        raise QuantityError(f"container {container.get('name')!r}: resources.{key} must be a map")
    parsed: ResourceList = {}
    for name in _QOS_RESOURCES:
        if raw.get(name) is not None:
            try:
                parsed[name] = parse_quantity(raw[name])
            except QuantityError as err:
                raise QuantityError(
                    f"container {container.get('name')!r}: resources.{key}.{name}: {err}"
                ) from None
    return parsed


def _milli(value: Fraction | None) -> int | None:
    return None if value is None else milli_cpu(value)


def _bytes(value: Fraction | None) -> int | None:
    return None if value is None else bytes_of(value)


def _all_containers(pod_spec: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    return [*_list(pod_spec, "containers"), *_list(pod_spec, "initContainers")]


def _list(pod_spec: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = pod_spec.get(key) or []
    return [item for item in items if isinstance(item, Mapping)]


def _add(total: ResourceList, more: ResourceList) -> None:
    for name, value in more.items():
        total[name] = total.get(name, Fraction(0)) + value


def _max(peak: ResourceList, other: ResourceList) -> None:
    for name, value in other.items():
        if name not in peak or value > peak[name]:
            peak[name] = value
