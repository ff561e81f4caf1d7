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
from collections.abc import Awaitable
from typing import Any

import psutil

from nodelet import reasons
from nodelet.cgroups import driver as cgroups
from nodelet.cgroups.driver import CgroupDriver
from nodelet.cgroups.summary import StatsSummary, SummaryPaths
from nodelet.cluster.mirrorplan import DISABLED, SYNCED
from nodelet.cluster.nodesync import NodeSettings
from nodelet.cluster.peerroutes import PeerRoutes, peer_routes
from nodelet.cluster.sync import ClusterSettings, ClusterSync
from nodelet.config import AgentConfig, ensure_private_dir
from nodelet.image import gc as imagegc
from nodelet.image.manager import ImageManager, image_manager, is_image_failure
from nodelet.logs import retention, rotation
from nodelet.manifest import schemacache, warnings
from nodelet.manifest.merge import MergedSources
from nodelet.manifest.snapshot import SourceSnapshot
from nodelet.manifest.source import ManifestSource
from nodelet.manifest.urlsource import URLSource
from nodelet.model import Rejection, StaticPod
from nodelet.network.api import NetworkError
from nodelet.ops import health, notify
from nodelet.ops.health import Check, SyncLoopMonitor
from nodelet.ops.instrumented import InstrumentedRuntime
from nodelet.ops.metrics import AgentMetrics, AgentView, container_name
from nodelet.ops.systemd import SystemdReporter
from nodelet.pod.backoff import Backoff
from nodelet.pod.backoffstore import BACKOFF_FILE, BackoffStore
from nodelet.pod.containerprep import container_log_path
from nodelet.pod.network import node_network
from nodelet.pod.probes import ProbeTarget
from nodelet.pod.volumes import sweep_orphan_volumes
from nodelet.pod.worker import WorkerContext, WorkerState, describe
from nodelet.pod.workers import PodWorkers
from nodelet.reasons import EVENT_WARNING
from nodelet.runtime.api import ContainerConfig, KnownPod, Runtime
from nodelet.server import kubeletroutes, kubeletstats, kubeletstream
from nodelet.server.containers import containers_route
from nodelet.server.kubelet import KubeletServerError
from nodelet.server.kubeletsetup import kubelet_server
from nodelet.server.local import (
    LocalServer,
    redact_pod_list,
    redacted_rejection_list,
    rejection_list,
)

log = logging.getLogger(__name__)

SCHEMA_CACHE_NAME = "schema-cache.json"


class Agent:
    def __init__(self, config: AgentConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.rejected: list[Rejection] = []
        self.warnings: list[Rejection] = []
        """Fields dropped from running pods (``manifestValidation: Warn``)."""
        self._warning_events = warnings.WarningEvents()
        self._stop = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._phases: dict[str, str] = {}
        self.cluster = cluster_sync(config)
        self._started = time.monotonic()
        self._process_start_time = psutil.Process().create_time()
        self._sync_monitor = SyncLoopMonitor(config.resync_seconds)
        self.metrics = AgentMetrics(
            AgentView(
                node_name=config.node_name,
                pods=self._pods_with_status,
                rejected=lambda: self.rejected,
                mirror_pods=self._mirror_pods,
                sandboxes=lambda: self._measured.sandboxes(),  # noqa: PLW0108 (made below)
                cgroups=lambda: self._ctx.cgroups,
                api=lambda: self.cluster.caller if self.cluster is not None else None,
            )
        )
        self._measured = InstrumentedRuntime(runtime, self.metrics.runtime_operation)
        self.systemd = SystemdReporter(notify.environment(), self._status_line, self.health_checks)
        backoff = Backoff(config.backoff_initial, config.backoff_max)
        self._backoff_store = BackoffStore(config.run_dir / BACKOFF_FILE, backoff)
        self._ctx = WorkerContext(
            runtime=self._measured,
            config=config,
            backoff=backoff,
            on_status=self._on_status,
            on_event=self._on_pod_event,
            sync_hook=self._timed_sync,
            network=node_network(config),
            images=image_manager(
                config.root_dir,
                config.host_images,
                config.insecure_registries,
                config.backoff_initial,
                config.backoff_max,
                {registry: tuple(urls) for registry, urls in config.registry_mirrors},
            ),
        )
        self._peer_routes: PeerRoutes | None = None
        """The Nodes' pod CIDRs as host-gw routes, and this node's podCIDR (built-in network)."""
        self.pods = PodWorkers(self._ctx)
        self._summary = StatsSummary(config.node_name)
        self.stats_view = kubeletstats.StatsView(
            node_name=config.node_name,
            paths=SummaryPaths(config.root_dir, config.pod_logs_dir, config.pods_state_dir),
            summary=self._summary,
            pods=self._pods_with_status,
            sandboxes=lambda: self._measured.sandboxes(),  # noqa: PLW0108 (one call per read)
            cgroups=lambda: self._ctx.cgroups,
        )
        """What kubelet's stats routes read; the local /stats/summary shares its CPU samples."""
        merged = MergedSources(
            ["file", "http"] if config.manifest_url else ["file"], self._on_snapshot
        )
        self.source = ManifestSource(
            config.pod_manifest_path,
            config.node_name,
            merged.sink("file"),
            file_check_frequency=config.file_check_frequency,
            settle_seconds=config.settle_seconds,
            manifest_validation=config.manifest_validation,
        )
        self.url_source = url_source(config, merged)
        self.server = LocalServer(
            "127.0.0.1",
            config.healthz_port,
            public={
                "/healthz": self._healthz,
                **self._healthz_checks(),
                "/metrics": self._metrics,
                "/pods": self._public_pods,
                "/rejected": self._public_rejected,
                "/warnings": lambda: (200, redacted_rejection_list(self.warnings)),
                "/stats/summary": self._stats_summary,
            },
            private={
                "/healthz": self._healthz_verbose,
                **self._healthz_checks(),
                "/metrics": self._metrics,
                "/pods": self._pods,
                "/rejected": self._rejected,
                "/warnings": lambda: (200, rejection_list(self.warnings)),
                "/stats/summary": self._stats_summary,
            },
            socket_path=config.socket_path,
            queries={
                "/containers": containers_route(
                    lambda: list(self.pods.desired.values()), runtime, self._started_config
                )
            },
        )
        self.kubelet_server = kubelet_server(
            config,
            installers=[
                functools.partial(kubeletroutes.install, backend=self),
                functools.partial(kubeletstats.install, backend=self.stats_view),
                functools.partial(kubeletstream.install, backend=self),
            ],
            api=lambda: self.cluster.caller.api_client if self.cluster is not None else None,
        )
        self._swept = False

    async def _start_network(self) -> None:
        """The node side of the pod network (bridge, NAT table, routes). A failure is logged
        and pods with a network namespace of their own wait with the reason (fail closed)."""
        network = self._ctx.network
        if network is None:
            log.info("pod network: none (a pod's network namespace has only loopback)")
            return
        try:
            await network.start()
        except (NetworkError, OSError) as err:
            log.error("pod network (%s) not ready: %s", self.config.network_plugin, err)
            return
        log.info("pod network: %s", self.config.network_plugin)

    async def stream_target(
        self, namespace: str, pod: str, uid: str | None, container: str | None
    ) -> kubeletstream.StreamTarget:
        """``kubeletstream.StreamBackend``: the running container exec/attach enter (what its
        exec probes get), or for port-forward (``container`` None) the pod's netns."""
        found = next(
            (p for p in self.pods.desired.values()
             if p.namespace == namespace and p.name == pod and uid in (None, p.uid)),
            None,
        )  # fmt: skip
        worker = self.pods.workers.get(found.uid) if found is not None else None
        if found is None or worker is None:
            raise LookupError("pod does not exist")
        sandbox = await self.runtime.pod_status(found.uid)
        if sandbox is None or not sandbox.ready or sandbox.holder_pid is None:
            raise LookupError(f"pod {namespace}/{pod} has no running sandbox")
        if container is None:
            holder = sandbox.holder_pid
            netns = None if found.host_network else f"/proc/{holder}/ns/net"
            return kubeletstream.StreamTarget(ProbeTarget(holder, "", netns, None, None))
        specs = [*(found.spec.get("initContainers") or []), *(found.spec.get("containers") or [])]
        spec = next((c for c in specs if c["name"] == container), None)
        record = sandbox.latest(container) if spec is not None else None
        if spec is None or record is None or not record.running:
            raise LookupError(f'container not found ("{container}")')
        target = worker.probe_target(sandbox, record, spec)
        log_path = container_log_path(self.config.pod_logs_dir, found, container, record.attempt)
        return kubeletstream.StreamTarget(target, log_path)

    def _started_config(self, uid: str, name: str) -> ContainerConfig | None:
        worker = self.pods.workers.get(uid)
        return worker.started_config(name) if worker is not None else None

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
        # The v1 schema checks stored pod records and manifests: load it (from its cache in
        # the run dir when it is there) while the runtime finds its holders.
        cache = self.config.run_dir / SCHEMA_CACHE_NAME
        warm = asyncio.create_task(asyncio.to_thread(schemacache.warm, cache), name="schema")
        await self.runtime.start()
        known = await self.runtime.list_pods()
        log.info(
            "node=%s ip=%s manifests=%s; %d pods found from before",
            self.config.node_name,
            self.config.node_ip,
            self.config.pod_manifest_path,
            len(known),
        )
        await warm
        await asyncio.to_thread(self._backoff_store.load)
        self._ctx.cgroups = await asyncio.to_thread(self._cgroups, known)
        await self._start_network()
        self.pods.adopt(known)
        await self.server.start()  # the TCP port only when healthz_port is set
        try:
            await self.kubelet_server.start()  # kubelet exits when it cannot listen, too
        except OSError as err:
            await self.server.close()
            raise KubeletServerError(str(err)) from None
        if self.cluster is not None:
            self.cluster.start()  # in the background: pods never wait for the API server
            self._peer_routes = peer_routes(self.config, self.cluster.caller, self._ctx.network)
            if self._peer_routes is not None:
                self._peer_routes.start()
        source_task = asyncio.create_task(self.source.run(), name="manifest-source")
        source_task.add_done_callback(self._on_source_done)
        gc_task = asyncio.create_task(self._log_gc(), name="log-gc")
        image_gc_task = asyncio.create_task(self._image_gc(), name="image-gc")
        rotation_task = asyncio.create_task(
            rotation.run_rotation(self.config.pod_logs_dir, self.config.container_log_max_files),
            name="log-rotation",
        )
        watchdog = asyncio.create_task(self.systemd.heartbeat(), name="systemd-watchdog")
        watchdog.add_done_callback(_log_failure)
        url_tasks = []
        if self.url_source is not None:
            url_tasks.append(asyncio.create_task(self.url_source.run(), name="manifest-url"))
        try:
            await self._stop.wait()
        finally:
            log.info("stopping; pods keep running")
            self.systemd.stopping()
            for task in (source_task, gc_task, image_gc_task, rotation_task, watchdog, *url_tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.pods.stop()
            await self._backoff_store.flush()
            if self._peer_routes is not None:
                await self._peer_routes.close()
            if self.cluster is not None:
                await self.cluster.close()
            await self.kubelet_server.close()
            await self.server.close()
            await self.runtime.close()
            self.systemd.close()

    def _cgroups(self, known: list[KnownPod]) -> CgroupDriver | None:
        """The node's cgroup driver, and the cgroups of pods that are gone swept away (an
        agent that died between a pod's end and its clean-up left them)."""
        try:
            driver = cgroups.detect(cgroup_root=self.config.cgroup_root)
        except (OSError, ValueError) as err:
            log.warning("cgroups unusable, pods run without resource limits: %s", err)
            return None
        log.info("cgroup v%d driver, pods under %s", driver.version, self.config.cgroup_root)
        try:
            for path in driver.sweep({pod.pod_uid for pod in known}):
                log.info("removed the cgroup of a pod that is gone: %s", path)
        except (OSError, ValueError) as err:
            log.warning("sweeping leftover pod cgroups failed: %s", err)
        return driver

    async def _log_gc(self) -> None:
        """Remove the logs of removed pods, once the manifest dir was read completely (as
        kubelet's GC waits for all sources), never those of a pod that still exists."""
        while True:
            await asyncio.sleep(retention.GC_PERIOD_SECONDS)
            if not self.pods.sources_ready:
                continue
            live = set(self.pods.desired) | set(self.pods.workers)
            try:
                await asyncio.to_thread(retention.sweep, self.config.pod_logs_dir, live)
            except Exception:
                log.exception("log garbage collection failed")

    async def _image_gc(self) -> None:
        """kubelet's image garbage collection (``nodelet.image.gc``): once the manifest dir was
        read completely (so every pod's image counts as in use), then every 5 minutes and after
        each pull, in a thread; a failure is logged and the next pass tries again."""
        images = self._ctx.images
        config = self.config
        policy = imagegc.GCPolicy(
            config.image_gc_high_threshold,
            config.image_gc_low_threshold,
            config.image_minimum_gc_age,
            config.image_maximum_gc_age,
        )
        if images is None or not policy.enabled:
            return
        while not self.pods.sources_ready:
            await asyncio.sleep(0.5)
        while True:
            images.pulled.clear()
            pods = [*self.pods.desired.values(), *(w.pod for w in self.pods.workers.values())]
            references = _image_references(pods)
            try:
                await asyncio.to_thread(
                    _collect_images, images, policy, references, dict(images.last_used)
                )
            except Exception:
                log.exception("image garbage collection failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(images.pulled.wait(), imagegc.GC_PERIOD_SECONDS)

    def _on_source_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("manifest source died", exc_info=task.exception())
            self.request_stop()

    # -- status ------------------------------------------------------------------------

    def _on_snapshot(self, snapshot: SourceSnapshot) -> None:
        self.rejected, self.warnings = warnings.split(snapshot.rejected)
        before = set(self.pods.desired)
        self.pods.apply(snapshot)
        self.metrics.pods_applied(before, self.pods.desired.keys())
        for uid in set(self._phases) - set(self.pods.workers):
            del self._phases[uid]
        self._sync_monitor.forget(self.pods.workers)
        # READY=1 once the pods found at start are adopted (before the source ran) and the
        # manifest dir was read completely.
        self.systemd.sources_read(snapshot.complete)
        if self.pods.sources_ready and not self._swept:
            self._swept = True
            keep = set(self.pods.desired) | set(self.pods.workers)
            sweep = asyncio.create_task(
                asyncio.to_thread(sweep_orphan_volumes, self.config.pods_state_dir, keep),
                name="orphan-volumes",
            )
            sweep.add_done_callback(_log_failure)
            sweep.add_done_callback(_log_swept)
            if self._ctx.network is not None:
                leftovers = asyncio.create_task(self._ctx.network.sweep(keep), name="network-sweep")
                leftovers.add_done_callback(_log_failure)
        if self.cluster is not None:
            self.cluster.pods_changed(self.pods.desired.values(), self.pods.sources_ready)
            self.cluster.rejected(self.rejected)
            for pod, message in self._warning_events.new(snapshot):
                self.cluster.pod_event(pod, EVENT_WARNING, warnings.MANIFEST_WARNING, message, "")

    def _on_status(self, pod_uid: str, status: dict[str, Any]) -> None:
        phase = status.get("phase", "")
        before = self._phases.get(pod_uid)
        if before != phase:
            self._phases[pod_uid] = phase
            worker = self.pods.workers.get(pod_uid)
            name = describe(worker.pod) if worker else f"uid={pod_uid}"
            log.info("pod phase %s -> %s %s", before or "-", phase, name)
            self.metrics.pod_phase(pod_uid, phase)
            self.systemd.changed()
        worker = self.pods.workers.get(pod_uid)
        if self.cluster is not None and worker is not None and not worker.killing:
            self.cluster.pod_status(worker.pod, status)

    def _on_pod_event(
        self, pod: StaticPod, type_: str, reason: str, message: str, field_path: str
    ) -> None:
        log.debug("event %s %s %s: %s", describe(pod), type_, reason, message)
        error = None
        if reason == reasons.FAILED_EVENT:
            error = self._measured.take_start_error(pod.uid, container_name(field_path))
        if not (reason == reasons.FAILED_EVENT and is_image_failure(message)):
            self.metrics.pod_event(reason, field_path, error)
        if self.cluster is not None:
            self.cluster.pod_event(pod, type_, reason, message, field_path)

    def mirror_state(self, pod: StaticPod) -> str:
        """``nodelet pods``' MIRROR column: Synced, Pending, or Disabled (standalone)."""
        return self.cluster.mirror_state(pod) if self.cluster is not None else DISABLED

    def _on_runtime_change(self, pod_uid: str) -> None:
        self.pods.poke(pod_uid)

    async def _timed_sync(self, pod: StaticPod, sync: Awaitable[float | None]) -> float | None:
        started = time.monotonic()
        try:
            return await self._sync_monitor.around(pod.uid, sync)
        finally:
            self.metrics.synced(pod, time.monotonic() - started)

    # -- systemd and metrics ----------------------------------------------------------------

    def health_checks(self) -> list[Check]:
        """kubelet's healthz checks (``ping``, ``syncloop``) and the manifest source's."""
        syncing = [u for u, w in self.pods.workers.items() if w.state is WorkerState.SYNCING]
        return [
            Check("ping"),
            self._sync_monitor.check(syncing),
            health.source_check(
                self.source.last_relist, self._started, self.config.file_check_frequency
            ),
        ]

    def _status_line(self, complete: bool) -> str:
        """systemd's STATUS=: ``3 of 4 pods running, 1 rejected``."""
        desired = len(self.pods.desired)
        running = sum(1 for uid in self.pods.desired if self._phases.get(uid) == "Running")
        line = f"{running} of {desired} pods running, {len(self.rejected)} rejected"
        return line if complete else f"{line}; manifest dir not completely read yet"

    def _pods_with_status(self) -> list[tuple[StaticPod, dict[str, Any] | None]]:
        return [(pod, self.pods.status_of(uid)) for uid, pod in self.pods.desired.items()]

    def _mirror_pods(self) -> int:
        pods = self.pods.desired.values()
        return sum(1 for pod in pods if self.mirror_state(pod) == SYNCED)

    # -- local API --------------------------------------------------------------------------

    def _healthz(self) -> tuple[int, Any]:
        return health.healthz(self.health_checks())

    def _healthz_verbose(self) -> tuple[int, Any]:
        """The root-only socket's /healthz also says why a check fails."""
        return health.healthz(self.health_checks(), verbose=True)

    def _healthz_checks(self) -> dict[str, Any]:
        """``/healthz/<check>``, as kubelet serves each named check."""
        checks = health.CHECK_NAMES
        return {f"/healthz/{name}": functools.partial(self._one_check, name) for name in checks}

    def _one_check(self, name: str) -> tuple[int, Any]:
        return health.single(next(c for c in self.health_checks() if c.name == name))

    def _metrics(self) -> tuple[int, Any]:
        return 200, self.metrics.render()

    def metrics_text(self) -> str:
        """The kubelet API's ``/metrics``."""
        return self.metrics.render()

    def probe_metrics_text(self) -> str:
        """The kubelet API's ``/metrics/probes``: nodelet counts no prober metrics yet, so
        only the process start time that kubelet's prober registry also carries."""
        return (
            "# HELP process_start_time_seconds Start time of the process since unix epoch in "
            "seconds.\n# TYPE process_start_time_seconds gauge\n"
            f"process_start_time_seconds {self._process_start_time}\n"
        )

    def pod_list(self) -> dict[str, Any]:
        """kubelet's /pods: every desired pod with its latest status."""
        items = []
        for uid, pod in sorted(self.pods.desired.items(), key=lambda kv: kv[1].full_name):
            status = self.pods.status_of(uid) or {"phase": "Pending"}
            items.append({**pod.manifest, "status": status, "mirror": self.mirror_state(pod)})
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

    def _stats_summary(self) -> tuple[int, Any]:
        """kubelet's ``/stats/summary``: usage of the node, every pod and running container
        (usage figures only: nothing secret, so the redacted port serves it too)."""
        pods = [(pod, self.pods.status_of(uid)) for uid, pod in sorted(self.pods.desired.items())]
        sandboxes = {sandbox.pod_uid: sandbox for sandbox in self._measured.sandboxes()}
        summary = self._summary.build(
            self._ctx.cgroups, pods, sandboxes=sandboxes, paths=self.stats_view.paths
        )
        return 200, summary

    def _pods(self) -> tuple[int, Any]:
        return 200, self.pod_list()

    def _public_pods(self) -> tuple[int, Any]:
        return 200, redact_pod_list(self.pod_list())

    def _rejected(self) -> tuple[int, Any]:
        return 200, rejection_list(self.rejected)

    def _public_rejected(self) -> tuple[int, Any]:
        return 200, redacted_rejection_list(self.rejected)


def url_source(config: AgentConfig, merged: MergedSources) -> URLSource | None:
    """kubelet's HTTP source, when ``--manifest-url`` (``staticPodURL``) is set."""
    if not config.manifest_url:
        return None
    return URLSource(
        config.manifest_url,
        config.manifest_url_headers,
        config.node_name,
        merged.sink("http"),
        period=config.http_check_frequency,
        manifest_validation=config.manifest_validation,
    )


def _collect_images(
    images: ImageManager, policy: imagegc.GCPolicy, in_use: set[str], last_used: dict[str, float]
) -> None:
    imagegc.collect(images.store, policy, images.image_ids(in_use), last_used, time.time())


def _image_references(pods: list[StaticPod]) -> set[str]:
    """Every image the pods' containers and init containers name: in use, for image GC."""
    return {
        str(container.get("image") or "")
        for pod in pods
        for key in ("initContainers", "containers")
        for container in pod.spec.get(key) or []
    }


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())


def _log_swept(task: asyncio.Task[list[str]]) -> None:
    if not task.cancelled() and task.exception() is None and task.result():
        log.info("removed the state dirs of orphaned pods: %s", ", ".join(task.result()))


def cluster_sync(config: AgentConfig) -> ClusterSync | None:
    """The API server side, when there is a kubeconfig (``KubeconfigError`` when unusable)."""
    if config.kubeconfig is None:
        return None
    node = NodeSettings(
        name=config.node_name,
        ip=config.node_ip,
        root_dir=config.root_dir,
        register=config.register_node,
        labels=dict(config.node_labels),
        status_update_frequency=config.node_status_update_frequency,
        status_report_frequency=config.node_status_report_frequency,
        kubelet_port=config.kubelet_port,
    )
    settings = ClusterSettings(config.kubeconfig, config.kube_api_qps, config.kube_api_burst)
    return ClusterSync(settings, node)
