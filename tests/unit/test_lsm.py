"""LSM detection on a fake sysfs, and kubelet's AppArmor admission rule plus nodelet's
fail-closed SELinux rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nodelet.security.lsm import (
    NOT_ENABLED,
    active_lsms,
    apparmor_enabled,
    apparmor_profile,
    lsm_refusal,
    selinux_enabled,
)

pytestmark = pytest.mark.unit

KEY = "container.apparmor.security.beta.kubernetes.io/"


def node(tmp_path: Path, *, lsm: str | None = None, apparmor: str | None = None,
         selinux: bool = False) -> str:  # fmt: skip
    """A fake root with the kernel files the detection reads."""
    files = {
        "sys/kernel/security/lsm": lsm,
        "sys/module/apparmor/parameters/enabled": apparmor,
        "sys/fs/selinux/enforce": "1" if selinux else None,
    }
    for path, text in files.items():
        if text is not None:
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(text)
    return str(tmp_path)


def pod(
    container: dict[str, Any] | None = None,
    pod_context: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "annotations": annotations or {}},
        "spec": {
            "securityContext": pod_context or {},
            "initContainers": [{"name": "i", "image": "host"}],
            "containers": [{"name": "c", "image": "host", "securityContext": container or {}}],
        },
    }


def apparmor(kind: str, profile: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"type": kind}
    if profile is not None:
        found["localhostProfile"] = profile
    return {"appArmorProfile": found}


def test_detection_on_a_bare_node(tmp_path: Path) -> None:
    root = node(tmp_path)
    assert active_lsms(root) is None
    assert not apparmor_enabled(root)
    assert not selinux_enabled(root)


def test_detection_from_the_lsm_list(tmp_path: Path) -> None:
    root = node(tmp_path, lsm="lockdown,capability,landlock,yama,apparmor,bpf", apparmor="Y\n")
    assert active_lsms(root) == frozenset(
        ("lockdown", "capability", "landlock", "yama", "apparmor", "bpf")
    )
    assert apparmor_enabled(root)
    assert not selinux_enabled(root)


def test_a_module_that_is_built_in_but_not_active_is_not_enabled(tmp_path: Path) -> None:
    root = node(tmp_path, lsm="capability,selinux", apparmor="Y")
    assert not apparmor_enabled(root)
    assert selinux_enabled(root)


def test_detection_without_securityfs(tmp_path: Path) -> None:
    assert apparmor_enabled(node(tmp_path / "a", apparmor="Y\n"))
    assert not apparmor_enabled(node(tmp_path / "b", apparmor="N\n"))
    assert selinux_enabled(node(tmp_path / "c", selinux=True))


@pytest.mark.parametrize(
    "manifest",
    [
        pod(),
        pod(apparmor("Unconfined")),
        pod(apparmor("RuntimeDefault")),
        pod(pod_context=apparmor("RuntimeDefault")),
        pod(annotations={KEY + "c": "runtime/default", KEY + "i": "unconfined"}),
        pod(pod_context={"seLinuxOptions": {}}),
    ],
)
def test_what_runs_on_a_node_without_apparmor(tmp_path: Path, manifest: dict[str, Any]) -> None:
    assert lsm_refusal(manifest, node(tmp_path)) is None


@pytest.mark.parametrize(
    "manifest",
    [
        pod(apparmor("Localhost", "k8s-nginx")),
        pod(pod_context=apparmor("Localhost", "k8s-nginx")),
        pod(annotations={KEY + "i": "localhost/k8s-nginx"}),
    ],
)
def test_localhost_on_a_node_without_apparmor_is_kubelets_refusal(
    tmp_path: Path, manifest: dict[str, Any]
) -> None:
    assert lsm_refusal(manifest, node(tmp_path)) == NOT_ENABLED
    assert NOT_ENABLED == "Cannot enforce AppArmor: AppArmor is not enabled on the host"


def test_the_containers_own_field_wins_over_the_pods_and_the_annotation(tmp_path: Path) -> None:
    manifest = pod(
        apparmor("Unconfined"),
        pod_context=apparmor("Localhost", "x"),
        annotations={KEY + "c": "localhost/y"},
    )
    assert apparmor_profile(manifest, manifest["spec"]["containers"][0]) == ("Unconfined", None)
    # The init container has no field of its own: the pod's Localhost applies to it.
    assert lsm_refusal(manifest, node(tmp_path)) == NOT_ENABLED


def test_on_an_apparmor_node_profiles_are_refused_as_not_implemented(tmp_path: Path) -> None:
    root = node(tmp_path, lsm="capability,apparmor", apparmor="Y")
    assert lsm_refusal(pod(apparmor("Localhost", "k8s-nginx")), root) == (
        "Cannot enforce AppArmor: container 'c' asks for profile 'k8s-nginx', and applying "
        "AppArmor profiles is not implemented by nodelet"
    )
    assert lsm_refusal(pod(annotations={KEY + "c": "runtime/default"}), root) == (
        "Cannot enforce AppArmor: container 'c' asks for profile type RuntimeDefault, and "
        "applying AppArmor profiles is not implemented by nodelet"
    )
    assert lsm_refusal(pod(apparmor("Unconfined")), root) is None


def test_selinux_options_are_refused_with_the_reason(tmp_path: Path) -> None:
    options = {"seLinuxOptions": {"level": "s0:c123,c456"}}
    assert lsm_refusal(pod(options), node(tmp_path / "bare")) == (
        "Cannot enforce SELinux options (container 'c'): SELinux is not enabled on the host "
        "(kubelet with containerd would ignore them; nodelet refuses to run the pod without "
        "the labels it asked for)"
    )
    assert lsm_refusal(pod(pod_context=options), node(tmp_path / "se", selinux=True)) == (
        "Cannot enforce SELinux options (spec.securityContext): applying SELinux labels is not "
        "implemented by nodelet"
    )


def test_any_shape_is_answered(tmp_path: Path) -> None:
    root = node(tmp_path)
    shapes: list[Any] = [None, [], {"spec": []}, {"spec": {"containers": [None, {"name": 1}]}}]
    for manifest in shapes:
        assert lsm_refusal(manifest, root) is None
