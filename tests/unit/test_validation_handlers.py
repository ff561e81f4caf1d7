"""The API server's rules for probes, lifecycle handlers, resources and the active deadline,
as nodelet checks them before a pod runs: each rule, its exact path and message."""

from __future__ import annotations

from typing import Any

import pytest

from nodelet.manifest.validation import validate

pytestmark = pytest.mark.unit

C = "spec.containers[0]"
EXEC = {"exec": {"command": ["true"]}}


def pod(container: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    base = {"name": "app", "image": "host", "command": ["x"],
            "ports": [{"name": "web", "containerPort": 8080}]}  # fmt: skip
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{**base, **(container or {})}], **spec},
    }


def problems(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    validate(manifest, "node1", lambda field, reason: found.append((field, reason)))
    return found


@pytest.mark.parametrize("kind", ["startup", "liveness", "readiness"])
@pytest.mark.parametrize(
    "probe",
    [
        EXEC,
        {"httpGet": {"port": 8080}},
        {"httpGet": {"port": "web", "path": "/h"}},
        {"httpGet": {"port": "8080"}},
        {"tcpSocket": {"port": "web"}},
        {"grpc": {"port": 9000, "service": "x"}},
        {**EXEC, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1},
    ],
)
def test_valid_probes_have_no_problem(kind: str, probe: dict[str, Any]) -> None:
    assert problems(pod({f"{kind}Probe": probe})) == []


@pytest.mark.parametrize(
    ("probe", "expected"),
    [
        ({}, [(f"{C}.livenessProbe",
               "must specify a handler type (exec, httpGet, tcpSocket or grpc)")]),
        ({**EXEC, "tcpSocket": {"port": 1}},
         [(f"{C}.livenessProbe",
           "may not specify more than 1 handler type (found exec, tcpSocket)")]),
        ({"exec": {}}, [(f"{C}.livenessProbe.exec.command", "required")]),
        ({"exec": {"command": []}}, [(f"{C}.livenessProbe.exec.command", "required")]),
        ({"httpGet": {"port": "admin"}},
         [(f"{C}.livenessProbe.httpGet.port", "no container port is named 'admin'")]),
        ({"tcpSocket": {"port": "admin"}},
         [(f"{C}.livenessProbe.tcpSocket.port", "no container port is named 'admin'")]),
        ({"httpGet": {"path": "/"}}, [(f"{C}.livenessProbe.httpGet.port", "required")]),
        ({"tcpSocket": {}}, [(f"{C}.livenessProbe.tcpSocket.port", "required")]),
        ({"grpc": {}},
         [(f"{C}.livenessProbe.grpc.port", "required: the gRPC port as a number")]),
        ({**EXEC, "successThreshold": 2}, [(f"{C}.livenessProbe.successThreshold", "must be 1")]),
        ({**EXEC, "periodSeconds": -1},  # 0 is the API's "unset": defaulted to 10
         [(f"{C}.livenessProbe.periodSeconds", "must be greater than or equal to 0")]),
    ],
)  # fmt: skip
def test_probe_rules(probe: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert problems(pod({"livenessProbe": probe})) == expected


def test_probes_on_init_containers_are_refused() -> None:
    manifest = pod()
    manifest["spec"]["initContainers"] = [
        {"name": "i", "image": "host", "command": ["x"], "readinessProbe": EXEC}
    ]
    assert problems(manifest) == [
        ("spec.initContainers[0].readinessProbe", "may not be set for init containers")
    ]


@pytest.mark.parametrize("hook", ["postStart", "preStop"])
@pytest.mark.parametrize(
    "handler",
    [EXEC, {"httpGet": {"port": "web"}}, {"httpGet": {"port": 80}}, {"sleep": {"seconds": 0}}],
)
def test_valid_handlers_have_no_problem(hook: str, handler: dict[str, Any]) -> None:
    assert problems(pod({"lifecycle": {hook: handler}})) == []


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        ({}, [(f"{C}.lifecycle.preStop",
               "must specify a handler type (exec, httpGet or sleep)")]),
        ({**EXEC, "sleep": {"seconds": 1}},
         [(f"{C}.lifecycle.preStop",
           "may not specify more than 1 handler type (found exec, sleep)")]),
        ({"exec": {}}, [(f"{C}.lifecycle.preStop.exec.command", "required")]),
        ({"httpGet": {"port": "admin"}},
         [(f"{C}.lifecycle.preStop.httpGet.port", "no container port is named 'admin'")]),
        ({"sleep": {"seconds": -1}},
         [(f"{C}.lifecycle.preStop.sleep.seconds", "must be a non-negative integer")]),
        ({"sleep": {}},
         [(f"{C}.lifecycle.preStop.sleep.seconds", "must be a non-negative integer")]),
    ],
)  # fmt: skip
def test_handler_rules(handler: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert problems(pod({"lifecycle": {"preStop": handler}})) == expected


def test_the_stop_signal_must_be_a_linux_signal() -> None:
    assert problems(pod({"lifecycle": {"stopSignal": "SIGQUIT"}})) == []
    assert problems(pod({"lifecycle": {"stopSignal": "SIGNOPE"}})) == [
        (f"{C}.lifecycle.stopSignal", "unknown signal 'SIGNOPE' (SIGTERM, SIGUSR1, SIGQUIT, ...)")
    ]


@pytest.mark.parametrize(
    "resources",
    [
        {"requests": {"cpu": "100m", "memory": "64Mi"}},
        {"limits": {"cpu": 1, "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}},
        {"limits": {"cpu": "0.5"}},
    ],
)
def test_valid_resources_have_no_problem(resources: dict[str, Any]) -> None:
    assert problems(pod({"resources": resources})) == []


def test_resource_rules() -> None:
    found = problems(pod({"resources": {
        "requests": {"cpu": "2", "memory": "lots", "hugepages-2Mi": "2Mi"},
        "limits": {"cpu": "1", "ephemeral-storage": "1Gi"},
    }}))  # fmt: skip
    paths = [path for path, _ in found]
    assert f"{C}.resources.requests['hugepages-2Mi']" in paths
    assert f"{C}.resources.limits['ephemeral-storage']" in paths
    assert f"{C}.resources.requests['memory']" in paths
    assert (f"{C}.resources.requests['cpu']", "must be less than or equal to cpu limit") in found
    unsupported = dict(found)[f"{C}.resources.limits['ephemeral-storage']"]
    assert unsupported == "unsupported resource (nodelet enforces cpu, memory)"
    assert len(found) == 4


@pytest.mark.parametrize(("value", "ok"), [(1, True), (3600, True), (0, False), (-5, False),
                                            ("10", False), (True, False)])  # fmt: skip
def test_the_active_deadline_is_a_positive_integer(value: Any, ok: bool) -> None:
    found = problems(pod(activeDeadlineSeconds=value))
    expected = [] if ok else [("spec.activeDeadlineSeconds", "must be a positive integer")]
    assert found == expected
