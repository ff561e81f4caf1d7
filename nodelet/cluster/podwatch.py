"""List and watch the pods bound to this node, on a thread, feeding the event loop.

A watch is how a ``kubectl delete`` of a mirror pod is seen within milliseconds instead of at
the next resync. The stream is blocking, so it runs on a thread of its own; every list and
event is handed to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from nodelet.cluster.apiclient import ApiCaller, ApiError, jittered

log = logging.getLogger(__name__)

Json = dict[str, Any]

WATCH_TIMEOUT_SECONDS = 300
"""Each watch ends after this long and is resumed from its last resourceVersion (client-go's
reflector picks 5-10 min)."""
RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 10.0


class PodWatch:
    """``on_list(items)`` after every (re)list, ``on_event(type, object)`` for each change."""

    def __init__(
        self,
        caller: ApiCaller,
        node_name: str,
        loop: asyncio.AbstractEventLoop,
        on_list: Callable[[list[Json]], None],
        on_event: Callable[[str, Json], None],
    ) -> None:
        self._caller = caller
        self._query = {"fieldSelector": f"spec.nodeName={node_name}"}
        self._loop = loop
        self._on_list = on_list
        self._on_event = on_event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """The thread ends at the next event or watch timeout; it is a daemon, so it never holds
        up the agent's exit."""
        self._stop.set()

    def _deliver(self, callback: Callable[..., None], *args: Any) -> None:
        if not self._stop.is_set() and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # the loop closed in between
                self._stop.set()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                version = self._list()
                failures = 0
                while not self._stop.is_set() and version:
                    version = self._watch(version)
            except ApiError as err:
                failures += 1
                delay = jittered(RETRY_BASE_SECONDS, failures, RETRY_CAP_SECONDS)
                level = logging.DEBUG if failures > 1 else logging.WARNING
                log.log(level, "watching this node's pods failed (%s); again in %.1fs", err, delay)
                self._stop.wait(delay)
            except Exception:
                log.exception("pod watch failed")
                self._stop.wait(RETRY_CAP_SECONDS)

    def _list(self) -> str:
        listing = self._caller.request_sync("GET", "/api/v1/pods", query=self._query)
        items = [item for item in listing.get("items") or [] if isinstance(item, dict)]
        self._deliver(self._on_list, items)
        return str((listing.get("metadata") or {}).get("resourceVersion", ""))

    def _watch(self, version: str) -> str:
        """Watches from ``version``; the version to resume from, or "" to relist (410 Gone)."""
        query = {**self._query, "resourceVersion": version, "allowWatchBookmarks": "true"}
        for event in self._caller.watch("/api/v1/pods", query, self._stop, WATCH_TIMEOUT_SECONDS):
            meta = event.object.get("metadata") or {}
            if event.type == "ERROR":
                log.debug("pod watch ended: %s", event.object.get("message"))
                return ""  # usually 410 Gone: the version is too old; relist
            version = str(meta.get("resourceVersion", version))
            if event.type in ("ADDED", "MODIFIED", "DELETED"):
                self._deliver(self._on_event, event.type, event.object)
        return version
