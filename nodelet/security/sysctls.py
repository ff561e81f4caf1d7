"""Which pod sysctls a node allows, as kubelet decides it (``pkg/kubelet/sysctl``).

A sysctl is only safe to set for one pod when the kernel keeps it per namespace and the pod has
that namespace to itself: ``net.*`` lives in the network namespace (so not with hostNetwork),
``kernel.shm*``, ``kernel.msg*``, ``kernel.sem`` and ``fs.mqueue.*`` in the IPC namespace (so
not with hostIPC). Everything else is global to the node and is never allowed. Beyond
kubelet's safe set, the operator may allow more with ``--allowed-unsafe-sysctls`` (names or
``prefix*`` patterns), but only namespaced ones.

Messages are kubelet's: ``forbidden sysctl: "<name>" not allowlisted`` and ``forbidden sysctl:
"<name>" not allowed with host net enabled``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

NET, IPC = "net", "ipc"

SAFE_SYSCTLS: tuple[tuple[str, tuple[int, int] | None], ...] = (
    ("kernel.shm_rmid_forced", None),
    ("net.ipv4.ip_local_port_range", None),
    ("net.ipv4.tcp_syncookies", None),
    ("net.ipv4.ping_group_range", None),
    ("net.ipv4.ip_unprivileged_port_start", None),
    ("net.ipv4.ip_local_reserved_ports", (3, 16)),
    ("net.ipv4.tcp_keepalive_time", (4, 5)),
    ("net.ipv4.tcp_fin_timeout", (4, 6)),
    ("net.ipv4.tcp_keepalive_intvl", (4, 5)),
    ("net.ipv4.tcp_keepalive_probes", (4, 5)),
    ("net.ipv4.tcp_rmem", (4, 15)),
    ("net.ipv4.tcp_wmem", (4, 15)),
    ("net.ipv4.tcp_slow_start_after_idle", (4, 15)),
    ("net.ipv4.tcp_notsent_lowat", (4, 6)),
)
"""kubelet's ``safeSysctls`` (v1.37) with the kernel version from which each is namespaced; an
older kernel drops the entry, as kubelet does."""

_NAMESPACED_NAMES = {"kernel.sem": IPC}
_NAMESPACED_PREFIXES = {"kernel.shm": IPC, "kernel.msg": IPC, "fs.mqueue.": IPC, "net.": NET}

SEGMENT = "[a-z0-9]([-_a-z0-9]*[a-z0-9])?"
NAME = re.compile(f"({SEGMENT}[./])*{SEGMENT}")
"""The API server's ``SysctlContainSlashFmt``: dots or slashes between segments."""
PATTERN = re.compile(f"({SEGMENT}[./])*([a-z0-9][-_a-z0-9]*)?[a-z0-9*]")
"""``--allowed-unsafe-sysctls`` entries (``SysctlContainSlashPatternFmt``): a name, or a prefix
ending in ``*`` (``kernel.msg*``, ``net.*``)."""
MAX_LENGTH = 253


def normalize(name: str) -> str:
    """kubelet's ``NormalizeName``: ``net/ipv4/conf/eno2.100/rp_filter`` (slash form) becomes
    ``net.ipv4.conf.eno2/100.rp_filter`` (dot form, a dot inside a segment written as '/')."""
    for char in name:
        if char == ".":
            return name
        if char == "/":
            return name.translate(str.maketrans("./", "/."))
    return name


def namespace_of(name: str) -> str | None:
    """``net``, ``ipc``, or None when the kernel keeps the sysctl for the whole node."""
    name = normalize(name)
    if name in _NAMESPACED_NAMES:
        return _NAMESPACED_NAMES[name]
    for prefix, namespace in _NAMESPACED_PREFIXES.items():
        if name.startswith(prefix):
            return namespace
    return None


def kernel_version(release: str | None = None) -> tuple[int, int] | None:
    """(major, minor) of ``uname -r``; None when it cannot be read."""
    match = re.match(r"(\d+)\.(\d+)", os.uname().release if release is None else release)
    return (int(match[1]), int(match[2])) if match else None


def safe_sysctls(kernel: tuple[int, int] | None) -> tuple[str, ...]:
    """The safe set on this kernel (an unknown kernel keeps only the unconditional ones)."""
    return tuple(
        name
        for name, needs in SAFE_SYSCTLS
        if needs is None or (kernel is not None and kernel >= needs)
    )


def allowlist_errors(patterns: Iterable[str]) -> list[str]:
    """Why kubelet would refuse to start with these ``--allowed-unsafe-sysctls``."""
    errors = []
    for pattern in patterns:
        if len(pattern) > MAX_LENGTH or not PATTERN.fullmatch(pattern):
            errors.append(
                f'sysctl "{pattern}" must have at most {MAX_LENGTH} characters and match regex '
                f"{PATTERN.pattern}"
            )
        elif namespace_of(normalize(pattern).removesuffix("*")) is None:
            what = "sysctls" if pattern.endswith("*") else "sysctl"
            errors.append(f'the {what} "{normalize(pattern)}" are not known to be namespaced')
    return errors


def _allowlist(
    allowed_unsafe: Iterable[str], kernel: tuple[int, int] | None
) -> tuple[dict[str, str], dict[str, str]]:
    """(exact names, prefixes) -> namespace, as kubelet's ``NewAllowlist`` builds them from the
    safe set and the operator's patterns; a pattern kubelet would refuse is left out."""
    names: dict[str, str] = {}
    prefixes: dict[str, str] = {}
    for pattern in (*safe_sysctls(kernel), *allowed_unsafe):
        if allowlist_errors([pattern]):
            continue
        entry = normalize(pattern)
        if entry.endswith("*"):
            prefixes[entry[:-1]] = namespace_of(entry[:-1]) or ""
        else:
            names[entry] = namespace_of(entry) or ""
    return names, prefixes


def check_sysctls(
    sysctls: Any,
    host_network: bool,
    host_ipc: bool,
    allowed_unsafe: Iterable[str] = (),
    kernel: tuple[int, int] | None = None,
) -> list[str]:
    """kubelet's admission of ``spec.securityContext.sysctls`` (a list of ``{name, value}``):
    one ``forbidden sysctl: ...`` reason per refused entry, empty when the pod may run.
    ``kernel`` defaults to this node's; total on any shape (a malformed entry is refused)."""
    names, prefixes = _allowlist(allowed_unsafe, kernel or kernel_version())
    reasons = []
    for entry in sysctls if isinstance(sysctls, list) else []:
        raw = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(raw, str):
            reasons.append(f"forbidden sysctl: {raw!r} is not a sysctl name")
            continue
        name = normalize(raw)
        namespace = names.get(name)
        if namespace is None:
            namespace = next((ns for p, ns in prefixes.items() if name.startswith(p)), None)
        if namespace is None:
            reasons.append(f'forbidden sysctl: "{name}" not allowlisted')
        elif (namespace == NET and host_network) or (namespace == IPC and host_ipc):
            reasons.append(f'forbidden sysctl: "{name}" not allowed with host {namespace} enabled')
    return reasons


def sandbox_sysctls(pod_spec: Any) -> tuple[tuple[str, str], ...]:
    """(name in dot form, value) for the holder to write in the pod's new namespaces, in the
    manifest's order. Call it only for a pod ``check_sysctls`` admitted."""
    context = pod_spec.get("securityContext") if isinstance(pod_spec, dict) else None
    entries = context.get("sysctls") if isinstance(context, dict) else None
    return tuple(
        (normalize(entry["name"]), entry["value"])
        for entry in (entries if isinstance(entries, list) else [])
        if isinstance(entry, dict)
        and isinstance(entry.get("name"), str)
        and isinstance(entry.get("value"), str)
    )
