"""The cgroup driver interface, what both drivers share, and the detection of which one to use.

The layout is kubelet's (cgroupfs driver, ``--cgroups-per-qos``)::

    <cgroup-root>/kubepods/pod<uid>/<container>              Guaranteed
    <cgroup-root>/kubepods/burstable/pod<uid>/<container>
    <cgroup-root>/kubepods/besteffort/pod<uid>/<container>

``cgroup_root`` is kubelet's ``--cgroup-root``, but defaults to ``/nodelet`` rather than ``/``:
a nodelet and a kubelet on the same machine then never share (or sweep) each other's
``/kubepods``, and every directory nodelet creates or removes is under one name of its own.

Names never come unchecked from a manifest: a pod UID must look like a UID (letters, digits,
'-'), a container name must be a DNS label, and every directory is created one component at a
time and checked not to be a symlink. Removal walks with ``lstat`` and only below the pod's own
directory, so neither a symlink nor a ``..`` can take it outside the nodelet root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nodelet.cgroups.resources import BEST_EFFORT, BURSTABLE, GUARANTEED, CgroupLimits

POD_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,127}")
"""kubelet's md5 hex and UUIDs fit; '/', '.', NUL and whitespace never do (the same rule as the
manifest validation's, repeated here because these names become cgroup paths)."""
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_ROOT_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
_QOS_PARTS: dict[str, tuple[str, ...]] = {
    GUARANTEED: (),
    BURSTABLE: ("burstable",),
    BEST_EFFORT: ("besteffort",),
}
KUBEPODS = "kubepods"
POD_PREFIX = "pod"
POLL_S = 0.01


class CgroupError(OSError):
    """A cgroup operation failed; the message names the file, the value and the errno."""


class CgroupNameError(ValueError):
    """A pod UID, container name, QoS class or cgroup root that must not become a path."""


@dataclass(frozen=True)
class CgroupStats:
    """Usage of a pod's or container's cgroup (hierarchical: a pod includes its containers).

    A figure the cgroup does not provide (no controller) reads 0."""

    cpu_usage_ns: int
    memory_usage: int
    memory_working_set: int
    """Usage minus inactive file cache, as cAdvisor and kubelet's eviction compute it."""
    pids: int


class CgroupDriver(Protocol):
    """One cgroup hierarchy layout (v1: one directory per hierarchy; v2: one tree)."""

    version: int

    def create_pod(self, pod_uid: str, qos: str, limits: CgroupLimits) -> None:
        """Create (or update) the pod's cgroup and its parents; idempotent."""
        ...

    def create_container(
        self, pod_uid: str, qos: str, name: str, limits: CgroupLimits
    ) -> list[str]:
        """Create (or update) a container's cgroup; the files its process writes "0" to, to join
        it (``cgroup.procs``, or v1's ``tasks``)."""
        ...

    def holder_procs(self, pod_uid: str, qos: str) -> list[str]:
        """The files that put the pod's holder and exec probes in the pod's cgroups (as above)."""
        ...

    def container_procs(self, pod_uid: str, qos: str, name: str) -> list[str]:
        """The join files of a container's existing cgroup (an exec into a container that was
        started before the agent restarted)."""
        ...

    def oom_killed(self, pod_uid: str, qos: str, name: str) -> bool:
        """Whether the kernel OOM-killed a process of this container's cgroup."""
        ...

    def stats(self, pod_uid: str, qos: str, name: str | None = None) -> CgroupStats | None:
        """The pod's (or one container's) usage; None when its cgroup does not exist."""
        ...

    def remove_pod(self, pod_uid: str, qos: str) -> None:
        """Kill whatever still runs in the pod's cgroups, then remove them; idempotent."""
        ...

    def remove_container(self, pod_uid: str, qos: str, name: str) -> None:
        """Remove a finished container's (empty) cgroup, so its next run starts with fresh
        counters (an OOM kill is then this run's); a busy one is left as it is."""
        ...

    def sweep(self, live_pod_uids: set[str]) -> list[str]:
        """Remove the cgroups of every pod not in ``live_pod_uids``; the paths removed."""
        ...


def detect(
    mount_root: Path = Path("/sys/fs/cgroup"), cgroup_root: str = "/nodelet"
) -> CgroupDriver:
    """v2 when ``mount_root`` is a cgroup2 mount with controllers to delegate; otherwise v1,
    with the cpu, cpuacct and memory hierarchies (pids when mounted) under ``mount_root``.

    A hybrid host (v1 controllers plus a controller-less ``unified`` cgroup2) is v1."""
    from nodelet.cgroups.v1 import V1Driver
    from nodelet.cgroups.v2 import V2Driver

    controllers = read_text(mount_root / "cgroup.controllers")
    if controllers is not None and controllers.split():
        return V2Driver(mount_root, cgroup_root)
    probes = {
        "cpu": "cpu.shares",
        "cpuacct": "cpuacct.usage",
        "memory": "memory.limit_in_bytes",
        "pids": "cgroup.procs",
    }
    mounts = {
        controller: Path(os.path.realpath(mount_root / controller))
        for controller, probe in probes.items()
        if (mount_root / controller / probe).is_file()
    }
    missing = [name for name in ("cpu", "cpuacct", "memory") if name not in mounts]
    if missing:
        raise CgroupError(
            f"no usable cgroups under {mount_root}: not a cgroup2 mount with controllers, and "
            f"the cgroup v1 hierarchies {', '.join(missing)} are not mounted there"
        )
    return V1Driver(mounts, cgroup_root)


# -- names --------------------------------------------------------------------------------------


def root_parts(cgroup_root: str) -> tuple[str, ...]:
    """``--cgroup-root`` as path components; "/" (kubelet's default) is allowed."""
    if not isinstance(cgroup_root, str) or not cgroup_root.startswith("/"):
        raise CgroupNameError(f"cgroup root {cgroup_root!r} must be an absolute cgroup path")
    parts = tuple(part for part in cgroup_root.split("/") if part)
    for part in parts:
        if part in (".", "..") or not _ROOT_PART.fullmatch(part):
            raise CgroupNameError(
                f"cgroup root {cgroup_root!r}: {part!r} is not a plain cgroup name "
                "(letters, digits, '_', '.', '-')"
            )
    return parts


def check_pod_uid(pod_uid: str) -> str:
    if not isinstance(pod_uid, str) or not POD_UID.fullmatch(pod_uid):
        raise CgroupNameError(
            f"pod UID {pod_uid!r} cannot name a cgroup: 1 to 128 letters, digits and '-'"
        )
    return pod_uid


def check_container_name(name: str) -> str:
    if not isinstance(name, str) or not DNS_LABEL.fullmatch(name):
        raise CgroupNameError(
            f"container name {name!r} cannot name a cgroup: it must be a DNS label "
            "(lowercase letters, digits and '-', at most 63)"
        )
    return name


def qos_parts(qos: str) -> tuple[str, ...]:
    if qos not in _QOS_PARTS:
        raise CgroupNameError(f"QoS class {qos!r} is not one of {', '.join(_QOS_PARTS)}")
    return (KUBEPODS, *_QOS_PARTS[qos])


# -- files --------------------------------------------------------------------------------------


def read_text(path: Path) -> str | None:
    """A cgroup file's content, or None when it does not exist (no controller, no cgroup)."""
    try:
        with open(path, encoding="ascii") as file:
            return file.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CgroupError(err.errno, f"cannot read {path}: {err.strerror}") from None


def read_int(path: Path) -> int | None:
    text = read_text(path)
    if text is None or not text.strip() or text.strip() == "max":
        return None
    return int(text.split()[0])


def read_keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file (``memory.stat``, ``memory.events``, ``cpu.stat``)."""
    values: dict[str, int] = {}
    for line in (read_text(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


def write(path: Path, value: str | int) -> None:
    """Write one value to a cgroup file, never through a symlink.

    ``O_CREAT`` lets a test point a driver at a plain directory that mimics cgroupfs, where
    writing a limit just creates the file; cgroupfs itself never creates files."""
    data = str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        raise CgroupError(err.errno, f"cannot open {path}: {err.strerror}") from None
    try:
        os.write(fd, data)
    except OSError as err:
        raise CgroupError(err.errno, f"cannot write {value!r} to {path}: {err.strerror}") from None
    finally:
        os.close(fd)


def ensure_dirs(base: Path, parts: Sequence[str]) -> list[Path]:
    """Create ``base/parts...`` one component at a time; the directories newly created.

    Each component is checked with ``lstat`` to be a real directory, so a symlink planted
    anywhere on the way is refused rather than followed."""
    created = []
    path = base
    for part in parts:
        path = path / part
        try:
            os.mkdir(path, 0o755)
            created.append(path)
        except FileExistsError:
            pass
        except OSError as err:
            raise CgroupError(err.errno, f"cannot create cgroup {path}: {err.strerror}") from None
        if not is_real_dir(path):
            raise CgroupError(errno.ENOTDIR, f"refusing cgroup {path}: not a plain directory")
    return created


def is_real_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not path.is_symlink()
    except OSError:
        return False


def subdirs(path: Path) -> list[str]:
    """Names of the real (non-symlink) directories in ``path``; none when it is missing."""
    try:
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def walk_bottom_up(top: Path) -> Iterator[Path]:
    """``top`` and the directories below it, children first, never through a symlink."""
    if not is_real_dir(top):
        return
    for name in subdirs(top):
        yield from walk_bottom_up(top / name)
    yield top


def read_pids(procs: Path) -> list[int]:
    return [int(line) for line in (read_text(procs) or "").split() if line.isdigit()]


def kill_procs(procs: Path) -> int:
    """SIGKILL every process listed in ``procs``, by pid; how many were signalled.

    Each pid is pinned with a pidfd and checked to be still in ``procs`` before the signal, so
    a pid the kernel reused meanwhile for someone else's process is never killed."""
    killed = 0
    for pid in read_pids(procs):
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if pid in read_pids(procs):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                killed += 1
        except ProcessLookupError:
            pass
        finally:
            os.close(pidfd)
    return killed


def remove_tree(top: Path, deadline: float) -> None:
    """``rmdir`` ``top`` and every cgroup below it, children first, retrying while the kernel
    still reports a dying process (EBUSY) until ``deadline`` (``time.monotonic``)."""
    for path in walk_bottom_up(top):
        while True:
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as err:
                if err.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise CgroupError(
                        err.errno, f"cannot remove cgroup {path}: {err.strerror}"
                    ) from None
                time.sleep(POLL_S)


class BaseDriver:
    """Paths, validation and the sweep, shared by the v1 and v2 drivers."""

    def __init__(self, mounts: Iterable[Path], cgroup_root: str, timeout: float) -> None:
        self.mounts = list(dict.fromkeys(mounts))
        """The distinct hierarchies that hold nodelet's pods (one for v2)."""
        self.root = root_parts(cgroup_root)
        self.timeout = timeout

    def pod_parts(self, pod_uid: str, qos: str) -> tuple[str, ...]:
        return (*self.root, *qos_parts(qos), POD_PREFIX + check_pod_uid(pod_uid))

    def container_parts(self, pod_uid: str, qos: str, name: str) -> tuple[str, ...]:
        return (*self.pod_parts(pod_uid, qos), check_container_name(name))

    def cgroup_name(self, parts: Sequence[str]) -> str:
        """The cgroup's path as ``/proc/<pid>/cgroup`` shows it (relative to the mount)."""
        return "/" + "/".join(parts)

    def remove_pod(self, pod_uid: str, qos: str) -> None:
        parts = self.pod_parts(pod_uid, qos)
        deadline = time.monotonic() + self.timeout
        self.kill_all(parts, deadline)
        for mount in self.mounts:
            remove_tree(mount.joinpath(*parts), deadline)

    def remove_container(self, pod_uid: str, qos: str, name: str) -> None:
        parts = self.container_parts(pod_uid, qos, name)
        for mount in self.mounts:
            path = mount.joinpath(*parts)
            if is_real_dir(path):
                with contextlib.suppress(OSError):  # busy (a straggler), or gone meanwhile
                    path.rmdir()

    def kill_all(self, parts: tuple[str, ...], deadline: float) -> None:
        """Kill every process in the pod's cgroups and wait until they are gone."""
        self.kill_by_pid(parts, deadline)

    def kill_by_pid(self, parts: tuple[str, ...], deadline: float) -> None:
        """SIGKILL, by pid, every process in the pod's cgroups in every hierarchy, again and
        again until none is left (a process may fork while it is being killed)."""
        while True:
            listed = 0
            for mount in self.mounts:
                for path in walk_bottom_up(mount.joinpath(*parts)):
                    listed += len(read_pids(path / "cgroup.procs"))
                    kill_procs(path / "cgroup.procs")
            if not listed:
                return
            if time.monotonic() > deadline:
                raise CgroupError(
                    errno.EBUSY,
                    f"processes of cgroup {self.cgroup_name(parts)} survived SIGKILL "
                    f"for {self.timeout} s",
                )
            time.sleep(POLL_S)

    def sweep(self, live_pod_uids: set[str]) -> list[str]:
        removed: list[str] = []
        for qos in _QOS_PARTS:
            found: dict[str, None] = {}
            for mount in self.mounts:
                for name in subdirs(mount.joinpath(*self.root, *qos_parts(qos))):
                    uid = name.removeprefix(POD_PREFIX)
                    if name.startswith(POD_PREFIX) and POD_UID.fullmatch(uid):
                        found[uid] = None
            for uid in found:
                if uid not in live_pod_uids:
                    self.remove_pod(uid, qos)
                    removed.append(self.cgroup_name(self.pod_parts(uid, qos)))
        return removed
