"""One asyncio task per pod UID: it syncs the pod until told to kill it, then tears it down.

kubelet's pod worker rules: a newer update replaces a pending one; a kill is never overwritten;
a static pod's next incarnation (same full name, new UID) starts only after the previous one is
completely gone, so an edited manifest never runs twice at once and its ports never clash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodelet import reasons
from nodelet.cgroups.driver import CgroupDriver
from nodelet.cgroups.podtree import create_pod_cgroups, fresh_container_cgroup
from nodelet.cgroups.quantity import QuantityError
from nodelet.cgroups.resources import container_limits, container_resources, pod_limits, qos_class
from nodelet.config import AgentConfig
from nodelet.image.lookup import ImageInfo, local_image
from nodelet.image.manager import ImageError, ImageManager
from nodelet.logs import retention
from nodelet.model import StaticPod
from nodelet.network.api import NetworkError, PodNetwork, PodNetworkRequest
from nodelet.pod import dns, hostsfile
from nodelet.pod.actions import (
    PodActions,
    StartAction,
    StartFailure,
    Waiting,
    backoff_key,
    compute_pod_actions,
    sandbox_backoff_key,
)
from nodelet.pod.admission import ADMISSION_CHECKS
from nodelet.pod.backoff import Backoff
from nodelet.pod.containerprep import (
    ContainerConfigError,
    PodContext,
    build_container_config,
    container_log_path,
    pod_hostname,
    pod_log_dir,
    sandbox_config,
)
from nodelet.pod.network import port_mappings
from nodelet.pod.nodesecurity import node_security
from nodelet.pod.podrecord import pod_record
from nodelet.pod.probes import PodProbes, ProbeTarget, run_post_start
from nodelet.pod.status import build_pod_status
from nodelet.pod.termination import ensure_file, message_file, termination_message
from nodelet.pod.volumes import (
    VolumeError,
    empty_dir_overuse,
    prepare_volumes,
    remove_pod_volumes,
)
from nodelet.probe.exec import start_time
from nodelet.probe.result import Outcome
from nodelet.runtime.api import (
    ContainerConfig,
    ContainerRecord,
    ContainerStartError,
    Runtime,
    SandboxStatus,
    UserNamespace,
)
from nodelet.security import userns
from nodelet.util import safepath
from nodelet.util.aio import wait_event
from nodelet.util.timefmt import parse_rfc3339

log = logging.getLogger(__name__)

RETRY_AFTER_ERROR_SECONDS = 1.0
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"

NETWORK_RETRY_SECONDS = 2.0
"""A pod whose network setup failed (no free IP, a hostPort taken) tries again this soon."""
VOLUME_REMOVAL_ATTEMPTS = 3
"""A tmpfs still busy is retried; what is left after that is swept at the next agent start."""
USAGE_CHECK_SECONDS = 10.0
"""How often emptyDir usage is measured against ``sizeLimit`` (kubelet's eviction interval)."""


def _no_event(_pod: StaticPod, _type: str, _reason: str, _message: str, _path: str) -> None:
    """Standalone (no API server): events are not recorded anywhere but the log."""


async def _plain_sync(_pod: StaticPod, sync: Awaitable[float | None]) -> float | None:
    """No agent around the worker (tests): the sync pass, untimed."""
    return await sync


@dataclass
class WorkerContext:
    """What every pod worker shares: the runtime, settings and the back-off table."""

    runtime: Runtime
    config: AgentConfig
    backoff: Backoff
    on_status: Callable[[str, dict[str, Any]], None]
    """Called with (pod UID, v1 PodStatus) after every sync."""
    on_event: Callable[[StaticPod, str, str, str, str], None] = _no_event
    """Called with (pod, type, reason, message, fieldPath): kubelet's events for the pod."""
    cgroups: CgroupDriver | None = None
    network: PodNetwork | None = None
    """The pod network (``--network-plugin``); None: a pod's netns has only loopback."""
    """The node's cgroup driver; None where cgroups are unusable (limits are then refused)."""
    sync_hook: Callable[[StaticPod, Awaitable[float | None]], Awaitable[float | None]] = _plain_sync
    """Awaits one sync pass and returns its result: the agent times it (metrics, /healthz)."""
    node_hostname: str = socket.gethostname()
    clock: Callable[[], float] = time.time
    """Wall-clock epoch seconds (container exit times are wall-clock); tests inject their own."""
    images: ImageManager | None = None
    """Makes each container's image present before its start; None: no image store (every
    image is taken as the node's own, as before images existed)."""


def _no_image(_reference: str) -> ImageInfo | None:
    return None


def _every_image_is_host(_reference: str) -> bool:
    return True


class WorkerState(enum.Enum):
    """kubelet's SyncPod / SyncTerminatingPod / SyncTerminatedPod, plus the wait for the
    previous pod of the same full name."""

    WAITING = "waiting"
    SYNCING = "syncing"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


_LEGAL_EDGES: dict[WorkerState, frozenset[WorkerState]] = {
    # WAITING -> SYNCING because the predecessor of this full name is gone.
    # WAITING -> TERMINATING because the pod was removed before it ever ran.
    WorkerState.WAITING: frozenset({WorkerState.SYNCING, WorkerState.TERMINATING}),
    # SYNCING -> TERMINATING because a kill was requested (it sticks).
    WorkerState.SYNCING: frozenset({WorkerState.TERMINATING}),
    # TERMINATING -> TERMINATED because every process and all pod state are gone.
    WorkerState.TERMINATING: frozenset({WorkerState.TERMINATED}),
    WorkerState.TERMINATED: frozenset(),
}


def describe(pod: StaticPod) -> str:
    return f"pod={pod.namespace}/{pod.name} uid={pod.uid}"


class PodWorker:
    """Drives one pod UID from first sync to full teardown."""

    def __init__(
        self, pod: StaticPod, ctx: WorkerContext, predecessor: PodWorker | None = None
    ) -> None:
        self.pod = pod
        self._ctx = ctx
        self._predecessor = predecessor
        self._wake = asyncio.Event()
        self._kill_requested = False
        self._failures: dict[str, StartFailure] = {}
        self._volume_paths: dict[str, str] | None = None
        network = self._ctx.network
        self._pod_ips: tuple[str, ...] = ()
        """The pod's IPs: its persisted allocation at first (re-adoption reports it at once)."""
        if network is not None and not pod.host_network:
            self._pod_ips = network.ips_of(pod.uid)
        self._network_holder: int | None = None
        """The holder whose netns the network was set up in (a new holder, a new setup)."""
        self._files_holder: int | None = None
        """The holder the pod's /etc files were written for (kubelet: once per sandbox)."""
        self.status: dict[str, Any] | None = None
        self._probes = PodProbes(pod, self.poke, self._probe_event, ctx.clock)
        self._configs: dict[str, ContainerConfig] = {}
        self._ready_cgroups: dict[str, list[str]] = {}
        self._unadoptable: set[tuple[str, int]] = set()
        """(container, attempt) whose config could not be rebuilt after adoption (logged once)."""
        """Container cgroups made with the pod's, each for its container's next run only."""
        """The last config each container was started with (its user for exec probes)."""
        self._terminal_failure: tuple[str, str] | None = None
        self._terminal_grace: float | None = None
        """The grace period of that stop: the pod's own unless an eviction says 0."""
        self._next_usage_check = 0.0
        """(reason, message) once the pod failed for good: past its active deadline, or refused
        at admission; it is stopped, reported Failed and never started again."""
        self._exit_reasons: dict[tuple[str, int], str] = {}
        self._exit_messages: dict[tuple[str, int], str] = {}
        """Runs the kernel OOM-killed (found in their cgroup): reported as OOMKilled."""
        self._oom_checked: set[tuple[str, int]] = set()
        self._messages_read: set[tuple[str, int]] = set()
        """Finished runs whose termination message was read (file and logs are final)."""
        self._image_waits: dict[str, ImageError] = {}
        """Containers held back by their image (ErrImagePull, ImagePullBackOff, ...) until
        its ``retry_at``: the image's back-off, never the container's CrashLoopBackOff."""
        self._images: dict[str, tuple[str, str]] = {}
        """(image, imageID) each container was last started on, for its status."""
        self.state = WorkerState.WAITING
        self.done = asyncio.Event()
        """Set once TERMINATED: the next pod of the same full name may start."""
        self.task: asyncio.Task[None] | None = None

    def _change_state(self, new: WorkerState) -> None:
        """The only place the state changes; an illegal edge is a bug, not a condition."""
        if new not in _LEGAL_EDGES[self.state]:
            raise AssertionError(f"pod worker {self.uid}: {self.state.value} -> {new.value}")
        log.debug("worker %s -> %s %s", self.state.value, new.value, describe(self.pod))
        self.state = new

    @property
    def uid(self) -> str:
        return self.pod.uid

    @property
    def killing(self) -> bool:
        return self._kill_requested

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"podworker-{self.uid}")

    def update(self, pod: StaticPod) -> None:
        """A newer desired state for the same UID; ignored once a kill was requested."""
        if not self._kill_requested:
            self.pod = pod
            self.poke()

    def kill(self) -> None:
        """Tear the pod down; sticky: nothing can revive this UID's worker."""
        self._kill_requested = True
        self.poke()

    def poke(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        try:
            if self._predecessor is not None:
                await self._predecessor.done.wait()
            if not self._kill_requested:
                self._change_state(WorkerState.SYNCING)
            wake_at: float | None = None
            while not self._kill_requested:
                try:
                    wake_at = await self._ctx.sync_hook(self.pod, self._sync())
                except Exception:
                    log.exception("sync failed %s", describe(self.pod))
                    wake_at = self._ctx.clock() + RETRY_AFTER_ERROR_SECONDS
                await self._sleep_until(wake_at)
            self._change_state(WorkerState.TERMINATING)
            await self._terminate()
            self._change_state(WorkerState.TERMINATED)
        except Exception:
            # Never silent: the worker is gone, so say so with the pod it was for.
            log.exception("pod worker failed %s", describe(self.pod))
        finally:
            self._probes.stop()
            self.done.set()

    async def _sleep_until(self, wake_at: float | None) -> None:
        timeout = self._ctx.config.resync_seconds
        if wake_at is not None:
            timeout = max(0.0, min(timeout, wake_at - self._ctx.clock()))
        await wait_event(self._wake, timeout)
        self._wake.clear()

    def _actions(self, sandbox: SandboxStatus | None) -> PodActions:
        actions = compute_pod_actions(
            self.uid,
            f"{self.pod.name}_{self.pod.namespace}({self.uid})",
            self.pod.spec,
            sandbox,
            self._failures,
            self._ctx.backoff,
            self._ctx.clock(),
        )
        self._hold_for_images(actions)
        return actions

    def _hold_for_images(self, actions: PodActions) -> None:
        """A start whose image failed waits, with the image's reason, until the image may be
        tried again (kubelet's image back-off; its next sync after a failed pull)."""
        now = self._ctx.clock()
        for start in list(actions.start):
            wait = self._image_waits.get(start.name)
            if wait is None or wait.retry_at <= now:
                continue
            actions.start.remove(start)
            actions.waiting[start.name] = Waiting(wait.reason, wait.message)
            actions.wake_no_later_than(wait.retry_at)

    async def _sync(self) -> float | None:
        """One pass: observe, decide, act, report. Returns when to sync again at the latest."""
        runtime = self._ctx.runtime
        sandbox = await self._pod_status()
        await self._inspect_finished_runs(sandbox)
        deadline_at = self._active_deadline(sandbox)
        if self._terminal_failure is None and sandbox is None:
            self._terminal_failure = self._admission_refusal()
        if self._terminal_failure is None and sandbox is not None:
            await self._check_local_storage()
        if self._terminal_failure is not None:
            await self._end_failed(sandbox, *self._terminal_failure)
            return None
        actions = self._actions(sandbox)
        if deadline_at is not None:
            actions.wake_no_later_than(deadline_at)
        self._backoff_events(actions)
        if actions.create_sandbox:
            if sandbox is not None:
                self._event(
                    reasons.EVENT_NORMAL, reasons.SANDBOX_CHANGED, reasons.SANDBOX_CHANGED_MESSAGE
                )
            if sandbox is not None and sandbox.finished_at is not None:
                # A re-creation opens or doubles the holder's back-off window.
                key = sandbox_backoff_key(self.uid)
                self._ctx.backoff.next(key, sandbox.finished_at, self._ctx.clock())
            sandbox = await self._create_sandbox()
            actions = self._actions(sandbox)
        starts = actions.start
        if starts and sandbox is not None and not await self._ensure_network(sandbox, actions):
            starts = []
        if starts and sandbox is not None and not await self._ensure_pod_files(sandbox, actions):
            starts = []
        for start in starts:
            await self._start_container(start, sandbox)
        if starts:
            sandbox = await self._pod_status()
            actions = self._actions(sandbox)
            if actions.start:
                self.poke()  # something already finished (a quick init container): go on now
        await self._adopt_configs(sandbox)
        if await self._sync_probes(sandbox):
            sandbox = await self._pod_status()
            actions = self._actions(sandbox)
        if actions.terminal_phase and sandbox is not None and sandbox.ready:
            # Nothing will run again: free the namespaces, as kubelet removes the sandbox.
            log.info("pod %s: ending its holder %s", actions.terminal_phase, describe(self.pod))
            await runtime.stop_sandbox(self.uid, 0.0)
            sandbox = await self._pod_status()
        self._report(sandbox, actions)
        return actions.wake_at

    async def _sync_probes(self, sandbox: SandboxStatus | None) -> bool:
        """Probe workers for the running containers; kill those a liveness or startup probe
        failed (restarted then by restartPolicy, as kubelet does). True when it killed one."""
        running = {}
        if sandbox is not None and sandbox.ready:
            running = {
                r.name: r
                for r in sandbox.containers
                if r.running and r.started_at >= sandbox.created_at
            }
        self._probes.sync(running, functools.partial(self.probe_target, sandbox))
        killed = False
        for name, _attempt, kind, result in self._probes.verdicts():
            grace = self._probes.grace_for(name, kind, self.pod.grace_seconds)
            message = f"Container {name} failed {kind} probe, will be restarted"
            self._event(
                reasons.EVENT_NORMAL, reasons.KILLING_EVENT, message, self._field_path(name)
            )
            log.info("%s %s: %s", message, describe(self.pod), result.message)
            await self._ctx.runtime.stop_container(self.uid, name, grace)
            killed = True
        return killed

    async def _adopt_configs(self, sandbox: SandboxStatus | None) -> None:
        """Running containers this worker did not start (adopted after an agent restart) get
        the config their start was prepared with, rebuilt from the same spec and attempt: exec
        probes and ``nodelet exec`` then enter them with the container's own user,
        capabilities, seccomp filter and cgroup, as runc exec does, never the agent's."""
        if sandbox is None or not sandbox.ready:
            return
        for record in sandbox.containers:
            known = self._configs.get(record.name)
            if not record.running or (known is not None and known.attempt >= record.attempt):
                continue
            container = next((c for c in self._all_containers() if c["name"] == record.name), None)
            if container is None or (record.name, record.attempt) in self._unadoptable:
                continue
            try:
                await self._prepare_volumes()
                config = await asyncio.to_thread(
                    build_container_config, self._pod_context(sandbox), container, record.attempt
                )
            except (ContainerConfigError, VolumeError, QuantityError, OSError) as err:
                self._unadoptable.add((record.name, record.attempt))
                log.warning("cannot rebuild the config of adopted container %s container=%s: %s",
                            describe(self.pod), record.name, err)  # fmt: skip
                continue
            images = self._ctx.images
            if images is not None and record.name not in self._images:
                found = await asyncio.to_thread(images.image_of, container.get("image", ""))
                if found is not None:
                    self._images[record.name] = (found.name, found.image_id)
            driver = self._ctx.cgroups
            procs = driver.container_procs(self.uid, self._qos, record.name) if driver else []
            self._configs[record.name] = dataclasses.replace(
                config, cgroup_procs=procs, log_max_bytes=self._ctx.config.container_log_max_size
            )

    def started_config(self, name: str) -> ContainerConfig | None:
        """The config the container's latest start was prepared with (``nodelet exec``)."""
        return self._configs.get(name)

    def probe_target(
        self, sandbox: SandboxStatus | None, record: ContainerRecord, container: Mapping[str, Any]
    ) -> ProbeTarget:
        """Where a command entering the container runs (exec probes, hooks, the kubelet API's
        exec): its process, namespaces, cgroup and the config it was started with."""
        started = self._configs.get(container["name"])
        if started is not None and started.attempt != record.attempt:
            started = None  # a newer run whose config is not rebuilt yet (_adopt_configs)
        user = started.run_as_user if started is not None else None
        group = started.run_as_group if started is not None else None
        holder = sandbox.holder_pid if sandbox is not None else None
        netns = None if self.pod.host_network or holder is None else f"/proc/{holder}/ns/net"
        node_ip = self._ctx.config.node_ip
        pod_ip = self.pod.ip(node_ip, sandbox.pod_ip if sandbox else None) or ""
        driver = self._ctx.cgroups
        procs = driver.holder_procs(self.uid, self._qos) if driver is not None else []
        if started is not None and started.cgroup_procs:
            procs = list(started.cgroup_procs)  # runc exec joins the container's own cgroup
        return ProbeTarget(
            record.pid,
            pod_ip,
            netns,
            user,
            group,
            procs,
            start_time=start_time(record.pid),
            container=started,
        )

    def _probe_event(self, type_: str, reason: str, message: str, container: str) -> None:
        self._event(type_, reason, message, self._field_path(container))

    def _event(self, type_: str, reason: str, message: str, field_path: str = "") -> None:
        self._ctx.on_event(self.pod, type_, reason, message, field_path)

    def _field_path(self, name: str) -> str:
        init = any(c["name"] == name for c in self.pod.init_containers)
        return f"spec.{'initContainers' if init else 'containers'}{{{name}}}"

    def _backoff_events(self, actions: PodActions) -> None:
        for name, waiting in actions.waiting.items():
            if waiting.reason == reasons.CRASH_LOOP_BACK_OFF:
                message = f"Back-off restarting failed container {name} in pod {describe(self.pod)}"
                self._event(
                    reasons.EVENT_WARNING, reasons.BACK_OFF_EVENT, message, self._field_path(name)
                )

    async def _create_sandbox(self) -> SandboxStatus:
        pod, config = self.pod, self._ctx.config
        retention.mark(pod_log_dir(config.pod_logs_dir, pod))
        log.info("creating sandbox %s", describe(pod))
        user_namespace = None
        if userns.wants_user_namespace(pod.spec):
            user_namespace = await asyncio.to_thread(
                userns.get_or_create, config.pods_state_dir, config.user_namespaces_range, pod.uid
            )
        sandbox = sandbox_config(pod, self._ctx.node_hostname, user_namespace)
        driver = self._ctx.cgroups
        if driver is not None:
            limits = pod_limits(pod.spec, config.pod_pids_limit)
            containers = self._all_containers()
            self._ready_cgroups = await asyncio.to_thread(
                create_pod_cgroups, driver, pod.uid, self._qos, limits, containers
            )
            procs = tuple(driver.holder_procs(pod.uid, self._qos))
            sandbox = dataclasses.replace(sandbox, cgroup_procs=procs)
        return await self._ctx.runtime.run_sandbox(sandbox, pod_record(pod))

    def _active_deadline(self, sandbox: SandboxStatus | None) -> float | None:
        """kubelet's active deadline: ``activeDeadlineSeconds`` after the pod's start time
        (its first sandbox). Returns when it falls; sets ``_terminal_failure`` once it fell."""
        seconds = self.pod.spec.get("activeDeadlineSeconds")
        if not isinstance(seconds, int) or isinstance(seconds, bool) or sandbox is None:
            return None
        started = (self.status or {}).get("startTime")
        start = parse_rfc3339(started) if isinstance(started, str) else sandbox.created_at
        deadline_at = start + seconds
        if self._ctx.clock() >= deadline_at and self._terminal_failure is None:
            self._terminal_failure = (reasons.DEADLINE_EXCEEDED, DEADLINE_MESSAGE)
            self._event(reasons.EVENT_WARNING, reasons.DEADLINE_EXCEEDED, DEADLINE_MESSAGE)
        return deadline_at

    async def _pod_status(self) -> SandboxStatus | None:
        """The runtime's view of the pod, with the IP the pod network gave it."""
        sandbox = await self._ctx.runtime.pod_status(self.uid)
        if sandbox is not None and sandbox.pod_ip is None and self._pod_ips:
            sandbox = dataclasses.replace(sandbox, pod_ip=self._pod_ips[0])
        return sandbox

    async def _ensure_network(self, sandbox: SandboxStatus, actions: PodActions) -> bool:
        """Attach the pod's netns to the pod network, once per holder, before any container
        starts (kubelet's sandbox network setup). A failure (``no free pod IP``, a hostPort in
        use) holds every start back and is retried."""
        network = self._ctx.network
        holder = sandbox.holder_pid
        if network is None or self.pod.host_network or holder is None:
            return True
        if self._network_holder == holder:
            return True
        request = PodNetworkRequest(
            self.uid, self.pod.namespace, self.pod.name, f"/proc/{holder}/ns/net",
            port_mappings(self.pod),
        )  # fmt: skip
        try:
            result = await network.setup(request)
        except (NetworkError, OSError) as err:
            now = self._ctx.clock()
            message = f"failed to set up the pod network: {err}"
            self._event(reasons.EVENT_WARNING, reasons.FAILED_CREATE_POD_SANDBOX, message)
            for start in actions.start:
                self._record_failure(start.name, reasons.CREATE_POD_SANDBOX_ERROR, message, now)
                actions.waiting[start.name] = Waiting(reasons.CREATE_POD_SANDBOX_ERROR, message)
            actions.wake_no_later_than(now + NETWORK_RETRY_SECONDS)
            return False
        self._pod_ips, self._network_holder = result.ips, holder
        return True

    async def _ensure_pod_files(self, sandbox: SandboxStatus, actions: PodActions) -> bool:
        """The pod's ``/etc/hostname``, ``/etc/hosts`` and ``/etc/resolv.conf``, written once
        per holder (after its network, for the IPs) before any container starts. A resolver
        file that cannot be read holds every start back, as it fails kubelet's sandbox."""
        holder = sandbox.holder_pid
        if holder is None or self._files_holder == holder:
            return True
        try:
            events = await asyncio.to_thread(self._write_pod_files)
        except (dns.DnsError, OSError) as err:
            now = self._ctx.clock()
            name = f"{self.pod.name}_{self.pod.namespace}({self.uid})"
            message = f'Failed to generate sandbox config for pod "{name}": {err}'
            log.warning("pod %s: %s", describe(self.pod), message)
            self._event(
                reasons.EVENT_WARNING,
                reasons.FAILED_CREATE_POD_SANDBOX,
                f"Failed to create pod sandbox: {err}",
            )
            for start in actions.start:
                self._record_failure(start.name, reasons.CREATE_POD_SANDBOX_ERROR, message, now)
                actions.waiting[start.name] = Waiting(reasons.CREATE_POD_SANDBOX_ERROR, message)
            actions.wake_no_later_than(now + NETWORK_RETRY_SECONDS)
            return False
        for event in events:  # kubelet's events; every start of a pod logs them: info only
            log.info("pod %s: %s: %s", describe(self.pod), event.reason, event.message)
            self._event(reasons.EVENT_WARNING, event.reason, event.message)
        self._files_holder = holder
        return True

    def _pod_file(self, name: str) -> Path:
        return safepath.child(self._ctx.config.pods_state_dir, self.uid) / name

    def _write_pod_files(self) -> list[dns.DnsEvent]:
        """kubelet's and containerd's files for the pod, each replaced atomically."""
        pod, config = self.pod, self._ctx.config
        self._pod_file(hostsfile.HOSTS_FILE).parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        resolv, events = dns.pod_resolv_conf(pod, dns.node_dns(config))
        hostname = pod_hostname(pod, self._ctx.node_hostname)
        node_hosts = Path(hostsfile.NODE_HOSTS).read_bytes().decode("utf-8", "surrogateescape")
        hosts = hostsfile.pod_hosts(pod, hostname, self._pod_ips, config.cluster_domain, node_hosts)
        kernel_name = socket.gethostname() if pod.host_network else hostname  # containerd's
        dns.write_file(self._pod_file(dns.RESOLV_CONF_FILE), resolv)
        dns.write_file(self._pod_file(dns.HOSTNAME_FILE), dns.hostname_text(kernel_name).encode())
        dns.write_file(
            self._pod_file(hostsfile.HOSTS_FILE), hosts.encode("utf-8", "surrogateescape")
        )
        return events

    async def _check_local_storage(self) -> None:
        """kubelet's eviction manager for emptyDir ``sizeLimit`` (every ``USAGE_CHECK_SECONDS``):
        a pod whose disk emptyDir grew past its limit is killed at once and reported Failed,
        reason Evicted."""
        now = time.monotonic()
        if not self._size_limited or now < self._next_usage_check:
            return
        self._next_usage_check = now + USAGE_CHECK_SECONDS
        config = self._ctx.config
        message = await asyncio.to_thread(
            empty_dir_overuse, config.pods_state_dir, self.uid, self.pod.spec
        )
        if message:
            log.warning("evicting %s: %s", describe(self.pod), message)
            self._event(reasons.EVENT_WARNING, reasons.EVICTED, message)
            self._terminal_failure = (reasons.EVICTED, message)
            self._terminal_grace = 0.0

    @functools.cached_property
    def _size_limited(self) -> bool:
        return any(
            (v.get("emptyDir") or {}).get("sizeLimit") for v in self.pod.spec.get("volumes") or []
        )

    def _admission_refusal(self) -> tuple[str, str] | None:
        """kubelet's admission: what the node cannot honour (a forbidden sysctl, an LSM profile
        it lacks) fails the pod before anything of it runs."""
        for check in ADMISSION_CHECKS:
            refusal = check(self.pod, self._ctx.config)
            if refusal is not None:
                reason, message = refusal
                log.warning("pod refused %s: %s: %s", describe(self.pod), reason, message)
                self._event(reasons.EVENT_WARNING, reason, message)
                return refusal
        return None

    async def _end_failed(self, sandbox: SandboxStatus | None, reason: str, message: str) -> None:
        """Stop every container (grace period and preStop as for a removal) and report the pod
        Failed with ``reason``; it is never started again (kubelet keeps it Failed)."""
        if sandbox is not None and sandbox.ready:
            log.info("pod failed (%s) %s", reason, describe(self.pod))
            self._probes.stop()
            grace = self._terminal_grace
            await self._ctx.runtime.stop_sandbox(
                self.uid, self.pod.grace_seconds if grace is None else grace
            )
            sandbox = await self._pod_status()
        actions = PodActions(terminal_phase="Failed")
        self._report(sandbox, actions)
        if self.status is not None:
            self.status["reason"] = reason
            self.status["message"] = message
            self._ctx.on_status(self.uid, self.status)

    @functools.cached_property
    def _qos(self) -> str:
        """Computed once: a UID's spec never changes (the UID is a hash of it)."""
        return qos_class(self.pod.spec)

    async def _inspect_finished_runs(self, sandbox: SandboxStatus | None) -> None:
        """A run that ended is looked at once: in its cgroup, before the next run of the same
        container replaces that cgroup (the kernel's OOM kill counter says OOMKilled, not a
        guess from exit code 137), and in its log for a termination message."""
        driver = self._ctx.cgroups
        if sandbox is None:
            return
        for name in {r.name for r in sandbox.containers}:
            await self._read_termination_message(name, sandbox)
            last = sandbox.latest(name)
            if last is None or last.running or (name, last.attempt) in self._oom_checked:
                continue
            if last.reason == reasons.CONTAINER_STATUS_UNKNOWN:
                # Reaped but not journaled yet (the holder drains its output first): its log
                # may still lack the last lines. Looked at when the holder reports the exit.
                continue
            self._oom_checked.add((name, last.attempt))
            if driver is None:
                continue
            try:
                if driver.oom_killed(self.uid, self._qos, name):
                    self._exit_reasons[(name, last.attempt)] = reasons.OOM_KILLED
                    log.info("container OOM-killed %s container=%s", describe(self.pod), name)
            except (OSError, ValueError) as err:
                log.warning("cannot read the OOM state of %s container=%s: %s",
                            describe(self.pod), name, err)  # fmt: skip

    async def _read_termination_message(self, name: str, sandbox: SandboxStatus) -> None:
        """The ``terminated.message`` of the container's last finished run, read once: its
        message file, or for ``FallbackToLogsOnError`` and a failed run the end of its log
        (``nodelet.pod.termination``). The last finished run, not the latest: after an agent
        restart the run shown as ``lastState`` keeps its message (its file is kept)."""
        finished = [
            r for r in sandbox.attempts(name)
            if not r.running and r.reason != reasons.CONTAINER_STATUS_UNKNOWN
        ]  # fmt: skip
        if not finished or (name, finished[-1].attempt) in self._messages_read:
            return
        run = finished[-1]
        self._messages_read.add((name, run.attempt))
        container = next((c for c in self._all_containers() if c["name"] == name), None)
        if container is None:
            return
        config = self._ctx.config
        target = container.get("terminationMessagePath") or ""
        pod_dir = safepath.child(config.pods_state_dir, self.uid)
        message = await asyncio.to_thread(
            termination_message,
            file=message_file(pod_dir, name, run.attempt) if target else None,
            policy=container.get("terminationMessagePolicy") or "",
            exit_code=run.exit_code,
            reason=run.reason,
            runtime_message=run.message,
            log_path=container_log_path(config.pod_logs_dir, self.pod, name, run.attempt),
            container_count=len(self._all_containers()),
        )
        if message:
            self._exit_messages[(name, run.attempt)] = message

    def _all_containers(self) -> list[dict[str, Any]]:
        return [*self.pod.init_containers, *self.pod.containers]

    async def _container_cgroup(self, start: StartAction) -> list[str]:
        """The container's own cgroup with its limits, fresh for every run."""
        container = self._container_spec(start)
        driver = self._ctx.cgroups
        if driver is None:
            if (container.get("resources") or {}).get("limits"):
                raise ContainerConfigError(
                    f'container "{start.name}": resources.limits need cgroups, and this node '
                    "has none nodelet can use"
                )
            return []
        ready = self._ready_cgroups.pop(start.name, None)
        if ready is not None:
            return ready
        limits = container_limits(container_resources(container), None)
        return await asyncio.to_thread(
            fresh_container_cgroup, driver, self.uid, self._qos, start.name, limits
        )

    async def _prepare_volumes(self) -> None:
        """Once per worker: mounts (tmpfs) and ownership walks (fsGroup) block, so a thread."""
        if self._volume_paths is None:
            pod, config = self.pod, self._ctx.config
            self._volume_paths = await asyncio.to_thread(
                prepare_volumes, config.pods_state_dir, pod.uid, pod.spec, pod=pod
            )

    def _pod_context(self, sandbox: SandboxStatus | None) -> PodContext:
        pod, config, images = self.pod, self._ctx.config, self._ctx.images
        assert self._volume_paths is not None, "volumes are prepared before any container"
        return PodContext(
            pod=pod,
            hostname=pod_hostname(pod, self._ctx.node_hostname),
            node_ip=config.node_ip,
            pod_ip=pod.ip(config.node_ip, sandbox.pod_ip if sandbox else None),
            pod_logs_dir=config.pod_logs_dir,
            volume_paths=self._volume_paths,
            security=node_security(config),
            hosts_file=self._written_file(hostsfile.HOSTS_FILE),
            hostname_file=self._written_file(dns.HOSTNAME_FILE),
            resolv_conf_file=self._written_file(dns.RESOLV_CONF_FILE),
            user_namespace=self._user_namespace(),
            # No image store: every image is the node's own, as before images existed.
            images=functools.partial(local_image, images.store) if images else _no_image,
            is_host_image=images.is_host if images else _every_image_is_host,
            pod_dir=safepath.child(config.pods_state_dir, self.uid),
        )

    def _written_file(self, name: str) -> str | None:
        """A managed file for the PodContext, once written for the current holder."""
        return str(self._pod_file(name)) if self._files_holder is not None else None

    def _user_namespace(self) -> UserNamespace | None:
        """The block recorded when the sandbox was made (kept across agent restarts)."""
        if not userns.wants_user_namespace(self.pod.spec):
            return None
        try:
            return userns.read(self._ctx.config.pods_state_dir, self.uid)
        except userns.UsernsError as err:
            raise ContainerConfigError(str(err)) from None

    def _container_spec(self, start: StartAction) -> dict[str, Any]:
        key = "initContainers" if start.init else "containers"
        return next(c for c in self.pod.spec[key] if c["name"] == start.name)

    async def _ensure_image(self, start: StartAction) -> bool:
        """kubelet's ``EnsureImageExists`` before a start: the image present (pulled per
        imagePullPolicy), or the container held with the image's reason. Only this pod waits
        for a pull; another pod wanting the same image joins it."""
        images = self._ctx.images
        if images is None:
            return True
        container = self._container_spec(start)
        path = self._field_path(start.name)
        try:
            present = await images.ensure(
                self.uid,
                container.get("image", ""),
                container.get("imagePullPolicy"),
                lambda type_, reason, message: self._event(type_, reason, message, path),
            )
        except ImageError as err:
            self._image_waits[start.name] = err
            log.warning("container waits for its image %s container=%s: %s: %s",
                        describe(self.pod), start.name, err.reason, err.message)  # fmt: skip
            self._event(reasons.EVENT_WARNING, reasons.FAILED_EVENT, f"Error: {err.reason}", path)
            return False
        self._image_waits.pop(start.name, None)
        self._images[start.name] = (present.name, present.image_id)
        return True

    async def _start_container(self, start: StartAction, sandbox: SandboxStatus | None) -> None:
        if not await self._ensure_image(start):
            return
        now = self._ctx.clock()
        if start.restart_of is not None:  # a restart opens or doubles the window
            self._ctx.backoff.next(backoff_key(self.uid, start.name), start.restart_of, now)
        try:
            await self._prepare_volumes()
            # In a thread: a seccomp profile not compiled before takes ~13 ms to compile.
            config = await asyncio.to_thread(
                build_container_config,
                self._pod_context(sandbox),
                self._container_spec(start),
                start.attempt,
            )
            config = dataclasses.replace(
                config,
                cgroup_procs=await self._container_cgroup(start),
                log_max_bytes=self._ctx.config.container_log_max_size,
            )
            self._configs[start.name] = config
            await asyncio.to_thread(Path(config.log_path).parent.mkdir, parents=True, exist_ok=True)
            pod_dir = safepath.child(self._ctx.config.pods_state_dir, self.uid)
            await asyncio.to_thread(ensure_file, config, pod_dir)
            record = await self._ctx.runtime.start_container(self.uid, config)
        except (ContainerConfigError, VolumeError, QuantityError, OSError) as err:
            reason = reasons.CREATE_CONTAINER_CONFIG_ERROR
            self._record_failure(start.name, reason, str(err), now)
            self._event(
                reasons.EVENT_WARNING,
                reasons.FAILED_EVENT,
                f"Error: {err}",
                self._field_path(start.name),
            )
            return
        except ContainerStartError as err:
            self._event(reasons.EVENT_WARNING, reasons.FAILED_EVENT, f"Error: {err.message}",
                        self._field_path(start.name))  # fmt: skip
            if err.reason == reasons.START_ERROR:
                # exec failed: the holder journaled it as a run (exit 128), which restart
                # counts and back-off already see, exactly like kubelet's StartError.
                self._failures.pop(start.name, None)
                log.error("container failed to start %s container=%s: %s",
                          describe(self.pod), start.name, err.message)  # fmt: skip
            else:
                self._record_failure(start.name, err.reason, err.message, now)
            return
        self._failures.pop(start.name, None)
        field_path = self._field_path(start.name)
        self._event(
            reasons.EVENT_NORMAL,
            reasons.CREATED_EVENT,
            f"Created container {start.name}",
            field_path,
        )
        self._event(
            reasons.EVENT_NORMAL,
            reasons.STARTED_EVENT,
            f"Started container {start.name}",
            field_path,
        )
        log.info(
            "started container %s container=%s attempt=%d pid=%d",
            describe(self.pod),
            start.name,
            start.attempt,
            record.pid,
        )
        handler = (self._container_spec(start).get("lifecycle") or {}).get("postStart")
        if handler:
            await self._post_start(start, handler, record, sandbox)

    async def _post_start(
        self,
        start: StartAction,
        handler: Mapping[str, Any],
        record: ContainerRecord,
        sandbox: SandboxStatus | None,
    ) -> None:
        """kubelet's postStart: the container is not reported Running until its handler
        returned; a failed handler kills the container (FailedPostStartHook), and its
        restartPolicy decides what comes next."""
        container = self._container_spec(start)
        target = self.probe_target(sandbox, record, container)
        result = await run_post_start(handler, container, target)
        if result.outcome is Outcome.SUCCESS:
            return
        message = f"PostStartHook failed: {result.message}".rstrip(": ")
        path = self._field_path(start.name)
        self._event(reasons.EVENT_WARNING, reasons.FAILED_POST_START_HOOK, message, path)
        log.warning("%s %s container=%s", message, describe(self.pod), start.name)
        self._exit_reasons[(start.name, record.attempt)] = reasons.FAILED_POST_START_HOOK
        await self._ctx.runtime.stop_container(self.uid, start.name, self.pod.grace_seconds)

    def _record_failure(self, name: str, reason: str, message: str, now: float) -> None:
        log.error(
            "container failed to start %s container=%s: %s: %s",
            describe(self.pod),
            name,
            reason,
            message,
        )
        self._failures[name] = StartFailure(reason, message, now)

    def _report(self, sandbox: SandboxStatus | None, actions: PodActions) -> None:
        if sandbox is not None and (self._exit_reasons or self._exit_messages):
            runs = tuple(
                dataclasses.replace(
                    r,
                    reason=self._exit_reasons.get((r.name, r.attempt), r.reason),
                    message=self._exit_messages.get((r.name, r.attempt), r.message),
                )
                for r in sandbox.containers
            )
            sandbox = dataclasses.replace(sandbox, containers=runs)
        status = build_pod_status(
            self.pod,
            sandbox,
            actions,
            self._ctx.config.node_ip,
            self.status,
            self._ctx.clock(),
            self._probes,
            self._images,
        )
        self.status = status
        self._ctx.on_status(self.uid, status)

    async def _terminate(self) -> None:
        """Stop every container within the grace period, end the holder, remove pod state."""
        pod = self.pod
        grace = self.pod.grace_seconds
        self._probes.stop()
        log.info("killing %s grace=%ss", describe(pod), grace)
        for key in ("initContainerStatuses", "containerStatuses"):
            for st in (self.status or {}).get(key, []):
                if "running" in st.get("state", {}):
                    message = f"Stopping container {st['name']}"
                    path = self._field_path(st["name"])
                    self._event(reasons.EVENT_NORMAL, reasons.KILLING_EVENT, message, path)
        while True:
            try:
                await self._ctx.runtime.kill_pod(pod.uid, float(grace))
                break
            except Exception:
                # The successor waits for this pod to be gone, so keep trying rather than lie.
                log.exception("kill failed, retrying %s", describe(pod))
                await asyncio.sleep(RETRY_AFTER_ERROR_SECONDS)
        network = self._ctx.network
        if network is not None and not pod.host_network:
            try:
                await network.teardown(pod.uid, None)
            except (NetworkError, OSError) as err:
                log.error("cannot detach %s from the pod network: %s", describe(pod), err)
        if self._ctx.cgroups is not None:
            try:
                await asyncio.to_thread(self._ctx.cgroups.remove_pod, pod.uid, self._qos)
            except (OSError, ValueError) as err:
                log.error("cannot remove the cgroups of %s: %s", describe(pod), err)
        for attempt in range(VOLUME_REMOVAL_ATTEMPTS):
            try:
                await asyncio.to_thread(
                    remove_pod_volumes, self._ctx.config.pods_state_dir, pod.uid
                )
                break
            except (OSError, safepath.UnsafePathError) as err:
                if attempt + 1 == VOLUME_REMOVAL_ATTEMPTS:
                    log.error("cannot remove the volumes of %s: %s", describe(pod), err)
                else:
                    await asyncio.sleep(RETRY_AFTER_ERROR_SECONDS)
        self._ctx.backoff.forget_prefix(f"{pod.uid}/")
        if self._ctx.images is not None:
            self._ctx.images.forget_pod(pod.uid)
        log.info("pod removed %s", describe(pod))
