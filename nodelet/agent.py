"""The agent: wires the manifest source, the pod workers, the runtime and the local API.

One dispatcher turns full sets from the source into per-UID worker operations. Stopping the
agent never stops pods: holders outlive it and the next agent re-adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from typing import Any

from nodelet import loggc, podconfig, podschema
from nodelet.backoff import Backoff
from nodelet.config import AgentConfig, ensure_private_dir
from nodelet.model import Rejection, StaticPod
from nodelet.podconfig import OpKind
from nodelet.podworker import (
    DEFAULT_GRACE_SECONDS,
    PodWorker,
    RecordError,
    WorkerContext,
    describe,
    pod_from_record,
)
from nodelet.runtime.api import KnownPod, Runtime
from nodelet.server import (
    LocalServer,
    redact_pod_list,
    redacted_rejection_list,
    rejection_list,
)
from nodelet.source import ManifestSource, SourceSnapshot

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_SECONDS = 5.0


class Agent:
    def __init__(self, config: AgentConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.desired: dict[str, StaticPod] = {}
        self.rejected: list[Rejection] = []
        self.workers: dict[str, PodWorker] = {}
        self._by_full_name: dict[str, PodWorker] = {}
        self._adopted: dict[str, StaticPod] = {}
        """Pods found running at start-up, kept until the manifest dir was read completely."""
        self._sources_ready = False
        """The manifest dir has been read completely once (kubelet's allSourcesReady)."""
        self._stop = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._phases: dict[str, str] = {}
        self._ctx = WorkerContext(
            runtime=runtime,
            config=config,
            backoff=Backoff(config.backoff_initial, config.backoff_max),
            on_status=self._on_status,
        )
        self.source = ManifestSource(
            config.pod_manifest_path,
            config.node_name,
            self._on_snapshot,
            file_check_frequency=config.file_check_frequency,
            settle_seconds=config.settle_seconds,
        )
        self.server = LocalServer(
            "127.0.0.1",
            config.healthz_port,
            public={
                "/healthz": self._healthz,
                "/pods": self._public_pods,
                "/rejected": self._public_rejected,
            },
            private={"/healthz": self._healthz, "/pods": self._pods, "/rejected": self._rejected},
            socket_path=config.socket_path,
        )

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT or ``request_stop``; pods keep running afterwards."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        for directory in self.config.private_dirs:
            ensure_private_dir(directory)
        self.runtime.subscribe(self._on_runtime_change)
        await self.runtime.start()
        known = await self.runtime.list_pods()
        log.info(
            "node=%s ip=%s manifests=%s; %d pods found from before",
            self.config.node_name,
            self.config.node_ip,
            self.config.pod_manifest_path,
            len(known),
        )
        self._adopt(known)
        warm = asyncio.create_task(asyncio.to_thread(podschema.preload), name="schema-preload")
        self._background.add(warm)
        warm.add_done_callback(self._background.discard)
        await self.server.start()  # the TCP port only when healthz_port is set
        source_task = asyncio.create_task(self.source.run(), name="manifest-source")
        source_task.add_done_callback(self._on_source_done)
        gc_task = asyncio.create_task(self._log_gc(), name="log-gc")
        try:
            await self._stop.wait()
        finally:
            log.info("stopping; pods keep running")
            for task in (source_task, gc_task):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._stop_workers()
            await self.server.close()
            await self.runtime.close()

    async def _log_gc(self) -> None:
        """Remove the logs of removed pods, once the manifest dir was read completely (as
        kubelet's GC waits for all sources), never those of a pod that still exists."""
        while True:
            await asyncio.sleep(loggc.GC_PERIOD_SECONDS)
            if not self._sources_ready:
                continue
            live = set(self.desired) | set(self.workers)
            try:
                await asyncio.to_thread(loggc.sweep, self.config.pod_logs_dir, live)
            except Exception:
                log.exception("log garbage collection failed")

    def _on_source_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("manifest source died", exc_info=task.exception())
            self.request_stop()

    async def _stop_workers(self) -> None:
        """Cancel workers without killing pods; a kill in progress gets a bounded chance to end."""
        tasks = [w.task for w in self.workers.values() if w.task is not None]
        for worker in self.workers.values():
            if not worker.killing and worker.task is not None:
                worker.task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_SECONDS)
        for task in tasks:
            task.cancel()

    # -- dispatch ---------------------------------------------------------------------------

    def _adopt(self, known: list[KnownPod]) -> None:
        """Take over the pods that outlived the previous agent, before any manifest is read:
        their workers observe them at once, so no exit waits on manifest parsing."""
        for found in known:
            try:
                pod = pod_from_record(found.pod, found.pod_uid)
            except RecordError as err:
                # Stop it gracefully from what the holder knows: nothing can run it again.
                grace = (
                    DEFAULT_GRACE_SECONDS if found.grace_seconds is None else found.grace_seconds
                )
                log.error(
                    "run dir of pod uid=%s has no usable record (%s); stopping it, grace=%ss",
                    found.pod_uid, err, grace,
                )  # fmt: skip
                task = asyncio.create_task(self.runtime.kill_pod(found.pod_uid, grace))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                continue
            if found.terminating:
                # A previous agent had begun removing it: finish that, never run it again.
                log.info("finishing the removal begun before the restart %s", describe(pod))
                self._add(pod).kill()
                continue
            self._adopted[pod.uid] = pod
            self.desired[pod.uid] = pod
            self._add(pod)

    def _on_snapshot(self, snapshot: SourceSnapshot) -> None:
        self.rejected = snapshot.rejected
        self._sources_ready = self._sources_ready or snapshot.complete
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
        self._phases.pop(worker.uid, None)

    def _on_status(self, pod_uid: str, status: dict[str, Any]) -> None:
        phase = status.get("phase", "")
        before = self._phases.get(pod_uid)
        if before != phase:
            self._phases[pod_uid] = phase
            worker = self.workers.get(pod_uid)
            name = describe(worker.pod) if worker else f"uid={pod_uid}"
            log.info("pod phase %s -> %s %s", before or "-", phase, name)

    def _on_runtime_change(self, pod_uid: str) -> None:
        worker = self.workers.get(pod_uid)
        if worker is not None:
            worker.poke()

    # -- local API --------------------------------------------------------------------------

    def _healthz(self) -> tuple[int, Any]:
        stale = time.monotonic() - self.source.last_relist
        if self.source.last_relist and stale > 2 * self.config.file_check_frequency + 10:
            return 500, f"manifest relist is stale: last {stale:.0f}s ago\n"
        return 200, "ok"

    def pod_list(self) -> dict[str, Any]:
        """kubelet's /pods: every desired pod with its latest status."""
        items = []
        for uid, pod in sorted(self.desired.items(), key=lambda kv: kv[1].full_name):
            worker = self.workers.get(uid)
            status = (worker.status if worker else None) or {"phase": "Pending"}
            items.append({**pod.manifest, "status": status})
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

    def _pods(self) -> tuple[int, Any]:
        return 200, self.pod_list()

    def _public_pods(self) -> tuple[int, Any]:
        return 200, redact_pod_list(self.pod_list())

    def _rejected(self) -> tuple[int, Any]:
        return 200, rejection_list(self.rejected)

    def _public_rejected(self) -> tuple[int, Any]:
        return 200, redacted_rejection_list(self.rejected)
