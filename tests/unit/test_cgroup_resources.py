"""QoS classes and cgroup limits computed exactly as kubelet computes them."""

from __future__ import annotations

from typing import Any

import pytest

from nodelet.cgroups.quantity import QuantityError
from nodelet.cgroups.resources import (
    CgroupLimits,
    ContainerResources,
    container_limits,
    container_resources,
    cpu_quota,
    cpu_shares,
    cpu_weight,
    pod_limits,
    qos_class,
)

pytestmark = pytest.mark.unit

MI = 2**20


def ctr(
    name: str = "c",
    requests: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    restart_policy: str | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": "x"}
    resources: dict[str, Any] = {}
    if requests is not None:
        resources["requests"] = requests
    if limits is not None:
        resources["limits"] = limits
    if resources:
        container["resources"] = resources
    if restart_policy:
        container["restartPolicy"] = restart_policy
    return container


def guaranteed(name: str = "g", cpu: str = "100m", memory: str = "64Mi") -> dict[str, Any]:
    both = {"cpu": cpu, "memory": memory}
    return ctr(name, dict(both), dict(both))


def spec(*containers: dict[str, Any], init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    pod: dict[str, Any] = {"containers": list(containers)}
    if init is not None:
        pod["initContainers"] = init
    return pod


# -- container resources ------------------------------------------------------------------------


def test_container_resources_units() -> None:
    res = container_resources(
        ctr(requests={"cpu": "250m", "memory": "64Mi"}, limits={"cpu": 1, "memory": "1G"})
    )
    assert res == ContainerResources(250, 1000, 64 * MI, 10**9)


def test_limit_without_request_defaults_the_request() -> None:
    res = container_resources(ctr(limits={"cpu": "500m", "memory": "32Mi"}))
    assert res == ContainerResources(500, 500, 32 * MI, 32 * MI)


def test_no_resources_at_all() -> None:
    assert container_resources({"name": "c"}) == ContainerResources(None, None, None, None)
    assert container_resources(ctr(requests={}, limits={})) == ContainerResources(
        None, None, None, None
    )


def test_other_resources_are_ignored() -> None:
    res = container_resources(ctr(limits={"ephemeral-storage": "1Gi", "nvidia.com/gpu": 1}))
    assert res == ContainerResources(None, None, None, None)


def test_request_above_limit_is_refused_as_kubelet_validation_does() -> None:
    with pytest.raises(QuantityError, match=r"'web'.*requests.cpu must be less than or equal"):
        container_resources(ctr("web", requests={"cpu": "2"}, limits={"cpu": "1"}))


def test_bad_quantity_names_the_container_and_field() -> None:
    with pytest.raises(QuantityError, match=r"'web': resources.limits.memory: .*'lots'"):
        container_resources(ctr("web", limits={"memory": "lots"}))
    with pytest.raises(QuantityError, match=r"'web': resources.requests.cpu: .*negative"):
        container_resources(ctr("web", requests={"cpu": "-1"}))


# -- QoS ----------------------------------------------------------------------------------------

QOS_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("no resources", spec(ctr()), "BestEffort"),
    ("two empty containers", spec(ctr("a"), ctr("b")), "BestEffort"),
    ("zero requests only", spec(ctr(requests={"cpu": "0", "memory": "0"})), "BestEffort"),
    ("only non-QoS resources", spec(ctr(limits={"ephemeral-storage": "1Gi"})), "BestEffort"),
    ("requests == limits", spec(guaranteed()), "Guaranteed"),
    ("two guaranteed", spec(guaranteed("a"), guaranteed("b", "1", "1Gi")), "Guaranteed"),
    ("only limits (defaulted)", spec(ctr(limits={"cpu": "1", "memory": "1Gi"})), "Guaranteed"),
    (
        "guaranteed plus an extra resource",
        spec(ctr(limits={"cpu": "1", "memory": "1Gi", "ephemeral-storage": "1Gi"})),
        "Guaranteed",
    ),
    ("equal in other spellings", spec(ctr(requests={"cpu": "1000m", "memory": "1024Mi"},
                                          limits={"cpu": "1", "memory": "1Gi"})), "Guaranteed"),
    ("only requests", spec(ctr(requests={"cpu": "100m"})), "Burstable"),
    ("requests < limits", spec(ctr(requests={"cpu": "100m", "memory": "64Mi"},
                                   limits={"cpu": "200m", "memory": "64Mi"})), "Burstable"),
    ("cpu limit only", spec(ctr(limits={"cpu": "1"})), "Burstable"),
    ("memory limit only", spec(ctr(limits={"memory": "1Gi"})), "Burstable"),
    ("a zero cpu limit", spec(ctr(limits={"cpu": "0", "memory": "1Gi"})), "Burstable"),
    ("guaranteed + best effort", spec(guaranteed(), ctr("b")), "Burstable"),
    ("guaranteed + burstable", spec(guaranteed(), ctr("b", requests={"cpu": "1"})), "Burstable"),
    ("guaranteed + best-effort init", spec(guaranteed(), init=[ctr("i")]), "Burstable"),
    ("guaranteed init, best-effort app", spec(ctr("a"), init=[guaranteed("i")]), "Burstable"),
    ("guaranteed init and app", spec(guaranteed(), init=[guaranteed("i", "2", "2Gi")]),
     "Guaranteed"),
    ("burstable init only", spec(ctr("a"), init=[ctr("i", requests={"memory": "1Gi"})]),
     "Burstable"),
    ("best-effort init and app", spec(ctr("a"), init=[ctr("i")]), "BestEffort"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("pod", "qos"), [(c[1], c[2]) for c in QOS_CASES], ids=[c[0] for c in QOS_CASES]
)
def test_qos_class(pod: dict[str, Any], qos: str) -> None:
    assert qos_class(pod) == qos


def test_qos_compares_exact_sums_not_rounded_values() -> None:
    # 0.5m and 0.6m both round up to 1 millicore, but they differ: kubelet says Burstable.
    pod = spec(ctr(requests={"cpu": "0.5m", "memory": "1"}, limits={"cpu": "0.6m", "memory": 1}))
    assert qos_class(pod) == "Burstable"


# -- formulas -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("milli", "shares"),
    [(None, 2), (0, 2), (1, 2), (2, 2), (3, 3), (10, 10), (100, 102), (500, 512), (1000, 1024),
     (2000, 2048), (255999, 262142), (256000, 262144), (300000, 262144), (10**12, 262144)],
)  # fmt: skip
def test_cpu_shares(milli: int | None, shares: int) -> None:
    assert cpu_shares(milli) == shares


@pytest.mark.parametrize(
    ("milli", "period", "quota"),
    [(None, 100000, None), (0, 100000, None), (1, 100000, 1000), (2, 100000, 1000),
     (10, 100000, 1000), (11, 100000, 1100), (200, 100000, 20000), (1000, 100000, 100000),
     (2500, 100000, 250000), (200, 50000, 10000), (15, 50000, 1000), (10**6, 100000, 10**8)],
)  # fmt: skip
def test_cpu_quota(milli: int | None, period: int, quota: int | None) -> None:
    assert cpu_quota(milli, period) == quota


def test_cpu_quota_default_period() -> None:
    assert cpu_quota(200) == 20000


@pytest.mark.parametrize(
    ("shares", "weight"),
    [(0, 0), (1, 1), (2, 1), (3, 1), (28, 1), (29, 2), (1024, 39), (2048, 79), (262144, 10000),
     (10**9, 10000)],
)  # fmt: skip
def test_cpu_weight(shares: int, weight: int) -> None:
    assert cpu_weight(shares) == weight


# -- container limits ---------------------------------------------------------------------------


def test_container_limits_requests_and_limits() -> None:
    res = container_resources(
        ctr(requests={"cpu": "100m", "memory": "16Mi"}, limits={"cpu": "200m", "memory": "32Mi"})
    )
    assert container_limits(res, 100) == CgroupLimits(102, 20000, 100000, 32 * MI, 100)


def test_container_limits_best_effort() -> None:
    res = container_resources(ctr())
    assert container_limits(res, None) == CgroupLimits(2, None, 100000, None, None)


def test_container_limits_shares_from_limit_without_request() -> None:
    # kuberuntime repeats the API defaulting for containers that bypassed it.
    res = ContainerResources(None, 500, None, None)
    assert container_limits(res, None).cpu_shares == 512


def test_container_limits_zero_memory_limit_is_unlimited() -> None:
    assert container_limits(ContainerResources(None, None, None, 0), None).memory_limit is None


# -- pod limits ---------------------------------------------------------------------------------


def test_pod_limits_guaranteed_sums() -> None:
    pod = spec(guaranteed("a", "100m", "64Mi"), guaranteed("b", "150m", "32Mi"))
    assert pod_limits(pod, 1024) == CgroupLimits(256, 25000, 100000, 96 * MI, 1024)


def test_pod_limits_best_effort() -> None:
    assert pod_limits(spec(ctr("a"), ctr("b")), None) == CgroupLimits(2, None, 100000, None, None)


def test_pod_limits_burstable_without_all_cpu_limits_has_no_quota() -> None:
    pod = spec(
        ctr("a", requests={"cpu": "100m"}, limits={"cpu": "200m", "memory": "64Mi"}),
        ctr("b", requests={"cpu": "300m"}, limits={"memory": "32Mi"}),
    )
    assert pod_limits(pod, None) == CgroupLimits(409, None, 100000, 96 * MI, None)


def test_pod_limits_burstable_memory_limit_only_when_every_container_has_one() -> None:
    pod = spec(
        ctr("a", limits={"cpu": "200m", "memory": "64Mi"}, requests={"memory": "32Mi"}),
        ctr("b", limits={"cpu": "300m"}),
    )
    assert pod_limits(pod, None) == CgroupLimits(512, 50000, 100000, None, None)


def test_pod_limits_explicit_zero_limit_is_undeclared() -> None:
    pod = spec(
        ctr("a", limits={"cpu": "200m", "memory": "64Mi"}),
        ctr("b", requests={"cpu": "0"}, limits={"cpu": "0", "memory": "1Mi"}),
    )
    assert pod_limits(pod, None) == CgroupLimits(204, None, 100000, 65 * MI, None)


def test_pod_limits_init_container_raises_the_peak() -> None:
    pod = spec(guaranteed("a", "200m", "64Mi"), guaranteed("b", "200m", "64Mi"),
               init=[guaranteed("i", "1", "32Mi")])  # fmt: skip
    # cpu: max(400m, 1000m); memory: max(128Mi, 32Mi)
    assert pod_limits(pod, None) == CgroupLimits(1024, 100000, 100000, 128 * MI, None)


def test_pod_limits_init_container_without_limits_undeclares() -> None:
    pod = spec(guaranteed("a", "200m", "64Mi"), init=[ctr("i", requests={"cpu": "100m"})])
    assert qos_class(pod) == "Burstable"
    assert pod_limits(pod, None) == CgroupLimits(204, None, 100000, None, None)


def test_pod_limits_sidecars_add_up_before_later_init_containers() -> None:
    sidecar = guaranteed("side", "100m", "10Mi") | {"restartPolicy": "Always"}
    later = guaranteed("later", "250m", "10Mi")
    pod = spec(guaranteed("a", "200m", "10Mi"), init=[sidecar, later])
    # containers + sidecar = 300m; `later` runs beside the sidecar: 350m, the peak.
    assert pod_limits(pod, None) == CgroupLimits(358, 35000, 100000, 20 * MI, None)


def test_pod_limits_init_before_a_sidecar_runs_alone() -> None:
    earlier = guaranteed("earlier", "250m", "10Mi")
    sidecar = guaranteed("side", "100m", "10Mi") | {"restartPolicy": "Always"}
    pod = spec(guaranteed("a", "200m", "10Mi"), init=[earlier, sidecar])
    assert pod_limits(pod, None) == CgroupLimits(307, 30000, 100000, 20 * MI, None)


def test_pod_limits_only_limits_is_guaranteed_with_memory() -> None:
    pod = spec(ctr(limits={"cpu": "500m", "memory": "32Mi"}))
    assert pod_limits(pod, 64) == CgroupLimits(512, 50000, 100000, 32 * MI, 64)


def test_pod_limits_rounding_after_summing() -> None:
    # kubelet sums exact quantities, then rounds once: 3 x 0.4m = 1.2m -> 2m (not 3 x 1m).
    pod = spec(*(ctr(n, limits={"cpu": "0.4m"}) for n in "abc"))
    assert pod_limits(pod, None).cpu_quota_us == 1000
    assert pod_limits(pod, None).cpu_shares == 2
