"""A container process's capability sets, applied between fork and exec as runc applies them.

runc's ``finalizeNamespace``: drop the bounding set while still fully privileged, keep the
permitted set across the user switch (``PR_SET_KEEPCAPS``), then set effective, permitted and
inheritable in one ``capset`` and the ambient set one capability at a time. Stdlib + ctypes.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Collection

from nodelet.holder import linux

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_CAP_LAST_CAP_PATH = "/proc/sys/kernel/cap_last_cap"


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


def last_cap() -> int:
    """The highest capability the running kernel knows (``cap_last_cap``)."""
    with open(_CAP_LAST_CAP_PATH, "rb") as file:
        return int(file.read())


def drop_bounding(keep: Collection[int]) -> None:
    """Drop every capability outside ``keep`` from the bounding set (needs CAP_SETPCAP, so
    this comes first). Numbers above the kernel's last one are not in the set to begin with."""
    for cap in range(last_cap() + 1):
        if cap not in keep and linux.prctl(linux.PR_CAPBSET_READ, cap):
            linux.prctl(linux.PR_CAPBSET_DROP, cap)


def keep_caps(keep: bool) -> None:
    """While set, a switch from uid 0 to another uid keeps the permitted set (the effective
    set is still cleared, so what runs in between runs with the user's rights)."""
    linux.prctl(linux.PR_SET_KEEPCAPS, 1 if keep else 0)


def _words(caps: Collection[int]) -> tuple[int, int]:
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    return mask & 0xFFFFFFFF, mask >> 32


def set_capabilities(
    effective: Collection[int], permitted: Collection[int], inheritable: Collection[int]
) -> None:
    """One ``capset`` (version 3: two 32-bit words per set) for the calling thread."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for index, (e, p, i) in enumerate(
        zip(_words(effective), _words(permitted), _words(inheritable), strict=True)
    ):
        data[index] = _Data(e, p, i)
    if _libc.capset(ctypes.byref(header), data) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"capset: {os.strerror(error)}")


def set_ambient(caps: Collection[int]) -> None:
    """Clear the ambient set, then raise each of ``caps`` (each must already be permitted and
    inheritable). runc only warns when a raise fails; a prepared spec that cannot be applied
    is an error here."""
    linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in caps:
        try:
            linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_RAISE, cap)
        except OSError as err:
            raise OSError(err.errno, f"raising ambient capability {cap}: {err.strerror}") from None
