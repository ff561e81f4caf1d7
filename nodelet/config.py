"""Agent settings: one frozen dataclass, filled from flags by the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nodelet.backoff import DEFAULT_INITIAL_SECONDS, DEFAULT_MAX_SECONDS


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    """The Node's name: ``--hostname-override`` or the lowercased host name, as kubelet."""
    node_ip: str
    """The address reported as hostIP (and podIP for hostNetwork pods)."""
    pod_manifest_path: Path = Path("/etc/kubernetes/manifests")
    root_dir: Path = Path("/var/lib/nodelet")
    """Persistent state: pod volumes (emptyDir)."""
    run_dir: Path = Path("/run/nodelet")
    """Runtime state that must survive agent restarts but not reboots: holders, journals."""
    pod_logs_dir: Path = Path("/var/log/pods")
    healthz_port: int = 10248
    """Local API port on 127.0.0.1 (``/healthz``, ``/pods``); 0 disables it."""
    file_check_frequency: float = 20.0
    """Relist period of the manifest dir; inotify catches changes sooner."""
    settle_seconds: float = 2.0
    """A file changed without a close-after-write event is read once it has been quiet this long."""
    backoff_initial: float = DEFAULT_INITIAL_SECONDS
    backoff_max: float = DEFAULT_MAX_SECONDS
    resync_seconds: float = 10.0
    """Every pod is synced at least this often even without events (kubelet's resync)."""

    @property
    def pods_state_dir(self) -> Path:
        return self.root_dir / "pods"
