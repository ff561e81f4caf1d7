"""The Docker/OCI seccomp profile format: check a profile field by field, and resolve Docker's
conditional rules (``includes``/``excludes`` on caps, arches and minKernel; ``archMap``;
``name``) into the OCI ``linux.seccomp`` that runc compiles, for one container.

Unknown fields are refused rather than ignored: a typo such as ``errnoret`` would otherwise
change what a container may do without a word.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any

from nodelet.security.seccomp_default import PROFILE as RUNTIME_DEFAULT

MAX_ERRNO = 4095

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
APPLIED_FLAGS = ("SECCOMP_FILTER_FLAG_TSYNC",)
"""TSYNC is moot for a single-threaded process about to exec (runc ignores it too); the others
change how the kernel runs the filter and would need to travel with the program."""
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
        if check.choice(flag, f"flags[{index}]", FLAGS) not in APPLIED_FLAGS:
            raise check.fail(
                f"flags[{index}]",
                f"{flag} is not supported by nodelet yet (its filters are installed without flags)",
            )
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
