"""The node's part of every container's security settings (``NodeSecurity``)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from nodelet.config import AgentConfig
from nodelet.pod.containerprep import NodeSecurity
from nodelet.security.capabilities import status_capabilities


@functools.cache
def _node_caps() -> frozenset[int]:
    """The agent's own effective capabilities (they do not change while it runs)."""
    return status_capabilities(Path("/proc/self/status").read_text())


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def node_security(config: AgentConfig) -> NodeSecurity:
    """The node's part of every container's security; passwd and group are read at each start,
    as containerd reads the image's."""
    return NodeSecurity(
        node_caps=_node_caps(),
        passwd=_read_text("/etc/passwd"),
        group=_read_text("/etc/group"),
        seccomp_dir=config.seccomp_dir,
        seccomp_default=config.seccomp_default,
        host_image_overlay=config.host_image_root == "Overlay",
        agent_dirs=tuple(os.path.realpath(path) for path in config.private_dirs),
    )
