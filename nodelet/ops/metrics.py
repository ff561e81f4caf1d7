"""Prometheus metrics: kubelet's names where the meaning is the same, ``nodelet_`` otherwise.

Two kinds, so a scrape costs O(pods) and nothing between scrapes:
- counters and histograms are updated by the agent's hooks as things happen (a pod seen, a
  sync pass, a container event, a runtime call);
- gauges are computed at scrape time by ``_StateCollector`` from the agent's current state (its
  desired pods and their statuses, the runtime's last-seen sandboxes, rejections, the cgroups).

The registry is the agent's own, never prometheus_client's global one, so two agents in one
process (tests) never share series. Help texts carry kubelet's ``[ALPHA]`` stability prefix for
kubelet's metrics, as kubelet's component-base renders them.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nodelet import reasons
from nodelet.cgroups.driver import CgroupDriver
from nodelet.cgroups.summary import StatsSummary
from nodelet.model import Rejection, StaticPod
from nodelet.runtime.api import SandboxStatus

Json = dict[str, Any]

DEF_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Go's prometheus.DefBuckets (prometheus_client's default has more)."""
POD_START_BUCKETS = (
    0.5,
    1,
    2,
    3,
    4,
    5,
    6,
    8,
    10,
    20,
    30,
    45,
    60,
    120,
    180,
    240,
    300,
    360,
    480,
    600,
    900,
    1200,
    1800,
    2700,
    3600,
)
"""kubelet's podStartupDurationBuckets."""
RUNTIME_BUCKETS = tuple(0.005 * 2.5**i for i in range(14))
"""kubelet's runtime_operations_duration_seconds buckets: ExponentialBuckets(.005, 2.5, 14)."""
CONTAINER_STATES = ("running", "exited", "created", "unknown")
CONTAINER = "container"
INIT_CONTAINER = "init_container"
POST_START_HOOK_ERROR = "PostStartHookError"
"""kubelet's ErrPostStartHook, the error code of a container whose postStart handler failed."""
GONE_UIDS_KEPT = 4096
"""Removed UIDs remembered to count a static pod re-added with the same UID as restarted."""
ALPHA = "[ALPHA] "


class ApiCounts(Protocol):
    """The cluster client's request counters (``nodelet.cluster.apiclient.ApiCaller``)."""

    requests: collections.Counter[str]
    forbidden: int


@dataclass(frozen=True)
class AgentView:
    """What a scrape reads from the agent; each callable is O(pods) at most."""

    node_name: str
    pods: Callable[[], Iterable[tuple[StaticPod, Json | None]]]
    """The desired pods with their latest status."""
    rejected: Callable[[], Sequence[Rejection]]
    mirror_pods: Callable[[], int]
    """Desired pods whose mirror pod exists (0 standalone)."""
    sandboxes: Callable[[], Iterable[SandboxStatus]]
    """The runtime's latest-seen sandboxes (``InstrumentedRuntime.sandboxes``)."""
    cgroups: Callable[[], CgroupDriver | None]
    api: Callable[[], ApiCounts | None]


def rejection_reason(rejection: Rejection) -> str:
    """A rejected file's category, a label with few values that never quotes the file:
    ``pending`` (held open by a writer), ``internal`` (a bug), ``duplicate`` (the pod name is
    taken), ``invalid`` (a field is wrong) or ``unreadable`` (not a YAML/JSON Pod at all)."""
    first = rejection.errors[0] if rejection.errors else None
    if first is None:
        return "invalid"
    if first.reason.startswith("pending:"):
        return "pending"
    if first.reason.startswith("internal error"):
        return "internal"
    if first.field == "metadata.name" and "is already defined by" in first.reason:
        return "duplicate"
    return "invalid" if first.field else "unreadable"


def container_type(field_path: str) -> str:
    """kubelet's ``container_type`` label from an event's field path."""
    return INIT_CONTAINER if field_path.startswith("spec.initContainers") else CONTAINER


def container_name(field_path: str) -> str:
    """The container an event's field path names: ``spec.containers{app}`` -> ``app``."""
    return field_path.partition("{")[2].removesuffix("}")


def container_states(sandboxes: Iterable[SandboxStatus]) -> dict[str, int]:
    """kubelet_running_containers: the latest run of every container, by state; a run that
    has not ended in a sandbox whose holder is gone is ``unknown``."""
    counts = dict.fromkeys(CONTAINER_STATES, 0)
    for sandbox in sandboxes:
        for name in {run.name for run in sandbox.containers}:
            run = sandbox.latest(name)
            if run is None:
                continue
            if not run.running:
                counts["exited"] += 1
            else:
                counts["running" if sandbox.ready else "unknown"] += 1
    return counts


class AgentMetrics:
    """The agent's registry, its counters and histograms, and the hooks that move them."""

    def __init__(self, view: AgentView, clock: Callable[[], float] = time.monotonic) -> None:
        # kubelet has no *_created series (a process-wide switch; nothing else here exports).
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        reg = self.registry
        self.pod_start = Histogram(
            "kubelet_pod_start_duration_seconds",
            ALPHA + "Duration in seconds from kubelet seeing a pod for the first time to the pod "
            "starting to run",
            buckets=POD_START_BUCKETS,
            registry=reg,
        )
        self.pod_worker = Histogram(
            "kubelet_pod_worker_duration_seconds",
            ALPHA + "Duration in seconds to sync a single pod. Broken down by operation type: "
            "create, update, or sync",
            ["operation_type"],
            buckets=DEF_BUCKETS,
            registry=reg,
        )
        self.restarted = Counter(
            "kubelet_restarted_pods_total",
            ALPHA + "Number of pods that have been restarted because they were deleted and "
            "recreated with the same UID while the kubelet was watching them (common for static "
            "pods, extremely uncommon for API pods)",
            ["static"],
            registry=reg,
        )
        self.started = Counter(
            "kubelet_started_containers_total",
            ALPHA + "Cumulative number of containers started",
            ["container_type"],
            registry=reg,
        )
        self.start_errors = Counter(
            "kubelet_started_containers_errors_total",
            ALPHA + "Cumulative number of errors when starting containers",
            ["container_type", "code"],
            registry=reg,
        )
        self.runtime_ops = Counter(
            "kubelet_runtime_operations_total",
            ALPHA + "Cumulative number of runtime operations by operation type.",
            ["operation_type"],
            registry=reg,
        )
        self.runtime_errors = Counter(
            "kubelet_runtime_operations_errors_total",
            ALPHA + "Cumulative number of runtime operation errors by operation type.",
            ["operation_type"],
            registry=reg,
        )
        self.runtime_duration = Histogram(
            "kubelet_runtime_operations_duration_seconds",
            ALPHA + "Duration in seconds of runtime operations. Broken down by operation type.",
            ["operation_type"],
            buckets=RUNTIME_BUCKETS,
            registry=reg,
        )
        for static in ("true", ""):
            self.restarted.labels(static=static)
        for kind in (CONTAINER, INIT_CONTAINER):
            self.started.labels(container_type=kind)
        reg.register(_StateCollector(view))
        self._first_seen: dict[str, float] = {}
        """UIDs this agent saw appear and that did not run yet, with when (monotonic)."""
        self._gone: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._last_synced: dict[str, StaticPod] = {}

    def render(self) -> str:
        """The text exposition format (0.0.4)."""
        return prometheus_client.generate_latest(self.registry).decode()

    # -- hooks --------------------------------------------------------------------------------

    def pods_applied(self, before: Collection[str], after: Collection[str]) -> None:
        """The desired set went from ``before`` to ``after`` (UIDs). A UID that comes back
        after its removal is a restarted pod, as kubelet counts re-added static pods."""
        now = self._clock()
        added = [uid for uid in after if uid not in before]
        restarted = sum(1 for uid in added if uid in self._gone)
        if restarted:
            self.restarted.labels(static="true").inc(restarted)
        for uid in added:
            self._gone.pop(uid, None)
            self._first_seen[uid] = now
        for uid in before:
            if uid not in after:
                self._gone[uid] = None
                self._first_seen.pop(uid, None)
                self._last_synced.pop(uid, None)
        while len(self._gone) > GONE_UIDS_KEPT:
            self._gone.popitem(last=False)

    def pod_phase(self, uid: str, phase: str) -> None:
        """A pod's phase changed: the first Running of a pod this agent saw appear is its start."""
        if phase == "Running" and uid in self._first_seen:
            self.pod_start.observe(self._clock() - self._first_seen.pop(uid))

    def pod_event(self, reason: str, field_path: str, start_error: str | None) -> None:
        """kubelet counts every container start attempt and, by error code, every failure:
        ``Started`` is a start, ``Failed`` a start that failed (``start_error`` the runtime's
        reason, None when it failed before the runtime was asked: a config error), and
        ``FailedPostStartHook`` a started container whose postStart handler failed."""
        kind = container_type(field_path)
        if reason == reasons.STARTED_EVENT:
            self.started.labels(container_type=kind).inc()
        elif reason == reasons.FAILED_EVENT and field_path:
            self.started.labels(container_type=kind).inc()
            code = start_error or reasons.CREATE_CONTAINER_CONFIG_ERROR
            self.start_errors.labels(container_type=kind, code=code).inc()
        elif reason == reasons.FAILED_POST_START_HOOK:
            self.start_errors.labels(container_type=kind, code=POST_START_HOOK_ERROR).inc()

    def synced(self, pod: StaticPod, seconds: float) -> None:
        """A pod worker's sync pass took ``seconds``: its first is ``create``, one with a new
        spec object ``update``, the rest ``sync``."""
        previous = self._last_synced.get(pod.uid)
        kind = "create" if previous is None else "sync" if previous is pod else "update"
        self._last_synced[pod.uid] = pod
        self.pod_worker.labels(operation_type=kind).observe(seconds)

    def runtime_operation(self, operation: str, seconds: float, failed: bool) -> None:
        self.runtime_ops.labels(operation_type=operation).inc()
        self.runtime_duration.labels(operation_type=operation).observe(seconds)
        if failed:
            self.runtime_errors.labels(operation_type=operation).inc()


class _StateCollector(Collector):
    """The gauges, computed from the agent's state at each scrape."""

    def __init__(self, view: AgentView) -> None:
        self._view = view
        self._summary = StatsSummary(view.node_name)
        """Its own summary: its CPU-rate samples are not /stats/summary's."""

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked: names are fixed, computed values only at collect time

    def collect(self) -> Iterator[Metric]:
        view = self._view
        sandboxes = list(view.sandboxes())
        pods = list(view.pods())
        alive = sum(1 for s in sandboxes if s.ready)
        yield _gauge(
            "kubelet_node_name",
            "The node's name. The count is always 1.",
            {"node": view.node_name},
            1,
            alpha=True,
        )
        yield _gauge(
            "kubelet_running_pods",
            "Number of pods that have a running pod sandbox",
            None,
            alive,
            alpha=True,
        )
        states = GaugeMetricFamily(
            "kubelet_running_containers",
            ALPHA + "Number of containers currently running",
            labels=["container_state"],
        )
        for state, count in container_states(sandboxes).items():
            states.add_metric([state], count)
        yield states
        desired = GaugeMetricFamily(
            "kubelet_desired_pods",
            ALPHA + "The number of pods the kubelet is being instructed to run. static is true if "
            "the pod is not from the apiserver.",
            labels=["static"],
        )
        desired.add_metric(["true"], len(pods))
        desired.add_metric([""], 0)
        yield desired
        yield _gauge(
            "kubelet_mirror_pods",
            "The number of mirror pods the kubelet will try to "
            "create (one per admitted static pod)",
            None,
            view.mirror_pods(),
            alpha=True,
        )
        yield _gauge(
            "nodelet_holders_alive",
            "Infra holder processes alive: one per pod whose namespaces exist (the pod's sandbox).",
            None,
            alive,
        )
        yield self._rejections(view.rejected())
        yield from self._api(view.api())
        yield from self._usage(view.cgroups(), pods)

    def _rejections(self, rejected: Sequence[Rejection]) -> Metric:
        family = GaugeMetricFamily(
            "nodelet_manifest_rejections",
            "Manifest files in the manifest dir that are not running as a pod, by reason: "
            "pending, unreadable, invalid, duplicate, internal.",
            labels=["reason"],
        )
        counts = collections.Counter(rejection_reason(r) for r in rejected)
        for reason in ("pending", "unreadable", "invalid", "duplicate", "internal"):
            family.add_metric([reason], counts[reason])
        return family

    def _api(self, api: ApiCounts | None) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "nodelet_apiserver_requests",
            "Requests sent to the API server, by verb and resource (none standalone).",
            labels=["request"],
        )
        forbidden = CounterMetricFamily(
            "nodelet_apiserver_forbidden",
            "API server answers 403: the Node authorizer or NodeRestriction refused a request.",
        )
        counts: Mapping[str, int] = api.requests.copy() if api is not None else {}
        for request, count in sorted(counts.items()):
            requests.add_metric([request], count)
        forbidden.add_metric([], api.forbidden if api is not None else 0)
        yield requests
        yield forbidden

    def _usage(
        self, driver: CgroupDriver | None, pods: list[tuple[StaticPod, Json | None]]
    ) -> Iterator[Metric]:
        """kubelet's resource metrics (its ``/metrics/resource`` names), from the cgroups
        through the Summary API's own builder."""
        summary = self._summary.build(driver, pods)
        node = summary["node"]
        node_cpu = CounterMetricFamily(
            "node_cpu_usage_seconds",
            ALPHA + "Cumulative cpu time consumed by the node in core-seconds",
        )
        node_cpu.add_metric([], node["cpu"]["usageCoreNanoSeconds"] / 1e9)
        yield node_cpu
        yield _gauge(
            "node_memory_working_set_bytes",
            "Current working set of the node in bytes",
            None,
            node["memory"]["workingSetBytes"],
            alpha=True,
        )
        what = ("container", ["container", "pod", "namespace"]), ("pod", ["pod", "namespace"])
        cpu = {
            kind: CounterMetricFamily(
                f"{kind}_cpu_usage_seconds",
                ALPHA + f"Cumulative cpu time consumed by the {kind} in core-seconds",
                labels=labels,
            )
            for kind, labels in what
        }
        memory = {
            kind: GaugeMetricFamily(
                f"{kind}_memory_working_set_bytes",
                ALPHA + f"Current working set of the {kind} in bytes",
                labels=labels,
            )
            for kind, labels in what
        }
        for item in summary["pods"]:
            pod = [item["podRef"]["name"], item["podRef"]["namespace"]]
            for stats in item["containers"]:
                _add_usage(cpu["container"], memory["container"], [stats["name"], *pod], stats)
            if "cpu" in item:
                _add_usage(cpu["pod"], memory["pod"], pod, item)
        yield from (cpu["container"], memory["container"], cpu["pod"], memory["pod"])


def _add_usage(cpu: Metric, memory: Metric, labels: list[str], stats: Json) -> None:
    assert isinstance(cpu, CounterMetricFamily) and isinstance(memory, GaugeMetricFamily)
    cpu.add_metric(labels, stats["cpu"]["usageCoreNanoSeconds"] / 1e9)
    memory.add_metric(labels, stats["memory"]["workingSetBytes"])


def _gauge(
    name: str, help_text: str, labels: dict[str, str] | None, value: float, alpha: bool = False
) -> Metric:
    family = GaugeMetricFamily(
        name, (ALPHA if alpha else "") + help_text, labels=list(labels) if labels else None
    )
    family.add_metric(list(labels.values()) if labels else [], value)
    return family
