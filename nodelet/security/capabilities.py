"""A container's capability sets, decided as containerd's CRI plugin decides them (pure).

containerd starts from its default spec (14 capabilities in bounding, effective and permitted,
inheritable and ambient empty), then applies ``securityContext.capabilities``: ``add: [ALL]``
first (every capability containerd itself holds), then ``drop: [ALL]``, then each added name,
then each dropped name. A privileged container gets all of containerd's own capabilities; here
that is ``None``: the holder keeps its own (it runs with the node's root capabilities).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from nodelet.runtime.api import CapabilitySets

CAPABILITY_NAMES: tuple[str, ...] = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip
"""Linux capability names without ``CAP_``, indexed by number (``CAP_CHECKPOINT_RESTORE`` = 40)."""

_NUMBERS = {name: number for number, name in enumerate(CAPABILITY_NAMES)}

DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)  # fmt: skip
"""containerd's default spec (``oci.defaultUnixCaps``), the same 14 as Docker's."""


class CapabilityError(ValueError):
    """A capability name the kernel does not know; the message names it."""


def number(name: str) -> int:
    """The number of ``name``, case-insensitive, with or without ``CAP_``.

    containerd's CRI plugin prefixes ``CAP_`` unconditionally, so a ``CAP_``-named entry reaches
    runc as ``CAP_CAP_...``, which runc ignores with a warning; nodelet honours it instead, so
    ``drop: [CAP_NET_RAW]`` drops NET_RAW rather than nothing. An unknown name is an error, not
    a warning: a misspelt drop must not silently leave the capability in place.
    """
    key = name.strip().upper()
    key = key.removeprefix("CAP_")
    if key not in _NUMBERS:
        raise CapabilityError(f"unknown capability {name!r}")
    return _NUMBERS[key]


def name_of(cap: int) -> str:
    """``CAP_<NAME>``, the spelling the OCI spec and seccomp profiles use."""
    return "CAP_" + CAPABILITY_NAMES[cap]


def from_mask(mask: int) -> frozenset[int]:
    """The capability numbers set in a ``/proc/<pid>/status`` ``Cap*`` mask."""
    return frozenset(bit for bit in range(mask.bit_length()) if mask >> bit & 1)


def to_mask(caps: Iterable[int]) -> int:
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    return mask


def status_capabilities(status: str, field: str = "CapEff") -> frozenset[int]:
    """A ``Cap*`` set from the text of ``/proc/<pid>/status``: containerd's ``cap.Current()``
    (the effective set of the runtime itself) is what ``add: [ALL]`` and privileged mean."""
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == field:
            return from_mask(int(value.strip(), 16))
    raise ValueError(f"no {field} in the status text")


def _is_all(name: str) -> bool:
    return name.strip().upper() == "ALL"


def container_capabilities(
    security_context: Mapping[str, Any] | None,
    privileged: bool,
    *,
    node_caps: Collection[int],
) -> CapabilitySets | None:
    """containerd's ``WithCapabilities`` over its default spec; None when privileged.

    ``node_caps`` is what the runtime itself holds (its effective set): ``add: [ALL]`` grants
    those, since a container cannot get a capability its runtime lacks (capset would refuse).
    Added names fill bounding, effective and permitted; dropped names leave every set.
    Inheritable stays empty (containerd's fix for CVE-2022-24769), ambient too (containerd
    clears it: kubernetes#56374).
    """
    if privileged:
        return None
    capabilities = (security_context or {}).get("capabilities") or {}
    add = [str(c) for c in capabilities.get("add") or []]
    drop = [str(c) for c in capabilities.get("drop") or []]
    added = [number(c) for c in add if not _is_all(c)]
    dropped = [number(c) for c in drop if not _is_all(c)]
    current = {number(c) for c in DEFAULT_CAPABILITIES}
    if any(_is_all(c) for c in add):
        current = set(node_caps)
    if any(_is_all(c) for c in drop):
        current = set()
    current.update(added)
    current.difference_update(dropped)
    caps = tuple(sorted(current))
    return CapabilitySets(bounding=caps, effective=caps, permitted=caps, inheritable=(), ambient=())


def effective_after_exec(
    sets: CapabilitySets, uid: int, *, no_new_privileges: bool = False
) -> frozenset[str]:
    """What the kernel leaves in the effective set after ``execve`` of a program without file
    capabilities (``CAP_*`` names), given the sets applied before it.

    Root (uid 0, without SECBIT_NOROOT) is treated as if the file had every capability:
    permitted' = bounding | inheritable | ambient, effective' = permitted'. With
    ``no_new_privs`` the kernel keeps it within the old permitted set. Anyone else keeps only
    ambient capabilities, so a non-root container without ambient ones ends with CapEff 0
    whatever its bounding set says.
    """
    if uid == 0:
        permitted = set(sets.bounding) | set(sets.inheritable) | set(sets.ambient)
        if no_new_privileges:
            permitted &= set(sets.permitted)
        effective = permitted
    else:
        effective = set(sets.ambient)
    return frozenset(name_of(cap) for cap in effective)
