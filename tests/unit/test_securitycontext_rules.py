"""securityContext, sysctl and AppArmor-annotation rules at their edges, through ``validate``:
limits still accepted, every bad entry reported (not just the first), and annotation/field
mismatches named at the container (or init container) they belong to."""

from __future__ import annotations

from typing import Any

import pytest

from nodelet.manifest.validation import validate

pytestmark = pytest.mark.unit

SC = "spec.containers[0].securityContext"
PREFIX = "container.apparmor.security.beta.kubernetes.io/"
MISMATCH = "apparmor type in annotation and field must match"


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "host"}], **spec},
    }


def errors(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    validate(manifest, "node1", lambda where, why: found.append((where, why)))
    return found


def container_sc(**context: Any) -> dict[str, Any]:
    manifest = pod()
    manifest["spec"]["containers"][0]["securityContext"] = context
    return manifest


def annotated(manifest: dict[str, Any], **by_container: Any) -> dict[str, Any]:
    manifest["metadata"]["annotations"] = {
        f"{PREFIX}{name}": value for name, value in by_container.items()
    }
    return manifest


def where(container: str) -> str:
    return f'metadata.annotations["{PREFIX}{container}"]'


def apparmor(kind: str, localhost: str | None = None) -> dict[str, Any]:
    profile = {"type": kind}
    if localhost is not None:
        profile["localhostProfile"] = localhost
    return {"appArmorProfile": profile}


# --- container and pod securityContext --------------------------------------------------------


def test_unsupported_values_are_quoted_as_the_api_server_does() -> None:
    long = "a" * 64
    assert errors(container_sc(procMount=long)) == [
        (f"{SC}.procMount", f'Unsupported value: "{long}": supported values: "Default", "Unmasked"')
    ]
    assert errors(container_sc(procMount=5)) == [
        (f"{SC}.procMount", 'Unsupported value: 5: supported values: "Default", "Unmasked"')
    ]


def test_an_empty_profile_type_is_a_missing_type() -> None:
    assert errors(container_sc(seccompProfile={"type": ""})) == [
        (f"{SC}.seccompProfile.type", "type is required when seccompProfile is set")
    ]
    assert errors(container_sc(appArmorProfile={"type": ""})) == [
        (f"{SC}.appArmorProfile.type", "type is required when appArmorProfile is set")
    ]


def test_apparmor_localhost_profile_length_limit() -> None:
    assert errors(container_sc(**apparmor("Localhost", "p" * 4095))) == []
    assert errors(container_sc(**apparmor("Localhost", "p" * 4096))) == [
        (f"{SC}.appArmorProfile.localhostProfile", "Too long: may not be more than 4095 bytes")
    ]


def test_container_windows_options_are_refused_for_a_linux_pod() -> None:
    manifest = container_sc(windowsOptions={"runAsUserName": "x"})
    assert errors(manifest) == []  # no os: nothing says it is Linux
    manifest["spec"]["os"] = {"name": "linux"}
    assert errors(manifest) == [
        (f"{SC}.windowsOptions", "windows options cannot be set for a linux pod")
    ]


def test_every_bad_sysctl_is_reported_and_the_longest_name_is_accepted() -> None:
    longest = ".".join(["a" * 63] * 3) + "." + "b" * 61
    assert len(longest) == 253
    sysctls = [{"value": "1"}, {"name": "Bad!"}, {"name": longest + "b"}, {"name": longest}]
    found = errors(pod(securityContext={"sysctls": sysctls}))
    regex = found[1][1]
    assert regex.startswith("must have at most 253 characters and match regex ^")
    assert found == [
        ("spec.securityContext.sysctls[0].name", "required"),
        ("spec.securityContext.sysctls[1].name", regex),
        ("spec.securityContext.sysctls[2].name", regex),
    ]


# --- AppArmor annotations --------------------------------------------------------------------


def test_an_empty_annotation_is_accepted() -> None:
    assert errors(annotated(pod(), c="")) == []


def test_an_annotation_for_an_init_container_is_found_and_compared() -> None:
    init = {"name": "i", "image": "host", "securityContext": apparmor("Unconfined")}
    assert errors(annotated(pod(initContainers=[init]), i="unconfined")) == []
    assert errors(annotated(pod(initContainers=[init]), i="runtime/default")) == [
        ("spec.initContainers[0].securityContext.appArmorProfile.type", MISMATCH)
    ]


def test_a_mismatch_is_named_at_its_own_container() -> None:
    manifest = pod()
    manifest["spec"]["containers"].append(
        {"name": "d", "image": "host", "securityContext": apparmor("RuntimeDefault")}
    )
    assert errors(annotated(manifest, d="runtime/default")) == []
    assert errors(annotated(manifest, d="unconfined")) == [
        ("spec.containers[1].securityContext.appArmorProfile.type", MISMATCH)
    ]


def test_the_pod_profile_applies_to_a_container_without_its_own() -> None:
    manifest = pod(securityContext=apparmor("Unconfined"))
    assert errors(annotated(manifest, c="unconfined")) == []
    assert errors(annotated(manifest, c="runtime/default")) == [
        (f"{SC}.appArmorProfile.type", MISMATCH)
    ]


def test_a_localhost_field_needs_a_localhost_annotation() -> None:
    manifest = container_sc(**apparmor("Localhost", "k8s-nginx"))
    assert errors(annotated(manifest, c="localhost/k8s-nginx")) == []
    assert errors(annotated(manifest, c="runtime/default")) == [
        (f"{SC}.appArmorProfile.type", MISMATCH)
    ]


def test_every_bad_annotation_is_reported() -> None:
    manifest = pod()
    manifest["spec"]["containers"].append({"name": "d", "image": "host"})
    manifest["metadata"]["annotations"] = {
        "example.com/other": "x",
        f"{PREFIX}ghost": 5,
        f"{PREFIX}c": "enforce",
        f"{PREFIX}d": "complain",
    }
    assert errors(manifest) == [
        (where("ghost"), "container not found"),
        (where("c"), 'invalid AppArmor profile name: "enforce"'),
        (where("d"), 'invalid AppArmor profile name: "complain"'),
    ]


def test_an_annotation_for_no_container_is_refused_whatever_the_pod_profile() -> None:
    manifest = annotated(pod(securityContext=apparmor("RuntimeDefault")), ghost="runtime/default")
    assert errors(manifest) == [(where("ghost"), "container not found")]
