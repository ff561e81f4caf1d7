"""kubelet's cross-file rules for one read of the manifest dir (pure): the first file in
sorted order wins a duplicate pod name, and ``config.seen`` keeps the first sighting of a UID."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from nodelet.manifest.defaults import SEEN_ANNOTATION
from nodelet.model import ManifestError, Rejection, StaticPod

Result = StaticPod | Rejection


@dataclass(frozen=True)
class SourceSnapshot:
    """Every pod the directory defines right now, and every file that was rejected."""

    pods: dict[str, StaticPod]
    """By UID."""
    rejected: list[Rejection] = field(default_factory=list)
    complete: bool = True
    """False while a file never read before is still being written: its pod may be missing."""


def build(results: list[Result], complete: bool, first_seen: dict[str, str]) -> SourceSnapshot:
    """The full set from one read's per-file results; ``first_seen`` (UID -> annotation) is
    kept across reads and updated here."""
    pods: dict[str, StaticPod] = {}
    owners: dict[str, str] = {}
    rejected: list[Rejection] = []
    for result in results:
        if isinstance(result, Rejection):
            rejected.append(result)
            continue
        owner = owners.get(result.full_name)
        if owner is not None:
            rejected.append(_duplicate(result, owner))
            continue
        owners[result.full_name] = result.source_path
        pods[result.uid] = _with_first_seen(result, first_seen)
    for uid in set(first_seen) - set(pods):
        del first_seen[uid]
    return SourceSnapshot(pods=pods, rejected=rejected, complete=complete)


def _with_first_seen(pod: StaticPod, first_seen: dict[str, str]) -> StaticPod:
    """Keep ``config.seen`` at the first sighting of this UID, as kubelet does."""
    annotations = pod.manifest["metadata"]["annotations"]
    seen = first_seen.setdefault(pod.uid, annotations[SEEN_ANNOTATION])
    if annotations[SEEN_ANNOTATION] == seen:
        return pod
    manifest = dict(pod.manifest)
    metadata = dict(manifest["metadata"])
    metadata["annotations"] = {**metadata["annotations"], SEEN_ANNOTATION: seen}
    manifest["metadata"] = metadata
    return replace(pod, manifest=manifest)


def _duplicate(pod: StaticPod, owner: str) -> Rejection:
    error = ManifestError(
        path=pod.source_path,
        field="metadata.name",
        reason=f"pod {pod.namespace}/{pod.name} is already defined by {owner}",
    )
    return Rejection(path=pod.source_path, errors=(error,), pod_name=pod.name)
