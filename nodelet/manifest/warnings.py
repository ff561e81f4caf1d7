"""Fields dropped in ``manifestValidation: Warn`` mode, told once per pod.

A source lists its warnings beside its rejections (``ManifestWarnings`` is a ``Rejection`` in
shape); here they are told apart, and each pod's are handed out once, for one Warning Event
per dropped field on that pod (``ManifestWarning``), not one per relist.
"""

from __future__ import annotations

from collections.abc import Iterable

from nodelet.manifest.load import ManifestWarnings
from nodelet.manifest.snapshot import SourceSnapshot
from nodelet.model import Rejection, StaticPod

MANIFEST_WARNING = "ManifestWarning"
"""Event reason for a field dropped from a running pod (beside ``ManifestRejected``)."""


def split(found: Iterable[Rejection]) -> tuple[list[Rejection], list[Rejection]]:
    """(rejections, warnings) from a snapshot's ``rejected``."""
    rejections: list[Rejection] = []
    warnings: list[Rejection] = []
    for item in found:
        if isinstance(item, ManifestWarnings):
            warnings.append(item)
        else:
            rejections.append(item)
    return rejections, warnings


def owner(pods: Iterable[StaticPod], warned: Rejection) -> StaticPod | None:
    """The pod ``warned`` is about: same source, same name (a URL may serve several)."""
    for pod in pods:
        if pod.source_path != warned.path:
            continue
        node = str(pod.spec.get("nodeName", "")).lower()
        if warned.pod_name is None or pod.name == f"{warned.pod_name}-{node}":
            return pod
    return None


class WarningEvents:
    """Hands out each pod's warnings once (a pod's UID changes with its manifest)."""

    def __init__(self) -> None:
        self._told: set[str] = set()

    def new(self, snapshot: SourceSnapshot) -> list[tuple[StaticPod, str]]:
        """(pod, message) for every warning of a pod not told before."""
        found: list[tuple[StaticPod, str]] = []
        told: set[str] = set()
        for warned in split(snapshot.rejected)[1]:
            pod = owner(snapshot.pods.values(), warned)
            if pod is None:
                continue
            told.add(pod.uid)
            if pod.uid not in self._told:
                found.extend((pod, str(error)) for error in warned.errors)
        self._told = told
        return found
