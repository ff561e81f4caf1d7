"""Install a compiled seccomp filter in the calling process, the last step before exec.

The agent compiles the profile (``nodelet.security.seccomp``); the holder only hands the
kernel the bytes. The kernel accepts a filter only from a task that has ``no_new_privs`` set
or CAP_SYS_ADMIN in its effective set, so the spawn sequence calls ``install`` as runc does:
when the container runs with no_new_privs, last, just before exec (after the capabilities were
dropped: the filter then constrains nothing of the set-up); without no_new_privs, before the
capabilities are dropped, while CAP_SYS_ADMIN is still held. The filter survives exec and is
inherited by every child; it can never be removed.
"""

from __future__ import annotations

import ctypes
import errno
import os

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_LOG = 1 << 1
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1 << 2
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
BPF_MAXINSNS = 4096
INSTRUCTION_SIZE = 8
"""``struct sock_filter``: u16 code, u8 jt, u8 jf, u32 k."""

SYS_SECCOMP = {
    "x86_64": 317,
    "i386": 354,
    "i686": 354,
    "aarch64": 277,
    "armv7l": 383,
    "armv6l": 383,
    "ppc64le": 358,
    "ppc64": 358,
    "s390x": 348,
    "riscv64": 277,
    "loongarch64": 277,
}
"""``__NR_seccomp`` per ``uname -m``; elsewhere prctl(PR_SET_SECCOMP), which takes no flags."""

_libc = ctypes.CDLL(None, use_errno=True)
# Looked up once at import, so the forked child (often forked from a pre-warmed process) does
# not pay the symbol lookup between fork and exec.
_syscall = _libc.syscall
_prctl = _libc.prctl


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def install(program: bytes, flags: int = 0) -> None:
    """Attach ``program`` (a ``struct sock_filter`` array in host byte order) to this thread.

    ``flags`` are seccomp(2)'s SECCOMP_FILTER_FLAG_*. Raises OSError with the kernel's errno:
    EACCES when neither no_new_privs nor CAP_SYS_ADMIN is held, EINVAL for a malformed
    program. Call it in a single-threaded process (the holder's forked child is)."""
    count, rest = divmod(len(program), INSTRUCTION_SIZE)
    if rest or not 0 < count <= BPF_MAXINSNS:
        raise OSError(
            errno.EINVAL,
            f"seccomp filter of {len(program)} bytes is not 1 to {BPF_MAXINSNS} "
            f"{INSTRUCTION_SIZE}-byte instructions",
        )
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(count, ctypes.cast(buffer, ctypes.c_void_p))
    number = SYS_SECCOMP.get(os.uname().machine)
    if number is not None:
        result = _syscall(
            ctypes.c_long(number),
            ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
            ctypes.c_uint(flags),
            ctypes.byref(fprog),
        )
        if result == 0:
            return
        error = ctypes.get_errno()
        if error != errno.ENOSYS:
            raise _error(error)
    if flags:
        raise OSError(errno.ENOSYS, "seccomp(2) is unavailable: filter flags cannot be set")
    result = _prctl(
        ctypes.c_int(PR_SET_SECCOMP),
        ctypes.c_ulong(SECCOMP_MODE_FILTER),
        ctypes.byref(fprog),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )
    if result != 0:
        raise _error(ctypes.get_errno())


def _error(error: int) -> OSError:
    why = {
        errno.EACCES: "the process has neither no_new_privs nor CAP_SYS_ADMIN",
        errno.EINVAL: "the kernel refused the filter program or its flags",
    }.get(error, os.strerror(error))
    return OSError(error, f"installing the seccomp filter: {why}")
