"""Which Pod fields nodelet honours, which only matter to a cluster, and which it refuses.

Fail closed: a field that changes what runs or its security and is not implemented yet rejects
the pod with ``unsupported: <path>``; a field missing from this table counts as such, so a new
API field is refused until someone decides what it means here. A field set to its API default
counts as not set (``privileged: false`` asks for nothing).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from typing import Any

from nodelet.manifest.schema import join


class Policy(enum.Enum):
    STRUCT = "struct"
    """An object whose own fields are each looked up (it covers nothing by itself)."""
    IMPLEMENTED = "implemented"
    NO_EFFECT = "no effect"
    """Accepted and ignored, as kubelet does: it only matters to a scheduler or the cluster."""
    UNSUPPORTED = "unsupported"
    FORBIDDEN = "forbidden"
    """Static pods may not reference API objects."""


S, OK, NOOP, NO, FORBID = (
    Policy.STRUCT, Policy.IMPLEMENTED, Policy.NO_EFFECT, Policy.UNSUPPORTED, Policy.FORBIDDEN,
)  # fmt: skip

_WINDOWS_OPTIONS: dict[str, Policy] = {
    "securityContext.windowsOptions": S,
    "securityContext.windowsOptions.gmsaCredentialSpecName": NOOP,
    "securityContext.windowsOptions.gmsaCredentialSpec": NOOP,
    "securityContext.windowsOptions.runAsUserName": NOOP,
    "securityContext.windowsOptions.hostProcess": NO,
}  # fmt: skip
"""Only Windows nodes read these (kubelet on Linux ignores them); a host-process container is a
request to run on the host, which nodelet cannot honour as asked."""

_CONTAINER: dict[str, Policy] = {
    "": S,
    "name": OK, "image": OK, "command": OK, "args": OK, "workingDir": OK,
    "env": S, "env[]": S, "env[].name": OK, "env[].value": OK,
    "env[].valueFrom": S, "env[].valueFrom.fieldRef": OK,
    "env[].valueFrom.secretKeyRef": FORBID, "env[].valueFrom.configMapKeyRef": FORBID,
    "env[].valueFrom.resourceFieldRef": NO, "env[].valueFrom.fileKeyRef": NO,
    "envFrom": FORBID,
    "ports": S, "ports[]": S, "ports[].containerPort": OK, "ports[].name": OK,
    "ports[].protocol": OK, "ports[].hostIP": OK, "ports[].hostPort": OK,
    "volumeMounts": S, "volumeMounts[]": S, "volumeMounts[].name": OK,
    "volumeMounts[].mountPath": OK, "volumeMounts[].readOnly": OK,
    "volumeMounts[].subPath": OK, "volumeMounts[].subPathExpr": OK,
    "volumeMounts[].mountPropagation": OK,
    "volumeDevices": FORBID,
    "imagePullPolicy": OK,
    # nodelet.pod.termination: a file per run, bound at the path (a host-image container gets
    # it only over a file the host has, see containerprep._termination_mount).
    "terminationMessagePath": OK, "terminationMessagePolicy": OK,
    "resources": S, "resources.requests": OK, "resources.limits": OK,
    "resources.claims": FORBID,
    "resizePolicy": NOOP,
    **{
        f"{kind}Probe{key}": policy
        for kind in ("startup", "liveness", "readiness")
        for key, policy in (
            ("", S), (".exec", OK), (".httpGet", OK), (".tcpSocket", OK), (".grpc", OK),
            (".initialDelaySeconds", OK), (".periodSeconds", OK), (".timeoutSeconds", OK),
            (".successThreshold", OK), (".failureThreshold", OK),
            (".terminationGracePeriodSeconds", OK),
        )
    },
    "lifecycle": S, "lifecycle.stopSignal": OK, "lifecycle.preStop": S,
    "lifecycle.preStop.exec": OK, "lifecycle.preStop.httpGet": OK,
    "lifecycle.preStop.sleep": OK, "lifecycle.preStop.tcpSocket": NO,
    "lifecycle.postStart": S, "lifecycle.postStart.exec": OK,
    "lifecycle.postStart.httpGet": OK, "lifecycle.postStart.sleep": OK,
    "lifecycle.postStart.tcpSocket": NO,
    "securityContext": S, "securityContext.runAsUser": OK, "securityContext.runAsGroup": OK,
    "securityContext.runAsNonRoot": OK, "securityContext.allowPrivilegeEscalation": OK,
    "securityContext.privileged": OK, "securityContext.capabilities": S,
    "securityContext.capabilities.add": OK, "securityContext.capabilities.drop": OK,
    "securityContext.readOnlyRootFilesystem": OK, "securityContext.procMount": OK,
    "securityContext.seccompProfile": OK,
    # AppArmor and SELinux: honoured or refused at admission by nodelet.security.lsm.
    "securityContext.appArmorProfile": OK, "securityContext.seLinuxOptions": OK,
    **_WINDOWS_OPTIONS,
}  # fmt: skip

_POD: dict[str, Policy] = {
    "": S,
    "apiVersion": OK, "kind": OK, "status": NOOP,
    "metadata": S, "metadata.name": OK, "metadata.namespace": OK, "metadata.uid": OK,
    "metadata.labels": OK, "metadata.annotations": OK, "metadata.creationTimestamp": NOOP,
    "metadata.resourceVersion": NOOP, "metadata.generation": NOOP, "metadata.finalizers": NOOP,
    "metadata.managedFields": NOOP, "metadata.ownerReferences": NOOP,
    "spec": S,
    "spec.restartPolicy": OK, "spec.terminationGracePeriodSeconds": OK,
    "spec.activeDeadlineSeconds": OK,
    "spec.hostNetwork": OK, "spec.hostPID": OK, "spec.hostIPC": OK,
    "spec.shareProcessNamespace": OK, "spec.hostname": OK, "spec.subdomain": OK,
    "spec.nodeName": OK, "spec.dnsPolicy": OK, "spec.enableServiceLinks": OK,
    "spec.dnsConfig": OK, "spec.hostAliases": OK,  # nodelet.pod.dns, nodelet.pod.hostsfile
    "spec.automountServiceAccountToken": OK, "spec.readinessGates": OK, "spec.os": OK,
    "spec.hostUsers": OK,  # false: a user namespace of the pod's own (nodelet.security.userns)
    "spec.securityContext": S, "spec.securityContext.runAsUser": OK,
    "spec.securityContext.runAsGroup": OK, "spec.securityContext.runAsNonRoot": OK,
    "spec.securityContext.supplementalGroups": OK, "spec.securityContext.fsGroup": OK,
    "spec.securityContext.fsGroupChangePolicy": OK, "spec.securityContext.sysctls": OK,
    "spec.securityContext.seccompProfile": OK, "spec.securityContext.appArmorProfile": OK,
    "spec.securityContext.seLinuxOptions": OK,
    **{f"spec.{key}": policy for key, policy in _WINDOWS_OPTIONS.items()},
    "spec.volumes": S, "spec.volumes[]": S, "spec.volumes[].name": OK,
    "spec.volumes[].emptyDir": S, "spec.volumes[].emptyDir.medium": OK,
    "spec.volumes[].emptyDir.sizeLimit": OK, "spec.volumes[].downwardAPI": OK,
    "spec.volumes[].hostPath": OK,
    "spec.volumes[].secret": FORBID, "spec.volumes[].configMap": FORBID,
    "spec.volumes[].persistentVolumeClaim": FORBID, "spec.volumes[].projected": FORBID,
    "spec.volumes[].ephemeral": FORBID, "spec.volumes[].csi": FORBID,
    "spec.imagePullSecrets": FORBID, "spec.serviceAccountName": FORBID,
    "spec.serviceAccount": FORBID, "spec.ephemeralContainers": FORBID,
    "spec.resourceClaims": FORBID,
    "spec.affinity": NOOP, "spec.tolerations": NOOP, "spec.nodeSelector": NOOP,
    "spec.topologySpreadConstraints": NOOP, "spec.priority": NOOP,
    "spec.priorityClassName": NOOP, "spec.preemptionPolicy": NOOP, "spec.schedulerName": NOOP,
    "spec.schedulingGates": NOOP, "spec.overhead": NOOP,
}  # fmt: skip
for _prefix in ("spec.containers[]", "spec.initContainers[]"):
    _POD[_prefix.removesuffix("[]")] = S
    for _key, _policy in _CONTAINER.items():
        _POD[f"{_prefix}.{_key}" if _key else _prefix] = _policy
_POD["spec.initContainers[].restartPolicy"] = NO  # sidecar containers

TABLE: dict[str, Policy] = _POD

_DEFAULTS_AS_UNSET: dict[str, Any] = {
    "securityContext.privileged": False,
    "securityContext.readOnlyRootFilesystem": False,
    "securityContext.procMount": "Default",
    "securityContext.seccompProfile": {"type": "Unconfined"},
    "securityContext.appArmorProfile": {"type": "Unconfined"},
    "terminationMessagePath": "/dev/termination-log",
    "stdin": False,
    "stdinOnce": False,
    "tty": False,
    "volumeMounts[].mountPropagation": "None",
    "volumeMounts[].subPath": "",
    "volumeMounts[].subPathExpr": "",
    "volumeMounts[].recursiveReadOnly": "Disabled",
    "securityContext.windowsOptions.hostProcess": False,
    "spec.securityContext.supplementalGroupsPolicy": "Merge",
    "spec.hostUsers": True,
    "spec.setHostnameAsFQDN": False,
    "spec.volumes[].emptyDir.medium": "",
}
_WHY_FORBIDDEN = {
    "secret": "secrets", "configMap": "config maps", "persistentVolumeClaim": "persistent "
    "volume claims", "projected": "projected (API object) sources", "ephemeral": "ephemeral "
    "volume claims", "csi": "CSI drivers", "secretKeyRef": "secrets", "configMapKeyRef":
    "config maps", "envFrom": "config maps or secrets", "imagePullSecrets": "secrets",
    "serviceAccountName": "service accounts", "serviceAccount": "service accounts",
    "ephemeralContainers": "ephemeral containers", "resourceClaims": "resource claims",
    "volumeDevices": "persistent volume claims", "claims": "resource claims",
}  # fmt: skip

_INDEX = re.compile(r"\[[^\]]*\]")


def pattern_of(path: str) -> str:
    """``spec.containers[0].env[2].name`` -> ``spec.containers[].env[].name``."""
    return _INDEX.sub("[]", path)


def _is_default(pattern: str, value: Any) -> bool:
    if value in (None, [], {}):
        return True
    for suffix, default in _DEFAULTS_AS_UNSET.items():
        if (pattern == suffix or pattern.endswith("." + suffix)) and value == default:
            return True
    return False


def policy_of(pattern: str) -> Policy:
    """The exact entry, else the nearest ancestor that covers its subtree, else UNSUPPORTED."""
    if pattern in TABLE:
        return TABLE[pattern]
    parts = pattern.split(".")
    for end in range(len(parts) - 1, 0, -1):
        ancestor = TABLE.get(".".join(parts[:end]))
        if ancestor is not None and ancestor is not Policy.STRUCT:
            return ancestor
    return Policy.UNSUPPORTED


def check(manifest: dict[str, Any], error: Callable[[str, str], None]) -> None:
    """Report every set field that is unsupported or forbidden for a static pod."""
    _walk(manifest, "", error)


def _walk(value: Any, path: str, error: Callable[[str, str], None]) -> None:
    """Total on any shape: a non-string key is skipped here (podschema reports it)."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, f"{path}[{index}]", error)
        return
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        if not isinstance(key, str):
            continue
        child = join(path, key)
        pattern = pattern_of(child)
        if _is_default(pattern, item):
            continue
        policy = policy_of(pattern)
        if policy is Policy.STRUCT:
            _walk(item, child, error)
        elif policy is Policy.UNSUPPORTED:
            error(child, f"unsupported: {child} (not implemented by nodelet yet)")
        elif policy is Policy.FORBIDDEN:
            what = _WHY_FORBIDDEN.get(key, "API objects")
            error(child, f"static pods may not reference {what}")
