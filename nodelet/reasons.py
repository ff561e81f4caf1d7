"""Every reason string nodelet reports, kubelet's where kubelet has one (``kubectl`` and tools
match on them, so they are spelled exactly once). The holder's own live in
``nodelet.holder.protocol``, since the holder imports nothing outside its package."""

from __future__ import annotations

from nodelet.holder.protocol import SETUP_ERROR, START_ERROR

__all__ = [
    "COMPLETED", "CONTAINERS_NOT_INITIALIZED", "CONTAINERS_NOT_READY", "CONTAINER_CREATING",
    "CONTAINER_STATUS_UNKNOWN", "CRASH_LOOP_BACK_OFF", "CREATE_CONTAINER_CONFIG_ERROR",
    "ERROR", "LOG_WRITE_FAILED", "POD_COMPLETED", "POD_INITIALIZING", "POD_SANDBOX_NOT_FOUND",
    "POD_SANDBOX_NOT_READY", "READINESS_GATES_NOT_READY", "RUN_CONTAINER_ERROR",
    "SANDBOX_BACK_OFF", "SETUP_ERROR", "START_ERROR",
]  # fmt: skip

# Container waiting reasons (kubelet's kuberuntime and images).
CONTAINER_CREATING = "ContainerCreating"
POD_INITIALIZING = "PodInitializing"
CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
RUN_CONTAINER_ERROR = "RunContainerError"
POD_SANDBOX_NOT_FOUND = "PodSandboxNotFound"
POD_SANDBOX_NOT_READY = "PodSandboxNotReady"

# Container terminated reasons.
COMPLETED = "Completed"
ERROR = "Error"
CONTAINER_STATUS_UNKNOWN = "ContainerStatusUnknown"

# Pod condition reasons.
POD_COMPLETED = "PodCompleted"
CONTAINERS_NOT_READY = "ContainersNotReady"
CONTAINERS_NOT_INITIALIZED = "ContainersNotInitialized"
READINESS_GATES_NOT_READY = "ReadinessGatesNotReady"

# nodelet's own.
SANDBOX_BACK_OFF = "SandboxBackOff"
"""The holder died again inside its back-off window (PodReadyToStartContainers=False)."""
LOG_WRITE_FAILED = "LogWriteFailed"
"""Container output was dropped because the log could not be written."""
