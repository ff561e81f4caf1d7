"""``securityContext.seccompProfile``: choose a container's profile, read it, compile it to BPF.

kubelet picks the profile (container field over pod field; Unconfined when neither is set,
unless ``--seccomp-default``), containerd turns RuntimeDefault into its default profile for the
container's capabilities or reads a Localhost file, and runc compiles it with libseccomp. The
agent does all three (this module: the choice and Localhost files; ``seccomp_format``: the
profile format; ``seccomp_bpf``: compilation) and hands the holder a finished classic-BPF
program (``ContainerConfig.seccomp_filter``), so the holder only installs bytes.

Syscall names this libseccomp does not know are skipped, as runc does: the newest kernels'
calls then meet the default action.
"""

from __future__ import annotations

import functools
import json
import os
import stat
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from nodelet.security.seccomp_bpf import compile_profile
from nodelet.security.seccomp_default import PROFILE as RUNTIME_DEFAULT
from nodelet.security.seccomp_format import (
    SeccompError,
    resolve_profile,
    runtime_default,
    validate,
)

__all__ = [
    "RUNTIME_DEFAULT",
    "SeccompError",
    "compile_profile",
    "effective_profile",
    "filter_for",
    "load_localhost",
    "resolve_profile",
    "runtime_default",
    "validate",
]

MAX_PROFILE_BYTES = 1 << 20
"""A Localhost profile larger than this is refused: real ones are a few KiB."""

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
        raise SeccompError(
            f"seccomp profile {shown}: must be a JSON object, not {type(loaded).__name__}"
        )
    return loaded


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
        return _runtime_default_program(frozenset(effective_caps))
    relative = localhost if isinstance(localhost, str) else ""
    profile = load_localhost(seccomp_dir, relative)
    return compile_profile(profile, effective_caps, source=str(seccomp_dir / relative))


@functools.lru_cache(maxsize=64)
def _runtime_default_program(caps: frozenset[str]) -> bytes:
    """RuntimeDefault never changes while the agent runs: its program per capability set is
    kept whole (resolving the profile's rules for the compile cache's key costs ~0.3 ms)."""
    return compile_profile(RUNTIME_DEFAULT, caps, source="RuntimeDefault")
