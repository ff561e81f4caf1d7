"""The agent's vocabulary for manifests: a valid static pod, or why a file was rejected.

Depends on nothing else in nodelet, so every layer can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ManifestError:
    """One reason a manifest was rejected, precise enough for a node operator to fix it."""

    path: str
    """The manifest file."""
    field: str
    """JSON path of the offending field (``spec.containers[0].name``); empty for the whole file."""
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}: {self.field}" if self.field else self.path
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class StaticPod:
    """A validated, defaulted pod from one manifest file, as kubelet would run it."""

    uid: str
    namespace: str
    name: str
    """Already suffixed with the node name, as kubelet does (``web-node1``)."""
    source_path: str
    manifest: dict[str, Any] = field(compare=False, hash=False)
    """The whole v1 Pod (apiVersion, kind, metadata, spec), defaulted, JSON-ready."""

    @property
    def full_name(self) -> str:
        """kubelet's pod full name, unique per node: ``<name>_<namespace>``."""
        return f"{self.name}_{self.namespace}"

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.manifest["spec"]
        return spec


@dataclass(frozen=True)
class Rejection:
    """A manifest file that did not become a pod, with every reason found."""

    path: str
    errors: tuple[ManifestError, ...]
    pod_name: str | None = None
    """The pod's name when the file got far enough to have one."""
