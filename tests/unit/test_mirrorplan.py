"""Mirror pod planning (``nodelet.cluster.mirrorplan``): reading mirrors from API objects, the
body a mirror is created with, and what a plan deletes and creates. Pure, no I/O."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nodelet.cluster.mirrorplan import (
    MIRROR_ANNOTATION,
    MirrorPod,
    is_mirror_of,
    mirror_body,
    mirror_from_object,
    plan_mirrors,
)
from nodelet.manifest import defaults
from nodelet.model import StaticPod

pytestmark = pytest.mark.unit

Json = dict[str, Any]

NODE = "node1"
NODE_UID = "node-uid-1"


def static_pod(name: str, version: int = 1, namespace: str | None = None) -> StaticPod:
    meta: Json = {"name": name, "labels": {"version": str(version)}}
    if namespace is not None:
        meta["namespace"] = namespace
    raw = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "c", "image": "host", "command": ["sleep", "1"]}]},
    }
    manifest = defaults.apply_defaults(raw, NODE, f"/manifests/{name}.yaml", seen=0.0)
    m = manifest["metadata"]
    return StaticPod(m["uid"], m["namespace"], m["name"], f"/manifests/{name}.yaml", manifest)


def mirror_of(
    pod: StaticPod,
    *,
    uid: str = "mirror-uid",
    config_hash: str | None = None,
    owner_uid: str = NODE_UID,
    deleting: bool = False,
) -> MirrorPod:
    return MirrorPod(
        namespace=pod.namespace,
        name=pod.name,
        uid=uid,
        config_hash=pod.uid if config_hash is None else config_hash,
        owner_uid=owner_uid,
        deleting=deleting,
        status={},
    )


def api_object(**meta: Any) -> Json:
    metadata: Json = {"namespace": "kube-system", "name": "web-node1", "uid": "u1", **meta}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "status": {"phase": "Running"}}


# -- mirror_from_object ----------------------------------------------------------------------


def test_mirror_from_object_is_none_for_a_pod_without_the_mirror_annotation() -> None:
    assert mirror_from_object(api_object()) is None
    assert mirror_from_object(api_object(annotations={"other": "x"})) is None
    assert mirror_from_object(api_object(annotations=None)) is None
    assert mirror_from_object({"kind": "Pod"}) is None
    assert mirror_from_object({"metadata": "not a dict"}) is None


def test_mirror_from_object_reads_hash_identity_and_status() -> None:
    mirror = mirror_from_object(api_object(annotations={MIRROR_ANNOTATION: "hash-1"}))
    assert mirror is not None
    assert mirror.config_hash == "hash-1"
    assert (mirror.namespace, mirror.name, mirror.uid) == ("kube-system", "web-node1", "u1")
    assert mirror.full_name == "web-node1_kube-system"
    assert mirror.status == {"phase": "Running"}
    assert mirror.owner_uid == ""
    assert mirror.deleting is False


def test_mirror_from_object_owner_is_the_controller_node_reference() -> None:
    refs = [
        {"apiVersion": "v1", "kind": "Node", "name": "old", "uid": "not-controller"},
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "r",
            "uid": "rs",
            "controller": True,
        },
        {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE_UID, "controller": True},
    ]
    obj = api_object(annotations={MIRROR_ANNOTATION: "h"}, ownerReferences=refs)
    mirror = mirror_from_object(obj)
    assert mirror is not None
    assert mirror.owner_uid == NODE_UID


def test_mirror_from_object_node_reference_without_controller_is_no_owner() -> None:
    refs = [{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE_UID}]
    mirror = mirror_from_object(
        api_object(annotations={MIRROR_ANNOTATION: "h"}, ownerReferences=refs)
    )
    assert mirror is not None
    assert mirror.owner_uid == ""


def test_mirror_from_object_deleting_follows_deletion_timestamp() -> None:
    obj = api_object(annotations={MIRROR_ANNOTATION: "h"}, deletionTimestamp="2024-01-01T00:00:00Z")
    mirror = mirror_from_object(obj)
    assert mirror is not None
    assert mirror.deleting is True


# -- mirror_body -----------------------------------------------------------------------------


def test_mirror_body_annotation_is_the_static_pod_uid() -> None:
    pod = static_pod("web")
    body = mirror_body(pod, NODE, NODE_UID)
    annotations = body["metadata"]["annotations"]
    assert annotations[MIRROR_ANNOTATION] == pod.uid
    # The pod's own annotations are kept.
    for key, value in pod.manifest["metadata"]["annotations"].items():
        assert annotations[key] == value


def test_mirror_body_has_exactly_one_controller_reference_to_the_node() -> None:
    pod = static_pod("web")
    pod.manifest["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "y"}
    ]
    body = mirror_body(pod, NODE, NODE_UID)
    assert body["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE_UID, "controller": True}
    ]
    assert "blockOwnerDeletion" not in body["metadata"]["ownerReferences"][0]


def test_mirror_body_drops_server_owned_fields_and_status() -> None:
    pod = static_pod("web")
    meta = pod.manifest["metadata"]
    meta["resourceVersion"] = "42"
    meta["creationTimestamp"] = "2024-01-01T00:00:00Z"
    meta["generation"] = 3
    body = mirror_body(pod, NODE, NODE_UID)
    for key in ("uid", "resourceVersion", "creationTimestamp", "generation"):
        assert key not in body["metadata"], key
    assert "status" not in body
    assert body["metadata"]["name"] == pod.name
    assert body["metadata"]["namespace"] == pod.namespace


def test_mirror_body_binds_the_pod_to_the_node() -> None:
    pod = static_pod("web")
    pod.manifest["spec"]["nodeName"] = "elsewhere"
    body = mirror_body(pod, NODE, NODE_UID)
    assert body["spec"]["nodeName"] == NODE
    assert body["spec"]["containers"] == pod.manifest["spec"]["containers"]


def test_mirror_body_does_not_mutate_the_static_pod_manifest() -> None:
    pod = static_pod("web")
    before = copy.deepcopy(pod.manifest)
    body = mirror_body(pod, "other-node", NODE_UID)
    assert pod.manifest == before
    # Nor does the body share mutable parts with the manifest.
    body["metadata"]["annotations"]["x"] = "y"
    body["metadata"]["labels"]["x"] = "y"
    body["spec"]["containers"][0]["image"] = "changed"
    assert pod.manifest == before


# -- is_mirror_of ----------------------------------------------------------------------------


def test_is_mirror_of_true_for_current_hash_owner_and_not_deleting() -> None:
    pod = static_pod("web")
    assert is_mirror_of(mirror_of(pod), pod, NODE_UID)


def test_is_mirror_of_false_for_another_hash() -> None:
    pod = static_pod("web")
    assert not is_mirror_of(mirror_of(pod, config_hash="older"), pod, NODE_UID)


def test_is_mirror_of_false_while_deleting() -> None:
    pod = static_pod("web")
    assert not is_mirror_of(mirror_of(pod, deleting=True), pod, NODE_UID)


def test_is_mirror_of_false_for_another_owner() -> None:
    pod = static_pod("web")
    assert not is_mirror_of(mirror_of(pod, owner_uid="old-node"), pod, NODE_UID)
    assert not is_mirror_of(mirror_of(pod, owner_uid=""), pod, NODE_UID)


# -- plan_mirrors ----------------------------------------------------------------------------


def by_name(*pods: StaticPod) -> dict[str, StaticPod]:
    return {pod.full_name: pod for pod in pods}


def mirrors_by_name(*mirrors: MirrorPod) -> dict[str, MirrorPod]:
    return {mirror.full_name: mirror for mirror in mirrors}


def test_plan_creates_a_missing_mirror() -> None:
    pod = static_pod("web")
    plan = plan_mirrors(by_name(pod), {}, NODE_UID, sources_ready=False)
    assert plan.create == [pod]
    assert plan.delete == []


def test_plan_leaves_a_valid_mirror_alone() -> None:
    pod = static_pod("web")
    plan = plan_mirrors(by_name(pod), mirrors_by_name(mirror_of(pod)), NODE_UID, True)
    assert plan.create == []
    assert plan.delete == []


@pytest.mark.parametrize(
    "stale",
    [
        {"config_hash": "older-hash"},
        {"owner_uid": "old-node-uid"},
        {"owner_uid": ""},
        {"deleting": True},
    ],
    ids=["stale-hash", "wrong-owner", "no-owner", "deleting"],
)
def test_plan_deletes_an_invalid_mirror_and_does_not_create_in_the_same_plan(
    stale: dict[str, Any],
) -> None:
    pod = static_pod("web")
    mirror = mirror_of(pod, **stale)
    plan = plan_mirrors(by_name(pod), mirrors_by_name(mirror), NODE_UID, sources_ready=True)
    assert plan.delete == [mirror]
    assert plan.create == []


def test_plan_deletes_an_orphan_only_when_sources_are_ready() -> None:
    gone = static_pod("gone")
    orphan = mirror_of(gone)
    not_ready = plan_mirrors({}, mirrors_by_name(orphan), NODE_UID, sources_ready=False)
    assert not_ready.delete == []
    assert not_ready.create == []
    ready = plan_mirrors({}, mirrors_by_name(orphan), NODE_UID, sources_ready=True)
    assert ready.delete == [orphan]
    assert ready.create == []


def test_plan_invalid_mirror_of_a_desired_pod_is_deleted_before_sources_are_ready() -> None:
    pod = static_pod("web")
    mirror = mirror_of(pod, config_hash="older")
    plan = plan_mirrors(by_name(pod), mirrors_by_name(mirror), NODE_UID, sources_ready=False)
    assert plan.delete == [mirror]


def test_plan_matches_by_full_name_namespace_included() -> None:
    pod = static_pod("web", namespace="a")
    other_ns = mirror_of(static_pod("web", namespace="b"))
    plan = plan_mirrors(by_name(pod), mirrors_by_name(other_ns), NODE_UID, sources_ready=True)
    assert plan.create == [pod]
    assert plan.delete == [other_ns]


def test_plan_order_is_deterministic_whatever_the_input_order() -> None:
    pods = [static_pod(name) for name in ("c", "a", "d", "b")]
    stale = [mirror_of(static_pod(name), config_hash="old") for name in ("z", "x", "y")]
    orders = [
        (pods, stale),
        (list(reversed(pods)), list(reversed(stale))),
        (pods[2:] + pods[:2], stale[1:] + stale[:1]),
    ]
    plans = [
        plan_mirrors(by_name(*p), mirrors_by_name(*m), NODE_UID, sources_ready=True)
        for p, m in orders
    ]
    for plan in plans:
        assert [p.name for p in plan.create] == ["a-node1", "b-node1", "c-node1", "d-node1"]
        assert [m.name for m in plan.delete] == ["x-node1", "y-node1", "z-node1"]


def test_plan_mixes_creates_deletes_and_keeps() -> None:
    keep, replace, new = static_pod("keep"), static_pod("replace"), static_pod("new")
    kept = mirror_of(keep, uid="k")
    stale = mirror_of(replace, uid="r", config_hash="old")
    orphan = mirror_of(static_pod("orphan"), uid="o")
    plan = plan_mirrors(
        by_name(keep, replace, new),
        mirrors_by_name(kept, stale, orphan),
        NODE_UID,
        sources_ready=True,
    )
    assert plan.create == [new]
    assert [m.uid for m in plan.delete] == ["o", "r"]
