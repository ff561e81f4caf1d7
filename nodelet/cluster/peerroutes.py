"""The cluster's Nodes as pod network settings: host-gw routes to peers, this node's podCIDR.

Every other Node with a pod CIDR (``spec.podCIDRs``' first IPv4) and an ``InternalIP`` is a
route ``podCIDR via InternalIP`` (host-gw: the nodes share a link, no overlay, no NAT between
pods), merged with ``--pod-cidr-routes``, which wins where the two disagree. This node's own
``spec.podCIDR`` is handed to the network when the operator set no CIDR (kubelet passes it to
the runtime the same way, ``UpdateRuntimeConfig``).

The Nodes are listed and watched on a thread of their own (the node's credentials may get, list
and watch Nodes under the Node authorizer); the loop keeps the last-known set while the API
server is away, so its routes stay, and a relist when it is back replaces the set whole (a Node
deleted meanwhile loses its route).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from nodelet.cluster.apiclient import ApiCaller, ApiError, jittered
from nodelet.config import AgentConfig
from nodelet.network.api import NetworkError, PodNetwork

log = logging.getLogger(__name__)

Json = dict[str, Any]

NODES_PATH = "/api/v1/nodes"
WATCH_TIMEOUT_SECONDS = 300
RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 10.0
REAPPLY_SECONDS = 30.0
"""Routes the kernel refused (a peer's gateway not yet on a connected network) are tried again
this often."""


class RoutedNetwork(Protocol):
    """What of :class:`nodelet.network.builtin.BuiltinNetwork` the Nodes drive."""

    unreachable: dict[str, str]

    async def set_pod_cidr_routes(self, routes: Mapping[str, str]) -> None: ...

    async def set_pod_cidr(self, cidr: str) -> None: ...


def first_ipv4_cidr(node: Json) -> str | None:
    """The Node's IPv4 pod CIDR: the first IPv4 of ``spec.podCIDRs``, else ``spec.podCIDR``."""
    spec = node.get("spec") or {}
    candidates = [*(spec.get("podCIDRs") or []), spec.get("podCIDR")]
    for text in candidates:
        if not isinstance(text, str):
            continue
        with contextlib.suppress(ValueError):
            return str(ipaddress.IPv4Network(text))
    return None


def internal_ip(node: Json) -> str | None:
    """The Node's first IPv4 ``InternalIP``: the address its peers route pod traffic to."""
    for address in (node.get("status") or {}).get("addresses") or []:
        if not isinstance(address, dict) or address.get("type") != "InternalIP":
            continue
        with contextlib.suppress(ValueError):
            return str(ipaddress.IPv4Address(str(address.get("address"))))
    return None


def node_routes(nodes: Iterable[Json], own_name: str) -> dict[str, str]:
    """pod CIDR -> InternalIP of every other Node that has both. Two Nodes claiming one CIDR
    (the node IPAM controller never does that) resolve to the first by name, deterministically."""
    routes: dict[str, str] = {}
    for node in sorted(nodes, key=_name):
        if _name(node) == own_name:
            continue
        cidr, gateway = first_ipv4_cidr(node), internal_ip(node)
        if cidr is not None and gateway is not None:
            routes.setdefault(cidr, gateway)
    return routes


def merge_routes(from_nodes: Mapping[str, str], from_flag: Mapping[str, str]) -> dict[str, str]:
    """``--pod-cidr-routes`` over the Nodes' routes: a Node route whose CIDR overlaps a flag
    route is left out (the operator's word wins, also for a wider or narrower CIDR, which the
    kernel would otherwise prefer by prefix length)."""
    flag = {str(ipaddress.IPv4Network(c)): g for c, g in from_flag.items()}
    flag_nets = [ipaddress.IPv4Network(c) for c in flag]
    merged: dict[str, str] = {}
    for cidr, gateway in from_nodes.items():
        net = ipaddress.IPv4Network(cidr)
        if not any(net.overlaps(other) for other in flag_nets):
            merged[str(net)] = gateway
    merged.update(flag)
    return merged


def _name(node: Json) -> str:
    return str((node.get("metadata") or {}).get("name", ""))


class PeerRoutes:
    """Nodes -> the network's peer routes (always) and its pod CIDR (with ``learn_cidr``)."""

    def __init__(
        self,
        caller: ApiCaller,
        node_name: str,
        network: RoutedNetwork,
        flag_routes: Mapping[str, str],
        *,
        learn_cidr: bool,
        reapply_seconds: float = REAPPLY_SECONDS,
    ) -> None:
        self._caller = caller
        self._node_name = node_name
        self._network = network
        self._flag_routes = dict(flag_routes)
        self._learn_cidr = learn_cidr
        self._reapply_seconds = reapply_seconds
        self._nodes: dict[str, Json] | None = None
        """Last-known Nodes by name; None until the first list."""
        self._applied: dict[str, str] | None = None
        self._own_cidr: str | None = None
        self._ignored_cidr: str | None = None
        self._wake = asyncio.Event()
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._watch_nodes, args=(loop,), name="node-watch", daemon=True
        )
        self._thread.start()
        self._task = asyncio.create_task(self.run(), name="peer-routes")

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- the loop's side ----------------------------------------------------------------------

    def on_list(self, items: list[Json]) -> None:
        self._nodes = {_name(node): node for node in items if _name(node)}
        self._wake.set()

    def on_event(self, type_: str, node: Json) -> None:
        if self._nodes is None:
            return  # a list comes first
        name = _name(node)
        if type_ == "DELETED":
            self._nodes.pop(name, None)
        elif name:
            self._nodes[name] = node
        self._wake.set()

    def wanted(self) -> dict[str, str]:
        """The routes the network should have now (the flag's alone before the first list)."""
        nodes = node_routes(self._nodes.values(), self._node_name) if self._nodes else {}
        return merge_routes(nodes, self._flag_routes)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._reapply_seconds)
            self._wake.clear()
            try:
                await self.apply_once()
            except (NetworkError, OSError) as err:
                log.error("pod network: applying the Nodes' settings failed: %s", err)

    async def apply_once(self) -> None:
        """Hands the network what changed: this node's pod CIDR, then the peer routes (again
        when some were refused, in case their gateways became reachable)."""
        await self._own_pod_cidr()
        wanted = self.wanted()
        if wanted != self._applied or self._network.unreachable:
            if wanted != self._applied:
                log.info("pod CIDR routes: %s", _describe(wanted))
            await self._network.set_pod_cidr_routes(wanted)
            self._applied = wanted

    async def _own_pod_cidr(self) -> None:
        own = (self._nodes or {}).get(self._node_name)
        cidr = first_ipv4_cidr(own) if own is not None else None
        if cidr is None:
            return
        if not self._learn_cidr:
            if cidr != self._ignored_cidr:
                self._ignored_cidr = cidr
                log.info(
                    "the Node's spec.podCIDR %s is not used: the pod CIDR was configured", cidr
                )
            return
        if cidr != self._own_cidr:
            self._own_cidr = cidr  # a CIDR the network refuses is not tried again
            try:
                await self._network.set_pod_cidr(cidr)
            except NetworkError as err:
                log.error("the Node's spec.podCIDR %s cannot be used: %s", cidr, err)

    # -- the watch thread ---------------------------------------------------------------------

    def _deliver(
        self, loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any
    ) -> None:
        if self._stop.is_set() or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed in between
            self._stop.set()

    def _watch_nodes(self, loop: asyncio.AbstractEventLoop) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                listing = self._caller.request_sync("GET", NODES_PATH, query={})
                items = [i for i in listing.get("items") or [] if isinstance(i, dict)]
                self._deliver(loop, self.on_list, items)
                version = str((listing.get("metadata") or {}).get("resourceVersion", ""))
                failures = 0
                while not self._stop.is_set() and version:
                    version = self._watch(loop, version)
            except ApiError as err:
                failures += 1
                delay = jittered(RETRY_BASE_SECONDS, failures, RETRY_CAP_SECONDS)
                level = logging.DEBUG if failures > 1 else logging.WARNING
                log.log(
                    level, "watching Nodes failed (%s); routes kept, again in %.1fs", err, delay
                )
                self._stop.wait(delay)
            except Exception:
                log.exception("node watch failed")
                self._stop.wait(RETRY_CAP_SECONDS)

    def _watch(self, loop: asyncio.AbstractEventLoop, version: str) -> str:
        """Watches from ``version``; the version to resume from, or "" to relist (410 Gone)."""
        query = {"resourceVersion": version, "allowWatchBookmarks": "true"}
        for event in self._caller.watch(NODES_PATH, query, self._stop, WATCH_TIMEOUT_SECONDS):
            if event.type == "ERROR":
                log.debug("node watch ended: %s", event.object.get("message"))
                return ""
            meta = event.object.get("metadata") or {}
            version = str(meta.get("resourceVersion", version))
            if event.type in ("ADDED", "MODIFIED", "DELETED"):
                self._deliver(loop, self.on_event, event.type, event.object)
        return version


def peer_routes(
    config: AgentConfig, caller: ApiCaller, network: PodNetwork | None
) -> PeerRoutes | None:
    """The agent's PeerRoutes: for the built-in network only (a CNI plugin routes itself)."""
    from nodelet.network.builtin import BuiltinNetwork

    if not isinstance(network, BuiltinNetwork):
        return None
    return PeerRoutes(
        caller,
        config.node_name,
        network,
        dict(config.pod_cidr_routes),
        learn_cidr=network.learns_cidr,
    )


def _describe(routes: Mapping[str, str]) -> str:
    return ", ".join(f"{c} via {g}" for c, g in sorted(routes.items())) or "none"
