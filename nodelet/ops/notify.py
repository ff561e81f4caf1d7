"""systemd's notify protocol without libsystemd: one datagram per message to ``$NOTIFY_SOCKET``.

The agent reads the environment once, at start, and removes the variables (as
``sd_notify(unset_environment=1)`` does), so the holders and hooks it forks never inherit a
socket they could send to: the unit says ``NotifyAccess=main`` anyway, which makes systemd
ignore every other sender.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
WEDGE_FILE = "NODELET_TEST_WEDGE_FILE"
"""Test-only: while the file it names exists, the heartbeat blocks the event loop on purpose
(a wedged loop must stop the watchdog pings). Unset in any real deployment."""


@dataclass(frozen=True)
class NotifyEnv:
    """What systemd told this process through its environment."""

    socket: str | None = None
    """``$NOTIFY_SOCKET``: a path, or ``@name`` for an abstract socket; None: not under systemd."""
    watchdog_seconds: float | None = None
    """``WatchdogSec=`` as ``$WATCHDOG_USEC``, when it is meant for this process."""
    wedge_file: str | None = None


def take_environment(environ: MutableMapping[str, str], pid: int) -> NotifyEnv:
    """Read the notify variables of ``environ`` and remove them (see the module docstring)."""
    path = environ.pop(NOTIFY_SOCKET, None) or None
    usec = environ.pop(WATCHDOG_USEC, None)
    owner = environ.pop(WATCHDOG_PID, None)
    wedge = environ.pop(WEDGE_FILE, None) or None
    return NotifyEnv(path, watchdog_seconds(usec, owner, pid), wedge)


def watchdog_seconds(usec: str | None, owner: str | None, pid: int) -> float | None:
    """sd_watchdog_enabled(): the timeout in seconds, or None when there is none for ``pid``
    (unset, not a positive integer, or ``$WATCHDOG_PID`` names another process)."""
    if not usec:
        return None
    try:
        value = int(usec)
        if owner and int(owner) != pid:
            return None
    except ValueError:
        log.warning("ignoring a malformed %s=%r or %s=%r", WATCHDOG_USEC, usec, WATCHDOG_PID, owner)
        return None
    return value / 1_000_000 if value > 0 else None


def socket_address(path: str) -> str | bytes:
    """``@name`` is the abstract socket ``\\0name``; anything else is a filesystem path."""
    return b"\0" + path[1:].encode() if path.startswith("@") else path


class Notifier:
    """Sends notify messages; a no-op without a socket. Never raises: systemd being away or
    slow must not disturb the agent (a failure is logged once, then at debug level)."""

    def __init__(self, path: str | None) -> None:
        self._address = socket_address(path) if path else None
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """One datagram of ``KEY=value`` lines; True when it was sent."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, self._address)
        except OSError as err:
            level = logging.DEBUG if self._warned else logging.WARNING
            log.log(level, "sd_notify %s failed: %s", fields[0].split("=", 1)[0], err)
            self._warned = True
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def environment() -> NotifyEnv:
    """This process's notify settings, taken out of ``os.environ``."""
    return take_environment(os.environ, os.getpid())
