"""``securityContext.seccompProfile``: choose a container's profile, read it, compile it to BPF.

kubelet picks the profile (container field over pod field; Unconfined when neither is set,
unless ``--seccomp-default``), containerd turns RuntimeDefault into its default profile for the
container's capabilities or reads a Localhost file, and runc compiles it with libseccomp. This
module does all three on the agent side and hands the holder a finished classic-BPF program
(``ContainerConfig.seccomp_filter``), so the holder only installs bytes.

Profiles are the Docker/OCI seccomp JSON format; Docker's ``includes``/``excludes`` (caps,
arches, minKernel), ``name`` and ``archMap`` are resolved for one container by
``resolve_profile``. Syscall names this libseccomp does not know are skipped, as runc does:
the newest kernels' calls then meet the default action.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from nodelet.security.seccomp_default import PROFILE as RUNTIME_DEFAULT

__all__ = [
    "RUNTIME_DEFAULT",
    "SeccompError",
    "compile_profile",
    "filter_for",
    "load_localhost",
    "resolve_profile",
    "runtime_default",
]

EPERM = 1
MAX_ERRNO = 4095
MAX_PROFILE_BYTES = 1 << 20
"""A Localhost profile larger than this is refused: real ones are a few KiB."""
CACHE_SIZE = 64
NR_SCMP_ERROR = -1
"""libseccomp's answer for a syscall name it does not know."""

ACTIONS = (
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
)
"""runc's actions but SCMP_ACT_NOTIFY, which needs a seccomp agent nodelet does not run."""
OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
"""libseccomp's ``enum scmp_compare``."""
ARCHES = {
    "SCMP_ARCH_X86": 0x40000003,
    "SCMP_ARCH_X86_64": 0xC000003E,
    "SCMP_ARCH_X32": 0x4000003E,
    "SCMP_ARCH_ARM": 0x40000028,
    "SCMP_ARCH_AARCH64": 0xC00000B7,
    "SCMP_ARCH_MIPS": 0x00000008,
    "SCMP_ARCH_MIPS64": 0x80000008,
    "SCMP_ARCH_MIPS64N32": 0xA0000008,
    "SCMP_ARCH_MIPSEL": 0x40000008,
    "SCMP_ARCH_MIPSEL64": 0xC0000008,
    "SCMP_ARCH_MIPSEL64N32": 0xE0000008,
    "SCMP_ARCH_PPC": 0x00000014,
    "SCMP_ARCH_PPC64": 0x80000015,
    "SCMP_ARCH_PPC64LE": 0xC0000015,
    "SCMP_ARCH_S390": 0x00000016,
    "SCMP_ARCH_S390X": 0x80000016,
    "SCMP_ARCH_RISCV64": 0xC00000F3,
    "SCMP_ARCH_LOONGARCH64": 0xC0000102,
}
"""libseccomp's arch tokens (the kernel's AUDIT_ARCH values; X32 is libseccomp's own)."""
FLAGS = (
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
)
_MACHINES = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"),
    "i386": ("x86", "SCMP_ARCH_X86"),
    "i686": ("x86", "SCMP_ARCH_X86"),
    "aarch64": ("arm64", "SCMP_ARCH_AARCH64"),
    "armv7l": ("arm", "SCMP_ARCH_ARM"),
    "armv6l": ("arm", "SCMP_ARCH_ARM"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"),
    "ppc64": ("ppc64", "SCMP_ARCH_PPC64"),
    "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"),
    "loongarch64": ("loong64", "SCMP_ARCH_LOONGARCH64"),
    "mips64": ("mips64", "SCMP_ARCH_MIPS64"),
}
"""``uname -m`` -> (libseccomp's native arch name, as ``arches`` uses it; its SCMP_ARCH)."""
_TOP_KEYS = frozenset(
    {
        "defaultAction",
        "defaultErrnoRet",
        "architectures",
        "archMap",
        "flags",
        "syscalls",
        "listenerPath",
        "listenerMetadata",
    }
)
_SYSCALL_KEYS = frozenset(
    {"names", "name", "action", "errnoRet", "args", "comment", "includes", "excludes"}
)
_ARG_KEYS = frozenset({"index", "value", "valueTwo", "op"})


class SeccompError(Exception):
    """A profile cannot be used; the message names the profile (file), the field and why."""


def native_arch() -> tuple[str, str]:
    """(libseccomp's name of this machine's arch, its SCMP_ARCH name)."""
    machine = os.uname().machine
    return _MACHINES.get(machine, (machine, ""))


def kernel_version() -> tuple[int, int]:
    """The running kernel's (major, minor), for ``includes.minKernel``."""
    return _version(os.uname().release) or (0, 0)


def _version(text: str) -> tuple[int, int] | None:
    parts = text.split("-", maxsplit=1)[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None


def _canonical_cap(name: str) -> str:
    upper = name.upper()
    return upper if upper.startswith("CAP_") else f"CAP_{upper}"


# --- validation: every field is checked before anything is resolved ----------------------


class _Checker:
    """Field checks that raise SeccompError naming the profile and the field's path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, why: str) -> SeccompError:
        where = f"{field}: " if field else ""
        return SeccompError(f"seccomp profile {self.source}: {where}{why}")

    def obj(self, value: Any, field: str, keys: frozenset[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(field, f"must be an object, not {_kind(value)}")
        unknown = sorted(str(key) for key in value if key not in keys)
        if unknown:
            prefix = f"{field}." if field else ""
            raise self.fail(
                f"{prefix}{unknown[0]}", f"unknown field (known: {', '.join(sorted(keys))})"
            )
        return value

    def strings(self, value: Any, field: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(field, "must be a list of non-empty strings")
        return value

    def integer(self, value: Any, field: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(field, f"must be an integer from {low} to {high}, not {value!r}")
        return value

    def choice(self, value: Any, field: str, known: Collection[str]) -> str:
        if value not in known:
            raise self.fail(field, f"unknown value {value!r} (known: {', '.join(known)})")
        return str(value)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def validate(profile: Any, source: str) -> None:
    """Check a Docker/OCI seccomp profile's shape and values, refusing unknown fields (a typo
    such as ``errnoret`` would otherwise change behaviour silently)."""
    check = _Checker(source)
    top = check.obj(profile, "", _TOP_KEYS)
    if "defaultAction" not in top:
        raise check.fail("defaultAction", "is required")
    default = check.choice(top["defaultAction"], "defaultAction", ACTIONS)
    if "defaultErrnoRet" in top:
        _check_errno(check, default, top["defaultErrnoRet"], "defaultErrnoRet")
    if top.get("listenerPath") or top.get("listenerMetadata"):
        raise check.fail("listenerPath", "seccomp notify agents are not supported by nodelet")
    for index, flag in enumerate(check.strings(top.get("flags", []), "flags")):
        check.choice(flag, f"flags[{index}]", FLAGS)
    if "architectures" in top and "archMap" in top:
        raise check.fail(
            "archMap", "both 'architectures' and 'archMap' are set: use either, not both"
        )
    for index, arch in enumerate(check.strings(top.get("architectures", []), "architectures")):
        check.choice(arch, f"architectures[{index}]", ARCHES)
    _validate_arch_map(check, top.get("archMap", []))
    syscalls = top.get("syscalls", [])
    if not isinstance(syscalls, list):
        raise check.fail("syscalls", f"must be a list, not {_kind(syscalls)}")
    for index, call in enumerate(syscalls):
        _validate_syscall(check, call, f"syscalls[{index}]")


def _check_errno(check: _Checker, action: str, value: Any, field: str) -> None:
    if action not in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        raise check.fail(field, f"applies to SCMP_ACT_ERRNO and SCMP_ACT_TRACE only, not {action}")
    check.integer(value, field, 0, MAX_ERRNO)


def _validate_arch_map(check: _Checker, arch_map: Any) -> None:
    if not isinstance(arch_map, list):
        raise check.fail("archMap", f"must be a list, not {_kind(arch_map)}")
    keys = frozenset({"architecture", "subArchitectures"})
    for index, entry in enumerate(arch_map):
        field = f"archMap[{index}]"
        item = check.obj(entry, field, keys)
        check.choice(item.get("architecture"), f"{field}.architecture", ARCHES)
        subs = item.get("subArchitectures") or []
        for sub_index, sub in enumerate(check.strings(subs, f"{field}.subArchitectures")):
            check.choice(sub, f"{field}.subArchitectures[{sub_index}]", ARCHES)


def _validate_syscall(check: _Checker, call: Any, field: str) -> None:
    item = check.obj(call, field, _SYSCALL_KEYS)
    if "name" in item and item.get("names"):
        raise check.fail(f"{field}.name", "use either 'name' or 'names', not both")
    if "name" in item:
        check.strings([item["name"]], f"{field}.name")
    else:
        names = check.strings(item.get("names"), f"{field}.names")
        if not names:
            raise check.fail(f"{field}.names", "lists no syscall")
    if "action" not in item:
        raise check.fail(f"{field}.action", "is required")
    action = check.choice(item["action"], f"{field}.action", ACTIONS)
    if "errnoRet" in item:
        _check_errno(check, action, item["errnoRet"], f"{field}.errnoRet")
    args = item.get("args")
    args = [] if args is None else args
    if not isinstance(args, list) or len(args) > 6:
        raise check.fail(f"{field}.args", "must be a list of at most 6 conditions")
    for index, arg in enumerate(args):
        where = f"{field}.args[{index}]"
        cond = check.obj(arg, where, _ARG_KEYS)
        check.integer(cond.get("index"), f"{where}.index", 0, 5)
        check.integer(cond.get("value"), f"{where}.value", 0, 2**64 - 1)
        check.integer(cond.get("valueTwo", 0), f"{where}.valueTwo", 0, 2**64 - 1)
        check.choice(cond.get("op"), f"{where}.op", OPERATORS)
    for key, allowed in (
        ("includes", ("caps", "arches", "minKernel")),
        ("excludes", ("caps", "arches")),
    ):
        if key not in item:
            continue
        rule = check.obj(item[key], f"{field}.{key}", frozenset(allowed))
        for list_key in ("caps", "arches"):
            check.strings(rule.get(list_key, []), f"{field}.{key}.{list_key}")
        minimum = rule.get("minKernel")
        if minimum is not None and (not isinstance(minimum, str) or _version(minimum) is None):
            raise check.fail(f"{field}.{key}.minKernel", f'must be like "4.8", not {minimum!r}')


# --- resolution: Docker's conditional rules for one container --------------------------------


def resolve_profile(
    profile: Mapping[str, Any],
    caps: Collection[str] = (),
    *,
    source: str = "profile",
    arch: str | None = None,
    kernel: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` for one container: a validated profile with ``includes`` and
    ``excludes`` applied against ``caps`` (containerd and Docker use the bounding set), the
    machine's arch and kernel, ``archMap`` turned into ``architectures``, ``name`` into
    ``names``. Caps may be written with or without ``CAP_``."""
    validate(profile, source)
    native, native_scmp = native_arch() if arch is None else (arch, _scmp_name(arch))
    have = {_canonical_cap(cap) for cap in caps}
    running = kernel_version() if kernel is None else kernel
    out: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    if "defaultErrnoRet" in profile:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    if "flags" in profile:
        out["flags"] = list(profile["flags"])
    arches = list(profile.get("architectures", []))
    for entry in profile.get("archMap", []):
        if entry["architecture"] == native_scmp:
            arches += [entry["architecture"], *(entry.get("subArchitectures") or [])]
    out["architectures"] = arches
    out["syscalls"] = [
        _oci_rule(call)
        for call in profile.get("syscalls", [])
        if _applies(call, have, native, running)
    ]
    return out


def _scmp_name(arch: str) -> str:
    return next((scmp for name, scmp in _MACHINES.values() if name == arch), "")


def _applies(call: Mapping[str, Any], caps: set[str], arch: str, kernel: tuple[int, int]) -> bool:
    excludes = call.get("excludes") or {}
    if arch in excludes.get("arches", []):
        return False
    if any(_canonical_cap(cap) in caps for cap in excludes.get("caps", [])):
        return False
    includes = call.get("includes") or {}
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if not all(_canonical_cap(cap) in caps for cap in includes.get("caps", [])):
        return False
    minimum = includes.get("minKernel")
    return minimum is None or kernel >= (_version(minimum) or (0, 0))


def _oci_rule(call: Mapping[str, Any]) -> dict[str, Any]:
    names = [call["name"]] if "name" in call else list(call["names"])
    rule: dict[str, Any] = {"names": names, "action": call["action"]}
    if "errnoRet" in call:
        rule["errnoRet"] = call["errnoRet"]
    rule["args"] = [
        {
            "index": arg["index"],
            "value": arg["value"],
            "valueTwo": arg.get("valueTwo", 0),
            "op": arg["op"],
        }
        for arg in call.get("args") or []
    ]
    return rule


def runtime_default(caps: Collection[str]) -> dict[str, Any]:
    """containerd's ``DefaultProfile`` for a container with these (bounding) capabilities."""
    return resolve_profile(RUNTIME_DEFAULT, caps, source="RuntimeDefault")


# --- Localhost profiles ------------------------------------------------------------------------


def load_localhost(seccomp_dir: Path, relative: str) -> dict[str, Any]:
    """Read ``<seccomp_dir>/<relative>`` (kubelet's ``<root-dir>/seccomp``) as JSON.

    The path is refused when absolute, when it has a ``..`` component (the API server's
    rules) or when symlinks lead it out of ``seccomp_dir``; a missing file fails the
    container's start, as containerd does, instead of running it unconfined."""
    if not isinstance(relative, str) or not relative:
        raise SeccompError("localhostProfile must be set if seccompProfile type is Localhost")
    if os.path.isabs(relative):
        raise SeccompError(
            f"localhostProfile {relative!r}: must be a path relative to {seccomp_dir}"
        )
    if ".." in relative.split("/") or "\0" in relative:
        raise SeccompError(f"localhostProfile {relative!r}: must not contain '..'")
    path = seccomp_dir / relative
    root = os.path.realpath(seccomp_dir)
    real = os.path.realpath(path)
    if not real.startswith(root.rstrip("/") + "/"):
        raise SeccompError(
            f"cannot load seccomp profile {str(path)!r}: it resolves to {real}, "
            f"outside {seccomp_dir}"
        )
    return _read_json(Path(real), str(path))


def _read_json(real: Path, shown: str) -> dict[str, Any]:
    try:
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        raise SeccompError(f"cannot load seccomp profile {shown!r}: {err.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SeccompError(f"cannot load seccomp profile {shown!r}: not a regular file")
    with os.fdopen(fd, "rb") as file:
        data = file.read(MAX_PROFILE_BYTES + 1)
    if len(data) > MAX_PROFILE_BYTES:
        raise SeccompError(
            f"cannot load seccomp profile {shown!r}: larger than {MAX_PROFILE_BYTES} bytes"
        )
    try:
        loaded = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SeccompError(f"decoding seccomp profile failed {shown!r}: {err}") from None
    if not isinstance(loaded, dict):
        raise SeccompError(f"seccomp profile {shown}: must be a JSON object, not {_kind(loaded)}")
    return loaded


# --- compilation: libseccomp, as runc drives it ------------------------------------------------

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


# --- kubelet's choice ----------------------------------------------------------------------------

PROFILE_TYPES = ("Localhost", "RuntimeDefault", "Unconfined")


def effective_profile(
    container: Mapping[str, Any] | None,
    pod: Mapping[str, Any] | None,
    *,
    seccomp_default: bool = False,
) -> Mapping[str, Any]:
    """kubelet's getSeccompProfile: the container's field, else the pod's, else RuntimeDefault
    with ``--seccomp-default`` and Unconfined without."""
    if container is not None:
        return container
    if pod is not None:
        return pod
    return {"type": "RuntimeDefault" if seccomp_default else "Unconfined"}


def filter_for(
    sc_profile: Mapping[str, Any] | None,
    effective_caps: Collection[str],
    privileged: bool,
    seccomp_dir: Path,
    *,
    pod_profile: Mapping[str, Any] | None = None,
    seccomp_default: bool = False,
) -> bytes | None:
    """The BPF program for a container, or None to run it unconfined.

    ``sc_profile`` is the container's ``securityContext.seccompProfile`` and ``pod_profile``
    the pod's; ``effective_caps`` the container's capabilities after add/drop. A privileged
    container gets no filter, as containerd does, whatever the profile says."""
    if privileged:
        return None
    chosen = effective_profile(sc_profile, pod_profile, seccomp_default=seccomp_default)
    kind = chosen.get("type")
    localhost = chosen.get("localhostProfile")
    if kind not in PROFILE_TYPES:
        raise SeccompError(
            f"seccompProfile.type: unsupported value {kind!r} "
            f"(supported: {', '.join(PROFILE_TYPES)})"
        )
    if localhost is not None and kind != "Localhost":
        raise SeccompError(
            "seccompProfile.localhostProfile: can only be set when seccomp type is Localhost"
        )
    if kind == "Unconfined":
        return None
    if kind == "RuntimeDefault":
        return compile_profile(RUNTIME_DEFAULT, effective_caps, source="RuntimeDefault")
    relative = localhost if isinstance(localhost, str) else ""
    profile = load_localhost(seccomp_dir, relative)
    return compile_profile(profile, effective_caps, source=str(seccomp_dir / relative))
