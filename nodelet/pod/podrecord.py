"""The pod record the runtime keeps in a pod's run dir, so a restarted agent knows its pods;
read back as strictly as a manifest."""

from __future__ import annotations

from typing import Any

from nodelet.manifest import schema
from nodelet.model import StaticPod


def pod_record(pod: StaticPod) -> dict[str, Any]:
    """What the runtime stores in the run dir so a restarted agent knows the pod."""
    return {
        "uid": pod.uid,
        "namespace": pod.namespace,
        "name": pod.name,
        "sourcePath": pod.source_path,
        "manifest": pod.manifest,
    }


class RecordError(ValueError):
    """A stored pod record that cannot be trusted to drive a worker."""


def pod_from_record(record: dict[str, Any], uid: str) -> StaticPod:
    """The pod a run dir's ``pod.json`` describes, checked as strictly as a manifest's shape:
    a damaged or foreign record must never reach a worker (it would crash it and leak the pod)."""
    keys = ("uid", "namespace", "name", "sourcePath")
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in keys):
        raise RecordError("missing uid, namespace, name or sourcePath")
    if record["uid"] != uid:
        raise RecordError(f"record is for uid {record['uid'][:64]!r}")
    manifest = record.get("manifest")
    problems: list[str] = []
    schema.check(manifest, "V1Pod", "manifest", lambda f, why: problems.append(f"{f}: {why}"))
    if not isinstance(manifest, dict) or problems:
        raise RecordError("; ".join(problems[:3]) or "manifest is not an object")
    spec = manifest.get("spec")
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if not containers or not all(
        isinstance(c, dict) and isinstance(c.get("name"), str)
        for c in [*containers, *(spec.get("initContainers") or [])]  # type: ignore[union-attr]
    ):
        raise RecordError("manifest.spec.containers is missing or malformed")
    meta = manifest.get("metadata") or {}
    if meta.get("uid") != uid or meta.get("name") != record["name"]:
        raise RecordError("manifest metadata does not match the record")
    return StaticPod(
        uid=uid,
        namespace=record["namespace"],
        name=record["name"],
        source_path=record["sourcePath"],
        manifest=manifest,
    )
