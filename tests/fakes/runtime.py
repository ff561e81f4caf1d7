"""An in-memory ``Runtime`` for component tests of the pod workers: no root, no processes.

It keeps what a real runtime would observe (sandboxes, container runs with pids and times from
an injected clock) and what the workers asked of it, in order, so tests assert on behaviour:
what started, what was killed, with which grace period, and when. Gates let a test hold a start
or a kill half-way, to create the interleavings the dispatch rules are about.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from nodelet.runtime.api import (
    ChangeCallback,
    ContainerConfig,
    ContainerRecord,
    ContainerStartError,
    KnownPod,
    SandboxConfig,
    SandboxStatus,
)


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakePod:
    record: dict[str, Any]
    created_at: float
    alive: bool = True
    runs: list[ContainerRecord] = field(default_factory=list)
    terminating: bool = False
    grace_seconds: float | None = None


class FakeRuntime:
    """Implements ``nodelet.runtime.api.Runtime`` in memory."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.pods: dict[str, FakePod] = {}
        self.calls: list[tuple[str, str, Any]] = []
        """(operation, pod uid, detail) in the order the workers asked."""
        self.start_gate: asyncio.Event | None = None
        """When set to an unset event, starts wait for it (a slow exec)."""
        self.kill_gate: asyncio.Event | None = None
        """When set to an unset event, kills wait for it (a long grace period)."""
        self.start_errors: dict[str, ContainerStartError] = {}
        """Container name -> the error its next starts raise."""
        self._pids = itertools.count(1000)
        self._callbacks: list[ChangeCallback] = []

    # -- what tests do to the "processes" ----------------------------------------------------

    def exit(self, pod_uid: str, name: str, code: int) -> None:
        """The running container ``name`` exits with ``code`` now."""
        pod = self.pods[pod_uid]
        index = next(i for i, r in enumerate(pod.runs) if r.name == name and r.running)
        pod.runs[index] = dataclasses.replace(
            pod.runs[index], finished_at=self.clock(), exit_code=code
        )
        self._notify(pod_uid)

    def leave(self, pod_uid: str, record: dict[str, Any], *, terminating: bool = False) -> None:
        """A pod a previous agent left running (for adoption)."""
        self.pods[pod_uid] = FakePod(record, self.clock(), terminating=terminating)

    def running(self, pod_uid: str) -> list[str]:
        pod = self.pods.get(pod_uid)
        return [r.name for r in pod.runs if r.running] if pod and pod.alive else []

    def ops(self, operation: str) -> list[tuple[str, Any]]:
        return [(uid, detail) for op, uid, detail in self.calls if op == operation]

    def _notify(self, pod_uid: str) -> None:
        for callback in self._callbacks:
            callback(pod_uid)

    # -- Runtime protocol --------------------------------------------------------------------

    def subscribe(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def list_pods(self) -> list[KnownPod]:
        return [
            KnownPod(uid, pod.record, pod.terminating, pod.grace_seconds)
            for uid, pod in self.pods.items()
        ]

    def _status(self, uid: str, pod: FakePod) -> SandboxStatus:
        return SandboxStatus(
            pod_uid=uid,
            ready=pod.alive,
            holder_pid=1 if pod.alive else None,
            created_at=pod.created_at,
            containers=tuple(pod.runs),
        )

    async def pod_status(self, pod_uid: str) -> SandboxStatus | None:
        pod = self.pods.get(pod_uid)
        return None if pod is None else self._status(pod_uid, pod)

    async def run_sandbox(self, config: SandboxConfig, pod: dict[str, Any]) -> SandboxStatus:
        self.calls.append(("run_sandbox", config.pod_uid, config))
        existing = self.pods.get(config.pod_uid)
        if existing is None or not existing.alive:
            runs = existing.runs if existing else []
            existing = FakePod(pod, self.clock(), runs=runs, grace_seconds=config.grace_seconds)
            self.pods[config.pod_uid] = existing
        return self._status(config.pod_uid, existing)

    async def start_container(self, pod_uid: str, config: ContainerConfig) -> ContainerRecord:
        self.calls.append(("start_container", pod_uid, config.name))
        if self.start_gate is not None:
            await self.start_gate.wait()
        error = self.start_errors.get(config.name)
        if error is not None:
            raise error
        pod = self.pods[pod_uid]
        record = ContainerRecord(config.name, config.attempt, next(self._pids), self.clock())
        pod.runs.append(record)
        return record

    async def stop_container(self, pod_uid: str, name: str, grace_seconds: float) -> None:
        self.calls.append(("stop_container", pod_uid, (name, grace_seconds)))
        if name in self.running(pod_uid):
            self.exit(pod_uid, name, 143)

    async def stop_sandbox(self, pod_uid: str, grace_seconds: float) -> None:
        self.calls.append(("stop_sandbox", pod_uid, grace_seconds))
        pod = self.pods.get(pod_uid)
        if pod is not None:
            pod.alive = False

    async def kill_pod(self, pod_uid: str, grace_seconds: float) -> None:
        self.calls.append(("kill_pod", pod_uid, grace_seconds))
        if self.kill_gate is not None:
            await self.kill_gate.wait()
        pod = self.pods.pop(pod_uid, None)
        if pod is not None:
            for name in [r.name for r in pod.runs if r.running]:
                index = next(i for i, r in enumerate(pod.runs) if r.name == name and r.running)
                pod.runs[index] = dataclasses.replace(
                    pod.runs[index], finished_at=self.clock(), exit_code=137
                )
        self.calls.append(("killed", pod_uid, grace_seconds))
