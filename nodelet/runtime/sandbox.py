"""What the process runtime knows of one pod: its holder, the container runs, its state files.

Events from the holder are folded in here, and the ``SandboxStatus`` the workers see is built
here, so status never claims a process that does not exist.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodelet import reasons
from nodelet.runtime import journal, leftovers
from nodelet.runtime.api import UNKNOWN_EXIT_CODE, ContainerRecord, SandboxStatus
from nodelet.runtime.holderclient import HolderClient

log = logging.getLogger(__name__)


@dataclass
class Sandbox:
    uid: str
    directory: Path
    record: dict[str, Any]
    holder_pid: int | None = None
    created_at: float = 0.0
    client: HolderClient | None = None
    pidfd: int | None = None
    alive: bool = False
    finished_at: float | None = None
    """When the holder was seen to end."""
    identity: dict[str, Any] = field(default_factory=dict)
    """The holder's ``holder.json`` (pid, start time, grace period, namespaces)."""
    terminating: dict[str, Any] | None = None
    """The durable intent to remove the pod (``terminating.json``), once it was written."""
    records: list[ContainerRecord] = field(default_factory=list)
    log_drops: dict[str, str] = field(default_factory=dict)
    exit_waiters: dict[str, list[asyncio.Future[None]]] = field(default_factory=dict)
    died: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def grace_seconds(self) -> float | None:
        grace = self.identity.get("grace_seconds")
        return float(grace) if isinstance(grace, int | float) and grace >= 0 else None

    def apply_event(self, event: dict[str, Any]) -> bool:
        """Fold a pushed holder event in; True when the pod's status changed."""
        if event.get("type") == "log_dropped":
            return self._log_dropped(event)
        if not journal.apply(self.records, event):
            log.warning("holder of pod uid=%s sent a malformed event: %r", self.uid, event)
            return False
        if event.get("type") == "exit":
            for waiter in self.exit_waiters.pop(event.get("name", ""), []):
                if not waiter.done():
                    waiter.set_result(None)
        return True

    def _log_dropped(self, event: dict[str, Any]) -> bool:
        name, lines, error = event.get("name"), event.get("lines"), event.get("error")
        if not isinstance(name, str) or not isinstance(lines, int):
            return False
        message = f"{lines} log lines could not be written: {error}"
        if self.log_drops.get(name) == message:
            return False
        log.warning("pod uid=%s container=%s: %s", self.uid, name, message)
        self.log_drops[name] = message
        return True

    def status(self) -> SandboxStatus:
        return SandboxStatus(
            pod_uid=self.uid,
            ready=self.alive,
            holder_pid=self.holder_pid if self.alive else None,
            created_at=self.created_at,
            containers=tuple(self._checked(r) for r in self.records),
            finished_at=self.finished_at,
            log_drops=tuple(sorted(self.log_drops.items())),
        )

    def _checked(self, record: ContainerRecord) -> ContainerRecord:
        """A run is reported running only while its process exists as the holder's child:
        status never claims a process that is gone, whatever the journal could not record."""
        if not record.running or not self.alive or record.started_at < self.created_at:
            return record
        if leftovers.is_child(record.pid, self.holder_pid):
            return record  # running, or ended a moment ago and about to be journaled
        return dataclasses.replace(
            record,
            finished_at=time.time(),
            exit_code=UNKNOWN_EXIT_CODE,
            reason=reasons.CONTAINER_STATUS_UNKNOWN,
            message="the process is gone but its holder has not reported its exit",
        )
