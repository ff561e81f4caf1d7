"""Which paths a container must not see or change, and how its volumes propagate mounts.

The lists are containerd's defaults (``pkg/oci/spec.go``, ``populateDefaultUnixSpec``), in its
order; kubelet sends the same sets (``pkg/securitycontext/util.go``). containerd clears both for
a privileged container (``oci.WithPrivileged``), kubelet sends empty ones for
``procMount: Unmasked``.
"""

from __future__ import annotations

DEFAULT_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
)
"""Hidden: ``/dev/null`` bound over files, an empty read-only tmpfs over directories."""

DEFAULT_READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
"""Bound read-only over themselves."""

_PROPAGATION = {
    None: "private",
    "None": "private",
    "HostToContainer": "rslave",
    "Bidirectional": "rshared",
}


def masked_and_readonly(
    privileged: bool, proc_mount: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(masked paths, read-only paths) of a container: none when privileged or
    ``procMount: Unmasked``, containerd's defaults otherwise."""
    if privileged or proc_mount == "Unmasked":
        return (), ()
    return DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS


def propagation_of(mount_propagation: str | None) -> str:
    """A volumeMount's ``mountPropagation`` as the holder's propagation (runc's option name):
    None -> private, HostToContainer -> rslave, Bidirectional -> rshared."""
    try:
        return _PROPAGATION[mount_propagation]
    except KeyError:
        raise ValueError(f"unsupported mountPropagation {mount_propagation!r}") from None
