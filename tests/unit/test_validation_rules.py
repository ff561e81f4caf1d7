"""Every semantic rule of ``nodelet.manifest.validation``, one broken field at a time: exactly
one error, with the field path and the reason an operator reads, and its valid neighbours
accepted."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nodelet.manifest.validation import dns_label, dns_subdomain, validate

pytestmark = pytest.mark.unit

NODE = "node1"
LABEL_RULE = (
    "must be a lowercase RFC 1123 label: lowercase letters, digits and '-', "
    "starting and ending with a letter or digit"
)
SUBDOMAIN_RULE = (
    "must be a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.', "
    "starting and ending with a letter or digit"
)
ID_RULE = "must be between 0 and 2147483647"
PORT_RULE = "must be between 1 and 65535"
C = "spec.containers[0]"
LONG_A = "'" + "a" * 64 + "'"
"""How a long value is quoted in a message: its first 64 characters."""


def valid_pod() -> dict[str, Any]:
    """A pod that uses every field the rules look at, all valid."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web.example",
            "namespace": "kube-system",
            "labels": {"app": "web", "example.com/tier": "a.b_c-d", "empty": ""},
            "annotations": {"example.com/note": "x" * 100, "plain": "y"},
        },
        "spec": {
            "restartPolicy": "OnFailure",
            "terminationGracePeriodSeconds": 0,
            "dnsPolicy": "ClusterFirstWithHostNet",
            "hostname": "web",
            "subdomain": "sub",
            "hostNetwork": True,
            "os": {"name": "linux"},
            "securityContext": {
                "runAsUser": 0,
                "runAsGroup": 2**31 - 1,
                "supplementalGroups": [0, 2**31 - 1],
            },
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "host", "hostPath": {"path": "/srv", "type": "Directory"}},
                {"name": "any", "hostPath": {"path": "/opt", "type": ""}},
            ],
            "initContainers": [{"name": "init", "image": "host"}],
            "containers": [
                {
                    "name": "app",
                    "image": "host",
                    "securityContext": {"runAsUser": 2**31 - 1},
                    "env": [
                        {"name": "A", "value": "1"},
                        {"name": "lower.case-ok", "value": ""},
                        *(
                            {"name": f"F{i}", "valueFrom": {"fieldRef": {"fieldPath": path}}}
                            for i, path in enumerate(FIELD_PATHS)
                        ),
                    ],
                    "ports": [
                        {"containerPort": 1, "hostPort": 1, "name": "web", "protocol": "TCP"},
                        {"containerPort": 65535, "protocol": "UDP", "name": "a23456789012345"},
                        {"containerPort": 80, "protocol": "SCTP"},
                    ],
                    "volumeMounts": [
                        {"name": "data", "mountPath": "/data"},
                        {"name": "host", "mountPath": "/data/..x/y"},
                    ],
                },
                {"name": "side", "image": "host", "ports": [{"containerPort": 81, "name": "web"}]},
            ],
        },
    }


FIELD_PATHS = [
    "metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName",
    "spec.serviceAccountName", "status.podIP", "status.podIPs", "status.hostIP",
    "status.hostIPs", "metadata.labels['app']", "metadata.annotations['example.com/x']",
]  # fmt: skip


def problems(pod: dict[str, Any], node: str = NODE) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    validate(pod, node, lambda field, reason: found.append((field, reason)))
    return found


def changed(path: str, value: Any) -> dict[str, Any]:
    """The valid pod with one field (dotted path, ``[n]`` for list items) set; ``...`` deletes."""
    pod = copy.deepcopy(valid_pod())
    parts = path.replace("[", ".").replace("]", "").split(".")
    target: Any = pod
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return pod


def test_the_valid_pod_has_no_problem() -> None:
    assert problems(valid_pod()) == []


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("apiVersion", "v2", [("apiVersion", "must be \"v1\", got 'v2'")]),
        ("apiVersion", ..., [("apiVersion", 'must be "v1", got None')]),
        ("kind", "Deployment", [("kind", "must be \"Pod\", got 'Deployment'")]),
        ("kind", ..., [("kind", 'must be "Pod", got None')]),
        (
            "metadata.name",
            ...,
            [("metadata.name", "required (static pods are named by their manifest)")],
        ),
        (
            "metadata.name",
            "",
            [("metadata.name", "required (static pods are named by their manifest)")],
        ),
        ("metadata.name", "Web", [("metadata.name", f"'Web' {SUBDOMAIN_RULE}")]),
        ("metadata.name", "web-", [("metadata.name", f"'web-' {SUBDOMAIN_RULE}")]),
        (
            "metadata.name",
            "a" * 254,
            [
                (
                    "metadata.name",
                    f"{LONG_A}... (254 characters) must be no more than 253 characters (is 254)",
                )
            ],
        ),
        ("metadata.namespace", "Kube", [("metadata.namespace", f"'Kube' {LABEL_RULE}")]),
        ("metadata.namespace", "", [("metadata.namespace", "'' must be a non-empty string")]),
        ("metadata.namespace", "a.b", [("metadata.namespace", f"'a.b' {LABEL_RULE}")]),
        (
            "metadata.namespace",
            "n" * 64,
            [("metadata.namespace", f"'{'n' * 64}' must be no more than 63 characters (is 64)")],
        ),
        (
            "metadata.labels",
            {"bad key": "v"},
            [("metadata.labels['bad key']", "invalid key 'bad key'")],
        ),
        (
            "metadata.labels",
            {"app": "bad value"},
            [("metadata.labels['app']", "invalid label value 'bad value'")],
        ),
        (
            "metadata.labels",
            {"app": "v" * 64},
            [("metadata.labels['app']", f"invalid label value '{'v' * 64}'")],
        ),
        ("metadata.labels", {"app": 5}, [("metadata.labels['app']", "invalid label value 5")]),
        (
            "metadata.labels",
            {"app": "-v"},
            [("metadata.labels['app']", "invalid label value '-v'")],
        ),
        (
            "metadata.labels",
            {"Example.com/app": "v"},
            [
                (
                    "metadata.labels['Example.com/app']",
                    "key prefix 'Example.com' must be a DNS subdomain",
                )
            ],
        ),
        (
            "metadata.labels",
            {"example.com/": "v"},
            [("metadata.labels['example.com/']", "invalid key 'example.com/'")],
        ),
        (
            "metadata.labels",
            {"k" * 64: "v"},
            [(f"metadata.labels['{'k' * 64}']", f"invalid key '{'k' * 64}'")],
        ),
        ("metadata.labels", {"_k": "v"}, [("metadata.labels['_k']", "invalid key '_k'")]),
        (
            "metadata.annotations",
            {"bad key": "v"},
            [("metadata.annotations['bad key']", "invalid key 'bad key'")],
        ),
        (
            "metadata.annotations",
            {"a": "x" * (256 * 1024)},
            [("metadata.annotations", f"total size {256 * 1024 + 1} exceeds 256 KiB")],
        ),
    ],
)
def test_metadata_rules(path: str, value: Any, expected: list[tuple[str, str]]) -> None:
    assert problems(changed(path, value)) == expected


def test_annotations_up_to_256_kib_and_keys_up_to_63_characters_are_fine() -> None:
    assert problems(changed("metadata.annotations", {"a": "x" * (256 * 1024 - 1)})) == []
    assert problems(changed("metadata.annotations", {"a": 12345})) == []  # sized as text
    assert problems(changed("metadata.labels", {"k" * 63: "v" * 63})) == []
    assert problems(changed("metadata.labels", {"example.com/a": "v"})) == []
    assert problems(changed("metadata", {"name": "web"})) == []
    assert problems(changed("metadata", None)) == [
        ("metadata.name", "required (static pods are named by their manifest)")
    ]


def test_the_name_with_the_node_suffix_must_be_valid_too() -> None:
    """kubelet appends ``-<node>``: a valid name can become an invalid one."""
    assert problems(changed("metadata.name", "a" * 250), node="nodes") == [
        ("metadata.name", f"{LONG_A}... (256 characters) (with the node name) must be no more "
                          "than 253 characters (is 256)"),
    ]  # fmt: skip
    short = problems(changed("metadata.name", "web"), node="Node_1")
    assert short == [("metadata.name", f"'web-Node_1' (with the node name) {SUBDOMAIN_RULE}")]
    assert problems(changed("metadata.name", "a" * 247), node="nodes") == []  # 253 exactly


def test_a_node_name_that_makes_the_pod_name_invalid_is_reported() -> None:
    assert [f for f, _ in problems(changed("metadata.name", "web"), node="Node_1")] == [
        "metadata.name"
    ]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("spec", ..., [("spec", "required")]),
        ("spec", ["x"], [("spec", "required")]),
        ("spec.containers", [], [("spec.containers", "at least one container is required")]),
        ("spec.containers", ..., [("spec.containers", "at least one container is required")]),
        (
            "spec.restartPolicy",
            "Sometimes",
            [("spec.restartPolicy", "must be one of Always, OnFailure, Never")],
        ),
        (
            "spec.terminationGracePeriodSeconds",
            -1,
            [("spec.terminationGracePeriodSeconds", "must be >= 0")],
        ),
        (
            "spec.dnsPolicy",
            "Cluster",
            [
                (
                    "spec.dnsPolicy",
                    "must be one of ClusterFirst, ClusterFirstWithHostNet, Default, None",
                )
            ],
        ),
        ("spec.hostname", "Web", [("spec.hostname", LABEL_RULE)]),
        ("spec.hostname", "", [("spec.hostname", "must be a non-empty string")]),
        ("spec.subdomain", "a.b", [("spec.subdomain", LABEL_RULE)]),
        (
            "spec.os",
            {"name": "windows"},
            [("spec.os.name", "nodelet runs Linux pods only, got 'windows'")],
        ),
        ("spec.securityContext.runAsUser", -1, [("spec.securityContext.runAsUser", ID_RULE)]),
        ("spec.securityContext.runAsGroup", 2**31, [("spec.securityContext.runAsGroup", ID_RULE)]),
        (
            "spec.securityContext.supplementalGroups",
            [-1, 5, 2**31],
            [
                ("spec.securityContext.supplementalGroups[0]", "must be 0..2147483647"),
                ("spec.securityContext.supplementalGroups[2]", "must be 0..2147483647"),
            ],
        ),
    ],
)
def test_pod_spec_rules(path: str, value: Any, expected: list[tuple[str, str]]) -> None:
    assert problems(changed(path, value)) == expected


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.restartPolicy", "Always"),
        ("spec.restartPolicy", "Never"),
        ("spec.restartPolicy", ...),
        ("spec.dnsPolicy", "ClusterFirst"),
        ("spec.dnsPolicy", "Default"),
        ("spec.dnsPolicy", ...),
        ("spec.os", None),
        ("spec.os", {}),
        ("spec.hostname", ...),
        ("spec.subdomain", ...),
        ("spec.terminationGracePeriodSeconds", ...),
        ("spec.securityContext", None),
        ("spec.securityContext.supplementalGroups", None),
        ("spec.initContainers", None),
    ],
)
def test_pod_spec_values_that_are_fine(path: str, value: Any) -> None:
    assert problems(changed(path, value)) == []


def test_container_names_are_unique_across_init_and_app_containers() -> None:
    pod = changed("spec.containers[1].name", "init")
    assert problems(pod) == [
        ("spec.containers[1].name", "duplicate container name 'init' (also spec.initContainers[0])")
    ]
    pod = changed("spec.containers[1].name", "app")
    assert problems(pod) == [
        ("spec.containers[1].name", "duplicate container name 'app' (also spec.containers[0])")
    ]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "spec.volumes[1].name",
            "data",
            [
                ("spec.volumes[1].name", "duplicate volume name 'data'"),
                (f"{C}.volumeMounts[1].name", "volume 'host' is not defined in spec.volumes"),
            ],
        ),
        (
            "spec.volumes[0].name",
            "Data",
            [
                ("spec.volumes[0].name", LABEL_RULE),
                (f"{C}.volumeMounts[0].name", "volume 'data' is not defined in spec.volumes"),
            ],
        ),
        (
            "spec.volumes[0].name",
            ...,
            [
                ("spec.volumes[0].name", "must be a non-empty string"),
                (f"{C}.volumeMounts[0].name", "volume 'data' is not defined in spec.volumes"),
            ],
        ),
        (
            "spec.volumes[0]",
            {"name": "data"},
            [("spec.volumes[0]", "exactly one volume source is required, got none")],
        ),
        (
            "spec.volumes[0]",
            {"name": "data", "emptyDir": {}, "hostPath": {"path": "/x"}},
            [
                (
                    "spec.volumes[0]",
                    "exactly one volume source is required, got ['emptyDir', 'hostPath']",
                )
            ],
        ),
        (
            "spec.volumes[1].hostPath.path",
            "srv",
            [("spec.volumes[1].hostPath.path", "must be an absolute path")],
        ),
        (
            "spec.volumes[1].hostPath.path",
            ...,
            [("spec.volumes[1].hostPath.path", "must be an absolute path")],
        ),
        (
            "spec.volumes[1].hostPath.type",
            "Dir",
            [
                (
                    "spec.volumes[1].hostPath.type",
                    "must be one of DirectoryOrCreate, Directory, "
                    "FileOrCreate, File, Socket, CharDevice, BlockDevice",
                )
            ],
        ),
    ],
)
def test_volume_rules(path: str, value: Any, expected: list[tuple[str, str]]) -> None:
    assert problems(changed(path, value)) == expected


@pytest.mark.parametrize(
    "kind", ["DirectoryOrCreate", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"]
)
def test_every_host_path_type_is_accepted(kind: str) -> None:
    assert problems(changed("spec.volumes[1].hostPath.type", kind)) == []
    assert problems(changed("spec.volumes[1].hostPath", {"path": "/srv"})) == []


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (f"{C}.name", "App", [(f"{C}.name", LABEL_RULE)]),
        (f"{C}.name", ..., [(f"{C}.name", "must be a non-empty string")]),
        ("spec.initContainers[0].image", ..., [("spec.initContainers[0].image", "required")]),
        (f"{C}.image", "", [(f"{C}.image", "required")]),
        (f"{C}.securityContext.runAsUser", 2**31, [(f"{C}.securityContext.runAsUser", ID_RULE)]),
        (
            f"{C}.securityContext",
            {"runAsGroup": -5},
            [(f"{C}.securityContext.runAsGroup", ID_RULE)],
        ),
        (
            f"{C}.env[0].name",
            "A=B",
            [(f"{C}.env[0].name", "invalid environment variable name 'A=B'")],
        ),
        (f"{C}.env[0].name", "", [(f"{C}.env[0].name", "invalid environment variable name ''")]),
        (f"{C}.env[0].name", ..., [(f"{C}.env[0].name", "invalid environment variable name None")]),
        (
            f"{C}.env[0].name",
            "A\x01",
            [(f"{C}.env[0].name", "invalid environment variable name 'A\\x01'")],
        ),
        (
            f"{C}.env[2].valueFrom.fieldRef.fieldPath",
            "spec.foo",
            [(f"{C}.env[2].valueFrom.fieldRef.fieldPath", "unsupported field 'spec.foo'")],
        ),
        (
            f"{C}.env[2].valueFrom.fieldRef.fieldPath",
            "metadata.labels[app]",
            [
                (
                    f"{C}.env[2].valueFrom.fieldRef.fieldPath",
                    "unsupported field 'metadata.labels[app]'",
                )
            ],
        ),
        (
            f"{C}.env[2].valueFrom.fieldRef.fieldPath",
            "metadata.name.x",
            [(f"{C}.env[2].valueFrom.fieldRef.fieldPath", "unsupported field 'metadata.name.x'")],
        ),
        (f"{C}.ports[0].containerPort", 0, [(f"{C}.ports[0].containerPort", PORT_RULE)]),
        (f"{C}.ports[0].containerPort", 65536, [(f"{C}.ports[0].containerPort", PORT_RULE)]),
        (f"{C}.ports[0].containerPort", -80, [(f"{C}.ports[0].containerPort", PORT_RULE)]),
        (f"{C}.ports[0].hostPort", 65536, [(f"{C}.ports[0].hostPort", PORT_RULE)]),
        (
            f"{C}.ports[0].protocol",
            "ICMP",
            [(f"{C}.ports[0].protocol", "must be TCP, UDP or SCTP")],
        ),
        (f"{C}.ports[0].name", "Web", [(f"{C}.ports[0].name", "invalid port name 'Web'")]),
        (f"{C}.ports[0].name", "-web", [(f"{C}.ports[0].name", "invalid port name '-web'")]),
        (
            f"{C}.ports[1].name",
            "a234567890123456",
            [(f"{C}.ports[1].name", "invalid port name 'a234567890123456'")],
        ),
        (f"{C}.ports[1].name", "web", [(f"{C}.ports[1].name", "duplicate port name 'web'")]),
        (
            f"{C}.volumeMounts[0].name",
            "nope",
            [(f"{C}.volumeMounts[0].name", "volume 'nope' is not defined in spec.volumes")],
        ),
        (
            f"{C}.volumeMounts[0].mountPath",
            "data",
            [(f"{C}.volumeMounts[0].mountPath", "must be an absolute path")],
        ),
        (
            f"{C}.volumeMounts[0].mountPath",
            ...,
            [(f"{C}.volumeMounts[0].mountPath", "must be an absolute path")],
        ),
        (
            f"{C}.volumeMounts[0].mountPath",
            "/data/../etc",
            [(f"{C}.volumeMounts[0].mountPath", "must not contain '..'")],
        ),
        (
            f"{C}.volumeMounts[1].mountPath",
            "/data",
            [(f"{C}.volumeMounts[1].mountPath", "/data is mounted twice")],
        ),
    ],
)
def test_container_rules(path: str, value: Any, expected: list[tuple[str, str]]) -> None:
    assert problems(changed(path, value)) == expected


def test_port_zero_is_refused() -> None:
    assert problems(changed(f"{C}.ports[0].containerPort", 0)) == [
        (f"{C}.ports[0].containerPort", PORT_RULE)
    ]


def test_host_ports_with_and_without_host_network() -> None:
    # The pod network maps a hostPort to the pod's own IP: no hostNetwork needed.
    assert problems(changed("spec.hostNetwork", False)) == []
    # With the node's network there is nothing to map: the API server's rule.
    assert problems(changed(f"{C}.ports[0].hostPort", 8080)) == [
        (f"{C}.ports[0].hostPort", "must match `containerPort` when `hostNetwork` is true")
    ]
    sctp = changed("spec.hostNetwork", False)
    sctp["spec"]["containers"][0]["ports"][0]["protocol"] = "SCTP"
    assert problems(sctp) == [
        (f"{C}.ports[0].protocol",
         "unsupported: an SCTP hostPort (the pod network maps TCP and UDP)")
    ]  # fmt: skip
    assert problems(changed(f"{C}.ports[0].hostIP", "not-an-ip")) == [
        (f"{C}.ports[0].hostIP", "must be a valid IP address")
    ]


def test_a_port_without_protocol_is_tcp_and_port_names_are_per_container() -> None:
    pod = changed(f"{C}.ports[0].protocol", ...)
    assert problems(pod) == []  # "web" is also side's port name: names are per container


def test_every_problem_is_reported_at_once() -> None:
    pod = changed("kind", "Job")
    pod["spec"]["restartPolicy"] = "Sometimes"
    pod["spec"]["containers"][0]["image"] = ""
    pod["spec"]["volumes"][0]["name"] = "Data"
    assert [field for field, _ in problems(pod)] == [
        "kind",
        "spec.volumes[0].name",
        f"{C}.image",
        f"{C}.volumeMounts[0].name",
        "spec.restartPolicy",
    ]


@pytest.mark.parametrize(
    ("value", "label", "subdomain"),
    [
        ("web", None, None),
        ("a.b", LABEL_RULE, None),
        ("", "must be a non-empty string", "must be a non-empty string"),
        (None, "must be a non-empty string", "must be a non-empty string"),
        (7, "must be a non-empty string", "must be a non-empty string"),
        ("a" * 63, None, None),
        ("a" * 64, "must be no more than 63 characters (is 64)", None),
        ("a" * 253, "must be no more than 63 characters (is 253)", None),
        (
            "a" * 254,
            "must be no more than 63 characters (is 254)",
            "must be no more than 253 characters (is 254)",
        ),
        ("-a", LABEL_RULE, SUBDOMAIN_RULE),
        ("a_b", LABEL_RULE, SUBDOMAIN_RULE),
        ("a..b", LABEL_RULE, SUBDOMAIN_RULE),
        ("0", None, None),
    ],
)
def test_dns_names(value: Any, label: str | None, subdomain: str | None) -> None:
    assert dns_label(value) == label
    assert dns_subdomain(value) == subdomain
