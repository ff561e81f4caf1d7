"""Pod status to the mirror pods: at once on every change, coalesced per pod, resynced.

kubelet's status manager batches and rate-limits, which is why its mirrors lag by seconds. Here a
change starts a patch right away; changes that arrive while one is in flight collapse into the
next. Every 10 s the status the watch shows is compared with what the last patch left, and
drift (a write by someone else) is repaired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nodelet.cluster.apiclient import MERGE_PATCH, ApiCaller, ApiError, jittered, path_of
from nodelet.cluster.mirrors import MirrorPods
from nodelet.model import StaticPod

log = logging.getLogger(__name__)

Json = dict[str, Any]

RESYNC_SECONDS = 10.0
RETRY_BASE_SECONDS = 0.2
RETRY_CAP_SECONDS = 5.0


@dataclass(frozen=True)
class _Acked:
    mirror_uid: str
    sent: Json
    server: Json
    """The status as the server stored it (its answer to the patch), for drift checks."""


def status_patch(mirror_uid: str, status: Json, server: Json) -> Json:
    """A JSON merge patch that makes the mirror's status exactly ``status``: lists replace
    whole lists, and a field the server holds that ``status`` lacks is set to null (removed).
    The UID makes the patch fail rather than land on a newer mirror of the same name."""
    body = dict(status)
    for key in server:
        if key not in body:
            body[key] = None
    return {"metadata": {"uid": mirror_uid}, "status": body}


class StatusSync:
    def __init__(
        self,
        caller: ApiCaller,
        mirrors: MirrorPods,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._caller = caller
        self._mirrors = mirrors
        self._clock = clock
        self._latest: dict[str, tuple[StaticPod, Json]] = {}
        self._acked: dict[str, _Acked] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}

    def update(self, pod: StaticPod, status: Json) -> None:
        """The pod's newest status (from its worker): sent now unless it is already there."""
        self._latest[pod.full_name] = (pod, status)
        self._consider(pod.full_name, drift=False)

    def known(self) -> list[str]:
        """Full names of the pods with a status here."""
        return list(self._latest)

    def forget_name(self, full_name: str) -> None:
        """The pod is gone from the manifests: its mirror goes too, so stop reporting."""
        self._latest.pop(full_name, None)
        self._acked.pop(full_name, None)

    def mirror_changed(self, full_name: str) -> None:
        self._consider(full_name, drift=False)

    def in_sync(self, pod: StaticPod) -> bool:
        """The pod's mirror exists and holds its newest status."""
        return self._needed(pod.full_name, drift=True) is None and (
            self._mirrors.mirror_of(pod) is not None
        )

    async def run(self) -> None:
        """The drift repair: every pod's watched mirror status against what was patched."""
        while True:
            await asyncio.sleep(RESYNC_SECONDS)
            for full_name in list(self._latest):
                self._consider(full_name, drift=True)

    def _needed(self, full_name: str, drift: bool) -> tuple[str, Json, Json] | None:
        """(mirror UID, status, server status) when a patch is due, else None."""
        latest = self._latest.get(full_name)
        if latest is None:
            return None
        pod, status = latest
        mirror = self._mirrors.mirror_of(pod)
        if mirror is None:
            return None  # the mirror manager creates it, then calls mirror_changed
        acked = self._acked.get(full_name)
        if acked is not None and acked.mirror_uid == mirror.uid and acked.sent == status:
            if not drift or mirror.status == acked.server:
                return None
            server = mirror.status
        else:
            server = acked.server if acked and acked.mirror_uid == mirror.uid else mirror.status
        return mirror.uid, status, server

    def _consider(self, full_name: str, drift: bool) -> None:
        if full_name in self._senders:
            return  # the running sender checks again after its patch
        if self._needed(full_name, drift) is None:
            return
        task = asyncio.create_task(self._send(full_name, drift), name=f"status-{full_name}")
        self._senders[full_name] = task

    async def _send(self, full_name: str, drift: bool) -> None:
        failures = 0
        try:
            while (due := self._needed(full_name, drift)) is not None:
                mirror_uid, status, server = due
                pod = self._latest[full_name][0]
                try:
                    answer = await self._caller.request(
                        "PATCH",
                        path_of(
                            "api", "v1", "namespaces", pod.namespace, "pods", pod.name, "status"
                        ),
                        body=status_patch(mirror_uid, status, server),
                        content_type=MERGE_PATCH,
                    )
                except ApiError as err:
                    if not err.transient:
                        # The mirror was deleted or replaced: the watch tells the mirror
                        # manager, which calls mirror_changed with the new one.
                        log.debug("status of %s not patched: %s", full_name, err)
                        return
                    failures += 1
                    delay = jittered(RETRY_BASE_SECONDS, failures, RETRY_CAP_SECONDS)
                    log.debug("status of %s: %s; again in %.1fs", full_name, err, delay)
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                drift = False
                if self._latest.get(full_name, (None,))[0] is not pod:
                    continue  # forgotten or replaced meanwhile: nothing to remember for it
                stored = answer.get("status")
                self._acked[full_name] = _Acked(
                    mirror_uid, status, stored if isinstance(stored, dict) else {}
                )
        except Exception:
            log.exception("status sync of %s failed", full_name)
        finally:
            del self._senders[full_name]

    async def close(self) -> None:
        tasks = list(self._senders.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
