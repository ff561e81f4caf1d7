"""Compile a resolved seccomp profile to a classic-BPF program with libseccomp, as runc does.

libseccomp is reached through ``pyseccomp`` (ctypes over Debian's libseccomp.so.2), imported on
first use so an agent without it still runs every Unconfined container. Programs are cached:
a pod start with a profile and capability set seen before does not recompile.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping
from typing import Any

from nodelet.security.seccomp_format import ARCHES, OPERATORS, SeccompError, resolve_profile

EPERM = 1
CACHE_SIZE = 64
NR_SCMP_ERROR = -1
"""libseccomp's answer for a syscall name it does not know."""

_Arg = tuple[int, int, int, int]
_Rule = tuple[str, str, int | None, tuple[_Arg, ...]]
_Key = tuple[str, int | None, tuple[str, ...], tuple[_Rule, ...]]

_cache: OrderedDict[_Key, bytes] = OrderedDict()
_cache_lock = threading.Lock()


def compile_profile(
    profile: Mapping[str, Any], caps: Collection[str] = (), *, source: str = "profile"
) -> bytes:
    """The classic-BPF program (``struct sock_filter[]``, host byte order) for ``profile``
    resolved for ``caps``, for the native arch plus the profile's architectures.

    Programs are cached by the resolved rules, so every container with the same profile and
    capabilities shares one compilation; a Localhost file edited on disk gives a new key."""
    key = _key(resolve_profile(profile, caps, source=source))
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            return cached
    program = _compile(key, source)
    with _cache_lock:
        _cache[key] = program
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return program


def _key(oci: Mapping[str, Any]) -> _Key:
    rules = tuple(
        (
            name,
            call["action"],
            call.get("errnoRet"),
            tuple(
                (arg["index"], OPERATORS[arg["op"]], arg["value"], arg["valueTwo"])
                for arg in call["args"]
            ),
        )
        for call in oci["syscalls"]
        for name in call["names"]
    )
    arches = tuple(oci["architectures"])
    return oci["defaultAction"], oci.get("defaultErrnoRet"), arches, rules


def _action(scmp: Any, name: str, errno_ret: int | None) -> int:
    """runc's getAction: ERRNO and TRACE default to EPERM; KILL is KILL_THREAD."""
    value: int = {
        "SCMP_ACT_KILL": scmp.KILL_THREAD,
        "SCMP_ACT_KILL_THREAD": scmp.KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS": scmp.KILL_PROCESS,
        "SCMP_ACT_TRAP": scmp.TRAP,
        "SCMP_ACT_ALLOW": scmp.ALLOW,
        "SCMP_ACT_LOG": scmp.LOG,
    }.get(name, 0)
    if name == "SCMP_ACT_ERRNO":
        value = scmp.ERRNO(EPERM if errno_ret is None else errno_ret)
    elif name == "SCMP_ACT_TRACE":
        value = scmp.TRACE(EPERM if errno_ret is None else errno_ret)
    return value


def _compile(key: _Key, source: str) -> bytes:
    try:
        import pyseccomp as scmp  # type: ignore[import-untyped]
    except (ImportError, RuntimeError) as err:
        raise SeccompError(
            f"seccomp profile {source}: cannot compile it, libseccomp is unavailable ({err}); "
            "install the Debian package libseccomp2 and the Python package pyseccomp"
        ) from None
    default_name, default_errno, arches, rules = key
    default = _action(scmp, default_name, default_errno)
    bpf = scmp.SyscallFilter(default)
    for arch in arches:
        try:
            bpf.add_arch(ARCHES[arch])
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.EINVAL):
                raise SeccompError(f"seccomp profile {source}: adding {arch}: {err}") from None
    if len(rules) > 32:
        bpf.set_attr(scmp.Attr.CTL_OPTIMIZE, 2)
    for name, action_name, errno_ret, args in rules:
        _add_rule(scmp, bpf, source, name, _action(scmp, action_name, errno_ret), default, args)
    fd = os.memfd_create("nodelet-seccomp", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as out:
        try:
            bpf.export_bpf(out)
        except OSError as err:
            raise SeccompError(f"seccomp profile {source}: exporting BPF: {err}") from None
        out.seek(0)
        return out.read()


def _add_rule(
    scmp: Any, bpf: Any, source: str, name: str, action: int, default: int, args: tuple[_Arg, ...]
) -> None:
    """runc's matchCall: a rule equal to the default is redundant, an unknown name is skipped,
    and conditions on one argument index repeated become separate rules (an OR)."""
    if action == default:
        return
    number = scmp.resolve_syscall(scmp.Arch.NATIVE, name)
    if number == NR_SCMP_ERROR:
        return
    conditions = [scmp.Arg(index, op, value, two) for index, op, value, two in args]
    indexes = [index for index, _, _, _ in args]
    groups = [[cond] for cond in conditions] if len(set(indexes)) < len(indexes) else [conditions]
    for group in groups:
        try:
            bpf.add_rule(action, number, *group)
        except OSError as err:
            raise SeccompError(
                f"seccomp profile {source}: adding the rule for syscall {name}: {err}"
            ) from None
