"""Build a v1 PodStatus from what the runtime observed, the way kubelet reports it.

Pure: the caller passes the clock and the previous status (for condition transition times).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from nodelet import reasons
from nodelet.cgroups.resources import qos_class
from nodelet.model import StaticPod
from nodelet.pod.actions import PodActions
from nodelet.runtime.api import UNKNOWN_EXIT_CODE, ContainerRecord, SandboxStatus
from nodelet.util.timefmt import rfc3339

Json = dict[str, Any]


class ProbeResults(Protocol):
    """What the probes say of a running container (kubelet's ``started`` and ``ready``)."""

    def started(self, name: str) -> bool: ...

    def ready(self, name: str) -> bool: ...


class NoProbes:
    """A pod without probes: running means started and ready."""

    def started(self, name: str) -> bool:
        return True

    def ready(self, name: str) -> bool:
        return True


NO_PROBES = NoProbes()


def container_id(pod_uid: str, record: ContainerRecord) -> str:
    return f"nodelet://{pod_uid}/{record.name}/{record.attempt}"


def _terminated(pod_uid: str, record: ContainerRecord) -> Json:
    if record.finished_at is None or record.exit_code is None:
        # The process was lost with its holder: nothing journaled its end.
        return {
            "exitCode": UNKNOWN_EXIT_CODE,
            "reason": reasons.CONTAINER_STATUS_UNKNOWN,
            "message": "The container could not be located when the pod was terminated",
            "startedAt": rfc3339(record.started_at),
            "finishedAt": None,
            "containerID": container_id(pod_uid, record),
        }
    state: Json = {
        "exitCode": record.exit_code,
        "reason": record.reason or (reasons.COMPLETED if record.exit_code == 0 else reasons.ERROR),
        "startedAt": rfc3339(record.started_at),
        "finishedAt": rfc3339(record.finished_at),
        "containerID": container_id(pod_uid, record),
    }
    if record.signal:
        state["signal"] = record.signal
    if record.message:
        state["message"] = record.message
    return state


def _is_running(record: ContainerRecord, sandbox: SandboxStatus | None) -> bool:
    return (
        record.running
        and sandbox is not None
        and sandbox.ready
        and record.started_at >= sandbox.created_at
    )


def container_status(
    pod: StaticPod,
    container: Mapping[str, Any],
    sandbox: SandboxStatus | None,
    actions: PodActions,
    default_waiting: str,
    probes: ProbeResults = NO_PROBES,
    image: tuple[str, str] | None = None,
) -> Json:
    """One entry of ``containerStatuses``/``initContainerStatuses``. ``image`` is what the
    container was started on, (normalised name, ``repo@sha256:…``): shown once it has a run, as
    kubelet shows the runtime's; before that the spec's text and no ID."""
    name = container["name"]
    runs = list(sandbox.attempts(name)) if sandbox else []
    last = runs[-1] if runs else None
    shown = image if image is not None and last is not None else None
    status: Json = {
        "name": name,
        "image": shown[0] if shown else container.get("image", ""),
        "imageID": shown[1] if shown else "",
        "restartCount": max((r.attempt for r in runs), default=0),
        "ready": False,
        "started": False,
        "state": {},
        "lastState": {},
    }
    if last is not None:
        status["containerID"] = container_id(pod.uid, last)
    waiting = actions.waiting.get(name)
    previous = runs[-2] if len(runs) > 1 else None
    if waiting is not None:
        status["state"] = {"waiting": {"reason": waiting.reason, "message": waiting.message}}
        previous = last
    elif last is None:
        status["state"] = {"waiting": {"reason": default_waiting}}
    elif _is_running(last, sandbox):
        status["state"] = {"running": {"startedAt": rfc3339(last.started_at)}}
        status["started"] = probes.started(name)
        status["ready"] = probes.ready(name)
    else:
        status["state"] = {"terminated": _terminated(pod.uid, last)}
    if previous is not None:
        status["lastState"] = {"terminated": _terminated(pod.uid, previous)}
    return status


def get_phase(spec: Mapping[str, Any], init: list[Json], app: list[Json]) -> str:
    """kubelet's ``getPhase`` over the container statuses."""
    policy = spec.get("restartPolicy", "Always")
    pending_init = failed_init = 0
    for st in init:
        state, last = st["state"], st["lastState"]
        if "running" in state:
            pending_init += 1
        elif "terminated" in state:
            failed_init += state["terminated"]["exitCode"] != 0
        elif "terminated" in last:
            failed_init += last["terminated"]["exitCode"] != 0
        else:
            pending_init += 1
    running = waiting = stopped = succeeded = 0
    for st in app:
        state, last = st["state"], st["lastState"]
        if "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            succeeded += state["terminated"]["exitCode"] == 0
        elif "terminated" in last:
            stopped += 1
        else:
            waiting += 1
    if failed_init and policy == "Never":
        return "Failed"
    if pending_init or failed_init or waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped:
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        return "Failed" if policy == "Never" else "Running"
    return "Pending"


def _condition(kind: str, ok: bool, reason: str = "", message: str = "") -> Json:
    cond: Json = {"type": kind, "status": "True" if ok else "False"}
    if not ok and reason:
        cond["reason"] = reason
        cond["message"] = message
    return cond


LOGS_DROPPED_CONDITION = "nodelet.io/LogsDropped"
"""nodelet's own condition: a container's output could not all be written (a full log disk)."""


def _conditions(
    spec: Mapping[str, Any],
    sandbox: SandboxStatus | None,
    actions: PodActions,
    init: list[Json],
    app: list[Json],
    phase: str,
) -> list[Json]:
    completed = phase in ("Succeeded", "Failed")
    init_pending = [
        st["name"]
        for st in init
        if not ("terminated" in st["state"] and st["state"]["terminated"]["exitCode"] == 0)
    ]
    unready = [st["name"] for st in app if not st["ready"]]
    reason = reasons.POD_COMPLETED if completed else reasons.CONTAINERS_NOT_READY
    unready_msg = f"containers with unready status: [{' '.join(unready)}]"
    gates = spec.get("readinessGates") or []
    ready = not unready and not gates
    ready_message = unready_msg if unready else "corresponding condition of pod readiness gate"
    waiting = actions.sandbox_waiting
    conditions = [
        _condition(
            "PodReadyToStartContainers",
            sandbox is not None and sandbox.ready,
            waiting.reason if waiting else "",
            waiting.message if waiting else "",
        ),
        _condition(
            "Initialized",
            not init_pending or completed,
            reasons.CONTAINERS_NOT_INITIALIZED,
            f"containers with incomplete status: [{' '.join(init_pending)}]",
        ),
        _condition(
            "Ready", ready, reason if unready else reasons.READINESS_GATES_NOT_READY, ready_message
        ),
        _condition("ContainersReady", not unready, reason, unready_msg),
        _condition("PodScheduled", True),
    ]
    if sandbox is not None and sandbox.log_drops:
        drops = "; ".join(f"{name}: {why}" for name, why in sandbox.log_drops)
        conditions.append({
            "type": LOGS_DROPPED_CONDITION, "status": "True", "reason": reasons.LOG_WRITE_FAILED,
            "message": drops,
        })  # fmt: skip
    return conditions


def _stamp_transitions(conditions: list[Json], previous: Json | None, now: float) -> None:
    """Keep a condition's lastTransitionTime until its status flips, as kubelet does."""
    before = {c["type"]: c for c in (previous or {}).get("conditions", [])}
    for cond in conditions:
        old = before.get(cond["type"])
        if old is not None and old["status"] == cond["status"]:
            cond["lastTransitionTime"] = old["lastTransitionTime"]
        else:
            cond["lastTransitionTime"] = rfc3339(now)
        cond["lastProbeTime"] = None


def _never_fewer_restarts(statuses: list[Json], previous: Json | None) -> None:
    """restartCount never goes backwards, even if a damaged journal record was skipped."""
    before = {
        st["name"]: st.get("restartCount", 0)
        for key in ("initContainerStatuses", "containerStatuses")
        for st in (previous or {}).get(key, [])
    }
    for st in statuses:
        st["restartCount"] = max(st["restartCount"], before.get(st["name"], 0))


def build_pod_status(
    pod: StaticPod,
    sandbox: SandboxStatus | None,
    actions: PodActions,
    node_ip: str,
    previous: Json | None,
    now: float,
    probes: ProbeResults = NO_PROBES,
    images: Mapping[str, tuple[str, str]] | None = None,
) -> Json:
    """The whole v1 PodStatus for ``pod``; ``images``: (image, imageID) by container name."""
    spec = pod.spec
    shown = images or {}
    init = [
        container_status(
            pod, c, sandbox, actions, reasons.POD_INITIALIZING, image=shown.get(c["name"])
        )
        for c in spec.get("initContainers") or []
    ]
    # kubelet: PodInitializing for every container of a pod that has init containers.
    app_default = reasons.POD_INITIALIZING if init else reasons.CONTAINER_CREATING
    app = [
        container_status(pod, c, sandbox, actions, app_default, probes, shown.get(c["name"]))
        for c in spec["containers"]
    ]
    _never_fewer_restarts(init + app, previous)
    phase = actions.terminal_phase or get_phase(spec, init, app)
    conditions = _conditions(spec, sandbox, actions, init, app, phase)
    _stamp_transitions(conditions, previous, now)
    status: Json = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": node_ip,
        "hostIPs": [{"ip": node_ip}],
        "qosClass": qos_class(spec),  # kubelet's GetPodQOS
        "containerStatuses": app,
    }
    if init:
        status["initContainerStatuses"] = init
    pod_ip = pod.ip(node_ip, sandbox.pod_ip if sandbox else None)
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    start = (previous or {}).get("startTime") or (rfc3339(sandbox.created_at) if sandbox else None)
    if start:
        status["startTime"] = start
    return status
