"""Writing a pod's namespaced sysctls from inside its new namespaces (stdlib only).

The agent has already decided which sysctls the pod may set (``nodelet.security.sysctls``);
the holder only writes them. ``/proc/sys/net`` and the IPC sysctls show the namespaces of the
process that opens them, so writing them here sets the pod's values, never the node's.
"""

from __future__ import annotations

import os


def proc_path(name: str) -> str:
    """``/proc/sys`` path of a sysctl in dot form (``net.ipv4.conf.eth0/100.rp_filter``: dots
    separate, a '/' stands for a dot inside a segment). Refuses anything that could name a
    file outside ``/proc/sys``."""
    segments = [part.replace("/", ".") for part in name.split(".")]
    if any(s in ("", ".", "..") or "\0" in s for s in segments):
        raise ValueError(f"invalid sysctl name {name!r}")
    return "/proc/sys/" + "/".join(segments)


def write_sysctls(sysctls: list[list[str]]) -> None:
    """Set each ``[name, value]`` in order; the first failure raises with the sysctl, value,
    path and errno, so the pod fails to start with a reason instead of running without it."""
    for name, value in sysctls:
        path = proc_path(name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as err:
            raise OSError(
                err.errno, f"cannot set sysctl {name}={value!r} ({path}): {err.strerror}"
            ) from None
