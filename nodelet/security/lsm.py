"""Which Linux security modules the node runs, and whether a pod's LSM requests can be honoured.

kubelet's rule for AppArmor (``pkg/security/apparmor``): ``Unconfined`` always runs;
``RuntimeDefault`` runs on a node without AppArmor (there is nothing to confine with);
``Localhost`` on such a node is refused with "Cannot enforce AppArmor: AppArmor is not enabled
on the host". nodelet applies no AppArmor profile itself, so on a node *with* AppArmor every
profile it was asked for is refused as not implemented rather than silently dropped.

SELinux options are refused too: kubelet with containerd ignores them on a node without SELinux,
which would run the container without the labels it asked for; nodelet fails closed and says
so, and on a node with SELinux it does not apply labels either.

``root`` is the filesystem root the kernel's files are read under (a fake one in tests).
"""

from __future__ import annotations

import os
from typing import Any

APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
"""The deprecated per-container annotation kubelet still reads when the fields are unset."""
APPARMOR_ANNOTATION_TYPES = {"runtime/default": "RuntimeDefault", "unconfined": "Unconfined"}
APPARMOR_LOCALHOST_PREFIX = "localhost/"
NOT_ENABLED = "Cannot enforce AppArmor: AppArmor is not enabled on the host"


def _read(root: str, path: str) -> str | None:
    try:
        with open(os.path.join(root, path.lstrip("/")), encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def active_lsms(root: str = "/") -> frozenset[str] | None:
    """The kernel's list of active LSMs (``/sys/kernel/security/lsm``), None when securityfs
    is not mounted, so the module files have to be asked instead."""
    text = _read(root, "/sys/kernel/security/lsm")
    return None if text is None else frozenset(n for n in text.strip().split(",") if n)


def apparmor_enabled(root: str = "/") -> bool:
    """runc's test: the module says it is enabled (``Y``), and the kernel's LSM list, when it
    can be read, names it."""
    lsms = active_lsms(root)
    enabled = (_read(root, "/sys/module/apparmor/parameters/enabled") or "").startswith("Y")
    return enabled and (lsms is None or "apparmor" in lsms)


def selinux_enabled(root: str = "/") -> bool:
    """selinuxfs is mounted (``/sys/fs/selinux/enforce``) or the LSM list names SELinux."""
    lsms = active_lsms(root)
    return (lsms is not None and "selinux" in lsms) or (
        _read(root, "/sys/fs/selinux/enforce") is not None
    )


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for kind in ("initContainers", "containers"):
        items = spec.get(kind)
        found.extend(c for c in (items if isinstance(items, list) else []) if isinstance(c, dict))
    return found


def apparmor_profile(pod: dict[str, Any], container: dict[str, Any]) -> tuple[str, str | None]:
    """(type, localhost profile) the container asks for, in kubelet's order: its own field,
    the pod's field, then the annotation; ("", None) when none says anything."""
    spec = _obj(pod.get("spec"))
    for context in (_obj(container.get("securityContext")), _obj(spec.get("securityContext"))):
        profile = _obj(context.get("appArmorProfile"))
        if profile.get("type"):
            localhost = profile.get("localhostProfile")
            return str(profile["type"]), localhost if isinstance(localhost, str) else None
    annotations = _obj(_obj(pod.get("metadata")).get("annotations"))
    value = annotations.get(f"{APPARMOR_ANNOTATION_PREFIX}{container.get('name')}")
    if not isinstance(value, str) or not value:
        return "", None
    if value.startswith(APPARMOR_LOCALHOST_PREFIX):
        return "Localhost", value.removeprefix(APPARMOR_LOCALHOST_PREFIX)
    return APPARMOR_ANNOTATION_TYPES.get(value, value), None


def _apparmor_refusal(pod: dict[str, Any], root: str) -> str | None:
    enabled: bool | None = None
    for container in _containers(_obj(pod.get("spec"))):
        kind, localhost = apparmor_profile(pod, container)
        if kind in ("", "Unconfined"):
            continue
        if enabled is None:
            enabled = apparmor_enabled(root)
        if not enabled and kind == "RuntimeDefault":
            continue  # nothing to confine with; kubelet runs it
        if not enabled:
            return NOT_ENABLED
        what = f"profile {localhost!r}" if kind == "Localhost" else f"profile type {kind}"
        return (
            f"Cannot enforce AppArmor: container {container.get('name')!r} asks for {what}, "
            "and applying AppArmor profiles is not implemented by nodelet"
        )
    return None


def _selinux_refusal(pod: dict[str, Any], root: str) -> str | None:
    spec = _obj(pod.get("spec"))
    contexts = [("spec.securityContext", _obj(spec.get("securityContext")))] + [
        (f"container {c.get('name')!r}", _obj(c.get("securityContext"))) for c in _containers(spec)
    ]
    for where, context in contexts:
        if not _obj(context.get("seLinuxOptions")):
            continue
        if not selinux_enabled(root):
            return (
                f"Cannot enforce SELinux options ({where}): SELinux is not enabled on the host "
                "(kubelet with containerd would ignore them; nodelet refuses to run the pod "
                "without the labels it asked for)"
            )
        return (
            f"Cannot enforce SELinux options ({where}): applying SELinux labels is not "
            "implemented by nodelet"
        )
    return None


def lsm_refusal(pod_manifest: Any, root: str = "/") -> str | None:
    """Why this node cannot run the pod as its AppArmor and SELinux settings ask, or None.

    Checked when the pod is admitted (kubelet's AppArmor admit handler, reason ``AppArmor``);
    the node's modules do not change while it runs."""
    if not isinstance(pod_manifest, dict):
        return None
    return _apparmor_refusal(pod_manifest, root) or _selinux_refusal(pod_manifest, root)
