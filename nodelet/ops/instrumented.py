"""The runtime as the pod workers see it, measured (kubelet's ``instrumented_services.go``).

Every call is counted and timed by operation (kubelet_runtime_operations_*). Two things more:
the latest ``SandboxStatus`` of each pod is kept, so a scrape counts running pods and
containers without asking the runtime; and the reason of the last failed container start is
kept for the ``Failed`` event that follows it, to label kubelet_started_containers_errors_total
with kubelet's error code (the event itself carries only the message).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from nodelet import reasons
from nodelet.runtime.api import (
    ChangeCallback,
    ContainerConfig,
    ContainerRecord,
    ContainerStartError,
    KnownPod,
    Runtime,
    SandboxConfig,
    SandboxStatus,
)

T = TypeVar("T")
Observer = Callable[[str, float, bool], None]
"""Called with (operation, seconds, failed) after every runtime call."""


class InstrumentedRuntime:
    """Wraps a ``Runtime``; implements the same protocol."""

    def __init__(self, inner: Runtime, observe: Observer) -> None:
        self._inner = inner
        self._observe = observe
        self._sandboxes: dict[str, SandboxStatus] = {}
        self._start_errors: dict[tuple[str, str], str] = {}

    def sandboxes(self) -> Iterable[SandboxStatus]:
        """The latest status seen of every pod the runtime still has."""
        return self._sandboxes.values()

    def take_start_error(self, pod_uid: str, name: str) -> str | None:
        """The reason of the last failed start of the container, once."""
        return self._start_errors.pop((pod_uid, name), None)

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = time.monotonic()
        failed = True
        try:
            result = await call
            failed = False
            return result
        finally:
            self._observe(operation, time.monotonic() - started, failed)

    def _seen(self, pod_uid: str, status: SandboxStatus | None) -> SandboxStatus | None:
        if status is None:
            self._sandboxes.pop(pod_uid, None)
        else:
            self._sandboxes[pod_uid] = status
        return status

    # -- the Runtime protocol -----------------------------------------------------------------

    def subscribe(self, callback: ChangeCallback) -> None:
        self._inner.subscribe(callback)

    async def start(self) -> None:
        await self._inner.start()

    async def close(self) -> None:
        await self._inner.close()

    async def list_pods(self) -> list[KnownPod]:
        return await self._timed("list_pods", self._inner.list_pods())

    async def run_sandbox(self, config: SandboxConfig, pod: dict[str, Any]) -> SandboxStatus:
        status = await self._timed("run_sandbox", self._inner.run_sandbox(config, pod))
        self._seen(config.pod_uid, status)
        return status

    async def pod_status(self, pod_uid: str) -> SandboxStatus | None:
        return self._seen(pod_uid, await self._timed("pod_status", self._inner.pod_status(pod_uid)))

    async def start_container(self, pod_uid: str, config: ContainerConfig) -> ContainerRecord:
        self._start_errors.pop((pod_uid, config.name), None)
        try:
            return await self._timed(
                "start_container", self._inner.start_container(pod_uid, config)
            )
        except ContainerStartError as err:
            self._start_errors[(pod_uid, config.name)] = err.reason
            raise
        except Exception:
            self._start_errors[(pod_uid, config.name)] = reasons.RUN_CONTAINER_ERROR
            raise

    async def stop_container(self, pod_uid: str, name: str, grace_seconds: float) -> None:
        await self._timed(
            "stop_container", self._inner.stop_container(pod_uid, name, grace_seconds)
        )

    async def stop_sandbox(self, pod_uid: str, grace_seconds: float) -> None:
        await self._timed("stop_sandbox", self._inner.stop_sandbox(pod_uid, grace_seconds))

    async def kill_pod(self, pod_uid: str, grace_seconds: float) -> None:
        try:
            await self._timed("kill_pod", self._inner.kill_pod(pod_uid, grace_seconds))
        finally:
            self._sandboxes.pop(pod_uid, None)
            for key in [k for k in self._start_errors if k[0] == pod_uid]:
                del self._start_errors[key]
