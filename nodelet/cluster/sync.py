"""Everything the cluster sees of this node: Node, Lease, mirror pods, their status, Events.

The agent hands in what happened (manifests read, a pod's status, an event) and never waits:
each part runs its own loop against the API server and catches up when the server returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodelet import __version__, reasons
from nodelet.cluster.apiclient import (
    STRATEGIC_MERGE_PATCH,
    ApiCaller,
    ApiError,
    load_configuration,
    path_of,
)
from nodelet.cluster.events import WARNING, EventRecorder, ObjectRef
from nodelet.cluster.mirrorplan import PENDING, SYNCED
from nodelet.cluster.mirrors import MirrorPods
from nodelet.cluster.nodesync import LeaseSync, NodeSettings, NodeSync
from nodelet.cluster.podwatch import PodWatch
from nodelet.cluster.statussync import StatusSync
from nodelet.model import Rejection, StaticPod

log = logging.getLogger(__name__)

Json = dict[str, Any]

EVENT_COMPONENT = "nodelet"


@dataclass(frozen=True)
class ClusterSettings:
    kubeconfig: Path
    qps: float = 50.0
    burst: int = 100


class KubeconfigError(Exception):
    """The kubeconfig cannot be used: the agent refuses to start, as kubelet does."""


class _EventSink:
    """Events through the API caller; a 404 on a patch is ``LookupError`` for the recorder."""

    def __init__(self, caller: ApiCaller) -> None:
        self._caller = caller

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        path = path_of("api", "v1", "namespaces", namespace, "events")
        return await self._caller.request("POST", path, body=body)

    async def patch(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        path = path_of("api", "v1", "namespaces", namespace, "events", name)
        try:
            return await self._caller.request(
                "PATCH", path, body=body, content_type=STRATEGIC_MERGE_PATCH
            )
        except ApiError as err:
            if err.not_found:
                raise LookupError(name) from err
            raise


class ClusterSync:
    def __init__(self, settings: ClusterSettings, node: NodeSettings) -> None:
        try:
            configuration = load_configuration(settings.kubeconfig)
        except Exception as err:  # the client raises many kinds for a bad file
            raise KubeconfigError(f"--kubeconfig {settings.kubeconfig}: {err}") from None
        self.node_name = node.name
        self.caller = ApiCaller(
            configuration, settings.qps, settings.burst, user_agent=f"nodelet/{__version__}"
        )
        self.mirrors = MirrorPods(self.caller, node.name, self._mirror_changed)
        self.status = StatusSync(self.caller, self.mirrors)
        self.node = NodeSync(self.caller, node, self.mirrors.set_node_uid)
        self.lease = LeaseSync(self.caller, node.name, lambda: self.node.node_uid)
        self.events = EventRecorder(_EventSink(self.caller), EVENT_COMPONENT, node.name)
        self._rejected: set[tuple[str, str]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._watch: PodWatch | None = None

    def start(self) -> None:
        """Starts every loop in the background; returns at once, API server or not."""
        loop = asyncio.get_running_loop()
        log.info("API server %s: registering node %s", self.caller.server, self.node_name)
        self._watch = PodWatch(
            self.caller, self.node_name, loop, self.mirrors.on_list, self.mirrors.on_event
        )
        self._watch.start()
        for name, work in (
            ("node", self.node.run()),
            ("lease", self.lease.run()),
            ("mirrors", self.mirrors.run()),
            ("status", self.status.run()),
            ("events", self.events.run()),
        ):
            task = asyncio.create_task(work, name=f"cluster-{name}")
            task.add_done_callback(self._on_done)
            self._tasks.append(task)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s stopped", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.mirrors.close()
        await self.status.close()
        self.caller.close()

    # -- from the agent ----------------------------------------------------------------------

    def pods_changed(self, pods: Iterable[StaticPod], sources_ready: bool) -> None:
        pods = list(pods)
        names = {pod.full_name for pod in pods}
        self.mirrors.set_desired(pods, sources_ready)
        for full_name in [n for n in self.status.known() if n not in names]:
            self.status.forget_name(full_name)

    def pod_status(self, pod: StaticPod, status: Json) -> None:
        self.status.update(pod, status)

    def pod_event(
        self, pod: StaticPod, type_: str, reason: str, message: str, field_path: str = ""
    ) -> None:
        """An event about a static pod, shown on its mirror: with the static pod's UID, as
        kubelet records them and as ``kubectl describe`` looks them up for a mirror pod (by
        its ``kubernetes.io/config.mirror`` annotation), so they outlive mirror re-creations."""
        ref = ObjectRef("Pod", pod.namespace, pod.name, pod.uid, "v1", field_path)
        self.events.event(ref, type_, reason, message)

    def rejected(self, rejections: Iterable[Rejection]) -> None:
        """A Warning event on the Node for each newly rejected manifest, naming file and error."""
        current: set[tuple[str, str]] = set()
        for rejection in rejections:
            for error in rejection.errors:
                key = (rejection.path, str(error))
                current.add(key)
                if key not in self._rejected:
                    ref = ObjectRef("Node", "", self.node_name, self.node_name)
                    self.events.event(ref, WARNING, reasons.MANIFEST_REJECTED, str(error))
        self._rejected = current

    def mirror_state(self, pod: StaticPod) -> str:
        return SYNCED if self.status.in_sync(pod) else PENDING

    def _mirror_changed(self, full_name: str) -> None:
        self.status.mirror_changed(full_name)
