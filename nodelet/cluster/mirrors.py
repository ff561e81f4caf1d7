"""Keep one mirror pod per static pod in the API server, whatever happens to either side.

The watch (``podwatch``) tells what the server holds, the agent tells what the manifests say,
and ``plan_mirrors`` decides; this module only executes, one operation per full name at a time,
with jittered back-off per pod while the API server fails. Nothing here is awaited by pod work.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from nodelet.cluster.apiclient import ApiCaller, ApiError, jittered, path_of
from nodelet.cluster.mirrorplan import (
    MirrorPod,
    is_mirror_of,
    mirror_body,
    mirror_from_object,
    plan_mirrors,
)
from nodelet.model import StaticPod

log = logging.getLogger(__name__)

Json = dict[str, Any]

RESYNC_SECONDS = 10.0
RETRY_BASE_SECONDS = 0.2
RETRY_CAP_SECONDS = 5.0
TOMBSTONES = 4096
"""UIDs of mirrors known deleted, so a late watch event for one cannot bring it back."""


class MirrorPods:
    """Creates, replaces and deletes this node's mirror pods."""

    def __init__(
        self,
        caller: ApiCaller,
        node_name: str,
        on_mirror: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._caller = caller
        self._node_name = node_name
        self._on_mirror = on_mirror
        self._clock = clock
        self.desired: dict[str, StaticPod] = {}
        """Static pods by full name."""
        self.mirrors: dict[str, MirrorPod] = {}
        """What the API server holds, by full name."""
        self.node_uid: str | None = None
        self.sources_ready = False
        self.listed = False
        self._gone: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._busy: set[str] = set()
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirty = asyncio.Event()

    # -- inputs (all on the loop) ----------------------------------------------------------

    def set_desired(self, pods: Iterable[StaticPod], sources_ready: bool) -> None:
        self.desired = {pod.full_name: pod for pod in pods}
        self.sources_ready = sources_ready
        self._dirty.set()

    def set_node_uid(self, uid: str) -> None:
        if uid != self.node_uid:
            self.node_uid = uid
            self._dirty.set()

    def on_list(self, items: list[Json]) -> None:
        self.mirrors = {}
        for item in items:
            mirror = mirror_from_object(item)
            if mirror is not None:
                self.mirrors[mirror.full_name] = mirror
        self._gone.clear()
        self.listed = True
        # A fresh list means the API server answers again (after an outage): what waits out a
        # back-off window from the outage is retried now, not up to RETRY_CAP_SECONDS later.
        self._retry_at.clear()
        self._failures.clear()
        self._dirty.set()
        for full_name in self.desired:
            self._on_mirror(full_name)

    def on_event(self, kind: str, obj: Json) -> None:
        mirror = mirror_from_object(obj)
        if mirror is None or mirror.uid in self._gone:
            return
        current = self.mirrors.get(mirror.full_name)
        if kind == "DELETED":
            self._tombstone(mirror.uid)
            if current is not None and current.uid == mirror.uid:
                del self.mirrors[mirror.full_name]
        else:
            self.mirrors[mirror.full_name] = mirror
        self._dirty.set()
        self._on_mirror(mirror.full_name)

    # -- queries ---------------------------------------------------------------------------

    def mirror_of(self, pod: StaticPod) -> MirrorPod | None:
        """The pod's current, valid mirror (None while it is missing or stale)."""
        mirror = self.mirrors.get(pod.full_name)
        if mirror is None or self.node_uid is None or not is_mirror_of(mirror, pod, self.node_uid):
            return None
        return mirror

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self._wait()
            if not self.listed or self.node_uid is None:
                continue
            plan = plan_mirrors(self.desired, self.mirrors, self.node_uid, self.sources_ready)
            now = self._clock()
            for mirror in plan.delete:
                if self._may_start(mirror.full_name, now):
                    self._spawn(mirror.full_name, self._delete(mirror))
            for pod in plan.create:
                if self._may_start(pod.full_name, now):
                    self._spawn(pod.full_name, self._create(pod, self.node_uid))

    async def _wait(self) -> None:
        """Until something changed, a retry is due, or the resync period passed."""
        for full_name in [n for n in self._retry_at if not self._wanted(n)]:
            del self._retry_at[full_name]  # neither desired nor mirrored: nothing to retry
            self._failures.pop(full_name, None)
        due = [at for name, at in self._retry_at.items() if name not in self._busy]
        timeout = RESYNC_SECONDS
        if due:
            timeout = max(0.0, min(timeout, min(due) - self._clock()))
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # races with the event being set, and then close() would wait for ever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._dirty.wait()
        self._dirty.clear()

    def _wanted(self, full_name: str) -> bool:
        return full_name in self.desired or full_name in self.mirrors

    def _may_start(self, full_name: str, now: float) -> bool:
        return full_name not in self._busy and self._retry_at.get(full_name, 0.0) <= now

    def _spawn(self, full_name: str, work: Any) -> None:
        self._busy.add(full_name)
        task = asyncio.create_task(self._guarded(full_name, work), name=f"mirror-{full_name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, full_name: str, work: Any) -> None:
        try:
            await work
            self._failures.pop(full_name, None)
            self._retry_at.pop(full_name, None)
        except ApiError as err:
            failures = self._failures.get(full_name, 0) + 1
            self._failures[full_name] = failures
            delay = jittered(RETRY_BASE_SECONDS, failures, RETRY_CAP_SECONDS)
            self._retry_at[full_name] = self._clock() + delay
            level = logging.WARNING if failures == 1 or not err.transient else logging.DEBUG
            log.log(level, "mirror pod %s: %s; again in %.1fs", full_name, err, delay)
        except Exception:
            log.exception("mirror pod %s failed", full_name)
            self._retry_at[full_name] = self._clock() + RETRY_CAP_SECONDS
        finally:
            self._busy.discard(full_name)
            self._dirty.set()

    async def _create(self, pod: StaticPod, node_uid: str) -> None:
        body = mirror_body(pod, self._node_name, node_uid)
        try:
            created = await self._caller.request(
                "POST", path_of("api", "v1", "namespaces", pod.namespace, "pods"), body=body
            )
        except ApiError as err:
            if not err.conflict:
                raise
            # One of this name exists after all (the watch had not shown it yet): read it,
            # and the next plan judges it.
            created = await self._caller.request(
                "GET", path_of("api", "v1", "namespaces", pod.namespace, "pods", pod.name)
            )
        else:
            log.info("mirror pod created %s/%s hash=%s", pod.namespace, pod.name, pod.uid)
        mirror = mirror_from_object(created)
        if mirror is None:
            # A pod of this name that is not a mirror (created by someone else): kubelet
            # cannot mirror it either; retried with back-off until it is gone.
            raise ApiError(409, "AlreadyExists", f"a pod {pod.name} that is not a mirror exists")
        if mirror.uid not in self._gone:
            self.mirrors[mirror.full_name] = mirror
            self._on_mirror(mirror.full_name)

    async def _delete(self, mirror: MirrorPod) -> None:
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": mirror.uid},
        }
        try:
            await self._caller.request(
                "DELETE",
                path_of("api", "v1", "namespaces", mirror.namespace, "pods", mirror.name),
                body=options,
            )
            log.info("mirror pod deleted %s/%s uid=%s", mirror.namespace, mirror.name, mirror.uid)
        except ApiError as err:
            if err.not_found and await self._still_there(mirror):
                # NodeRestriction answers 404 from its informer cache, which a restarted API
                # server has not filled yet: the mirror is there, try again shortly.
                raise ApiError(503, "NotYetKnown", "the API server does not know it yet") from None
            if not (err.not_found or err.conflict):  # gone already, or replaced meanwhile
                raise
        self._tombstone(mirror.uid)
        current = self.mirrors.get(mirror.full_name)
        if current is not None and current.uid == mirror.uid:
            del self.mirrors[mirror.full_name]

    async def _still_there(self, mirror: MirrorPod) -> bool:
        """Whether a GET still finds this very mirror (its UID)."""
        path = path_of("api", "v1", "namespaces", mirror.namespace, "pods", mirror.name)
        try:
            found = await self._caller.request("GET", path)
        except ApiError as err:
            if err.not_found:
                return False
            raise
        return bool((found.get("metadata") or {}).get("uid") == mirror.uid)

    def _tombstone(self, uid: str) -> None:
        self._gone[uid] = None
        while len(self._gone) > TOMBSTONES:
            self._gone.popitem(last=False)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
