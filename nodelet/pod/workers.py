"""kubelet's podWorkers: turns full pod sets into per-UID worker operations.

The rules that keep pods safe live here and nowhere else:
- one worker per pod UID; a newer spec for a UID replaces a pending one;
- a kill sticks: nothing revives a UID being removed;
- one UID per full name at a time: an edited manifest's new pod starts only after the old one
  is completely gone, so the two never run at once and their ports never clash;
- pods found running at start-up are kept until the manifest dir was read completely, so a
  half-read directory never gets a live pod killed;
- a pod a previous agent had begun to remove is removed, never run again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from nodelet.manifest import podconfig
from nodelet.manifest.podconfig import OpKind
from nodelet.manifest.snapshot import SourceSnapshot
from nodelet.model import DEFAULT_GRACE_SECONDS, StaticPod
from nodelet.pod.podrecord import RecordError, pod_from_record
from nodelet.pod.worker import PodWorker, WorkerContext, describe
from nodelet.runtime.api import KnownPod

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_SECONDS = 5.0


class PodWorkers:
    """Every pod worker of the agent, and the dispatch rules between them."""

    def __init__(self, ctx: WorkerContext) -> None:
        self._ctx = ctx
        self.desired: dict[str, StaticPod] = {}
        """The pods that should run, by UID: the source's latest set plus adopted pods."""
        self.workers: dict[str, PodWorker] = {}
        self._by_full_name: dict[str, PodWorker] = {}
        self._adopted: dict[str, StaticPod] = {}
        """Pods found running at start-up, kept until the manifest dir was read completely."""
        self.sources_ready = False
        """The manifest dir has been read completely once (kubelet's allSourcesReady)."""
        self._background: set[asyncio.Task[None]] = set()

    def adopt(self, known: list[KnownPod]) -> None:
        """Take over the pods that outlived the previous agent, before any manifest is read:
        their workers observe them at once, so no exit waits on manifest parsing."""
        for found in known:
            try:
                pod = pod_from_record(found.pod, found.pod_uid)
            except RecordError as err:
                self._stop_unreadable(found, err)
                continue
            if found.terminating:
                # A previous agent had begun removing it: finish that, never run it again.
                log.info("finishing the removal begun before the restart %s", describe(pod))
                self._add(pod).kill()
                continue
            self._adopted[pod.uid] = pod
            self.desired[pod.uid] = pod
            self._add(pod)

    def _stop_unreadable(self, found: KnownPod, err: RecordError) -> None:
        """Stop it gracefully from what the holder knows: nothing can run it again."""
        grace = DEFAULT_GRACE_SECONDS if found.grace_seconds is None else found.grace_seconds
        log.error(
            "run dir of pod uid=%s has no usable record (%s); stopping it, grace=%ss",
            found.pod_uid, err, grace,
        )  # fmt: skip
        task = asyncio.create_task(self._ctx.runtime.kill_pod(found.pod_uid, grace))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def apply(self, snapshot: SourceSnapshot) -> None:
        """Make the workers follow the source's full set."""
        self.sources_ready = self.sources_ready or snapshot.complete
        wanted = dict(snapshot.pods)
        if self._adopted and not snapshot.complete:
            # A manifest still being written must not get its running pod killed: keep every
            # adopted pod until the whole directory has been read.
            for uid, pod in self._adopted.items():
                wanted.setdefault(uid, pod)
        elif self._adopted:
            for uid, pod in self._adopted.items():
                if uid not in wanted:
                    log.info("manifest gone while the agent was down %s", describe(pod))
            self._adopted = {}
        for op in podconfig.diff(self.desired, wanted):
            if op.kind is OpKind.REMOVE:
                worker = self.workers.get(op.uid)
                if worker is not None:
                    worker.kill()
            elif op.kind is OpKind.ADD and op.pod is not None:
                self._add(op.pod)
            elif op.pod is not None:
                self.workers[op.uid].update(op.pod)
        self.desired = wanted

    def _add(self, pod: StaticPod) -> PodWorker:
        predecessor = self._by_full_name.get(pod.full_name)
        if predecessor is not None and predecessor.done.is_set():
            predecessor = None
        worker = PodWorker(pod, self._ctx, predecessor)
        self.workers[pod.uid] = worker
        self._by_full_name[pod.full_name] = worker
        worker.start()
        assert worker.task is not None
        worker.task.add_done_callback(functools.partial(self._forget, worker))
        return worker

    def _forget(self, worker: PodWorker, _task: asyncio.Task[None]) -> None:
        if self.workers.get(worker.uid) is worker and worker.done.is_set():
            del self.workers[worker.uid]
        if self._by_full_name.get(worker.pod.full_name) is worker:
            del self._by_full_name[worker.pod.full_name]

    def poke(self, pod_uid: str) -> None:
        """Something about the pod changed in the runtime: sync it now."""
        worker = self.workers.get(pod_uid)
        if worker is not None:
            worker.poke()

    def status_of(self, pod_uid: str) -> dict[str, Any] | None:
        worker = self.workers.get(pod_uid)
        return worker.status if worker else None

    async def stop(self) -> None:
        """Cancel workers without killing pods; a kill in progress gets a bounded chance to end."""
        tasks = [w.task for w in self.workers.values() if w.task is not None]
        for worker in self.workers.values():
            if not worker.killing and worker.task is not None:
                worker.task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_SECONDS)
        for task in tasks:
            task.cancel()
