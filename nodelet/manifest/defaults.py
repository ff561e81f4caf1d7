"""kubelet's defaulting of a static pod: API defaults, then ``applyDefaults`` (name suffix,
namespace, node name, UID from a content hash, config annotations, NoExecute toleration).

A null field means "not set", as when the API server decodes a pod: the pod nodelet runs has
no null left in any object, so code that reads ``env[].value`` or ``volumes[].hostPath`` never
meets ``None``. (Nulls inside lists are rejected by ``podschema``.)
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from typing import Any

from nodelet.util.timefmt import rfc3339_nano

HASH_ANNOTATION = "kubernetes.io/config.hash"
SOURCE_ANNOTATION = "kubernetes.io/config.source"
SEEN_ANNOTATION = "kubernetes.io/config.seen"
NO_EXECUTE_TOLERATION = {"operator": "Exists", "effect": "NoExecute"}


def _pull_policy(image: str) -> str:
    if "@" in image:
        return "IfNotPresent"
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def _container_defaults(container: dict[str, Any]) -> None:
    container.setdefault("imagePullPolicy", _pull_policy(str(container.get("image", ""))))
    # The API server's defaulting: an empty value counts as unset, as for Go's zero value.
    container["terminationMessagePath"] = (
        container.get("terminationMessagePath") or "/dev/termination-log"
    )
    container["terminationMessagePolicy"] = container.get("terminationMessagePolicy") or "File"
    for port in container.get("ports") or []:
        port.setdefault("protocol", "TCP")


def drop_nulls(value: Any) -> Any:
    """A copy of ``value`` without null-valued object fields, at any depth."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def api_defaults(pod: dict[str, Any]) -> None:
    """The API server's defaults for the fields nodelet reads (in place)."""
    pod.setdefault("metadata", {})
    spec = pod["spec"]
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
        _container_defaults(container)
    for volume in spec.get("volumes") or []:
        if isinstance(volume.get("hostPath"), dict):
            volume["hostPath"].setdefault("type", "")


def content_uid(pod: dict[str, Any], node_name: str, path: str) -> str:
    """kubelet hashes the pod, then ``host:<node>`` and ``file:<path>``: any change, new UID."""
    hasher = hashlib.md5(usedforsecurity=False)
    hasher.update(json.dumps(pod, sort_keys=True, separators=(",", ":")).encode())
    hasher.update(f"host:{node_name}".encode())
    hasher.update(b"file:" + os.fsencode(path))  # the path's bytes, even when not UTF-8
    return hasher.hexdigest()


def _hashed_form(raw: dict[str, Any]) -> dict[str, Any]:
    """What the UID hash covers: the defaulted pod with its nulls, as nodelet always hashed it,
    so an upgrade keeps the UID (and the running pod) of a manifest that holds a null, like
    the ``creationTimestamp: null`` kubeadm writes."""
    pod = copy.deepcopy(raw)
    pod.pop("status", None)
    api_defaults(pod)
    return pod


def apply_defaults(
    raw: dict[str, Any], node_name: str, path: str, seen: float | None = None
) -> dict[str, Any]:
    """The pod kubelet would run from a validated ``raw`` (which is left untouched)."""
    pod: dict[str, Any] = drop_nulls(raw)
    pod.pop("status", None)
    api_defaults(pod)
    meta = pod["metadata"]
    uid = meta.get("uid") or content_uid(_hashed_form(raw), node_name, path)
    meta["uid"] = uid
    meta["name"] = f"{meta['name']}-{node_name.lower()}"
    meta["namespace"] = meta.get("namespace") or "default"
    pod["spec"]["nodeName"] = node_name
    annotations = dict(meta.get("annotations") or {})
    annotations[HASH_ANNOTATION] = uid
    annotations[SOURCE_ANNOTATION] = "file"
    annotations[SEEN_ANNOTATION] = rfc3339_nano(time.time() if seen is None else seen)
    meta["annotations"] = annotations
    tolerations = pod["spec"].setdefault("tolerations", [])
    if NO_EXECUTE_TOLERATION not in tolerations:
        tolerations.append(dict(NO_EXECUTE_TOLERATION))
    pod["status"] = {"phase": "Pending"}
    return pod
