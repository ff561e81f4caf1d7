"""The union of several sources' full sets (the manifest dir, the manifest URL), as kubelet's
config mux merges its file and http sources into one desired set.

Each source reports its own full set; the agent gets the union after every report. The set is
complete only once every source has reported once and each last report was complete, so no
adopted pod is stopped before every source was heard (kubelet's ``allSourcesReady``). A pod
name defined by two sources runs from the one listed first; the other is rejected.
"""

from __future__ import annotations

from collections.abc import Callable

from nodelet.manifest.snapshot import SourceSnapshot
from nodelet.model import ManifestError, Rejection, StaticPod


class MergedSources:
    """Takes each source's snapshots through ``sink(name)``; emits the union."""

    def __init__(self, names: list[str], emit: Callable[[SourceSnapshot], None]) -> None:
        self._names = list(names)
        self._emit = emit
        self._latest: dict[str, SourceSnapshot] = {}

    def sink(self, name: str) -> Callable[[SourceSnapshot], None]:
        if name not in self._names:
            raise ValueError(f"unknown source {name!r}")

        def report(snapshot: SourceSnapshot) -> None:
            self._latest[name] = snapshot
            self._emit(self.union())

        return report

    def union(self) -> SourceSnapshot:
        pods: dict[str, StaticPod] = {}
        owners: dict[str, StaticPod] = {}
        rejected: list[Rejection] = []
        complete = True
        for name in self._names:
            snapshot = self._latest.get(name)
            if snapshot is None:
                complete = False
                continue
            complete = complete and snapshot.complete
            rejected.extend(snapshot.rejected)
            for uid, pod in snapshot.pods.items():
                owner = owners.get(pod.full_name)
                if owner is not None:
                    rejected.append(_duplicate(pod, owner))
                    continue
                owners[pod.full_name] = pod
                pods[uid] = pod
        return SourceSnapshot(pods=pods, rejected=rejected, complete=complete)


def _duplicate(pod: StaticPod, owner: StaticPod) -> Rejection:
    reason = f"pod {pod.namespace}/{pod.name} is already defined by {owner.source_path}"
    error = ManifestError(pod.source_path, "metadata.name", reason)
    return Rejection(pod.source_path, (error,), pod.name)
