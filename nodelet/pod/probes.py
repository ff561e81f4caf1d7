"""One pod's probes: a prober worker per probe of each running container, as kubelet's
prober manager keeps them, and what their results mean for the pod's status and restarts.

Workers belong to one run (attempt) of a container: a restarted container gets new ones with
kubelet's initial results (not ready, not started). The startup probe gates the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nodelet import reasons
from nodelet.model import StaticPod
from nodelet.probe.exec import exec_probe
from nodelet.probe.grpc import grpc_probe
from nodelet.probe.http import http_probe, resolve_port
from nodelet.probe.result import Outcome, ProbeResult
from nodelet.probe.tcp import tcp_probe
from nodelet.probe.worker import KINDS, ProbeSpec, ProbeWorker
from nodelet.runtime.api import ContainerConfig, ContainerRecord

log = logging.getLogger(__name__)

PROBE_KEYS = {kind: f"{kind}Probe" for kind in KINDS}
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ProbeTarget:
    """Where a container's probes go: its process, and its pod's network."""

    pid: int
    pod_ip: str
    """The pod IP (the node's for hostNetwork); "" while a pod of its own netns has none."""
    netns: str | None
    """``/proc/<holder>/ns/net``; None for hostNetwork (the agent's own namespace)."""
    uid: int | None
    gid: int | None
    cgroup_procs: list[str] = field(default_factory=list)
    """The cgroups an exec probe joins (``runc exec`` joins the container's own)."""
    start_time: int | None = None
    """``pid``'s kernel start time when it was known to be the container: an exec probe never
    enters a process that took the pid over. None: whatever has the pid when it runs."""
    container: ContainerConfig | None = None
    """The container's prepared config (its last start): exec probes and postStart exec
    handlers get its user, groups, capabilities, no_new_privs, seccomp filter, environment
    and working directory, as CRI's ExecSync applies the container's process spec. None:
    only ``uid``/``gid``, with the agent's capabilities."""


@dataclass
class _Run:
    attempt: int
    workers: dict[str, ProbeWorker]
    verdict: tuple[str, ProbeResult] | None = None
    """The liveness or startup failure that must kill this run (until it was acted on)."""
    acted: bool = False


class PodProbes:
    """The probe workers of one pod; ``changed`` is called when a result changed (the pod
    worker syncs then), ``event`` with kubelet's Unhealthy events."""

    def __init__(
        self,
        pod: StaticPod,
        changed: Callable[[], None],
        event: Callable[[str, str, str, str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pod = pod
        self._changed = changed
        self._event = event
        self._clock = clock
        self._runs: dict[str, _Run] = {}

    def _probed(self) -> dict[str, Mapping[str, Any]]:
        """App containers with at least one probe (init containers are never probed)."""
        return {
            c["name"]: c
            for c in self.pod.containers
            if any(c.get(key) for key in PROBE_KEYS.values())
        }

    def sync(
        self,
        running: Mapping[str, ContainerRecord],
        target: Callable[[ContainerRecord, Mapping[str, Any]], ProbeTarget],
    ) -> None:
        """Workers for every running run of a probed container; none for anything else."""
        probed = self._probed()
        for name in list(self._runs):
            record = running.get(name)
            if record is None or record.attempt != self._runs[name].attempt or name not in probed:
                self._stop(name)
        for name, container in probed.items():
            record = running.get(name)
            if record is not None and name not in self._runs:
                self._start(container, record, target(record, container))

    def _start(
        self, container: Mapping[str, Any], record: ContainerRecord, target: ProbeTarget
    ) -> None:
        name = container["name"]
        run = _Run(record.attempt, {})
        self._runs[name] = run
        # The worker's clock is monotonic; the run started this long ago.
        started = time.monotonic() - max(0.0, self._clock() - record.started_at)
        for kind, key in PROBE_KEYS.items():
            probe = container.get(key)
            if not probe:
                continue
            spec = ProbeSpec.from_k8s(kind, probe)
            worker = ProbeWorker(
                spec,
                _prober(probe, container, target, float(spec.timeout)),
                self._on_change(name, run),
                describe=f"pod={self.pod.namespace}/{self.pod.name} container={name}",
            )
            run.workers[kind] = worker
        if "startup" in run.workers:
            for kind, worker in run.workers.items():
                if kind != "startup":
                    worker.gate(False)
        for worker in run.workers.values():
            worker.start(started)

    def _on_change(self, name: str, run: _Run) -> Callable[[str, Outcome, ProbeResult], None]:
        def changed(kind: str, outcome: Outcome, result: ProbeResult) -> None:
            if self._runs.get(name) is not run:
                return  # a late result of a run that is over
            if outcome is Outcome.FAILURE:
                message = f"{kind.capitalize()} probe failed: {result.message}"
                self._event(reasons.EVENT_WARNING, reasons.UNHEALTHY_EVENT, message, name)
                if kind in ("liveness", "startup") and run.verdict is None:
                    run.verdict = (kind, result)
            if kind == "startup" and outcome is Outcome.SUCCESS:
                for other, worker in run.workers.items():
                    if other != "startup":
                        worker.gate(True)
            self._changed()

        return changed

    def _stop(self, name: str) -> None:
        run = self._runs.pop(name, None)
        if run is not None:
            for worker in run.workers.values():
                worker.stop()

    def stop(self) -> None:
        for name in list(self._runs):
            self._stop(name)

    # -- what the results mean ---------------------------------------------------------------

    def started(self, name: str) -> bool:
        """kubelet's ``started``: no startup probe, or it succeeded (for the current run)."""
        run = self._runs.get(name)
        worker = run.workers.get("startup") if run else None
        return worker is None or worker.result is Outcome.SUCCESS

    def ready(self, name: str) -> bool:
        """Started, and no readiness probe or it succeeded."""
        run = self._runs.get(name)
        worker = run.workers.get("readiness") if run else None
        if not self.started(name):
            return False
        return worker is None or worker.result is Outcome.SUCCESS

    def verdicts(self) -> list[tuple[str, int, str, ProbeResult]]:
        """(container, attempt, probe kind, result) of runs that must be killed, once each."""
        due = []
        for name, run in self._runs.items():
            if run.verdict is not None and not run.acted:
                run.acted = True
                due.append((name, run.attempt, *run.verdict))
        return due

    def grace_for(self, name: str, kind: str, pod_grace: float) -> float:
        """The probe's own terminationGracePeriodSeconds, else the pod's."""
        run = self._runs.get(name)
        worker = run.workers.get(kind) if run else None
        grace = worker.spec.termination_grace_period if worker else None
        return float(grace) if grace is not None else pod_grace


def _prober(
    probe: Mapping[str, Any], container: Mapping[str, Any], target: ProbeTarget, timeout: float
) -> Callable[[], Any]:
    """One attempt of ``probe`` (exec, httpGet or tcpSocket) against ``target``."""
    if probe.get("exec") is not None:
        command = [str(a) for a in probe["exec"].get("command") or []]

        async def run_exec() -> ProbeResult:
            return await exec_probe(
                command, target_pid=target.pid, uid=target.uid, gid=target.gid,
                timeout=timeout, cgroup_procs=target.cgroup_procs,
                target_start_time=target.start_time, container=target.container,
            )  # fmt: skip

        return run_exec
    if probe.get("httpGet") is not None:
        get = probe["httpGet"]
        port = resolve_port(get["port"], container)

        async def run_http() -> ProbeResult:
            return await http_probe(
                get, pod_ip=target.pod_ip, port=port, netns=target.netns, timeout=timeout
            )

        return run_http
    if probe.get("tcpSocket") is not None:
        sock = probe["tcpSocket"]
        port = resolve_port(sock["port"], container)
        host = str(sock.get("host") or target.pod_ip or LOOPBACK)

        async def run_tcp() -> ProbeResult:
            return await tcp_probe(host, port, netns=target.netns, timeout=timeout)

        return run_tcp
    if probe.get("grpc") is not None:
        grpc = probe["grpc"]
        grpc_port = int(grpc["port"])

        async def run_grpc() -> ProbeResult:
            return await grpc_probe(
                grpc, pod_ip=target.pod_ip, port=grpc_port, netns=target.netns, timeout=timeout
            )

        return run_grpc
    raise ValueError("a handler needs exec, httpGet, tcpSocket or grpc")


POST_START_TIMEOUT_SECONDS = 300.0
"""kubelet waits for a postStart handler without a limit; one that never returns would hold
the pod's worker for ever, so nodelet gives up after 5 min and counts it as failed."""


async def run_post_start(
    handler: Mapping[str, Any], container: Mapping[str, Any], target: ProbeTarget
) -> ProbeResult:
    """A postStart handler (exec, httpGet, sleep) against the container that just started."""
    if handler.get("sleep") is not None:
        await asyncio.sleep(float(handler["sleep"].get("seconds") or 0))
        return ProbeResult(Outcome.SUCCESS)
    try:
        run = _prober(handler, container, target, POST_START_TIMEOUT_SECONDS)
        result: ProbeResult = await run()
    except ValueError as err:
        return ProbeResult(Outcome.FAILURE, str(err))
    return result
