"""What the node has and who it is, read from the kernel the way cAdvisor reads it for kubelet.

The IO half of the Node object: ``nodeobject`` turns these records into JSON without touching
the machine, so its arithmetic is tested on made-up numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

# uname's machine to Go's GOARCH, the spelling kubelet reports (runtime.GOARCH).
_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


@dataclass(frozen=True)
class NodeResources:
    """One sample of the node's capacity and what is left of it."""

    cpu_count: int
    memory_bytes: int
    memory_available_bytes: int
    ephemeral_storage_bytes: int
    """Size of the filesystem holding the root dir (kubelet's nodefs)."""
    ephemeral_available_bytes: int
    """Free to unprivileged users (``f_bavail``), as cAdvisor's ``Available``."""
    pids_max: int
    """``/proc/sys/kernel/pid_max``."""
    pids_in_use: int
    """Tasks (threads included) on the node: sysinfo's ``procs``, which kubelet counts."""


@dataclass(frozen=True)
class NodeSystemInfo:
    """The fixed facts of ``status.nodeInfo``."""

    machine_id: str
    system_uuid: str
    boot_id: str
    kernel_version: str
    os_image: str
    architecture: str
    operating_system: str = "linux"


def _existing_ancestor(path: Path) -> Path:
    """The root dir may not exist before the first pod: its filesystem is its nearest parent's."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _pids_in_use() -> int:
    """The total after the slash in ``/proc/loadavg`` is the kernel's ``nr_threads``, the same
    count sysinfo(2) returns as ``procs`` and kubelet's pid.available subtracts."""
    fields = Path("/proc/loadavg").read_text().split()
    return int(fields[3].split("/")[1])


def sample_resources(root_dir: Path) -> NodeResources:
    """Read capacity and availability now; raises OSError naming the file that failed."""
    mem = psutil.virtual_memory()
    fs = os.statvfs(_existing_ancestor(root_dir))
    return NodeResources(
        cpu_count=os.cpu_count() or 1,
        memory_bytes=mem.total,
        memory_available_bytes=mem.available,
        ephemeral_storage_bytes=fs.f_blocks * fs.f_frsize,
        ephemeral_available_bytes=fs.f_bavail * fs.f_frsize,
        pids_max=int(Path("/proc/sys/kernel/pid_max").read_text()),
        pids_in_use=_pids_in_use(),
    )


def _read_first(*paths: str) -> str:
    """The first readable, non-empty file, stripped; "" when none is (product_uuid is root-only
    and absent in most containers and VMs without DMI)."""
    for path in paths:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return ""


def _os_image(os_release: Path = Path("/etc/os-release")) -> str:
    """PRETTY_NAME of os-release, or "Linux" as cAdvisor falls back to."""
    try:
        lines = os_release.read_text().splitlines()
    except OSError:
        return "Linux"
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() == "PRETTY_NAME":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            return value or "Linux"
    return "Linux"


def read_system_info() -> NodeSystemInfo:
    """The identity cAdvisor gives kubelet: machine-id, DMI product UUID, boot id, uname."""
    uname = os.uname()
    return NodeSystemInfo(
        machine_id=_read_first("/etc/machine-id", "/var/lib/dbus/machine-id"),
        system_uuid=_read_first("/sys/class/dmi/id/product_uuid"),
        boot_id=_read_first("/proc/sys/kernel/random/boot_id"),
        kernel_version=uname.release,
        os_image=_os_image(),
        architecture=_GOARCH.get(uname.machine, uname.machine),
    )
