"""Mirror pods as kubelet's ``mirror_client.go`` and ``HandlePodCleanups`` keep them: pure.

A mirror pod is the API server's read-only copy of a static pod. It belongs to the static pod
whose UID its ``kubernetes.io/config.mirror`` annotation names; anything else (an older hash, a
deletion in progress, an owner that is not the current Node) is deleted and created again.
The manifest is the truth: edits made to a mirror through the API are never read back.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nodelet.model import StaticPod

Json = dict[str, Any]

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"

SYNCED = "Synced"
"""The mirror exists, is this pod's, and holds the status last reported."""
PENDING = "Pending"
"""The mirror is missing, stale, or its status has not reached the API server yet."""
DISABLED = "Disabled"
"""No ``--kubeconfig``: standalone mode, no mirrors."""


@dataclass(frozen=True)
class MirrorPod:
    """What the API server holds for one pod bound to this node."""

    namespace: str
    name: str
    uid: str
    config_hash: str
    """The static pod UID it mirrors (``kubernetes.io/config.mirror``)."""
    owner_uid: str
    """UID of the Node it is owned by (its controller reference), "" if none."""
    deleting: bool
    status: Json = field(compare=False, hash=False)

    @property
    def full_name(self) -> str:
        return f"{self.name}_{self.namespace}"


def mirror_from_object(obj: Mapping[str, Any]) -> MirrorPod | None:
    """The mirror pod in an API object, or None when it is not one (a pod of another kind)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return None
    annotations = meta.get("annotations") or {}
    config_hash = annotations.get(MIRROR_ANNOTATION) if isinstance(annotations, dict) else None
    if not isinstance(config_hash, str):
        return None
    owner_uid = ""
    for ref in meta.get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("kind") == "Node" and ref.get("controller"):
            owner_uid = str(ref.get("uid", ""))
    status = obj.get("status")
    return MirrorPod(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        config_hash=config_hash,
        owner_uid=owner_uid,
        deleting=meta.get("deletionTimestamp") is not None,
        status=status if isinstance(status, dict) else {},
    )


def mirror_body(pod: StaticPod, node_name: str, node_uid: str) -> Json:
    """The mirror pod to create: the static pod with the mirror annotation and one controller
    reference to the Node (NodeRestriction admits nothing else from a node)."""
    manifest = copy.deepcopy(pod.manifest)
    manifest.pop("status", None)
    meta = manifest["metadata"]
    for server_owned in ("uid", "resourceVersion", "creationTimestamp", "generation"):
        meta.pop(server_owned, None)
    meta["annotations"] = {**(meta.get("annotations") or {}), MIRROR_ANNOTATION: pod.uid}
    meta["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid, "controller": True}
    ]
    manifest["spec"]["nodeName"] = node_name
    return manifest


def is_mirror_of(mirror: MirrorPod, pod: StaticPod, node_uid: str) -> bool:
    """kubelet's ``IsMirrorPodOf``, plus the owner: a mirror left from a deleted Node is
    replaced, so the new Node owns every mirror (and a GC that follows the old one finds none)."""
    return mirror.config_hash == pod.uid and not mirror.deleting and mirror.owner_uid == node_uid


@dataclass(frozen=True)
class MirrorPlan:
    delete: list[MirrorPod]
    create: list[StaticPod]


def plan_mirrors(
    desired: Mapping[str, StaticPod],
    mirrors: Mapping[str, MirrorPod],
    node_uid: str,
    sources_ready: bool,
) -> MirrorPlan:
    """What to delete and create, by full name. An orphan (no static pod of that full name) is
    deleted only once every manifest was read, as kubelet waits for all sources: a pod whose
    file is still being read keeps its mirror. A stale mirror is deleted first; the pod's new
    mirror is created by the plan after the delete went through."""
    delete: list[MirrorPod] = []
    for full_name, mirror in sorted(mirrors.items()):
        pod = desired.get(full_name)
        if pod is None:
            if sources_ready:
                delete.append(mirror)
        elif not is_mirror_of(mirror, pod, node_uid):
            # Stale, owned by a Node that is gone, or a `kubectl delete` waiting out its grace
            # period: deleted now (grace 0), then created afresh.
            delete.append(mirror)
    create = [pod for full_name, pod in sorted(desired.items()) if full_name not in mirrors]
    return MirrorPlan(delete, create)
