"""A container of a non-host image: its own root, an overlay of the image's layers, pivoted into.

``apply`` runs as root in the forked child, before the user switch, instead of
``mounts.apply`` when the spec has a ``rootfs``. The order is runc's ``prepareRootfs``:

1. The volumes are cloned from the host (``mounts.clone_volume``: sub_path resolved beneath the
   volume, flags and propagation set on the detached copy) before anything else changes.
2. The pod's ``/dev/shm``: a tmpfs mounted once per pod on the host (the dir is under the pod's
   state dir, whose mounts the agent unmounts when it removes the pod), so every container of
   the pod shares it as containerd's sandbox shm; the host's ``/dev/shm`` for hostIPC pods.
3. ``unshare(CLONE_NEWNS)``, ``/`` rprivate: nothing below reaches the host's mount table.
4. The overlay (``fsopen``/``fsconfig`` with one ``lowerdir+`` per layer: no page-size limit
   on the option string) at ``merged``, the sibling of ``upper``. Mounted writable: mountPaths
   and workingDir are created in it, i.e. in the upper dir, never on the host.
5. ``/proc`` fresh (the PID namespace the child is in: its own, the pod's, or the host's),
   ``/dev`` (below), ``/sys`` fresh sysfs, its mount (not its shared superblock) read-only
   unless privileged. Fresh rather than a
   bind even for hostNetwork: the host's root may mount sysfs for any network namespace, and a
   fresh one carries none of the host's submounts (cgroup, debugfs); a kernel that refuses
   (EPERM) gets runc's fallback, a recursive read-only bind of the host's. Its
   ``fs/cgroup`` shows the container's own cgroups (``cgroupfs``).
6. Volumes and managed files (``/etc/hosts``): each target resolved *in* the new root
   (``openat2`` RESOLVE_IN_ROOT: an image's absolute symlink cannot lead to the host), missing
   directories made with ``mkdirat`` in the resolved parent, a missing file target created
   empty, then the clone attached with ``move_mount`` to that fd.
7. ``pivot_root(".", ".")`` and a lazy unmount of the old root (runc's trick: no put_old dir),
   workingDir created (root, 0755, as runc), read-only paths then masked paths (runc's order),
   and for ``readOnlyRootFilesystem`` the root mount alone made read-only (volumes, /dev, /proc
   and /sys keep their own flags, as runc remounts only the rootfs).

The minimal ``/dev`` (not privileged): a tmpfs (mode 755, 64 MiB, nosuid, as containerd's spec)
with null, zero, full, random, urandom and tty bind-mounted from the host's nodes (binds, as
runc does in a user namespace: no mknod needed), a ``newinstance`` devpts with ``ptmx`` a
symlink to ``pts/ptmx``, ``shm`` (step 2), ``mqueue`` (the pod's IPC namespace, as containerd's
default spec mounts it), and the ``fd``, ``stdin``, ``stdout`` and ``stderr`` links. Privileged:
a recursive bind of the host's ``/dev``, with the pod's shm over its ``/dev/shm``.

With a user namespace (``hostUsers: false``) the layers are idmapped with it and what the
holder creates in the root belongs to the pod's root (``idmaproot``); the ``host`` image keeps
the node's own root for such pods (the agent never asks for its overlay).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
from collections.abc import Iterator

from nodelet.holder import cgroupfs, idmaproot, linux, mounts, protocol
from nodelet.holder.mounts import MountError, step

_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}

_FSOPEN_CLOEXEC = 1
_FSMOUNT_CLOEXEC = 1
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_MOVE_MOUNT_T_EMPTY_PATH = 0x40
_MNT_DETACH = 2
_RESOLVE_IN_ROOT = 0x10

MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_STRICTATIME = 1 << 24

DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
"""Bound from the host's /dev into the minimal one (runc's default devices but /dev/ptmx)."""
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)
OPEN_TREE_CLONE = 1
SYSTEM_TREES = ("/proc", "/sys", "/dev")
"""Fresh in every container root: the node's mounts there are never carried over."""
PSEUDO_FILESYSTEMS = frozenset({
    "proc", "sysfs", "cgroup", "cgroup2", "devpts", "devtmpfs", "mqueue", "debugfs", "tracefs",
    "securityfs", "pstore", "bpf", "configfs", "fusectl", "binfmt_misc", "autofs", "nsfs",
    "hugetlbfs", "efivarfs", "rpc_pipefs", "overlay",
})  # fmt: skip
"""Kernel filesystems that hold no files of the node's, and other runtimes' container roots
(overlay): not carried into a host-image root."""
SHM_OPTIONS = "mode=1777,size=65536k"
"""containerd's sandbox shm."""

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(number: int, what: str, *args: object) -> int:
    ctypes.set_errno(0)
    result: int = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what)
    return result


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    """mount(2) with option data (``linux.mount`` passes none)."""
    fs = None if fstype is None else fstype.encode()
    options = data.encode() if data else None
    ctypes.set_errno(0)
    args = (source.encode(), os.fsencode(target), fs, ctypes.c_ulong(flags), options)
    if _libc.mount(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def _fd_path(fd: int) -> str:
    """A path that names exactly what ``fd`` was opened on (runc's "procfd" mount targets)."""
    return f"/proc/self/fd/{fd}"


def apply(spec: protocol.ContainerSpec, userns_fd: int | None = None) -> None:
    """Give the calling process the container's root filesystem (see the module docstring)."""
    rootfs = spec["rootfs"]
    idmap = None
    if userns_fd is not None:
        if rootfs.get("host"):
            raise MountError("the node's / cannot be idmapped for a user namespace")
        idmap = idmaproot.from_spec(spec)
    privileged = bool(spec.get("privileged"))
    trees: list[int] = []
    try:
        for mount in spec["mounts"]:
            trees.append(mounts.clone_volume(mount, userns_fd, on_host=False))
        shm = rootfs.get("shm")
        if shm and rootfs.get("shm_tmpfs"):
            step(f"cannot mount the pod's /dev/shm at {shm}", _pod_shm, shm)
        step("cannot create the container's mount namespace", _private_namespace)
        run_dir = os.path.dirname(rootfs["upper"])
        merged = os.path.join(run_dir, "merged")
        lowers = rootfs["lower"]
        if userns_fd is not None:
            lowers = idmaproot.idmapped_layers(lowers, os.path.join(run_dir, "lower"), userns_fd)
        _overlay(rootfs, lowers, merged, idmap)
        root = os.open(merged, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if rootfs.get("host"):
                _host_submounts(root, rootfs, bool(spec.get("read_only_root")))
            cgroups = list(spec.get("cgroup_procs") or [])
            _system_mounts(root, privileged, shm, cgroups, idmap)
            for mount, tree in zip(spec["mounts"], trees, strict=True):
                target = mount["target"]
                step(f"cannot mount the volume at {target}", _attach, root, tree, target, idmap)
            working_dir = spec["working_dir"]
            if working_dir:
                # Before the pivot: a lookup that fails after it would need a codec the
                # holder has not imported, from an image that has no Python.
                step(f"cannot create workingDir {working_dir}", _working_dir, root,
                     working_dir, idmap)  # fmt: skip
        finally:
            os.close(root)
        step("cannot pivot_root into the container's root", _pivot, merged)
    finally:
        for tree in trees:
            os.close(tree)
    for path in spec.get("readonly_paths") or []:
        step(f"cannot make {path} read-only", mounts.readonly_path, path)
    mounts.mask(spec.get("masked_paths") or [])
    if spec.get("read_only_root"):
        step("cannot make the root filesystem read-only", _read_only_root)


def _private_namespace() -> None:
    linux.unshare(linux.CLONE_NEWNS)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)


def _pod_shm(path: str) -> None:
    """The pod's shared tmpfs, mounted on the host the first time a container needs it."""
    os.makedirs(path, 0o700, exist_ok=True)
    parent = os.stat(os.path.dirname(path))
    if os.stat(path).st_dev != parent.st_dev:
        return  # mounted by an earlier container of the pod
    _mount("shm", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, SHM_OPTIONS)


def _overlay(
    rootfs: protocol.RootfsSpec, lowers: list[str], merged: str, idmap: idmaproot.Idmap | None
) -> None:
    upper, work = rootfs["upper"], rootfs["work"]
    try:
        os.makedirs(os.path.dirname(upper), 0o700, exist_ok=True)
        for path in (upper, work, merged):
            os.makedirs(path, 0o755, exist_ok=True)
        os.chmod(upper, 0o755)  # the container's "/" takes the upper dir's mode
        if idmap is not None:
            os.chown(upper, idmap.uid, idmap.gid)  # and its owner: the pod's root
    except OSError as err:
        raise MountError(f"cannot create the container's root dirs: {err}") from None
    try:
        tree = _overlay_tree(lowers, upper, work)
    except OSError as err:
        what = "the node's /" if rootfs.get("host") else "the image's layers"
        raise MountError(f"cannot mount {what} as an overlay: {err.strerror}") from None
    try:
        step(f"cannot mount the container's root at {merged}", mounts.move_mount, tree, merged)
    finally:
        os.close(tree)


def _overlay_tree(lowers: list[str], upper: str, work: str) -> int:
    """A detached overlay mount (an fd for ``move_mount``); an error carries what the kernel
    logged about it as its ``strerror``."""
    fs = _syscall(_SYS_FSOPEN, "overlay", b"overlay", ctypes.c_uint(_FSOPEN_CLOEXEC))
    try:
        for lower in lowers:
            _fsconfig(fs, "lowerdir+", lower)
        _fsconfig(fs, "upperdir", upper)
        _fsconfig(fs, "workdir", work)
        _syscall(_SYS_FSCONFIG, "create", ctypes.c_int(fs), ctypes.c_uint(_FSCONFIG_CMD_CREATE),
                 None, None, ctypes.c_int(0))  # fmt: skip
        return _syscall(_SYS_FSMOUNT, "overlay", ctypes.c_int(fs),
                        ctypes.c_uint(_FSMOUNT_CLOEXEC), ctypes.c_uint(0))  # fmt: skip
    except OSError as err:
        raise OSError(err.errno, _fs_log(fs) or err.strerror, err.filename) from None
    finally:
        os.close(fs)


def host_submounts(table: str, skip: list[str]) -> list[str]:
    """The node's mount points an overlay of ``/`` does not show (overlayfs never crosses a
    mount in a lower layer), parents first: every mount but ``/`` itself, the trees the
    container gets fresh (/proc, /sys, /dev), kernel pseudo filesystems, and the agent's own
    dirs in ``skip`` (other pods' roots, shm and netns binds live there). Of mounts stacked
    on one path the last, the one the node sees, counts once."""
    points: dict[str, None] = {}
    for point, fstype in mounts.points_and_types(table):
        if point == "/" or fstype in PSEUDO_FILESYSTEMS or mounts.within(point, SYSTEM_TREES):
            continue
        if mounts.within(point, skip):
            continue
        points.pop(point, None)
        points[point] = None
    return sorted(points, key=lambda point: point.count("/"))


def _host_submounts(root: int, rootfs: protocol.RootfsSpec, read_only: bool) -> None:
    """Each of the node's other mounts (``host_submounts``) at its place in the container's
    root: a directory as an overlay of its own (upper and work beside the root's, so writes
    stay in the container's dir), a file, or a directory the kernel will not stack an overlay
    on (FUSE, NFS, an overlay already two deep), as a read-only bind. With
    readOnlyRootFilesystem they are read-only too: here they are part of the root."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        points = host_submounts(table.read(), rootfs.get("host_skip") or [])
    base = os.path.join(os.path.dirname(rootfs["upper"]), "mounts")
    for index, point in enumerate(points):
        try:
            info = os.stat(point)
        except OSError:
            continue  # gone since mountinfo was read, or not reachable
        tree = None
        if stat.S_ISDIR(info.st_mode):
            tree = _submount_overlay(point, os.path.join(base, str(index)), info)
        if tree is None:
            tree = mounts.open_tree(mounts.AT_FDCWD, point, OPEN_TREE_CLONE | os.O_CLOEXEC)
            read_only_tree = True
        else:
            read_only_tree = read_only
        try:
            if read_only_tree:
                mounts.mount_setattr(tree, "", mounts.AT_EMPTY_PATH, set_=mounts.MOUNT_ATTR_RDONLY)
            step(f"cannot mount the node's {point} in the container", _attach, root, tree, point)
        finally:
            os.close(tree)


def _submount_overlay(point: str, base: str, info: os.stat_result) -> int | None:
    """An overlay of the node's ``point`` whose root keeps the mode and owner of the node's
    dir (``/tmp`` stays 1777); None when the kernel refuses the stack."""
    upper, work = os.path.join(base, "upper"), os.path.join(base, "work")
    try:
        for path in (upper, work):
            os.makedirs(path, 0o700, exist_ok=True)
        os.chown(upper, info.st_uid, info.st_gid)
        os.chmod(upper, stat.S_IMODE(info.st_mode))
    except OSError as err:
        raise MountError(f"cannot create the dirs for the node's {point}: {err}") from None
    try:
        return _overlay_tree([point], upper, work)
    except OSError:
        return None


def _fsconfig(fs: int, key: str, value: str) -> None:
    _syscall(_SYS_FSCONFIG, f"{key}={value}", ctypes.c_int(fs),
             ctypes.c_uint(_FSCONFIG_SET_STRING), key.encode(), os.fsencode(value),
             ctypes.c_int(0))  # fmt: skip


def _fs_log(fs: int) -> str:
    """What the filesystem said about a failed ``fsconfig`` (its context's message log)."""
    lines = []
    try:
        while True:
            lines.append(os.read(fs, 4096).decode(errors="replace").partition(" ")[2])
    except OSError:
        pass
    return "; ".join(line.strip() for line in lines if line.strip())


def _system_mounts(
    root: int,
    privileged: bool,
    shm: str | None,
    cgroups: list[str],
    idmap: idmaproot.Idmap | None = None,
) -> None:
    proc = _make(root, "proc", directory=True, idmap=idmap)
    try:
        step("cannot mount /proc", _mount, "proc", _fd_path(proc), "proc",
             MS_NOSUID | MS_NODEV | MS_NOEXEC)  # fmt: skip
    finally:
        os.close(proc)
    _dev(root, privileged, shm, idmap)
    sys_ = _make(root, "sys", directory=True, idmap=idmap)
    try:
        step("cannot mount /sys", _sysfs, root, sys_, privileged, cgroups)
    finally:
        os.close(sys_)


def _sysfs(root: int, sys_: int, privileged: bool, cgroups: list[str]) -> None:
    """Read-only on the mount, never on the superblock: sysfs has one superblock per network
    namespace, so an ``MS_RDONLY`` mount would make every later sysfs of the pod's (or the
    host's) network namespace read-only too, a privileged container's included."""
    try:
        _mount("sysfs", _fd_path(sys_), "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except PermissionError:
        _mount("/sys", _fd_path(sys_), None, linux.MS_BIND | linux.MS_REC)
    if cgroups:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
            points = cgroupfs.hierarchies(table.read())
        view = cgroupfs.plan(cgroups, points, cgroupfs.node_links())
        step("cannot mount /sys/fs/cgroup", _cgroup_view, root, view)
    if privileged:
        return
    mounted = _in_root(root, "sys")
    try:
        mounts.mount_setattr(mounted, "", mounts.AT_EMPTY_PATH | mounts.AT_RECURSIVE,
                             set_=mounts.MOUNT_ATTR_RDONLY)  # fmt: skip
    finally:
        os.close(mounted)


def _cgroup_view(root: int, view: cgroupfs.CgroupView) -> None:
    """Bind the container's own cgroups (``cgroupfs``) at ``sys/fs/cgroup``."""
    target = _in_root(root, "sys/fs/cgroup")
    try:
        if view.whole is not None:
            _mount(view.whole, _fd_path(target), None, linux.MS_BIND)
            return
        if not view.dirs:
            return
        _mount("tmpfs", _fd_path(target), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755")
    finally:
        os.close(target)
    top = _in_root(root, "sys/fs/cgroup", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name, own in view.dirs:
            os.mkdir(name, 0o755, dir_fd=top)
            fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=top)  # fmt: skip
            try:
                _mount(own, _fd_path(fd), None, linux.MS_BIND)
            finally:
                os.close(fd)
        for name, link in view.links:
            os.symlink(link, name, dir_fd=top)
    finally:
        os.close(top)


def _dev(root: int, privileged: bool, shm: str | None, idmap: idmaproot.Idmap | None) -> None:
    dev = _make(root, "dev", directory=True, idmap=idmap)
    try:
        if privileged:
            step("cannot bind the host's /dev", _mount, "/dev", _fd_path(dev), None,
                 linux.MS_BIND | linux.MS_REC)  # fmt: skip
        else:
            step("cannot mount /dev", _minimal_dev, root, dev, idmap)
    finally:
        os.close(dev)
    if shm:
        target = _make(root, "dev/shm", directory=True, idmap=idmap)
        try:
            step("cannot mount /dev/shm", _mount, shm, _fd_path(target), None, linux.MS_BIND)
        finally:
            os.close(target)


def _minimal_dev(root: int, dev: int, idmap: idmaproot.Idmap | None) -> None:
    """The tmpfs belongs to the container's root, the devpts's ttys to its tty group (5)."""
    owner, tty = "", idmaproot.TTY_GID
    if idmap is not None:
        owner, tty = f",uid={idmap.uid},gid={idmap.gid}", idmap.tty_gid
    options = "mode=755,size=65536k" + owner
    _mount("tmpfs", _fd_path(dev), "tmpfs", MS_NOSUID | MS_STRICTATIME, options)
    # ``dev`` names the dir the tmpfs now covers: the tmpfs is reached by a fresh lookup.
    top = _in_root(root, "dev", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in DEV_NODES:
            fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o666,
                         dir_fd=top)  # fmt: skip
            try:
                _mount(f"/dev/{name}", _fd_path(fd), None, linux.MS_BIND)
            finally:
                os.close(fd)
        os.mkdir("pts", 0o755, dir_fd=top)
        os.mkdir("mqueue", 0o755, dir_fd=top)
        for name in ("pts", "mqueue"):
            fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=top)  # fmt: skip
            try:
                if name == "pts":
                    _mount("devpts", _fd_path(fd), "devpts", MS_NOSUID | MS_NOEXEC,
                           f"newinstance,ptmxmode=0666,mode=0620,gid={tty}")  # fmt: skip
                else:
                    _mount("mqueue", _fd_path(fd), "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            finally:
                os.close(fd)
        for name, link in DEV_LINKS:
            os.symlink(link, name, dir_fd=top)
    finally:
        os.close(top)


def _components(path: str) -> Iterator[tuple[str, str]]:
    """(parent, name) for each component of an absolute container path."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    for depth, name in enumerate(parts):
        yield "/".join(parts[:depth]) or ".", name


def _in_root(root: int, path: str, flags: int = os.O_PATH) -> int:
    resolve = _RESOLVE_IN_ROOT | mounts.RESOLVE_NO_MAGICLINKS
    return mounts.openat2(root, path or ".", flags | os.O_CLOEXEC, resolve)


def _make(root: int, path: str, *, directory: bool, idmap: idmaproot.Idmap | None = None) -> int:
    """An O_PATH fd of ``path`` resolved in the container's root, creating what is missing:
    directories on the way, and the last component as a directory or an empty file (owned
    by the pod's root with a user namespace)."""
    components = list(_components(path))
    if not components:
        return _in_root(root, ".")
    for index, (parent, name) in enumerate(components):
        whole = f"{parent}/{name}" if parent != "." else name
        try:
            fd = _in_root(root, whole)
        except FileNotFoundError:
            pass
        else:
            os.close(fd)
            continue
        last = index == len(components) - 1
        parent_fd = _in_root(root, parent)
        try:
            if last and not directory:
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o644, dir_fd=parent_fd))  # fmt: skip
            else:
                os.mkdir(name, 0o755, dir_fd=parent_fd)
            if idmap is not None:
                os.chown(name, idmap.uid, idmap.gid, dir_fd=parent_fd, follow_symlinks=False)
        except FileExistsError:
            pass  # a dangling symlink: resolving it below says what is wrong
        finally:
            os.close(parent_fd)
    return _in_root(root, path.lstrip("/"))


def _attach(root: int, tree: int, target: str, idmap: idmaproot.Idmap | None = None) -> None:
    """Mount a detached clone at ``target`` inside the new root."""
    if not os.path.isabs(target):
        raise OSError(errno.EINVAL, "mountPath must be an absolute path", target)
    directory = stat.S_ISDIR(os.fstat(tree).st_mode)
    fd = _make(root, target, directory=directory, idmap=idmap)
    try:
        args = (ctypes.c_int(tree), b"", ctypes.c_int(fd), b"")
        flags = mounts.MOVE_MOUNT_F_EMPTY_PATH | _MOVE_MOUNT_T_EMPTY_PATH
        _syscall(mounts.SYS_MOVE_MOUNT, target, *args, ctypes.c_uint(flags))
    finally:
        os.close(fd)


def _pivot(merged: str) -> None:
    """runc's pivot_root(".", "."): the old root is stacked under the new one and detached."""
    number = _SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unknown architecture {platform.machine()}")
    os.chdir(merged)
    _syscall(number, "pivot_root", b".", b".")
    _libc.umount2.restype = ctypes.c_int
    if _libc.umount2(b".", ctypes.c_int(_MNT_DETACH)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "umount the old root")
    os.chdir("/")


def _working_dir(root: int, path: str, idmap: idmaproot.Idmap | None) -> None:
    """workingDir, made as runc makes it (0755, the container's root), resolved in the root."""
    os.close(_make(root, path, directory=True, idmap=idmap))


def _read_only_root() -> None:
    mounts.mount_setattr(mounts.AT_FDCWD, "/", 0, set_=mounts.MOUNT_ATTR_RDONLY)
