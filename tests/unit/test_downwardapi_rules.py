"""downwardAPI volume payloads at their edges: Go's quoting of bytes that are not text, kubelet's
subscript splitting, missing fields, limits versus requests, and this machine's allocatable."""

from __future__ import annotations

import os
from typing import Any

import psutil
import pytest

from nodelet.pod.downwardapi import (
    DownwardAPIError,
    collect_data,
    field_value,
    go_quote,
    machine_allocatable,
)

pytestmark = pytest.mark.unit

META = {"name": "web", "labels": {"app": "web"}, "annotations": {"note": "hi"}}
SPEC = {
    "containers": [
        {
            "name": "app",
            "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "500m"}},
        },
        {"name": "bare"},
        {"name": "broken", "resources": {"limits": {"cpu": "lots"}}},
    ]
}
ALLOCATABLE = {"cpu": "4", "memory": "8Gi"}


def collect(*items: dict[str, Any], spec: dict[str, Any] = SPEC) -> dict[str, str]:
    data = collect_data({"items": list(items)}, META, spec, lambda: ALLOCATABLE)
    return {path: projection.data.decode() for path, projection in data.items()}


def failure(*items: dict[str, Any]) -> str:
    with pytest.raises(DownwardAPIError) as caught:
        collect(*items)
    return str(caught.value)


def resource(name: str, container: str = "app", **ref: Any) -> dict[str, Any]:
    return {"path": "r", "resourceFieldRef": {"containerName": container, "resource": name, **ref}}


def test_undecodable_bytes_quote_as_go_hex_escapes() -> None:
    raw = b"a\x80\xff".decode("utf-8", "surrogateescape")
    assert go_quote(raw) == '"a\\x80\\xff"'


def test_a_non_printable_astral_character_quotes_as_a_long_escape() -> None:
    assert go_quote("tag\U000e0001") == '"tag\\U000e0001"'


def test_subscripts_split_at_the_first_bracket_as_kubelet() -> None:
    # fieldpath.SplitMaybeSubscriptedPath: SplitN(s, "['", 2); a missing key is "".
    assert field_value(META, "metadata.annotations['a['b']") == ""
    assert field_value({"annotations": {"a['b": "x"}}, "metadata.annotations['a['b']") == "x"


@pytest.mark.parametrize("path", ["metadata.labels']", "['app']"])
def test_a_path_that_is_not_a_subscript_is_unsupported(path: str) -> None:
    with pytest.raises(DownwardAPIError) as caught:
        field_value(META, path)
    assert str(caught.value) == f"unsupported fieldPath: {path}"


def test_missing_values_are_empty_files() -> None:
    got = collect(
        {"path": "note", "fieldRef": {"fieldPath": "metadata.annotations['missing']"}},
        {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
        {"path": "neither"},
    )
    assert got == {"note": "", "uid": "", "neither": ""}


def test_missing_field_path_resource_and_container_are_named() -> None:
    assert failure({"path": "a", "fieldRef": {}}) == "unsupported fieldPath: "
    assert failure({"path": "a", "resourceFieldRef": {"containerName": "app"}}) == (
        "unsupported container resource :  (nodelet projects limits and requests of cpu and memory)"
    )
    assert failure({"path": "a", "resourceFieldRef": {"resource": "limits.cpu"}}) == (
        "container  not found"
    )


@pytest.mark.parametrize("name", ["limits.ephemeral-storage", "usage.cpu", "limits.cpu.x"])
def test_unsupported_resources_are_refused(name: str) -> None:
    assert failure(resource(name)) == (
        f"unsupported container resource : {name} (nodelet projects limits and requests of "
        "cpu and memory)"
    )


def test_limits_and_requests_are_read_apart() -> None:
    assert collect(resource("limits.cpu"))["r"] == "2"
    assert collect(resource("requests.cpu", divisor="1m"))["r"] == "500"
    assert collect(resource("requests.memory", divisor="1Mi"))["r"] == "1024"  # the limit


def test_a_bad_quantity_is_named() -> None:
    message = failure(resource("limits.cpu", "broken"))
    assert message.startswith("'lots' is not a quantity")
    message = failure(resource("limits.cpu", divisor="some"))
    assert message.startswith("'some' is not a quantity")


def test_every_bad_item_is_reported() -> None:
    message = failure(
        {"fieldRef": {"fieldPath": "metadata.name"}},
        {"path": "/abs", "fieldRef": {"fieldPath": "metadata.name"}},
        {"path": "ok", "fieldRef": {"fieldPath": "spec.nodeName"}},
    )
    assert message == (
        '[invalid path: must not be empty: "", invalid path: must be relative path: /abs, '
        "unsupported fieldPath: spec.nodeName]"
    )


def test_machine_allocatable_is_every_cpu_and_memory_less_the_eviction_threshold() -> None:
    allocatable = machine_allocatable()
    assert allocatable == {
        "cpu": os.cpu_count(),
        "memory": psutil.virtual_memory().total - 100 * 2**20,
    }


def test_an_unset_limit_defaults_to_this_machines_allocatable() -> None:
    source = {
        "items": [
            {
                "path": "cpu",
                "resourceFieldRef": {"containerName": "bare", "resource": "limits.cpu"},
            },
            {
                "path": "mem",
                "resourceFieldRef": {"containerName": "bare", "resource": "limits.memory"},
            },
        ]
    }
    data = collect_data(source, META, SPEC)
    assert data["cpu"].data.decode() == str(os.cpu_count())
    expected = psutil.virtual_memory().total - 100 * 2**20
    assert data["mem"].data.decode() == str(expected)
