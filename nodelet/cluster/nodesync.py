"""The Node object and its Lease: registered, kept true, and re-registered when deleted.

kubelet's ``registerWithAPIServer``, ``updateNodeStatus`` and node lease controller in two small
loops. Both only talk to the API server; neither is on any pod's path.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodelet import __version__
from nodelet.cluster.apiclient import MERGE_PATCH, ApiCaller, ApiError, jittered, path_of
from nodelet.cluster.nodeobject import (
    LEASE_NAMESPACE,
    build_node,
    lease_body,
    node_labels,
    node_status,
    renew_interval,
)
from nodelet.cluster.noderesources import read_system_info, sample_resources

log = logging.getLogger(__name__)

Json = dict[str, Any]

RETRY_BASE_SECONDS = 0.2
RETRY_CAP_SECONDS = 7.0


@dataclass(frozen=True)
class NodeSettings:
    name: str
    ip: str
    root_dir: Path
    register: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)
    status_update_frequency: float = 10.0
    status_report_frequency: float = 300.0
    """An unchanged status is posted only this often (kubelet's nodeStatusReportFrequency:
    5 min, or the update frequency when that was set explicitly); in between the Node is only
    read, to notice its deletion."""
    kubelet_port: int = 10250
    hostname: str = field(default_factory=socket.gethostname)


class NodeSync:
    """Registers the Node (or takes an existing one of the same name over) and posts its status
    every ``status_update_frequency``; a Node deleted meanwhile is registered again, and the new
    UID is passed to ``on_node_uid`` (the mirror pods must be owned by it)."""

    def __init__(
        self,
        caller: ApiCaller,
        settings: NodeSettings,
        on_node_uid: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._caller = caller
        self._settings = settings
        self._on_node_uid = on_node_uid
        self._clock = clock
        self._info = read_system_info()
        self.node_uid: str | None = None
        self._status: Json | None = None
        self._posted_at: float | None = None
        self.last_error = ""

    @property
    def _path(self) -> str:
        return path_of("api", "v1", "nodes", self._settings.name)

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self.sync_once()
            except ApiError as err:
                failures += 1
                self.last_error = str(err)
                delay = jittered(RETRY_BASE_SECONDS, failures, RETRY_CAP_SECONDS)
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "node %s: %s; again in %.1fs", self._settings.name, err, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            self.last_error = ""
            await asyncio.sleep(self._settings.status_update_frequency)

    async def sync_once(self) -> None:
        if self.node_uid is None:
            await self._register()
            return
        try:
            await self._post_status()
        except ApiError as err:
            if not err.not_found:
                raise
            log.warning("node %s was deleted; registering it again", self._settings.name)
            self.node_uid = None
            await self._register()

    async def _current_status(self) -> Json:
        resources = await asyncio.to_thread(sample_resources, self._settings.root_dir)
        return node_status(
            resources,
            self._info,
            node_ip=self._settings.ip,
            hostname=self._settings.hostname,
            kubelet_port=self._settings.kubelet_port,
            nodelet_version=__version__,
            now=self._clock(),
            previous=self._status,
        )

    async def _register(self) -> None:
        settings = self._settings
        labels = node_labels(settings.name, self._info, settings.labels)
        self._posted_at = None  # a new or taken-over Node gets its status at once
        if settings.register:
            body = build_node(settings.name, labels, await self._current_status())
            try:
                node = await self._caller.request("POST", path_of("api", "v1", "nodes"), body=body)
                log.info("node %s registered", settings.name)
            except ApiError as err:
                if not err.conflict:
                    raise
                node = await self._take_over(labels)
        else:
            node = await self._caller.request("GET", self._path)
        self._adopt(node)
        await self._post_status()

    async def _take_over(self, labels: Mapping[str, str]) -> Json:
        """A Node of this name exists (a re-install, or an agent restart): kubelet keeps it and
        brings its default labels up to date instead of creating a second one."""
        log.info("node %s exists already; taking it over", self._settings.name)
        patch = {"metadata": {"labels": dict(labels)}}
        return await self._caller.request("PATCH", self._path, body=patch, content_type=MERGE_PATCH)

    def _adopt(self, node: Json, keep_status: bool = False) -> None:
        uid = str((node.get("metadata") or {}).get("uid", ""))
        status = node.get("status")
        if not keep_status:
            valid = isinstance(status, dict) and status.get("conditions")
            self._status = status if valid else None
        if uid and uid != self.node_uid:
            self.node_uid = uid
            self._on_node_uid(uid)

    async def _post_status(self) -> None:
        status = await self._current_status()
        now = self._clock()
        if (
            self._posted_at is not None
            and now - self._posted_at < self._settings.status_report_frequency
            and self._status is not None
            and without_heartbeats(status) == without_heartbeats(self._status)
        ):
            self._adopt(await self._caller.request("GET", self._path), keep_status=True)
            return
        answer = await self._caller.request(
            "PATCH",
            path_of("api", "v1", "nodes", self._settings.name, "status"),
            body={"status": status},
            content_type=MERGE_PATCH,
        )
        self._adopt(answer)
        self._status = status
        self._posted_at = now


def without_heartbeats(status: Json) -> Json:
    """The status as kubelet compares it to decide whether it changed: heartbeat times aside."""
    conditions = [
        {k: v for k, v in c.items() if k != "lastHeartbeatTime"}
        for c in status.get("conditions") or []
    ]
    return {**status, "conditions": conditions}


class LeaseSync:
    """Renews the node's Lease in ``kube-node-lease`` every 10 s: the heartbeat the node
    lifecycle controller reads. Updates the cached Lease directly, as kubelet does; reads it
    again only after a conflict or when it is missing."""

    def __init__(
        self,
        caller: ApiCaller,
        node_name: str,
        node_uid: Callable[[], str | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._caller = caller
        self._name = node_name
        self._node_uid = node_uid
        self._clock = clock
        self._version: str | None = None
        self.renewed_at: float | None = None

    @property
    def _path(self) -> str:
        return path_of("apis", "coordination.k8s.io", "v1", "namespaces", LEASE_NAMESPACE,
                       "leases", self._name)  # fmt: skip

    async def run(self) -> None:
        failures = 0
        while True:
            uid = self._node_uid()
            if uid is None:  # the lease is owned by the Node: wait for it
                await asyncio.sleep(0.2)
                continue
            try:
                await self.renew_once(uid)
            except ApiError as err:
                failures += 1
                delay = jittered(RETRY_BASE_SECONDS, failures, RETRY_CAP_SECONDS)
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "lease %s: %s; again in %.1fs", self._name, err, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            await asyncio.sleep(renew_interval())

    async def renew_once(self, node_uid: str) -> None:
        now = self._clock()
        if self._version is not None:
            body = lease_body(self._name, node_uid, now, resource_version=self._version)
            try:
                lease = await self._caller.request("PUT", self._path, body=body)
                self._renewed(lease, now)
                return
            except ApiError as err:
                if not (err.conflict or err.not_found):
                    raise
                self._version = None
        try:
            current = await self._caller.request("GET", self._path)
        except ApiError as err:
            if not err.not_found:
                raise
            body = lease_body(self._name, node_uid, now)
            path = path_of("apis", "coordination.k8s.io", "v1", "namespaces", LEASE_NAMESPACE,
                           "leases")  # fmt: skip
            self._renewed(await self._caller.request("POST", path, body=body), now)
            return
        version = str((current.get("metadata") or {}).get("resourceVersion", ""))
        body = lease_body(self._name, node_uid, now, resource_version=version)
        self._renewed(await self._caller.request("PUT", self._path, body=body), now)

    def _renewed(self, lease: Json, now: float) -> None:
        self._version = str((lease.get("metadata") or {}).get("resourceVersion", "")) or None
        self.renewed_at = now
