"""A pod's user namespace (``hostUsers: false``): made for the holder, joined by containers.

runc's order (``nsexec.c``): a child unshares the user namespace first, its parent (still in
the host's) writes ``uid_map`` and ``gid_map``, and only then does the child unshare the other
namespaces, which the new user namespace therefore owns. Here that child is a short-lived
helper the holder's parent forks: it makes the user namespace and, inside it, the pod's net,
IPC and UTS namespaces; the holder's parent joins those three and the helper ends. The holder
itself stays in the host's user namespace (it writes journals and logs as the host's root, as
containerd's shim does); the user namespace lives on as the owner of the pod's network
namespace, which is how a container finds it (``NS_GET_USERNS``) and joins it just before its
identity switch, so its capabilities are capabilities inside the pod's user namespace.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

from nodelet.holder import linux, protocol

CLONE_NEWUSER = 0x10000000
NS_GET_USERNS = 0xB701
"""ioctl on a namespace fd: an fd of the user namespace that owns it."""


class UsernsError(Exception):
    """The pod's user namespace cannot be made or joined; the message says why."""


def host_id(mappings: list[list[int]], inside: int) -> int:
    """The host id a map gives ``inside``; -1 (left as it is) when it maps none."""
    for first, outside, length in mappings:
        if first <= inside < first + length:
            return outside + inside - first
    return -1


def map_text(mappings: list[list[int]]) -> bytes:
    """``uid_map``/``gid_map`` content: ``<inside> <outside> <length>`` per line."""
    return b"".join(b"%d %d %d\n" % (first, outside, length) for first, outside, length in mappings)


def _write_maps(pid: int, spec: protocol.UserNamespaceSpec) -> None:
    for name, mappings in (("uid_map", spec["uid_map"]), ("gid_map", spec["gid_map"])):
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, map_text(mappings))
        finally:
            os.close(fd)


def _helper(flags: int, to_parent: int, from_parent: int) -> None:
    """In the helper: the user namespace, wait for its maps, the other namespaces in it."""
    linux.unshare(CLONE_NEWUSER)
    os.write(to_parent, b"u")
    if os.read(from_parent, 1) != b"m":
        raise UsernsError("the parent did not write the id maps")
    linux.unshare(flags)
    os.write(to_parent, b"n")
    os.read(from_parent, 1)  # held until the parent has joined the namespaces


def enter_owned_namespaces(spec: protocol.UserNamespaceSpec, flags: int) -> None:
    """Make the pod's user namespace with ``spec``'s maps and namespaces ``flags`` (net, IPC,
    UTS) owned by it, and join those (not the user namespace) in the calling process."""
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(up_r)
            os.close(down_w)
            _helper(flags, up_w, down_r)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(up_w)
    os.close(down_r)
    try:
        if os.read(up_r, 1) != b"u":
            raise UsernsError("cannot create the pod's user namespace")
        _write_maps(pid, spec)
        os.write(down_w, b"m")
        if os.read(up_r, 1) != b"n":
            raise UsernsError("cannot create the pod's namespaces inside its user namespace")
        for name, flag in (("net", linux.CLONE_NEWNET), ("ipc", linux.CLONE_NEWIPC),
                           ("uts", linux.CLONE_NEWUTS)):  # fmt: skip
            if flags & flag:
                _join_from(pid, name, flag)
    finally:
        for fd in (up_r, down_w):
            os.close(fd)
        os.waitpid(pid, 0)


def _join_from(pid: int, name: str, flag: int) -> None:
    fd = os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        linux.setns(fd, flag)
    finally:
        os.close(fd)


def open_pod_userns() -> int:
    """An fd of the user namespace that owns our network namespace (the pod's)."""
    net = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = fcntl.ioctl(net, NS_GET_USERNS)
    except OSError as err:
        raise UsernsError(f"cannot find the pod's user namespace: {err.strerror}") from None
    finally:
        os.close(net)
    os.set_inheritable(fd, False)
    own = os.stat("/proc/self/ns/user")
    theirs = os.fstat(fd)
    if (own.st_dev, own.st_ino) == (theirs.st_dev, theirs.st_ino):
        os.close(fd)
        raise UsernsError(
            "the pod has no user namespace of its own (its sandbox was created without one); "
            "the container is not started as the host's root"
        )
    return fd


def _read_map(name: str) -> list[list[int]]:
    # utf-8, the codec the holder has loaded: this runs after the pivot into an image root,
    # where no other codec module can be imported.
    with open(f"/proc/self/{name}", encoding="utf-8") as table:
        return [[int(n) for n in line.split()] for line in table if line.strip()]


def join(fd: int, spec: protocol.UserNamespaceSpec, host_uid: Callable[[], None]) -> None:
    """setns into the pod's user namespace (``fd``) and check its maps are ``spec``'s: a
    container never runs in a namespace that maps other ids. ``host_uid`` runs just before,
    while the host's root can still give the container's stdio to its mapped user."""
    host_uid()
    try:
        linux.setns(fd, CLONE_NEWUSER)
    except OSError as err:
        raise UsernsError(f"cannot join the pod's user namespace: {err.strerror}") from None
    finally:
        os.close(fd)
    for name, mappings in (("uid_map", spec["uid_map"]), ("gid_map", spec["gid_map"])):
        found, wanted = _read_map(name), [list(m) for m in mappings]
        if found != wanted:
            raise UsernsError(f"the pod's user namespace has {name} {found}, not {wanted}")
