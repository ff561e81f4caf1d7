"""The pod CIDR learned from the API server, kept under the root dir.

A node whose control plane runs as its own static pods restarts its agent while the API server
is down: the Node's ``spec.podCIDR`` must then still be known, or the bridge would fall back to
the default CIDR and the pods started next would be unreachable from the other nodes. Two
values are kept: ``learned`` (the Node's podCIDR as last seen) and ``active`` (what the bridge
and IPAM use; it lags behind ``learned`` while pods still hold addresses of the old CIDR).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "pod-cidr.json"


@dataclass(frozen=True)
class CidrState:
    learned: str | None = None
    active: str | None = None


class CidrFile:
    """``<state_dir>/pod-cidr.json``, replaced atomically (written, fsync'd, renamed)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / FILE_NAME

    def load(self) -> CidrState:
        """The saved state; an absent, unreadable or invalid file is an empty one (logged)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return CidrState()
        except (OSError, ValueError) as err:
            log.warning("pod CIDR state %s unreadable, ignored: %s", self.path, err)
            return CidrState()
        if not isinstance(data, dict):
            return CidrState()
        return CidrState(_cidr(data.get("learned")), _cidr(data.get("active")))

    def save(self, state: CidrState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{FILE_NAME}.tmp")
        text = json.dumps({"learned": state.learned, "active": state.active})
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with contextlib.suppress(OSError):
                os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _cidr(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        network = ipaddress.IPv4Network(value)
    except ValueError:
        return None
    return str(network)
