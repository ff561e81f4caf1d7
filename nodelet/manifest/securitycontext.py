"""The API server's rules for the pod's and containers' ``securityContext`` and the AppArmor
annotations (``pkg/apis/core/validation``), with its messages, so a manifest kubelet's API
server would refuse is refused here for the same reason.

Called by ``validation``; total like it: a value of the wrong shape was reported by the
structural check and is skipped here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from nodelet.manifest.schema import QUOTE_LIMIT, show
from nodelet.security import sysctls
from nodelet.security.lsm import APPARMOR_ANNOTATION_PREFIX, APPARMOR_LOCALHOST_PREFIX

ErrorSink = Callable[[str, str], None]

CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)  # fmt: skip
"""Linux capabilities by number (``CAP_CHOWN`` = 0 ... ``CAP_CHECKPOINT_RESTORE`` = 40)."""
PROC_MOUNTS = ("Default", "Unmasked")
PROFILE_TYPES = ("Localhost", "RuntimeDefault", "Unconfined")
FS_GROUP_CHANGE_POLICIES = ("Always", "OnRootMismatch")
MAX_ID = 2**31 - 1
MAX_APPARMOR_PROFILE = 4095
"""PATH_MAX - 1, the API server's limit on ``localhostProfile``."""


def quote(value: Any) -> str:
    """A value as the API server quotes it (``"x"``), falling back to ``show`` for anything
    long, unprintable or not a string."""
    if isinstance(value, str) and len(value) <= QUOTE_LIMIT and value.isprintable():
        return json.dumps(value)
    return show(value)


def not_supported(value: Any, allowed: Iterable[str]) -> str:
    """The API server's ``field.NotSupported`` text."""
    return f"Unsupported value: {quote(value)}: supported values: " + ", ".join(
        json.dumps(a) for a in allowed
    )


def capability(value: Any) -> str | None:
    """``CAP_<NAME>`` for a capability as a manifest may spell it (``NET_ADMIN``,
    ``CAP_NET_ADMIN``, any case, as containerd accepts it), else None (``ALL`` included)."""
    if not isinstance(value, str):
        return None
    name = value.strip().upper().removeprefix("CAP_")
    return f"CAP_{name}" if name in CAPABILITIES else None


def local_descending_path(value: str, where: str, error: ErrorSink) -> None:
    """``validateLocalDescendingPath``: relative, without a ``..`` element."""
    if value.startswith("/"):
        error(where, "must be a relative path")
    if ".." in value.split("/"):
        error(where, "must not contain '..'")


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def seccomp_profile(profile: Any, path: str, error: ErrorSink) -> None:
    """``validateSeccompProfileField``."""
    if not isinstance(profile, dict):
        return
    kind = profile.get("type")
    localhost = profile.get("localhostProfile")
    if kind in (None, ""):
        error(f"{path}.type", "type is required when seccompProfile is set")
    elif kind not in PROFILE_TYPES:
        error(f"{path}.type", not_supported(kind, PROFILE_TYPES))
    if kind == "Localhost":
        if localhost is None:
            error(f"{path}.localhostProfile", "must be set when seccomp type is Localhost")
        elif isinstance(localhost, str):
            local_descending_path(localhost, f"{path}.localhostProfile", error)
    elif localhost is not None:
        error(f"{path}.localhostProfile", "can only be set when seccomp type is Localhost")


def apparmor_profile(profile: Any, path: str, error: ErrorSink) -> None:
    """``ValidateAppArmorProfileField``."""
    if not isinstance(profile, dict):
        return
    kind = profile.get("type")
    localhost = profile.get("localhostProfile")
    where = f"{path}.localhostProfile"
    if kind == "Localhost":
        if not isinstance(localhost, str) or not localhost.strip():
            error(where, "must be set when AppArmor type is Localhost")
        elif localhost.strip() != localhost:
            error(where, "must not be padded with whitespace")
        if isinstance(localhost, str) and len(localhost.encode()) > MAX_APPARMOR_PROFILE:
            error(where, f"Too long: may not be more than {MAX_APPARMOR_PROFILE} bytes")
    elif kind in ("RuntimeDefault", "Unconfined"):
        if localhost is not None:
            error(where, "can only be set when AppArmor type is Localhost")
    elif kind in (None, ""):
        error(f"{path}.type", "type is required when appArmorProfile is set")
    else:
        error(f"{path}.type", not_supported(kind, PROFILE_TYPES))


def _windows_options(context: dict[str, Any], path: str, linux: bool, error: ErrorSink) -> None:
    """``validateLinux``: a pod that says it is Linux may not carry Windows options."""
    if linux and context.get("windowsOptions") is not None:
        error(f"{path}.windowsOptions", "windows options cannot be set for a linux pod")


def container_context(
    context: dict[str, Any], path: str, host_users: bool, linux: bool, error: ErrorSink
) -> None:
    """``ValidateSecurityContext`` plus the capability names containerd would refuse."""
    for kind in ("add", "drop"):
        for index, name in enumerate(_list(_obj(context.get("capabilities")).get(kind))):
            if capability(name) is None and not (isinstance(name, str) and name.upper() == "ALL"):
                error(
                    f"{path}.capabilities.{kind}[{index}]",
                    f"unknown capability {quote(name)}: expected a Linux capability such as "
                    '"NET_ADMIN" (or "CAP_NET_ADMIN"), or "ALL"',
                )
    proc_mount = context.get("procMount")
    if proc_mount is not None:
        if proc_mount not in PROC_MOUNTS:
            error(f"{path}.procMount", not_supported(proc_mount, PROC_MOUNTS))
        if host_users and proc_mount == "Unmasked":
            error(f"{path}.procMount", "`hostUsers` must be false to use `Unmasked`")
    seccomp_profile(context.get("seccompProfile"), f"{path}.seccompProfile", error)
    if context.get("allowPrivilegeEscalation") is False:
        if context.get("privileged") is True:
            error(path, "cannot set `allowPrivilegeEscalation` to false and `privileged` to true")
        for name in _list(_obj(context.get("capabilities")).get("add")):
            if capability(name) == "CAP_SYS_ADMIN":
                error(
                    path,
                    "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` "
                    "CAP_SYS_ADMIN",
                )
    _windows_options(context, path, linux, error)
    apparmor_profile(context.get("appArmorProfile"), f"{path}.appArmorProfile", error)


def pod_context(spec: dict[str, Any], linux: bool, error: ErrorSink) -> None:
    """``validatePodSpecSecurityContext`` for what nodelet honours (ids are checked by
    ``validation``)."""
    context = _obj(spec.get("securityContext"))
    path = "spec.securityContext"
    group = context.get("fsGroup")
    if isinstance(group, int) and _id(group) and not 0 <= group <= MAX_ID:
        error(f"{path}.fsGroup", "must be between 0 and 2147483647")
    policy = context.get("fsGroupChangePolicy")
    if policy is not None and policy not in FS_GROUP_CHANGE_POLICIES:
        error(f"{path}.fsGroupChangePolicy", not_supported(policy, FS_GROUP_CHANGE_POLICIES))
    pod_sysctls(spec, error)
    seccomp_profile(context.get("seccompProfile"), f"{path}.seccompProfile", error)
    _windows_options(context, path, linux, error)
    apparmor_profile(context.get("appArmorProfile"), f"{path}.appArmorProfile", error)


def pod_sysctls(spec: dict[str, Any], error: ErrorSink) -> None:
    """``validateSysctls``: a valid name, once, and not one the host's namespace would share."""
    seen: set[str] = set()
    host = {"net": spec.get("hostNetwork") is True, "ipc": spec.get("hostIPC") is True}
    flag = {"net": "hostNetwork", "ipc": "hostIPC"}
    for index, entry in enumerate(_list(_obj(spec.get("securityContext")).get("sysctls"))):
        where = f"spec.securityContext.sysctls[{index}].name"
        name = _obj(entry).get("name")
        if not isinstance(name, str) or not name:
            error(where, "required")
            continue
        if len(name) > sysctls.MAX_LENGTH or not sysctls.NAME.fullmatch(name):
            error(
                where,
                f"must have at most {sysctls.MAX_LENGTH} characters and match regex "
                f"^{sysctls.NAME.pattern}$",
            )
            continue
        if name in seen:
            error(where, f"Duplicate value: {quote(name)}")
        seen.add(name)
        namespace = sysctls.namespace_of(name)
        if namespace is not None and host[namespace]:
            error(where, f"may not be specified when '{flag[namespace]}' is true")


def apparmor_annotations(
    annotations: dict[str, Any], spec: dict[str, Any], error: ErrorSink
) -> None:
    """``ValidateAppArmorPodAnnotations`` and, as on create, that an annotation agrees with the
    field it duplicates."""
    containers = {
        c["name"]: c
        for kind in ("initContainers", "containers")
        for c in _list(spec.get(kind))
        if isinstance(c, dict) and isinstance(c.get("name"), str)
    }
    pod_profile = _obj(_obj(spec.get("securityContext")).get("appArmorProfile"))
    for key, value in annotations.items():
        if not isinstance(key, str) or not key.startswith(APPARMOR_ANNOTATION_PREFIX):
            continue
        where = f"metadata.annotations[{quote(key)}]"
        name = key.removeprefix(APPARMOR_ANNOTATION_PREFIX)
        if name not in containers:
            error(where, "container not found")
        if not isinstance(value, str):
            continue
        if value not in ("", "runtime/default", "unconfined") and not value.startswith(
            APPARMOR_LOCALHOST_PREFIX
        ):
            error(where, f"invalid AppArmor profile name: {quote(value)}")
            continue
        if name not in containers:
            continue  # reported above; the API server compares only existing containers
        container = containers[name]
        field = _obj(_obj(_obj(container).get("securityContext")).get("appArmorProfile"))
        _annotation_matches(value, field or pod_profile, name, spec, error)


def _annotation_matches(
    value: str, field: dict[str, Any], name: str, spec: dict[str, Any], error: ErrorSink
) -> None:
    if not field.get("type"):
        return
    index, kind = next(
        (
            (i, k)
            for k in ("initContainers", "containers")
            for i, c in enumerate(_list(spec.get(k)))
            if isinstance(c, dict) and c.get("name") == name
        ),
        (0, "containers"),
    )
    path = f"spec.{kind}[{index}].securityContext.appArmorProfile"
    expected = {"Unconfined": "unconfined", "RuntimeDefault": "runtime/default"}
    if field["type"] in expected and value != expected[field["type"]]:
        error(f"{path}.type", "apparmor type in annotation and field must match")
    elif field["type"] == "Localhost":
        if not value.startswith(APPARMOR_LOCALHOST_PREFIX):
            error(f"{path}.type", "apparmor type in annotation and field must match")
        elif value.removeprefix(APPARMOR_LOCALHOST_PREFIX) != field.get("localhostProfile"):
            error(f"{path}.localhostProfile", "apparmor profile in annotation and field must match")
