"""Run a command inside a running process's context, as ``runc exec`` and ``nsenter`` do: its
namespaces, cgroups, root, working dir, user, capabilities, no_new_privs and seccomp filter.

Everything is read from ``/proc/<pid>`` but what the kernel does not show (the seccomp program,
the container's prepared env): the caller passes those. The order is runc's ``setns`` init:
cgroups first (their paths are the host's), then the namespaces with the mount namespace and
then a pod's user namespace last, root and working dir, then the identity and capability steps
of the holder's spawn (bounding set, kept caps across the user switch, capset, ambient,
no_new_privs, seccomp). A PID namespace applies to children only, so the caller joins it and
forks, and the child does the rest."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from nodelet.holder import capabilities, linux, seccomp

CLONE_NEWUSER = 0x10000000
NAMESPACES = {
    "ipc": linux.CLONE_NEWIPC,
    "uts": linux.CLONE_NEWUTS,
    "net": linux.CLONE_NEWNET,
    "pid": linux.CLONE_NEWPID,
    "mnt": linux.CLONE_NEWNS,
    "user": CLONE_NEWUSER,
}
"""Joined in this order: runc's, the mount namespace after the others since it changes what
paths mean, but a pod's user namespace (``hostUsers: false``) last: runc joins it first because
there it owns every other namespace, while a nodelet container's mount and PID namespaces are
the host root's (``nodelet.holder.userns``) and can only be joined with the host's rights."""
CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
EXIT_SETUP_FAILED = 126
EXIT_NOT_FOUND = 127
"""Shell conventions, as ``runc exec`` reports a command it cannot run or find."""


class EnterError(Exception):
    """The target cannot be entered; the message names the process and the step."""


@dataclass(frozen=True)
class Identity:
    """What a process runs as, from ``/proc/<pid>/status``."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    caps: dict[str, int]
    """``CapInh`` ... ``CapAmb`` as masks."""
    no_new_privs: bool
    seccomp: int
    """0 none, 1 strict, 2 filter."""


@dataclass
class Plan:
    """What the child becomes before it execs ``argv``."""

    pid: int
    argv: list[str]
    env: dict[str, str]
    namespaces: Sequence[str] = tuple(NAMESPACES)
    join_cgroups: bool = True
    root: bool = True
    """Take the target's root (``/proc/<pid>/root``) and a working dir inside it."""
    working_dir: str | None = None
    """A path inside the target's root; None: the target's own current dir."""
    identity: Identity | None = None
    """None keeps ours (root, every capability): ``nodelet debug``."""
    seccomp_program: bytes | None = None
    stdin: bool = True
    fds: dict[str, int] = field(default_factory=dict)
    id_maps: tuple[list[list[int]], list[list[int]]] | None = None
    """The target's ``uid_map`` and ``gid_map`` when it is in another user namespace: its ids
    as ``/proc`` shows them (the host's) are switched to through them."""


def status_fields(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as file:
            text = file.read()
    except OSError as err:
        raise EnterError(f"process {pid} is gone: {err.strerror}") from None
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def identity_of(pid: int) -> Identity:
    """The process's effective uid/gid, groups, capability sets, no_new_privs and seccomp."""
    fields = status_fields(pid)
    return Identity(
        uid=int(fields["Uid"].split()[1]),
        gid=int(fields["Gid"].split()[1]),
        groups=tuple(int(g) for g in fields.get("Groups", "").split()),
        caps={name: int(fields[name], 16) for name in CAP_FIELDS},
        no_new_privs=fields.get("NoNewPrivs") == "1",
        seccomp=int(fields.get("Seccomp", "0")),
    )


def parent_of(pid: int) -> int:
    return int(status_fields(pid)["PPid"])


def environ_of(pid: int) -> dict[str, str]:
    """The environment the process was started with (a fallback for the prepared one)."""
    with open(f"/proc/{pid}/environ", "rb") as file:
        data = file.read()
    env = {}
    for entry in data.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name:
            env[os.fsdecode(name)] = os.fsdecode(value)
    return env


def cgroup_procs_files(pid: int) -> list[str]:
    """The ``cgroup.procs`` of each of the process's cgroups that are not ours, as host paths:
    each hierarchy (v1 by its controllers, v2 by its fstype) found in our mountinfo."""
    ours = _cgroups("self")  # our pid may differ in a PID namespace entered already
    mounts = _cgroup_mounts()
    found = []
    for hierarchy, path in _cgroups(pid).items():
        if ours.get(hierarchy) == path:
            continue
        wanted = set(hierarchy.split(",")) if hierarchy else set()
        for fstype, options, root, point in mounts:
            if (fstype == "cgroup2") != (not wanted) or not wanted <= options:
                continue
            relative = os.path.relpath(path, root)
            if not relative.startswith(".."):
                found.append(os.path.normpath(os.path.join(point, relative, "cgroup.procs")))
                break
    return found


def _cgroups(pid: int | str) -> dict[str, str]:
    """hierarchy key (its controllers, ``""`` for v2) -> the process's path in it."""
    found = {}
    with open(f"/proc/{pid}/cgroup", encoding="utf-8") as file:
        for line in file:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            found[controllers] = path
    return found


def _cgroup_mounts() -> list[tuple[str, set[str], str, str]]:
    """(fstype, super options, root inside the hierarchy, mount point) of cgroup mounts."""
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8") as file:
        for line in file:
            left, _, right = line.rstrip("\n").partition(" - ")
            parts, (fstype, _source, options) = left.split(), right.split(" ", 2)
            if fstype in ("cgroup", "cgroup2"):
                root, point = _unescape(parts[3]), _unescape(parts[4])
                mounts.append((fstype, set(options.split(",")), root, point))
    return mounts


def _unescape(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")


def open_target(plan: Plan) -> None:
    """Open what the child needs from ``/proc/<pid>`` now, while the pid is known to be the
    target (the caller checks it again afterwards): namespace files that differ from ours,
    its root and its current dir."""
    for kind in plan.namespaces:
        theirs = os.stat(f"/proc/{plan.pid}/ns/{kind}")
        mine = os.stat(f"/proc/self/ns/{kind}")
        if (theirs.st_dev, theirs.st_ino) != (mine.st_dev, mine.st_ino):
            plan.fds[kind] = os.open(f"/proc/{plan.pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    if "user" in plan.fds:
        plan.id_maps = (_id_map(plan.pid, "uid_map"), _id_map(plan.pid, "gid_map"))
    if plan.root:
        for name in ("root", "cwd"):
            plan.fds[name] = os.open(f"/proc/{plan.pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)


def _id_map(pid: int, name: str) -> list[list[int]]:
    with open(f"/proc/{pid}/{name}", encoding="ascii") as table:
        return [[int(n) for n in line.split()] for line in table if line.strip()]


def _inside(mappings: list[list[int]], host: int) -> int:
    """The id a user namespace's map gives host id ``host``; EnterError when unmapped."""
    for first, outside, length in mappings:
        if outside <= host < outside + length:
            return first + host - outside
    raise EnterError(f"id {host} is not mapped in the process's user namespace")


def inside_identity(identity: Identity, maps: tuple[list[list[int]], list[list[int]]]) -> Identity:
    """``identity`` (host ids, as /proc shows them) in the ids of the target's user namespace."""
    uids, gids = maps
    return dataclasses.replace(
        identity,
        uid=_inside(uids, identity.uid),
        gid=_inside(gids, identity.gid),
        groups=tuple(_inside(gids, g) for g in identity.groups),
    )


def run(plan: Plan) -> int:
    """Fork a child that enters the target and execs; wait; its exit code (128+N for signal
    N). The terminal, if any, stays the child's: it shares our process group, so Ctrl-C
    reaches it, and we ignore it meanwhile."""
    home_pid = None
    if "pid" in plan.fds:
        home_pid = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        linux.setns(plan.fds["pid"], linux.CLONE_NEWPID)
    try:
        pid = os.fork()
    except OSError:
        pid = -1
    if pid == 0:
        _child(plan)  # never returns; the way back below is the parent's alone
    if home_pid is not None:
        linux.setns(home_pid, linux.CLONE_NEWPID)
        os.close(home_pid)
    if pid < 0:
        raise EnterError("cannot fork")
    for fd in plan.fds.values():
        os.close(fd)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGQUIT)}
    forward = {sig: signal.signal(sig, lambda s, _f: _forward(pid, s))
               for sig in (signal.SIGTERM, signal.SIGHUP)}  # fmt: skip
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    finally:
        for sig, handler in {**previous, **forward}.items():
            signal.signal(sig, handler)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _forward(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _child(plan: Plan) -> NoReturn:
    try:
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if not plan.stdin:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
        if plan.join_cgroups:
            _step("joining the cgroups", linux.join_cgroups, cgroup_procs_files(plan.pid))
        for kind, flag in NAMESPACES.items():
            if kind in plan.fds and kind != "pid":
                _step(f"joining the {kind} namespace", linux.setns, plan.fds[kind], flag)
        if plan.root:
            _step("taking its root", _root_and_dir, plan)
        if plan.identity is not None:
            identity = plan.identity
            if plan.id_maps is not None:
                identity = inside_identity(identity, plan.id_maps)
            _become(identity, plan.seccomp_program)
    except EnterError as err:
        _die(str(err), EXIT_SETUP_FAILED)
    try:
        os.execvpe(plan.argv[0], plan.argv, plan.env)
    except OSError as err:
        code = EXIT_NOT_FOUND if isinstance(err, FileNotFoundError) else EXIT_SETUP_FAILED
        _die(f"cannot run {plan.argv[0]!r}: {err.strerror}", code)


def _step(what: str, action: object, *args: object) -> None:
    try:
        action(*args)  # type: ignore[operator]
    except OSError as err:
        raise EnterError(f"{what} of process: {err.strerror or err}") from None


def _root_and_dir(plan: Plan) -> None:
    os.fchdir(plan.fds["root"])
    os.chroot(".")
    if plan.working_dir:
        os.chdir(plan.working_dir)
    else:
        os.fchdir(plan.fds["cwd"])


def _become(identity: Identity, program: bytes | None) -> None:
    """The target's user and capability sets, in the holder's spawn order."""
    caps = {name: _bits(mask) for name, mask in identity.caps.items()}
    if program is not None and not identity.no_new_privs:
        _step("installing the seccomp filter", seccomp.install, program)
    _step("dropping the bounding set", capabilities.drop_bounding, caps["CapBnd"])
    _step("keeping capabilities", capabilities.keep_caps, True)
    _step("setting the groups", os.setgroups, list(identity.groups))
    _step("setting the gid", os.setresgid, identity.gid, identity.gid, identity.gid)
    _step("setting the uid", os.setresuid, identity.uid, identity.uid, identity.uid)
    _step("keeping capabilities", capabilities.keep_caps, False)
    _step(
        "setting the capabilities",
        capabilities.set_capabilities,
        caps["CapEff"],
        caps["CapPrm"],
        caps["CapInh"],
    )
    _step("setting the ambient capabilities", capabilities.set_ambient, caps["CapAmb"])
    if identity.no_new_privs:
        _step("setting no_new_privs", linux.prctl, linux.PR_SET_NO_NEW_PRIVS, 1)
        if program is not None:
            _step("installing the seccomp filter", seccomp.install, program)


def _bits(mask: int) -> list[int]:
    return [bit for bit in range(mask.bit_length()) if mask >> bit & 1]


def _die(message: str, code: int) -> NoReturn:
    with contextlib.suppress(OSError):
        os.write(2, f"nodelet: {message}\n".encode())
    sys.stderr.flush()
    os._exit(code)
