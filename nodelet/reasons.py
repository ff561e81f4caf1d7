"""Every reason string nodelet reports, kubelet's where kubelet has one (``kubectl`` and tools
match on them, so they are spelled exactly once). The holder's own live in
``nodelet.holder.protocol``, since the holder imports nothing outside its package."""

from __future__ import annotations

from nodelet.holder.protocol import SETUP_ERROR, START_ERROR

__all__ = [
    "BACK_OFF_EVENT",
    "COMPLETED",
    "CONTAINERS_NOT_INITIALIZED",
    "CONTAINERS_NOT_READY",
    "CONTAINER_CREATING",
    "CONTAINER_STATUS_UNKNOWN",
    "CRASH_LOOP_BACK_OFF",
    "CREATED_EVENT",
    "CREATE_CONTAINER_CONFIG_ERROR",
    "DEADLINE_EXCEEDED",
    "ERROR",
    "EVENT_NORMAL",
    "EVENT_WARNING",
    "FAILED_EVENT",
    "FAILED_POST_START_HOOK",
    "KILLING_EVENT",
    "LOG_WRITE_FAILED",
    "MANIFEST_REJECTED",
    "OOM_KILLED",
    "POD_COMPLETED",
    "POD_INITIALIZING",
    "POD_SANDBOX_NOT_FOUND",
    "POD_SANDBOX_NOT_READY",
    "READINESS_GATES_NOT_READY",
    "RUN_CONTAINER_ERROR",
    "SANDBOX_BACK_OFF",
    "SANDBOX_CHANGED",
    "SANDBOX_CHANGED_MESSAGE",
    "SETUP_ERROR",
    "STARTED_EVENT",
    "START_ERROR",
    "UNHEALTHY_EVENT",
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
OOM_KILLED = "OOMKilled"
ERROR = "Error"
CONTAINER_STATUS_UNKNOWN = "ContainerStatusUnknown"

# Pod reasons.
DEADLINE_EXCEEDED = "DeadlineExceeded"
EVICTED = "Evicted"
FAILED_CREATE_POD_SANDBOX = "FailedCreatePodSandBox"
"""kubelet's event when the sandbox (here: its network) cannot be set up."""
CREATE_POD_SANDBOX_ERROR = "CreatePodSandboxError"
"""kubelet's ``ErrCreatePodSandbox``: a container waits for its pod's sandbox."""
"""kubelet's eviction manager: here, an emptyDir past its sizeLimit."""

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

# Event types and reasons (kubelet's pkg/kubelet/events).
EVENT_NORMAL = "Normal"
EVENT_WARNING = "Warning"
CREATED_EVENT = "Created"
STARTED_EVENT = "Started"
KILLING_EVENT = "Killing"
BACK_OFF_EVENT = "BackOff"
FAILED_EVENT = "Failed"
SANDBOX_CHANGED = "SandboxChanged"
SANDBOX_CHANGED_MESSAGE = "Pod sandbox changed, it will be killed and re-created."
UNHEALTHY_EVENT = "Unhealthy"
FAILED_POST_START_HOOK = "FailedPostStartHook"
"""The event, and the reason the run it killed is terminated with."""
MANIFEST_REJECTED = "ManifestRejected"
"""nodelet's own: a Warning on the Node naming a manifest file that was refused and why
(kubelet only logs it)."""
