"""The agent's vocabulary for manifests: a valid static pod, or why a file was rejected.

Depends on nothing else in nodelet, so every layer can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_GRACE_SECONDS = 30.0
"""kubelet's (the API server's) default terminationGracePeriodSeconds."""


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

    # Typed accessors for the pod fields the agent honours (validation guarantees the types).

    @property
    def host_network(self) -> bool:
        return self.spec.get("hostNetwork") is True

    @property
    def host_pid(self) -> bool:
        return self.spec.get("hostPID") is True

    @property
    def host_ipc(self) -> bool:
        return self.spec.get("hostIPC") is True

    @property
    def share_process_namespace(self) -> bool:
        return self.spec.get("shareProcessNamespace") is True

    @property
    def restart_policy(self) -> str:
        policy = self.spec.get("restartPolicy")
        return policy if isinstance(policy, str) else "Always"

    @property
    def grace_seconds(self) -> float:
        """``terminationGracePeriodSeconds``, kubelet's 30 s when unset."""
        grace = self.spec.get("terminationGracePeriodSeconds")
        if isinstance(grace, int) and not isinstance(grace, bool) and grace >= 0:
            return float(grace)
        return DEFAULT_GRACE_SECONDS

    @property
    def containers(self) -> list[dict[str, Any]]:
        containers: list[dict[str, Any]] = self.spec.get("containers") or []
        return containers

    @property
    def init_containers(self) -> list[dict[str, Any]]:
        containers: list[dict[str, Any]] = self.spec.get("initContainers") or []
        return containers

    def ip(self, node_ip: str, sandbox_ip: str | None) -> str:
        """The pod's IP: the node's for hostNetwork, else its sandbox's (empty until known)."""
        return node_ip if self.host_network else (sandbox_ip or "")


@dataclass(frozen=True)
class Rejection:
    """A manifest file that did not become a pod, with every reason found."""

    path: str
    errors: tuple[ManifestError, ...]
    pod_name: str | None = None
    """The pod's name when the file got far enough to have one."""
