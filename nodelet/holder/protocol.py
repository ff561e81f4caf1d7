"""Agent <-> holder wire format: newline-delimited JSON over the pod's unix socket.

Versioned so an upgraded agent can keep talking to holders an older agent started: the holder
says its version in ``hello``; fields a side does not know are ignored.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict

VERSION = 5
"""2: journal records carry a CRC32 and start on a fresh line; hello carries pending exits.
3: spawn applies capabilities, seccomp, masked and read-only paths, a read-only root, subPath and
mount propagation (``SECURITY_KEYS``); sandboxes get sysctls.
4: sandboxes may own a user namespace and spawn joins it, with idmapped volumes
(``user_namespace``).
5: a container may run in its image's root filesystem (``rootfs``)."""
SOCKET_NAME = "holder.sock"
JOURNAL_NAME = "journal.jsonl"
POD_RECORD_NAME = "pod.json"
HOLDER_LOG_NAME = "holder.log"
TERMINATING_NAME = "terminating.json"
"""Written (fsync'd) by the agent before it stops a pod: the intent to remove outlives a crash."""
HOLDER_ID_NAME = "holder.json"
"""The holder's pid and kernel start time, so it is recognised without its socket."""

START_ERROR = "StartError"
"""exec itself failed: a real (failed) run of the container, counted like kubelet counts it."""
START_ERROR_EXIT_CODE = 128
"""What containerd reports for a container whose exec failed."""
SETUP_ERROR = "CreateContainerError"
"""The spec could not be applied before exec: the container never existed."""


class MountSpec(TypedDict):
    source: str
    target: str
    read_only: bool
    sub_path: NotRequired[str]
    """Relative, resolved beneath ``source`` in the child (no symlink may lead out of it)."""
    propagation: NotRequired[str]
    """``rslave`` or ``rshared``; absent is ``private``."""


class UserNamespaceSpec(TypedDict):
    """A pod's user namespace: ``[inside, outside, length]`` lines of ``uid_map``/``gid_map``."""

    uid_map: list[list[int]]
    gid_map: list[list[int]]


class RootfsSpec(TypedDict):
    """A non-host image's root: an overlay mounted at ``merged``, the sibling of ``upper``."""

    lower: list[str]
    """The image's unpacked layer dirs, top layer first (overlayfs's lowerdir order)."""
    upper: str
    work: str
    """Both under the pod's state dir (removed with the pod); created by the holder."""
    shm: NotRequired[str]
    """A host dir bound at ``/dev/shm``: the pod's (shared by its containers), or the host's
    ``/dev/shm`` for hostIPC."""
    shm_tmpfs: NotRequired[bool]
    """Mount the pod's tmpfs at ``shm`` first, unless an earlier container did."""
    host: NotRequired[bool]
    """The ``host`` image: ``lower`` is the node's ``/``, and the node's other mounts get
    overlays (or read-only binds) of their own (``rootfs.host_submounts``)."""
    host_skip: NotRequired[list[str]]
    """Node paths whose mounts a host-image root leaves out: the agent's own dirs."""


class CapabilitySpec(TypedDict):
    """Capability numbers of each set (see ``nodelet.runtime.api.CapabilitySets``)."""

    bounding: list[int]
    effective: list[int]
    permitted: list[int]
    inheritable: list[int]
    ambient: list[int]


class HookSpec(TypedDict):
    """A preStop handler, run by the holder (so it runs even when the agent is gone)."""

    kind: Literal["exec", "http", "sleep"]
    argv: NotRequired[list[str]]
    """exec: the command, run in the container's namespaces as its user."""
    run_as_user: NotRequired[int | None]
    run_as_group: NotRequired[int | None]
    scheme: NotRequired[str]
    host: NotRequired[str]
    port: NotRequired[int]
    path: NotRequired[str]
    headers: NotRequired[list[list[str]]]
    seconds: NotRequired[float]
    """sleep: how long."""


class ContainerSpec(TypedDict):
    """``spawn``'s container: fully prepared by the agent, applied by the holder as it is."""

    name: str
    attempt: int
    argv: list[str]
    env: dict[str, str]
    log_path: str
    working_dir: str | None
    mounts: list[MountSpec]
    run_as_user: int | None
    run_as_group: int | None
    supplemental_groups: list[int]
    no_new_privileges: bool
    own_pid_namespace: bool
    pre_stop: NotRequired[HookSpec]
    stop_signal: NotRequired[int]
    """The signal that asks it to stop (``lifecycle.stopSignal``), SIGTERM when absent."""
    cgroup_procs: NotRequired[list[str]]
    """``cgroup.procs`` files the child joins before exec (its limits apply from the first
    instruction); absent from older agents."""
    capabilities: NotRequired[CapabilitySpec]
    seccomp_bpf: NotRequired[str]
    """Base64 of the classic-BPF program installed just before exec."""
    privileged: NotRequired[bool]
    read_only_root: NotRequired[bool]
    masked_paths: NotRequired[list[str]]
    readonly_paths: NotRequired[list[str]]
    log_max_bytes: NotRequired[int]
    """Rotate the log file before it would grow past this many bytes (kubelet's
    ``containerLogMaxSize``); absent: never rotated. An older holder ignores it."""
    user_namespace: NotRequired[UserNamespaceSpec]
    """Join the pod's user namespace (it must have these maps) before the identity switch, and
    idmap every volume with it. Only for a version-4 holder (``required_version``)."""
    rootfs: NotRequired[RootfsSpec]
    """Run in the image's root instead of the host's ``/``: mountPaths and workingDir are made
    in its upper dir. Only for a version-5 holder."""


SECURITY_KEYS = ("capabilities", "seccomp_bpf", "read_only_root", "masked_paths", "readonly_paths")
"""ContainerSpec keys a version-2 holder would silently ignore: such a spec is never sent to it."""
SECURITY_MOUNT_KEYS = ("sub_path", "propagation")


def needs_version_3(spec: ContainerSpec) -> bool:
    """Whether ``spec`` asks for something only a version-3 holder applies."""
    return any(key in spec for key in SECURITY_KEYS) or any(
        key in mount for mount in spec["mounts"] for key in SECURITY_MOUNT_KEYS
    )


def required_version(spec: ContainerSpec) -> int:
    """The oldest holder version that applies all of ``spec``: an older one would ignore a
    field and run the container with more privilege than asked, so it is never sent there."""
    if "rootfs" in spec:
        return 5
    if "user_namespace" in spec:
        return 4
    return 3 if needs_version_3(spec) else 1


class SandboxRequest(TypedDict):
    """What the zygote needs to fork a pod's holder (the namespaces to create: True = own)."""

    pod_dir: str
    pod_uid: str
    hostname: str
    net: bool
    ipc: bool
    uts: bool
    pid: bool
    grace_seconds: float | None
    cgroup_procs: NotRequired[list[str]]
    """The pod-level cgroups the holder joins (and everything it forks but containers)."""
    sysctls: NotRequired[list[list[str]]]
    """[name, value] pairs set inside the new namespaces before the holder serves."""
    user_namespace: NotRequired[UserNamespaceSpec]
    """Made first; the new net, IPC and UTS namespaces are owned by it (``hostUsers: false``)."""


class StartEntry(TypedDict):
    """Journal record and pushed event: a container process exists (``pid``: host pid)."""

    type: Literal["start"]
    name: str
    attempt: int
    pid: int
    started_at: float


class ExitEntry(TypedDict):
    """Journal record and pushed event: that process ended."""

    type: Literal["exit"]
    name: str
    attempt: int
    pid: int
    started_at: float
    finished_at: float
    exit_code: int
    signal: int | None
    reason: NotRequired[str]
    message: NotRequired[str]


OP_SPAWN = "spawn"
OP_STOP = "stop"
OP_SHUTDOWN = "shutdown"


def encode(message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("a message is a JSON object")
    return message


def encode_record(entry: Mapping[str, Any]) -> bytes:
    """A journal record: ``\n<crc32 hex> <json>\n``.

    The leading newline keeps a record whole even after a torn or damaged line; the checksum
    lets a reader skip a damaged record instead of trusting it.
    """
    body = json.dumps(entry, separators=(",", ":"), sort_keys=True).encode()
    return b"\n%08x %s\n" % (zlib.crc32(body), body)


def decode_record(line: bytes) -> dict[str, Any] | None:
    """One journal line: the entry, None for a blank line; ValueError when damaged.

    Bare JSON lines are what version-1 holders wrote; they are still read, so an upgraded agent
    keeps the history of pods whose holders an older agent started.
    """
    line = line.strip()
    if not line:
        return None
    if line.startswith(b"{"):
        return decode(line)
    checksum, _, body = line.partition(b" ")
    if len(checksum) != 8 or not body:
        raise ValueError("not a journal record")
    if int(checksum, 16) != zlib.crc32(body):
        raise ValueError("checksum mismatch")
    return decode(body)
