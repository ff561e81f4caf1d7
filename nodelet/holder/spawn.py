"""What runs in a container's process between fork and exec: apply the prepared spec, exec.

The order is runc's standard init (``standard_init_linux.go``, ``finalizeNamespace``): session
and stdio, cgroups, the mount namespace (``mounts.apply`` on the host's ``/``, volumes
idmapped for a pod with a user namespace; ``rootfs.apply`` for a non-host image: its own root,
pivoted into); the pod's user namespace (``userns.join``: made with its maps before anything
ran in it, joined here after the mounts that need the host's root and before everything whose
effect should be inside it); the seccomp filter while
CAP_SYS_ADMIN is still held when the container has no no_new_privs; the bounding set; the user
switch with the permitted set kept; the working directory as that user; effective, permitted,
inheritable and ambient sets; no_new_privs and, with it, the seccomp filter as late as
possible; then exec.

Every failure is written as JSON to the status pipe (close-on-exec: EOF means exec succeeded)
and the child exits 127, so the holder can tell the agent exactly why a start failed, and
whether it got as far as exec.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import signal
import stat
from collections.abc import Callable
from typing import NoReturn, NotRequired, TypedDict

from nodelet.holder import capabilities, linux, mounts, protocol, rootfs, seccomp, userns


class SetupError(Exception):
    """The spec cannot be applied; the message is what the operator sees."""


class ProcessSecurity(TypedDict):
    """The part of a ContainerSpec that every process of the container gets, its first and
    those entered into it later (``enter``, as ``runc exec`` applies the container's process
    spec): a ContainerSpec is one."""

    run_as_user: int | None
    run_as_group: int | None
    supplemental_groups: list[int]
    no_new_privileges: bool
    capabilities: NotRequired[protocol.CapabilitySpec]
    seccomp_bpf: NotRequired[str]


def _working_dir(path: str, volumes: list[protocol.MountSpec]) -> None:
    """chdir to ``path``, creating it only inside a volume, and only as the container's user
    (this runs after the user switch): nothing is created that the user could not create."""
    if not os.path.isabs(path):
        raise SetupError(f"workingDir {path} is not an absolute path")
    if not os.path.isdir(path):
        wanted = os.path.normpath(path)
        existing = wanted
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        real = os.path.realpath(existing)
        targets = [os.path.realpath(m["target"]) for m in volumes]
        if not any(real == t or real.startswith(t.rstrip("/") + "/") for t in targets):
            raise SetupError(
                f"workingDir {path} does not exist and lies outside every volume; it is not "
                "created on the host filesystem"
            )
        path = os.path.join(real, os.path.relpath(wanted, existing))
        os.makedirs(path, exist_ok=True)
    os.chdir(path)


def _chdir(path: str) -> None:
    """Into a workingDir ``rootfs.apply`` made (as root): the user may still be refused."""
    try:
        os.chdir(path)
    except OSError as err:
        raise SetupError(
            f"chdir to cwd ({path!r}) set in config.json failed: {err.strerror}"
        ) from None


def _enter_working_dir(spec: protocol.ContainerSpec) -> None:
    path = spec["working_dir"]
    if "rootfs" in spec:
        _chdir(path or "/")
    elif path:
        _working_dir(path, spec["mounts"])


def _stdio_owner(uid: int) -> None:
    """runc's ``fixStdioPermissions``: stdio pipes the holder made belong to root, so a
    non-root process could not reopen them (``echo > /dev/stdout``); give them to the user.
    /dev/null is left alone, and so is what the kernel refuses (EPERM, EROFS), as runc does."""
    for fd in (0, 1, 2):
        info = os.fstat(fd)
        if info.st_uid == uid or (stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(1, 3)):
            continue
        try:
            os.fchown(fd, uid, -1)
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.EROFS):
                raise SetupError(f"cannot give stdio to user {uid}: {err.strerror}") from None


def _identity(spec: ProcessSecurity) -> None:
    user, group = spec["run_as_user"], spec["run_as_group"]
    if user is not None:
        _stdio_owner(user)
    groups = list(spec["supplemental_groups"])
    try:
        if user is not None or group is not None or groups:
            os.setgroups(groups)
        if group is not None:
            os.setgid(group)
        if user is not None:
            if group is None:
                os.setgid(0)
            os.setuid(user)
    except OSError as err:
        raise SetupError(
            f"cannot switch to user {user}, group {group}, groups {groups}: {err.strerror}"
        ) from None


def _user_and_capabilities(spec: ProcessSecurity, working_dir: Callable[[], None]) -> None:
    """runc's ``finalizeNamespace``: without a capability spec (privileged) the process keeps
    the holder's capabilities, which the kernel clears anyway when it leaves uid 0."""
    caps = spec.get("capabilities")
    if caps is not None:
        try:
            capabilities.drop_bounding(caps["bounding"])
            capabilities.keep_caps(True)
        except OSError as err:
            raise SetupError(f"cannot apply the capability bounding set: {err}") from None
    _identity(spec)
    working_dir()
    if caps is not None:
        try:
            capabilities.keep_caps(False)
            capabilities.set_capabilities(caps["effective"], caps["permitted"], caps["inheritable"])
            capabilities.set_ambient(caps["ambient"])
        except OSError as err:
            raise SetupError(f"cannot apply the capability sets: {err}") from None


def _pod_userns() -> int:
    try:
        return userns.open_pod_userns()
    except userns.UsernsError as err:
        raise SetupError(str(err)) from None


def _join_userns(spec: protocol.ContainerSpec, maps: protocol.UserNamespaceSpec, fd: int) -> None:
    """Into the pod's user namespace after the mounts (made by the host's root: idmapped
    volumes need it) and before the user switch and capabilities, which then apply inside."""
    user = spec["run_as_user"] or 0
    try:
        userns.join(fd, maps, lambda: _stdio_owner(userns.host_id(maps["uid_map"], user)))
    except userns.UsernsError as err:
        raise SetupError(str(err)) from None


def _install_seccomp(program: bytes) -> None:
    try:
        seccomp.install(program)
    except OSError as err:
        raise SetupError(f"cannot install the seccomp filter: {err.strerror or err}") from None


def apply_process_security(spec: ProcessSecurity, working_dir: Callable[[], None]) -> None:
    """Everything from the seccomp filter of a container without no_new_privs to the one of a
    container with it, in runc's order; the caller execs next. ``working_dir`` is entered as
    the container's user, between the user switch and the capability sets. Raises SetupError."""
    encoded = spec.get("seccomp_bpf")
    program = base64.b64decode(encoded) if encoded is not None else None
    no_new_privs = spec["no_new_privileges"]
    if program is not None and not no_new_privs:
        _install_seccomp(program)
    _user_and_capabilities(spec, working_dir)
    if no_new_privs:
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    if program is not None and no_new_privs:
        _install_seccomp(program)


def exec_error(argv0: str, err: OSError) -> str:
    if err.errno == errno.ENOENT and "/" not in argv0:
        return f'exec: "{argv0}": executable file not found in $PATH'
    return f'exec: "{argv0}": {os.strerror(err.errno or 0)}'


def detach_child() -> None:
    """In a child the holder forked: a session of its own, killed with the holder, and the
    signal dispositions and mask a new program expects (the holder's own are for its loop)."""
    os.setsid()
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    for sig in (signal.SIGPIPE, signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def run(spec: protocol.ContainerSpec, stdout_w: int, stderr_w: int, status_w: int) -> NoReturn:
    """In the forked child: never returns."""
    argv = [str(a) for a in spec["argv"]]
    try:
        detach_child()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(stdout_w, 1)
        os.dup2(stderr_w, 2)
        try:
            linux.join_cgroups(spec.get("cgroup_procs") or [])
        except OSError as err:
            raise SetupError(f"cannot join the container's cgroup: {err}") from None
        user_namespace = spec.get("user_namespace")
        userns_fd = _pod_userns() if user_namespace is not None else None
        try:
            if "rootfs" in spec:
                rootfs.apply(spec, userns_fd)
            else:
                mounts.apply(spec, userns_fd)
        except mounts.MountError as err:
            raise SetupError(str(err)) from None
        if user_namespace is not None and userns_fd is not None:
            _join_userns(spec, user_namespace, userns_fd)
        os.closerange(3, status_w)
        os.closerange(status_w + 1, 65536)
        apply_process_security(spec, lambda: _enter_working_dir(spec))
        try:
            os.execvpe(argv[0], argv, dict(spec["env"]))
        except OSError as err:
            fail(status_w, protocol.START_ERROR, exec_error(argv[0], err))
    except SetupError as err:
        fail(status_w, protocol.SETUP_ERROR, str(err))
    except OSError as err:
        fail(status_w, protocol.SETUP_ERROR, f"{err.strerror or err}: {err.filename or ''}")
    except BaseException as err:
        fail(status_w, protocol.SETUP_ERROR, repr(err))


def fail(status_w: int, reason: str, message: str) -> NoReturn:
    """In a forked child: report why it never reached exec, and exit 127."""
    try:
        os.write(status_w, json.dumps({"reason": reason, "message": message}).encode())
    finally:
        os._exit(127)
