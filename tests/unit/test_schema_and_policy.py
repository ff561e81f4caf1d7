"""The structural check against the v1 schema and the fail-closed field table: exact paths and
reasons, and no field that changes what runs or its isolation accepted without effect."""

from __future__ import annotations

from typing import Any

import pytest

from nodelet.manifest import fieldpolicy
from nodelet.manifest import schema as podschema
from nodelet.manifest.fieldpolicy import Policy, pattern_of, policy_of
from nodelet.manifest.load import check_pod

pytestmark = pytest.mark.unit


def schema(value: Any, kind: str = "V1Pod", path: str = "") -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    podschema.check(value, kind, path, lambda field, reason: found.append((field, reason)))
    return found


def policy(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    fieldpolicy.check(manifest, lambda field, reason: found.append((field, reason)))
    return found


def pod(**spec: Any) -> dict[str, Any]:
    container = {"name": "app", "image": "host", "command": ["true"]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"containers": [container], **spec}}  # fmt: skip


def unsupported(path: str) -> tuple[str, str]:
    return path, f"unsupported: {path} (not implemented by nodelet yet)"


def with_container(**fields: Any) -> dict[str, Any]:
    manifest = pod()
    manifest["spec"]["containers"][0].update(fields)
    return manifest


# --- podschema ------------------------------------------------------------------------------


def test_preload_and_a_valid_pod() -> None:
    podschema.preload()
    assert schema(pod(volumes=[{"name": "v", "emptyDir": {}}])) == []
    assert schema(None) == []
    assert schema({"metadata": None, "spec": {"containers": None}}) == []


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (
            {"spec": {"containers": {"name": "a"}}},
            [("spec.containers", "expected a list, got an object")],
        ),
        ({"metadata": {"labels": ["a"]}}, [("metadata.labels", "expected an object, got a list")]),
        (
            {"metadata": {"labels": {"app": 5}}},
            [("metadata.labels['app']", "expected a string, got an integer")],
        ),
        ({"metadata": "web"}, [("metadata", "expected an object, got a string")]),
        ({"apiVersion": True}, [("apiVersion", "expected a string, got a boolean")]),
        ({"apiVersion": 1.5}, [("apiVersion", "expected a string, got a number")]),
        (
            {"spec": {"terminationGracePeriodSeconds": "30"}},
            [("spec.terminationGracePeriodSeconds", "expected an integer, got a string")],
        ),
        (
            {"spec": {"terminationGracePeriodSeconds": True}},
            [("spec.terminationGracePeriodSeconds", "expected an integer, got a boolean")],
        ),
        (
            {"spec": {"terminationGracePeriodSeconds": 1.5}},
            [("spec.terminationGracePeriodSeconds", "expected an integer, got a number")],
        ),
        (
            {"spec": {"hostNetwork": "yes"}},
            [("spec.hostNetwork", "expected a boolean, got a string")],
        ),
        (
            {"spec": {"hostNetwork": 1}},
            [("spec.hostNetwork", "expected a boolean, got an integer")],
        ),
        (
            {"spec": {"containers": [{"name": "a"}, {"name": ["b"]}]}},
            [("spec.containers[1].name", "expected a string, got a list")],
        ),
        (
            {"spec": {"containers": [{"comand": ["x"]}]}},
            [("spec.containers[0].comand", 'unknown field (did you mean "command"?)')],
        ),
        ({"spec": {"zzzzzz": 1}}, [("spec.zzzzzz", "unknown field")]),
        ({"kindd": "Pod"}, [("kindd", 'unknown field (did you mean "kind"?)')]),
        (
            {"metadata": {"creationTimestamp": 5}},
            [("metadata.creationTimestamp", "expected a string, got an integer")],
        ),
        (
            {"spec": {"containers": [{"livenessProbe": {"httpGet": {"port": {"a": 1}}}}]}},
            [
                (
                    "spec.containers[0].livenessProbe.httpGet.port",
                    "expected a string or a number, got an object",
                )
            ],
        ),
        (
            {"spec": {"containers": [{"livenessProbe": {"httpGet": {"port": [80]}}}]}},
            [
                (
                    "spec.containers[0].livenessProbe.httpGet.port",
                    "expected a string or a number, got a list",
                )
            ],
        ),
        (
            {"spec": {"securityContext": {"supplementalGroups": [1, "2"]}}},
            [("spec.securityContext.supplementalGroups[1]", "expected an integer, got a string")],
        ),
    ],
)
def test_structural_errors(manifest: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert schema(manifest) == expected


def test_a_key_that_is_not_a_string_is_an_error() -> None:
    [(field, reason)] = schema({"metadata": {1: "x"}})
    assert field == "metadata.1" and reason.startswith("field names must be strings")


def test_int_or_string_takes_both() -> None:
    for port in (80, "http"):
        assert (
            schema({"spec": {"containers": [{"livenessProbe": {"httpGet": {"port": port}}}]}}) == []
        )


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        (1.5, "float", []),
        (2, "float", []),
        ("x", "float", [("f", "expected a number, got a string")]),
        (True, "float", [("f", "expected a number, got a boolean")]),
        ("2024-01-01", "date", []),
        (5, "date", [("f", "expected a string, got an integer")]),
        ("x", "List[str]", [("f", "expected a list, got a string")]),
        ({"a": "b"}, "Dict[str, str]", []),
        (None, "int", []),
        (7, "V1Container", [("f", "expected an object, got an integer")]),
    ],
)
def test_scalars_and_containers_by_kind(value: Any, kind: str, expected: Any) -> None:
    assert schema(value, kind, "f") == expected


# --- fieldpolicy ----------------------------------------------------------------------------


def test_pattern_of_drops_indices_and_keys() -> None:
    assert pattern_of("spec.containers[0].env[12].name") == "spec.containers[].env[].name"
    assert pattern_of("metadata.labels['a.b/c']") == "metadata.labels[]"
    assert pattern_of("spec") == "spec"


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("spec.hostNetwork", Policy.IMPLEMENTED),
        ("spec.containers[].securityContext.runAsUser", Policy.IMPLEMENTED),
        ("spec.initContainers[].command", Policy.IMPLEMENTED),
        ("spec.initContainers[].restartPolicy", Policy.UNSUPPORTED),
        ("spec.containers[].restartPolicy", Policy.UNSUPPORTED),
        ("spec.volumes[].hostPath.path", Policy.IMPLEMENTED),  # covered by hostPath
        ("spec.affinity.nodeAffinity", Policy.NO_EFFECT),  # covered by affinity
        ("spec.volumes[].secret.secretName", Policy.FORBIDDEN),
        ("spec.containers[].env[].valueFrom.fieldRef.fieldPath", Policy.IMPLEMENTED),
        ("spec.containers[].livenessProbe", Policy.STRUCT),
        ("spec.containers[].livenessProbe.httpGet", Policy.IMPLEMENTED),
        ("spec.containers[].livenessProbe.grpc", Policy.IMPLEMENTED),
        ("spec.containers[].lifecycle.postStart.exec", Policy.IMPLEMENTED),
        ("spec.containers[].lifecycle.postStart.tcpSocket", Policy.UNSUPPORTED),
        ("spec.containers[].securityContext.capabilities", Policy.STRUCT),
        ("spec.containers[].securityContext.capabilities.add", Policy.IMPLEMENTED),
        ("spec.securityContext.sysctls", Policy.IMPLEMENTED),
        ("spec.securityContext.supplementalGroupsPolicy", Policy.UNSUPPORTED),
        ("spec.securityContext.seLinuxChangePolicy", Policy.UNSUPPORTED),
        ("spec.containers[].volumeMounts[].recursiveReadOnly", Policy.UNSUPPORTED),
        ("spec.containers[].securityContext.windowsOptions.hostProcess", Policy.UNSUPPORTED),
        ("spec.newField", Policy.UNSUPPORTED),  # unknown to the table: refused
        ("spec", Policy.STRUCT),
        ("spec.containers", Policy.STRUCT),
    ],
)
def test_policy_of(pattern: str, expected: Policy) -> None:
    assert policy_of(pattern) is expected


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (
            with_container(lifecycle={"preStop": {"tcpSocket": {"port": 1}}}),
            [unsupported("spec.containers[0].lifecycle.preStop.tcpSocket")],
        ),
        (
            pod(initContainers=[{"name": "i", "image": "host", "restartPolicy": "Always"}]),
            [unsupported("spec.initContainers[0].restartPolicy")],
        ),
        (
            pod(volumes=[{"name": "s", "secret": {"secretName": "x"}}]),
            [("spec.volumes[0].secret", "static pods may not reference secrets")],
        ),
        (
            pod(volumes=[{"name": "c", "configMap": {"name": "x"}}]),
            [("spec.volumes[0].configMap", "static pods may not reference config maps")],
        ),
        (
            pod(volumes=[{"name": "p", "persistentVolumeClaim": {"claimName": "x"}}]),
            [
                (
                    "spec.volumes[0].persistentVolumeClaim",
                    "static pods may not reference persistent volume claims",
                )
            ],
        ),
        (
            with_container(envFrom=[{"configMapRef": {"name": "x"}}]),
            [
                (
                    "spec.containers[0].envFrom",
                    "static pods may not reference config maps or secrets",
                )
            ],
        ),
        (
            with_container(
                env=[{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
            ),
            [
                (
                    "spec.containers[0].env[0].valueFrom.secretKeyRef",
                    "static pods may not reference secrets",
                )
            ],
        ),
        (
            pod(serviceAccountName="default"),
            [("spec.serviceAccountName", "static pods may not reference service accounts")],
        ),
        (
            pod(imagePullSecrets=[{"name": "x"}]),
            [("spec.imagePullSecrets", "static pods may not reference secrets")],
        ),
        (
            with_container(tty=True),
            [unsupported("spec.containers[0].tty")],
        ),
        (
            with_container(securityContext={"windowsOptions": {"hostProcess": True}}),
            [unsupported("spec.containers[0].securityContext.windowsOptions.hostProcess")],
        ),
        (
            with_container(
                volumeMounts=[
                    {
                        "name": "v",
                        "mountPath": "/m",
                        "readOnly": True,
                        "recursiveReadOnly": "Enabled",
                    }
                ]
            ),
            [unsupported("spec.containers[0].volumeMounts[0].recursiveReadOnly")],
        ),
        (
            pod(securityContext={"supplementalGroupsPolicy": "Strict"}),
            [unsupported("spec.securityContext.supplementalGroupsPolicy")],
        ),
    ],
)
def test_refused_fields(manifest: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert policy(manifest) == expected


@pytest.mark.parametrize(
    "manifest",
    [
        with_container(tty=False, stdin=False, stdinOnce=False),
        with_container(
            securityContext={
                "privileged": False,
                "readOnlyRootFilesystem": False,
                "procMount": "Default",
                "seccompProfile": {"type": "Unconfined"},
                "appArmorProfile": {"type": "Unconfined"},
            }
        ),
        with_container(
            volumeMounts=[
                {"name": "v", "mountPath": "/m", "subPath": "", "mountPropagation": "None"}
            ]
        ),
        pod(
            hostUsers=True,
            setHostnameAsFQDN=False,
            volumes=[{"name": "v", "emptyDir": {"medium": ""}}],
        ),
        pod(affinity={"nodeAffinity": {}}, tolerations=[{"key": "k"}], priority=5),
        with_container(resources={"requests": {"cpu": "1"}}, imagePullPolicy="Always"),
        pod(nodeSelector=None, tolerations=[], overhead={}),
    ],
)
def test_defaults_and_no_effect_fields_are_accepted(manifest: dict[str, Any]) -> None:
    assert policy(manifest) == []


def test_a_non_default_value_of_a_defaulted_field_is_refused() -> None:
    refused = with_container(securityContext={"windowsOptions": {"hostProcess": True}})
    assert [f for f, _ in policy(refused)] == [
        "spec.containers[0].securityContext.windowsOptions.hostProcess"
    ]
    unmasked = with_container(securityContext={"procMount": "Unmasked"})
    assert check_pod(unmasked, "node") == [
        (
            "spec.containers[0].securityContext.procMount",
            "`hostUsers` must be false to use `Unmasked`",
        )
    ]  # the API server's rule
    assert [f for f, _ in policy(with_container(stdin=True))] == ["spec.containers[0].stdin"]


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        (
            {"volumes": [{"name": "v", "emptyDir": {"medium": "HugePages-2Mi"}}]},
            "nodelet has no hugepages: the volume would be on disk, not on hugetlbfs",
        ),
        (
            {"securityContext": {"supplementalGroupsPolicy": "Strict"}},
            "Strict asks to leave out the image's groups; nodelet does not implement it",
        ),
    ],
)
def test_fields_without_effect_on_isolation_are_refused(spec: dict[str, Any], why: str) -> None:
    """Fail closed: a field that asks for more isolation (or another storage medium) than
    nodelet gives must reject the pod, never run it without."""
    assert check_pod(pod(**spec), "node") != [], why
