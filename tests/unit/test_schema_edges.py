"""The checks are total: values of any YAML shape get an exact error, never an exception, and
quotes in messages stay short and printable."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nodelet.manifest import schema as podschema
from nodelet.manifest.schema import describe, join, plain, show, text_problem
from nodelet.manifest.validation import pod_uid, validate

pytestmark = pytest.mark.unit

UID_RULE = (
    "is not a valid UID: 1 to 128 letters, digits and '-', starting with a letter or digit "
    "(a UUID); it names the pod's directories"
)


def schema(value: Any, kind: str = "V1Pod", path: str = "") -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    podschema.check(value, kind, path, lambda field, reason: found.append((field, reason)))
    return found


def problems(pod: Any) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    validate(pod, "node", lambda field, reason: found.append((field, reason)))
    return found


BASE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web"},
    "spec": {"containers": [{"name": "app", "image": "host"}]},
}


def pod(**spec: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(BASE)
    manifest["spec"].update(spec)
    return manifest


def container(**fields: Any) -> dict[str, Any]:
    return pod(containers=[{"name": "app", "image": "host", **fields}])


# --- words and quotes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (None, "null"),
        (True, "a boolean"),
        ({}, "an object"),
        ([], "a list"),
        ((), "a list"),
        ("x", "a string"),
        (1, "an integer"),
        (1.5, "a number"),
        (b"x", "bytes"),
        (object(), "object"),
    ],
)
def test_describe(value: Any, words: str) -> None:
    assert describe(value) == words


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("abc", "'abc'"),
        ("a\nb", "'a\\nb'"),
        ("a" * 64, "'" + "a" * 64 + "'"),
        ("a" * 65, "'" + "a" * 64 + "'... (65 characters)"),
        (None, "None"),
        (True, "True"),
        (-5, "-5"),
        (10**20 - 1, str(10**20 - 1)),
        (10**20, "a very large integer"),
        (-(10**20), "a very large integer"),
        (1.5, "1.5"),
        (float("inf"), "inf"),
        ([1], "a list"),
        ({"a": 1}, "an object"),
    ],
)
def test_show(value: Any, quoted: str) -> None:
    assert show(value) == quoted


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("/srv/data", "/srv/data"),
        ("a" * 64, "a" * 64),
        ("a" * 65, show("a" * 65)),
        ("", "''"),
        ("x", "x"),
        ("a\tb", "'a\\tb'"),
        (5, "5"),
    ],
)
def test_plain(value: Any, text: str) -> None:
    assert plain(value) == text


def test_join_and_text_problems() -> None:
    assert join("", "spec") == "spec"
    assert join("spec", "hostNetwork") == "spec.hostNetwork"
    assert join("metadata", 5) == "metadata.5"
    assert join("metadata", "") == "metadata.''"
    assert text_problem("fine") is None
    assert text_problem("a\0b") == "must not contain NUL characters"
    assert text_problem("a\udc80") == "must be valid Unicode (it holds a lone surrogate escape)"


# --- structure of any shape ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ([None, "x"], "List[str]", [("f[0]", "null is not allowed in a list")]),
        ({5: "v"}, "Dict[str, str]", [("f[5]", "keys must be strings, got an integer")]),
        ({"a\0": "v"}, "Dict[str, str]", [("f['a\\x00']", "key must not contain NUL characters")]),
        ({"k": 1}, "Dict[str, str]", [("f['k']", "expected a string, got an integer")]),
        ({"a": {"b": "c"}}, "Dict[str, Dict[str, str]]", []),
        (
            {"a": {"b": 1}},
            "Dict[str, Dict[str, str]]",
            [("f['a']['b']", "expected a string, got an integer")],
        ),
        ("a\0", "str", [("f", "must not contain NUL characters")]),
        ("\udc80", "str", [("f", "must be valid Unicode (it holds a lone surrogate escape)")]),
        (2**63 - 1, "int", []),
        (-(2**63), "int", []),
        (2**63, "int", [("f", "integer out of range (must fit in 64 bits)")]),
        (-(2**63) - 1, "int", [("f", "integer out of range (must fit in 64 bits)")]),
        (float("inf"), "float", [("f", "must be a finite number, got inf")]),
        (float("nan"), "float", [("f", "must be a finite number, got nan")]),
        (2**64, "object", [("f", "integer out of range (must fit in 64 bits)")]),
        (float("-inf"), "object", [("f", "must be a finite number, got -inf")]),
        ("x\0", "object", [("f", "must not contain NUL characters")]),
        ("http", "object", []),
    ],
)
def test_values_of_every_shape(value: Any, kind: str, expected: list[tuple[str, str]]) -> None:
    assert schema(value, kind, "f") == expected


def test_field_names_that_are_not_strings_or_too_long() -> None:
    assert schema({"metadata": {5: "x"}}) == [
        ("metadata.5", "field names must be strings, got an integer")
    ]
    long_key = "z" * 70
    assert schema({"spec": {long_key: 1}}) == [(f"spec.{show(long_key)}", "unknown field")]


# --- semantics of any shape ---------------------------------------------------------------


def test_a_document_that_is_not_an_object() -> None:
    assert problems(["a", "list"]) == [("", "expected a Pod object")]
    assert problems("text") == [("", "expected a Pod object")]


@pytest.mark.parametrize(
    ("uid", "expected"),
    [
        ("0123-abcd", None),
        ("a" * 128, None),
        ("a" * 129, f"{show('a' * 129)} {UID_RULE}"),
        ("abc_def", f"'abc_def' {UID_RULE}"),
        ("../x", f"'../x' {UID_RULE}"),
        ("-abc", f"'-abc' {UID_RULE}"),
        (5, f"5 {UID_RULE}"),
    ],
)
def test_pod_uids_name_directories(uid: Any, expected: str | None) -> None:
    assert pod_uid(uid) == expected
    manifest = copy.deepcopy(BASE)
    manifest["metadata"]["uid"] = uid
    assert problems(manifest) == ([] if expected is None else [("metadata.uid", expected)])


def test_an_empty_uid_counts_as_unset() -> None:
    manifest = copy.deepcopy(BASE)
    manifest["metadata"]["uid"] = ""
    assert problems(manifest) == []


def test_names_of_the_wrong_type() -> None:
    manifest = copy.deepcopy(BASE)
    manifest["metadata"]["name"] = 5
    assert problems(manifest) == [("metadata.name", "must be a non-empty string")]
    manifest["metadata"] = {"name": "web", "labels": {5: "v", "ok": "v"}}
    assert problems(manifest) == [("metadata.labels[5]", "label keys must be strings")]
    manifest["metadata"] = {"name": "web", "annotations": {5: "v", "a": 7}}
    assert problems(manifest) == []  # the schema check reports both


def test_numbers_of_the_wrong_type_are_left_to_the_schema_check() -> None:
    odd = pod(terminationGracePeriodSeconds="-1", securityContext={
        "runAsUser": "x", "runAsGroup": True, "supplementalGroups": ["1", True, -1]})  # fmt: skip
    assert problems(odd) == [
        ("spec.securityContext.supplementalGroups[2]", "must be 0..2147483647")
    ]
    assert problems(pod(terminationGracePeriodSeconds=True)) == []
    assert problems(container(ports=[{"containerPort": "80"}, {"containerPort": True}])) == []


def test_lists_holding_other_things_than_objects_are_skipped() -> None:
    assert problems(pod(containers=["app", None])) == []
    assert problems(pod(volumes="x")) == []
    assert problems(container(env=[None, "A=B"], ports=[7], volumeMounts=[None])) == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            [
                {
                    "name": "A",
                    "value": "x",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                }
            ],
            [("spec.containers[0].env[0].valueFrom", "may not be set when value is not empty")],
        ),
        (
            [{"name": "A", "value": "", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            [],
        ),
        (
            [
                {
                    "name": "A",
                    "valueFrom": {
                        "fieldRef": {"fieldPath": "metadata.name"},
                        "configMapKeyRef": {"name": "c", "key": "k"},
                    },
                }
            ],
            [("spec.containers[0].env[0].valueFrom", "may not have more than one source")],
        ),
        (
            [{"name": "A", "valueFrom": {}}],
            [
                (
                    "spec.containers[0].env[0].valueFrom",
                    "must specify fieldRef (the source static pods use)",
                )
            ],
        ),
        (
            [{"name": "A", "valueFrom": {"fieldRef": None}}],
            [
                (
                    "spec.containers[0].env[0].valueFrom",
                    "must specify fieldRef (the source static pods use)",
                )
            ],
        ),
        ([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}], []),
        (
            [{"name": "A", "valueFrom": {"fieldRef": {}}}],
            [("spec.containers[0].env[0].valueFrom.fieldRef.fieldPath", "required")],
        ),
        (
            [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": ""}}}],
            [("spec.containers[0].env[0].valueFrom.fieldRef.fieldPath", "required")],
        ),
        (
            [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": 5}}}],
            [("spec.containers[0].env[0].valueFrom.fieldRef.fieldPath", "required")],
        ),
        ([{"name": "A", "valueFrom": {"fieldRef": "metadata.name"}}], []),
        ([{"name": "A", "valueFrom": "x"}], []),
        (
            [{"name": 5}],
            [("spec.containers[0].env[0].name", "invalid environment variable name 5")],
        ),
    ],
)
def test_env_sources(env: list[Any], expected: list[tuple[str, str]]) -> None:
    assert problems(container(env=env)) == expected


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ([{"name": "web"}], [("spec.containers[0].ports[0].containerPort", "required")]),
        ([{"containerPort": None}], [("spec.containers[0].ports[0].containerPort", "required")]),
        ([{"containerPort": 80, "protocol": None}], []),
        (
            [{"containerPort": 80, "name": 5}],
            [("spec.containers[0].ports[0].name", "invalid port name 5")],
        ),
        ([{"containerPort": 80, "name": None}, {"containerPort": 81, "name": None}], []),
    ],
)
def test_ports_of_any_shape(ports: list[Any], expected: list[tuple[str, str]]) -> None:
    assert problems(container(ports=ports)) == expected


@pytest.mark.parametrize(
    ("working_dir", "expected"),
    [
        ("/srv/app", []),
        ("", []),
        (None, []),
        (
            "srv",
            [("spec.containers[0].workingDir", "must be an absolute path (the runtime needs one)")],
        ),
        ("/srv/../etc", [("spec.containers[0].workingDir", "must not contain '..'")]),
        ("/srv/..x", []),
    ],
)
def test_working_dir(working_dir: Any, expected: list[tuple[str, str]]) -> None:
    assert problems(container(workingDir=working_dir)) == expected


def test_host_paths_and_volume_sources_of_any_shape() -> None:
    volumes = [
        {"name": "a", "hostPath": {"path": "/srv/../etc"}},
        {"name": "b", "emptyDir": None, "hostPath": {"path": "/srv"}},
        {"name": "c", "emptyDir": {}, "hostPath": {"path": "/x"}, "secret": {}, "nfs": {},
         "csi": {}},
        {"name": 5, "emptyDir": {}},
    ]  # fmt: skip
    assert problems(pod(volumes=volumes)) == [
        ("spec.volumes[0].hostPath.path", "must not contain '..'"),
        ("spec.volumes[2]", "exactly one volume source is required, got "
                            "['emptyDir', 'hostPath', 'secret', 'nfs']"),
        ("spec.volumes[3].name", "must be a non-empty string"),
    ]  # fmt: skip


def test_mounts_of_any_shape() -> None:
    manifest = pod(
        volumes=[{"name": "v", "emptyDir": {}}],
        containers=[{"name": "app", "image": "host",
                     "volumeMounts": [{"name": 5, "mountPath": "/m"},
                                      {"name": "v", "mountPath": "/a/b/../c"}]}],
    )  # fmt: skip
    assert problems(manifest) == [
        ("spec.containers[0].volumeMounts[0].name", "volume 5 is not defined in spec.volumes"),
        ("spec.containers[0].volumeMounts[1].mountPath", "must not contain '..'"),
    ]


def test_host_network_must_be_true_not_just_set() -> None:
    # "yes" is not true: the pod keeps its own network, where hostPort may differ.
    ports = [{"containerPort": 80, "hostPort": 8080}]
    manifest = pod(hostNetwork="yes", containers=[{"name": "app", "image": "h", "ports": ports}])
    assert not [p for p in problems(manifest) if "hostPort" in p[0]]
    manifest = pod(hostNetwork=True, containers=[{"name": "app", "image": "h", "ports": ports}])
    expected = ("spec.containers[0].ports[0].hostPort",
                "must match `containerPort` when `hostNetwork` is true")  # fmt: skip
    assert expected in problems(manifest)
