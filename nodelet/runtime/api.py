"""The runtime interface the agent drives, and the records it returns.

Mirrors kubelet's CRI seam without gRPC: the agent decides (``compute_pod_actions``), the runtime
executes. Everything here is plain data so the pod worker can be tested against any runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class UserNamespace:
    """A pod's user namespace (``hostUsers: false``): container ids ``0..length-1`` are host
    ids ``host_id..host_id+length-1``, for uids and gids alike (kubelet's allocation)."""

    host_id: int
    length: int


@dataclass(frozen=True)
class SandboxConfig:
    """What the infra holder needs to create the pod's namespaces."""

    pod_uid: str
    pod_namespace: str
    pod_name: str
    hostname: str
    host_network: bool = False
    host_pid: bool = False
    host_ipc: bool = False
    share_process_namespace: bool = False
    grace_seconds: float | None = None
    """The pod's termination grace period: the holder keeps it, so a pod whose stored record
    cannot be read is still stopped gracefully."""
    cgroup_procs: tuple[str, ...] = ()
    """The pod-level ``cgroup.procs`` files the holder joins before it makes the namespaces."""
    sysctls: tuple[tuple[str, str], ...] = ()
    """Namespaced sysctls (name, value) the holder sets inside the pod's new namespaces, already
    checked against the node's allow-list."""
    user_namespace: UserNamespace | None = None
    """Made first, owning the pod's net, IPC and UTS namespaces; None: the host's."""


@dataclass(frozen=True)
class Mount:
    """A bind mount into the container's own mount namespace."""

    source: str
    """Host path, already prepared by the agent (emptyDir dir, checked hostPath)."""
    target: str
    read_only: bool = False
    """Recursively read-only (``mount_setattr`` with ``AT_RECURSIVE``)."""
    sub_path: str | None = None
    """Relative path inside ``source`` to mount instead of all of it; resolved by the holder in
    the child, beneath ``source`` (a symlink may not lead out of it)."""
    propagation: str = "private"
    """``private`` (None), ``rslave`` (HostToContainer) or ``rshared`` (Bidirectional)."""


@dataclass(frozen=True)
class RootFs:
    """A container's root filesystem: an overlay of its image's layers (or of the node's
    ``/``) the holder mounts in the container's mount namespace and pivots into."""

    lower: tuple[str, ...]
    """The image's unpacked layer dirs, top layer first."""
    upper: str
    work: str
    """Under the pod's state dir, so they go with the pod; the holder creates them."""
    shm: str
    """Bound at ``/dev/shm``: the pod's dir (a tmpfs the holder mounts once per pod), or the
    host's ``/dev/shm`` for hostIPC."""
    shm_tmpfs: bool = True
    host: bool = False
    """The ``host`` image: ``lower`` is the node's ``/``; the holder also overlays the node's
    other mounts, except those under ``host_skip`` (the agent's own dirs)."""
    host_skip: tuple[str, ...] = ()


@dataclass(frozen=True)
class CapabilitySets:
    """The five capability sets of the container's process, as capability numbers, applied as
    runc applies them (bounding first, then the rest after the user switch)."""

    bounding: tuple[int, ...]
    effective: tuple[int, ...]
    permitted: tuple[int, ...]
    inheritable: tuple[int, ...]
    ambient: tuple[int, ...]


@dataclass(frozen=True)
class ContainerConfig:
    """A fully prepared container: the holder applies it and execs, deciding nothing."""

    name: str
    attempt: int
    """The container's restart count for this start; names its log file ``<attempt>.log``."""
    argv: list[str]
    """Command and args after ``$(VAR)`` expansion; argv[0] is looked up in env PATH."""
    env: dict[str, str]
    """The complete environment (PATH, HOSTNAME, pod env, downward API)."""
    log_path: str
    working_dir: str | None = None
    mounts: list[Mount] = field(default_factory=list)
    run_as_user: int | None = None
    run_as_group: int | None = None
    supplemental_groups: list[int] = field(default_factory=list)
    no_new_privileges: bool = False
    own_pid_namespace: bool = False
    """The container is PID 1 of a PID namespace of its own (neither hostPID nor
    shareProcessNamespace), as containerd runs it."""
    pre_stop: dict[str, Any] | None = None
    """The preStop handler (the wire's HookSpec), run by the holder before the stop signal."""
    stop_signal: int = 15
    """SIGTERM unless ``lifecycle.stopSignal`` says otherwise."""
    cgroup_procs: list[str] = field(default_factory=list)
    """``cgroup.procs`` files the container joins before exec."""
    capabilities: CapabilitySets | None = None
    """None keeps the holder's own capabilities (only for a privileged container)."""
    seccomp_filter: bytes | None = None
    """A compiled classic-BPF program (``struct sock_filter`` array) installed just before exec;
    None is Unconfined."""
    privileged: bool = False
    read_only_root: bool = False
    """``readOnlyRootFilesystem``: the container's view of ``/`` is read-only, its volumes not."""
    masked_paths: tuple[str, ...] = ()
    """Paths hidden from the container (``/dev/null`` over files, an empty read-only tmpfs over
    dirs), runc's list unless privileged or ``procMount: Unmasked``."""
    readonly_paths: tuple[str, ...] = ()
    """Paths bound read-only over themselves (``/proc/sys``, ``/proc/sysrq-trigger`` ...)."""
    log_max_bytes: int | None = None
    """The holder rotates the log before it would exceed this size (``containerLogMaxSize``)."""
    user_namespace: UserNamespace | None = None
    """The pod's: joined before the user switch, and every volume idmapped with it."""
    rootfs: RootFs | None = None
    """The image's root; None runs on the host's own ``/`` (image ``host``)."""


@dataclass(frozen=True)
class ContainerRecord:
    """One run (attempt) of a container, as journaled by the holder."""

    name: str
    attempt: int
    pid: int
    started_at: float
    """Epoch seconds."""
    finished_at: float | None = None
    exit_code: int | None = None
    """128 + signal when killed by a signal, as container runtimes report it."""
    signal: int | None = None
    reason: str | None = None
    """Set when the runtime knows better than the exit code: ``StartError`` (exec failed)."""
    message: str | None = None

    @property
    def running(self) -> bool:
        return self.finished_at is None


@dataclass(frozen=True)
class SandboxStatus:
    """What the runtime observes of one pod: its holder and every container run."""

    pod_uid: str
    ready: bool
    """The holder is alive and answering."""
    holder_pid: int | None
    created_at: float
    pod_ip: str | None = None
    containers: tuple[ContainerRecord, ...] = ()
    """Every attempt of every container, oldest first, across sandbox restarts."""
    finished_at: float | None = None
    """When the holder was seen to end (epoch seconds): re-creating it is backed off."""
    log_drops: tuple[tuple[str, str], ...] = ()
    """(container, why) for containers whose output could not all be written to their log."""

    def attempts(self, name: str) -> list[ContainerRecord]:
        return [c for c in self.containers if c.name == name]

    def latest(self, name: str) -> ContainerRecord | None:
        runs = self.attempts(name)
        return runs[-1] if runs else None


@dataclass(frozen=True)
class KnownPod:
    """A pod the runtime has a run dir for, found at start-up for re-adoption."""

    pod_uid: str
    pod: dict[str, Any]
    """The record the agent stored with ``run_sandbox`` (the StaticPod manifest and its path)."""
    terminating: bool = False
    """A previous agent had started to remove this pod: finish that, never restart it."""
    grace_seconds: float | None = None
    """The grace period the holder was given, for stopping a pod whose record is unusable."""


UNKNOWN_EXIT_CODE = 137
"""kubelet's exit code for a container that vanished with its sandbox (ContainerStatusUnknown)."""


class ContainerStartError(Exception):
    """The container could not be started; ``reason`` is kubelet's waiting reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


ChangeCallback = Callable[[str], None]
"""Called with a pod UID whenever something about that pod changed (an exit, the holder died)."""


class Runtime(Protocol):
    """The operations the pod worker needs. The process runtime implements it."""

    def subscribe(self, callback: ChangeCallback) -> None: ...

    async def start(self) -> None:
        """Prepare (zygote, dirs) and re-adopt every pod that survived an agent restart."""

    async def close(self) -> None:
        """Let go of holders without stopping them: pods outlive the agent."""

    async def list_pods(self) -> list[KnownPod]: ...

    async def run_sandbox(self, config: SandboxConfig, pod: dict[str, Any]) -> SandboxStatus:
        """Create the pod's holder (or return the live one); ``pod`` is stored for re-adoption."""

    async def pod_status(self, pod_uid: str) -> SandboxStatus | None: ...

    async def start_container(self, pod_uid: str, config: ContainerConfig) -> ContainerRecord:
        """Spawn and exec; returns once exec succeeded, else raises ContainerStartError."""

    async def stop_container(self, pod_uid: str, name: str, grace_seconds: float) -> None:
        """SIGTERM, SIGKILL after the grace period; returns when the process has exited."""

    async def stop_sandbox(self, pod_uid: str, grace_seconds: float) -> None:
        """End the holder of a finished pod but keep its records, so its final status outlives
        the holder and an agent restart. Idempotent."""

    async def kill_pod(self, pod_uid: str, grace_seconds: float) -> None:
        """Stop every container, end the holder, remove the run dir. Idempotent."""
