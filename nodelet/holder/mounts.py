"""A container's mount namespace: volumes, subPath, propagation, masked and read-only paths.

``apply`` runs as root in the forked child, before the user switch. The container still runs
on the host's own ``/`` (image ``host``), so everything here happens in a mount namespace of
the child's own and nothing reaches the host's mount table. What it does, and why:

1. Nothing at all when there is nothing to do: a privileged container without volumes, masked
   or read-only paths and with a writable root keeps the host's view (no unshare).
2. Each volume is resolved (``sub_path`` with ``openat2`` RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS,
   a missing one created by ``mkdirat`` beneath the opened parent, as kubelet's SafeMakeDir) and
   cloned with ``open_tree(OPEN_TREE_CLONE|AT_RECURSIVE)`` from that fd, so what was checked is
   what gets mounted. Its flags are set on the detached clone: ``read_only`` recursively
   (``mount_setattr`` AT_RECURSIVE), and the propagation (MS_PRIVATE, MS_SLAVE or MS_SHARED,
   recursive like runc's "rprivate"/"rslave"/"rshared"). A shared or slave propagation needs the
   host's source mount to be shared (or a slave); containerd refuses otherwise, and so do we,
   with its text.
3. ``unshare(CLONE_NEWNS)`` and ``/`` made rprivate. containerd sets ``rootfsPropagation`` to
   rslave/rshared when a volume asks for it because runc binds volumes *after* applying the root
   propagation, so the bind can only inherit the host's peer group if the root kept it. Here
   the root is the host's own ``/``: an rshared root would send every mount made below
   (masks, volumes) back to the host, and an rslave root would make the container follow every
   host mount, which a container on its own rootfs never sees. The volume clones are taken
   before ``/`` is made private, so they keep their host peer group on their own: the effect
   containerd's rootfsPropagation has on the volume, without exposing the rest of the tree.
4. Not privileged: ``/sys`` read-only, recursively (runc mounts sysfs ro, its cgroup mounts too,
   unless privileged).
5. ``read_only_root``: every mount read-only, recursively (``mount_setattr`` AT_RECURSIVE on
   ``/``), except the trees runc mounts itself for a container and leaves to their own flags
   (runc only remounts the rootfs mount read-only, not its submounts): ``/dev`` with its
   submounts (/dev/shm, /dev/pts, /dev/mqueue), ``/proc`` and ``/sys``. A mount of those trees
   that was writable is made writable again (so /sys stays ro unless privileged, and a host
   mount that was ro stays ro). The host's other mounts are the container's "image" and are
   read-only like the rootfs's.
6. The volumes are attached (``move_mount``): after step 5, so they keep their own flags and
   stay writable unless ``read_only``.
7. The read-only paths (a recursive read-only clone over themselves) and then the masked paths
   (``/dev/null`` over a file, an empty read-only tmpfs over a directory), in runc's order; a
   path that does not exist is skipped as runc skips it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator

from nodelet.holder import linux, protocol

_SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
_SYS_OPENAT2 = 437
_SYS_MOUNT_SETATTR = 442

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
_OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_IDMAP = 0x00100000
RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08

MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
_PROPAGATION = {"private": linux.MS_PRIVATE, "rslave": MS_SLAVE, "rshared": MS_SHARED}

KEPT_WRITABLE = ("/dev", "/proc", "/sys")
"""Trees a read-only root leaves to their own flags (runc mounts them itself)."""

_NULL_DEVICE = os.makedev(1, 3)


class MountError(Exception):
    """The container's mounts cannot be set up; the message is what the operator sees."""


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(number: int, path: str, *args: object) -> int:
    ctypes.set_errno(0)
    result: int = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return result


def open_tree(dirfd: int, path: str, flags: int) -> int:
    return _syscall(
        _SYS_OPEN_TREE, path, ctypes.c_int(dirfd), os.fsencode(path), ctypes.c_uint(flags)
    )


def move_mount(tree: int, target: str) -> None:
    args = (ctypes.c_int(tree), b"", ctypes.c_int(AT_FDCWD), os.fsencode(target))
    _syscall(SYS_MOVE_MOUNT, target, *args, ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))


def mount_setattr(
    dirfd: int,
    path: str,
    flags: int,
    *,
    set_: int = 0,
    clear: int = 0,
    propagation: int = 0,
    userns_fd: int = 0,
) -> None:
    attr = _MountAttr(set_, clear, propagation, userns_fd)
    args = (ctypes.c_int(dirfd), os.fsencode(path), ctypes.c_uint(flags), ctypes.byref(attr))
    _syscall(_SYS_MOUNT_SETATTR, path, *args, ctypes.c_size_t(ctypes.sizeof(attr)))


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags, 0, resolve)
    args = (ctypes.c_int(dirfd), os.fsencode(path), ctypes.byref(how))
    return _syscall(_SYS_OPENAT2, path, *args, ctypes.c_size_t(ctypes.sizeof(how)))


def apply(spec: protocol.ContainerSpec, userns_fd: int | None = None) -> None:
    """Give the calling process the container's mount namespace (see the module docstring).
    With ``userns_fd`` (the pod's user namespace) every volume is idmapped with it."""
    mounts = spec["mounts"]
    privileged = bool(spec.get("privileged"))
    read_only_root = bool(spec.get("read_only_root"))
    masked = spec.get("masked_paths") or []
    readonly = spec.get("readonly_paths") or []
    if privileged and not (mounts or masked or readonly or read_only_root):
        return
    trees: list[int] = []
    try:
        for mount in mounts:
            trees.append(clone_volume(mount, userns_fd))
        step("cannot create the container's mount namespace", _private_namespace)
        if not privileged:
            step("cannot make /sys read-only", _read_only, "/sys")
        if read_only_root:
            step("cannot make the root filesystem read-only", _read_only_root)
        for mount, tree in zip(mounts, trees, strict=True):
            target = mount["target"]
            step(f"cannot mount the volume at {target}", move_mount, tree, target)
        for path in readonly:
            step(f"cannot make {path} read-only", readonly_path, path)
        mask(masked)
    finally:
        for tree in trees:
            os.close(tree)


def step(what: str, action: Callable[..., object], *args: object) -> None:
    """Run one mount step; an OSError becomes a MountError that says which step and why."""
    try:
        action(*args)
    except OSError as err:
        raise MountError(f"{what}: {err.strerror or err}") from None


def _private_namespace() -> None:
    linux.unshare(linux.CLONE_NEWNS)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)


def _read_only(path: str) -> None:
    mount_setattr(AT_FDCWD, path, AT_RECURSIVE, set_=MOUNT_ATTR_RDONLY)


def _read_only_root() -> None:
    writable = [
        (mount_id, point)
        for mount_id, (point, options, _) in mountinfo().items()
        if within(point, KEPT_WRITABLE) and options.split(",")[0] == "rw"
    ]
    _read_only("/")
    for mount_id, point in writable:
        try:
            fd = os.open(point, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # hidden below another mount: nothing reaches it
        try:
            if mount_id_of(fd) == mount_id:
                mount_setattr(fd, "", AT_EMPTY_PATH, clear=MOUNT_ATTR_RDONLY)
        finally:
            os.close(fd)


def readonly_path(path: str) -> None:
    try:
        tree = open_tree(AT_FDCWD, path, _OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE)
    except FileNotFoundError:
        return
    try:
        mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, set_=MOUNT_ATTR_RDONLY)
        move_mount(tree, path)
    finally:
        os.close(tree)


def mask(paths: Iterable[str]) -> None:
    paths = list(paths)
    if not paths:
        return
    null = os.open("/dev/null", os.O_PATH | os.O_CLOEXEC)
    try:
        if not stat.S_ISCHR(os.fstat(null).st_mode) or os.fstat(null).st_rdev != _NULL_DEVICE:
            raise MountError("cannot mask paths: /dev/null is not the null device")
        for path in paths:
            step(f"cannot mask {path}", _mask_one, path, null)
    finally:
        os.close(null)


def _mask_one(path: str, null: int) -> None:
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if is_dir:
        linux.mount("tmpfs", path, "tmpfs", linux.MS_RDONLY)
        return
    tree = open_tree(null, "", _OPEN_TREE_CLONE | os.O_CLOEXEC | AT_EMPTY_PATH)
    try:
        move_mount(tree, path)
    finally:
        os.close(tree)


def clone_volume(
    mount: protocol.MountSpec, userns_fd: int | None = None, *, on_host: bool = True
) -> int:
    """A detached copy of the volume (its sub_path), with its final flags and propagation,
    idmapped with ``userns_fd`` when given. ``on_host``: the target is on the host's own ``/``,
    where a missing mountPath is never created."""
    target, source = mount["target"], mount["source"]
    if on_host and not os.path.exists(target):
        raise MountError(
            f"mountPath {target} does not exist on the host; it is not created there "
            "(filesystem isolation is not implemented yet)"
        )
    propagation = mount.get("propagation", "private")
    if propagation not in _PROPAGATION:
        raise MountError(f"volume at {target}: unknown mount propagation {propagation!r}")
    fd = _open_source(mount)
    try:
        _check_propagation(fd, source, propagation)
        flags = _OPEN_TREE_CLONE | os.O_CLOEXEC | AT_EMPTY_PATH | AT_RECURSIVE
        tree = open_tree(fd, "", flags)
    except OSError as err:
        raise MountError(f"cannot mount {source} at {target}: {err.strerror}") from None
    finally:
        os.close(fd)
    try:
        mount_setattr(
            tree,
            "",
            AT_EMPTY_PATH | AT_RECURSIVE,
            set_=MOUNT_ATTR_RDONLY if mount["read_only"] else 0,
            propagation=_PROPAGATION[propagation],
        )
    except OSError as err:
        os.close(tree)
        raise MountError(f"cannot set up the volume at {target}: {err.strerror}") from None
    if userns_fd is not None:
        _idmap(tree, source, target, userns_fd)
    return tree


def _idmap(tree: int, source: str, target: str, userns_fd: int) -> None:
    """KEP-127's idmap mount: the volume's mount gets the pod's own mapping, so a file the host
    sees as uid X is uid X inside too, and what container uid X writes is uid X on disk. Only
    the volume's own mount, as runc's ``idmap`` option (not ``ridmap``). A filesystem that
    cannot be idmapped fails the start, as the KEP asks, instead of showing unmapped ids."""
    try:
        mount_setattr(tree, "", AT_EMPTY_PATH, set_=MOUNT_ATTR_IDMAP, userns_fd=userns_fd)
    except OSError as err:
        os.close(tree)
        raise MountError(
            f"cannot idmap the volume {source} at {target} for the pod's user namespace: "
            f"{err.strerror} (the filesystem may not support idmapped mounts)"
        ) from None


def _open_source(mount: protocol.MountSpec) -> int:
    """An O_PATH fd of the volume's source, or of its sub_path resolved beneath it."""
    source, sub_path = mount["source"], mount.get("sub_path") or ""
    try:
        base = os.open(source, os.O_PATH | os.O_CLOEXEC)
    except OSError as err:
        raise MountError(f"cannot open volume source {source}: {err.strerror}") from None
    parts = [part for part in sub_path.split("/") if part not in ("", ".")]
    if not parts:
        return base
    try:
        if os.path.isabs(sub_path):
            raise MountError(f"subPath {sub_path!r} must not be an absolute path")
        if ".." in parts:
            raise MountError(f"subPath {sub_path!r} must not contain '..'")
        try:
            return _beneath(base, "/".join(parts))
        except FileNotFoundError:
            _make_dirs(base, parts)
            return _beneath(base, "/".join(parts))
    except OSError as err:
        raise MountError(_subpath_error(sub_path, source, err)) from None
    finally:
        os.close(base)


def _subpath_error(sub_path: str, source: str, err: OSError) -> str:
    if err.errno == errno.EXDEV:
        return (
            f"subPath {sub_path!r} is outside of the volume {source}: a symlink or '..' on the "
            "way leads out of it (an absolute symlink always does)"
        )
    if err.errno == errno.ELOOP:
        return f"subPath {sub_path!r} of the volume {source}: a symlink loop or a magic link"
    return f"failed to prepare subPath {sub_path!r} of the volume {source}: {err.strerror}"


def _beneath(base: int, path: str, flags: int = os.O_PATH) -> int:
    resolve = _RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
    return openat2(base, path, flags | os.O_CLOEXEC, resolve)


def _make_dirs(base: int, parts: list[str]) -> None:
    """Create the missing directories of a subPath inside the volume, as kubelet does: each
    with ``mkdirat`` in the parent opened beneath the volume (never following a symlink), with
    the volume directory's mode."""
    mode = stat.S_IMODE(os.fstat(base).st_mode)
    parent = os.dup(base)
    try:
        for depth, name in enumerate(parts, start=1):
            try:
                child = _beneath(base, "/".join(parts[:depth]))
            except FileNotFoundError:
                os.mkdir(name, mode, dir_fd=parent)
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
                os.fchmod(child, mode)  # mkdirat's mode went through the umask
            os.close(parent)
            parent = child
    finally:
        os.close(parent)


def _check_propagation(fd: int, source: str, propagation: str) -> None:
    """containerd's ensureShared / ensureSharedOrSlave: propagation needs a host mount that
    takes part in it."""
    if propagation == "private":
        return
    point, _, optional = mountinfo()[mount_id_of(fd)]
    tags = {field.split(":")[0] for field in optional}
    if propagation == "rshared" and "shared" not in tags:
        raise MountError(f'path "{source}" is mounted on "{point}" but it is not a shared mount')
    if propagation == "rslave" and not tags & {"shared", "master"}:
        raise MountError(
            f'path "{source}" is mounted on "{point}" but it is not a shared or slave mount'
        )


def mount_id_of(fd: int) -> int:
    """The id (as in mountinfo) of the mount an fd is on."""
    with open(f"/proc/self/fdinfo/{fd}", encoding="utf-8") as info:  # the loaded codec
        for line in info:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    raise OSError(errno.ENOTSUP, "no mnt_id in fdinfo", f"/proc/self/fdinfo/{fd}")


def mountinfo() -> dict[int, tuple[str, str, list[str]]]:
    """The calling process's mounts: id -> (mount point, per-mount options, optional fields)."""
    mounts = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            fields = line.split()
            optional = fields[6 : fields.index("-")]
            mounts[int(fields[0])] = (unescape(fields[4]), fields[5], optional)
    return mounts


def points_and_types(table: str) -> Iterator[tuple[str, str]]:
    """(mount point, filesystem type) of each well-formed line of a mountinfo text."""
    for line in table.splitlines():
        fields = line.split()
        try:
            separator = fields.index("-", 6)
        except ValueError:
            continue
        if separator + 1 < len(fields):
            yield unescape(fields[4]), fields[separator + 1]


def unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def within(path: str, trees: Iterable[str]) -> bool:
    return any(path == tree or path.startswith(tree + "/") for tree in trees)
