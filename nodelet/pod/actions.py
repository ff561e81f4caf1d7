"""What a pod needs next, decided purely from its spec and what the runtime observed.

kubelet's ``computePodActions``: the pod worker executes the answer and decides nothing itself.
Only the current sandbox's runs count toward progress (a new holder re-runs init containers, as a
new kubelet sandbox does); every run counts toward restart counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nodelet import reasons
from nodelet.pod.backoff import Backoff
from nodelet.runtime.api import ContainerRecord, SandboxStatus


@dataclass(frozen=True)
class StartFailure:
    """A start that failed before exec (bad workingDir, missing binary), kept by the worker."""

    reason: str
    message: str
    at: float


@dataclass(frozen=True)
class StartAction:
    name: str
    init: bool
    attempt: int
    restart_of: float | None = None
    """When the failure this start restarts from happened: the worker opens or doubles the
    container's back-off window from it (None for a first start)."""


@dataclass(frozen=True)
class Waiting:
    reason: str
    message: str


@dataclass
class PodActions:
    create_sandbox: bool = False
    start: list[StartAction] = field(default_factory=list)
    waiting: dict[str, Waiting] = field(default_factory=dict)
    wake_at: float | None = None
    """Epoch time when a back-off window closes and the pod must be synced again."""
    terminal_phase: str | None = None
    """``Succeeded`` or ``Failed`` once nothing will ever run again."""
    sandbox_waiting: Waiting | None = None
    """Why the pod's holder is not re-created yet (its last one died inside a back-off window)."""

    def wake_no_later_than(self, at: float) -> None:
        self.wake_at = at if self.wake_at is None else min(self.wake_at, at)


def backoff_key(pod_uid: str, container: str) -> str:
    return f"{pod_uid}/{container}"


def sandbox_backoff_key(pod_uid: str) -> str:
    """The holder's own back-off window ("~" is in no container name, so no clash)."""
    return f"{pod_uid}/~sandbox"


def next_attempt(runs: list[ContainerRecord]) -> int:
    """One past the highest attempt journaled: a lost record never makes a number reused."""
    return max((r.attempt for r in runs), default=-1) + 1


def should_restart(restart_policy: str, exit_code: int | None) -> bool:
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return exit_code != 0
    return False


@dataclass(frozen=True)
class _Inputs:
    uid: str
    pod_name: str
    restart_policy: str
    sandbox: SandboxStatus
    failures: Mapping[str, StartFailure]
    backoff: Backoff
    now: float


def compute_pod_actions(
    pod_uid: str,
    pod_name: str,
    spec: Mapping[str, Any],
    sandbox: SandboxStatus | None,
    failures: Mapping[str, StartFailure],
    backoff: Backoff,
    now: float,
) -> PodActions:
    """Decide the next step for one pod. Never mutates its inputs."""
    if sandbox is None or not sandbox.ready:
        # A finished pod is not brought back when its holder is gone (kubelet keeps it terminal).
        if sandbox is not None:
            phase = _terminal_phase(spec, sandbox.containers, spec.get("restartPolicy", "Always"))
            if phase is not None:
                return PodActions(terminal_phase=phase)
        if sandbox is not None and sandbox.finished_at is not None:
            # A holder that keeps dying (a full disk, say) is re-created with the same
            # back-off as a crashing container, not in a tight loop.
            key = sandbox_backoff_key(pod_uid)
            remaining = backoff.remaining(key, sandbox.finished_at, now)
            if remaining > 0:
                message = (
                    f"back-off {_duration(backoff.get(key))} re-creating the sandbox of "
                    f"pod={pod_name}"
                )
                actions = PodActions(sandbox_waiting=Waiting(reasons.SANDBOX_BACK_OFF, message))
                actions.wake_no_later_than(now + remaining)
                return actions
        return PodActions(create_sandbox=True)
    inputs = _Inputs(
        pod_uid, pod_name, spec.get("restartPolicy", "Always"), sandbox, failures, backoff, now
    )
    actions = PodActions()
    if not _init_containers_done(inputs, spec.get("initContainers") or [], actions):
        return actions
    for container in spec["containers"]:
        _app_container(inputs, container["name"], actions)
    current = [r for r in sandbox.containers if r.started_at >= sandbox.created_at]
    if not actions.start and not actions.waiting:
        actions.terminal_phase = _terminal_phase(spec, current, inputs.restart_policy)
    return actions


def _current_runs(inputs: _Inputs, name: str) -> list[ContainerRecord]:
    sandbox = inputs.sandbox
    return [r for r in sandbox.attempts(name) if r.started_at >= sandbox.created_at]


def _init_containers_done(
    inputs: _Inputs, init_containers: list[dict[str, Any]], actions: PodActions
) -> bool:
    """Advance the first unfinished init container; True once all exited 0 in this sandbox."""
    for container in init_containers:
        name = container["name"]
        runs = _current_runs(inputs, name)
        last = runs[-1] if runs else None
        if last is not None and last.running:
            return False
        if last is not None and last.exit_code == 0 and not _failed_since(inputs, name, last):
            continue
        if last is not None and inputs.restart_policy == "Never":
            actions.terminal_phase = "Failed"
            return False
        _start_or_back_off(inputs, name, True, last, actions)
        return False
    return True


def _app_container(inputs: _Inputs, name: str, actions: PodActions) -> None:
    runs = _current_runs(inputs, name)
    last = runs[-1] if runs else None
    if last is not None and last.running:
        return
    if (
        last is not None
        and not _failed_since(inputs, name, last)
        and not should_restart(inputs.restart_policy, last.exit_code)
    ):
        return
    _start_or_back_off(inputs, name, False, last, actions)


def _failed_since(inputs: _Inputs, name: str, last: ContainerRecord) -> bool:
    """A start failure newer than the last run: that failure is the latest event."""
    failure = inputs.failures.get(name)
    return failure is not None and failure.at >= (last.finished_at or last.started_at)


def _start_or_back_off(
    inputs: _Inputs, name: str, init: bool, last: ContainerRecord | None, actions: PodActions
) -> None:
    """Start now unless the last failure is still inside its back-off window."""
    failure = inputs.failures.get(name)
    failed_at: float | None = None
    if last is not None and last.finished_at is not None:
        failed_at = last.finished_at
    if failure is not None and (last is None or failure.at >= last.started_at):
        failed_at = failure.at if failed_at is None else max(failed_at, failure.at)
    key = backoff_key(inputs.uid, name)
    if failed_at is not None:
        remaining = inputs.backoff.remaining(key, failed_at, inputs.now)
        if remaining > 0:
            window = inputs.backoff.get(key)
            reason = reasons.CRASH_LOOP_BACK_OFF
            message = (
                f"back-off {_duration(window)} restarting failed container={name} "
                f"pod={inputs.pod_name}"
            )
            if failure is not None and failure.at == failed_at:
                reason, message = failure.reason, f"{failure.message} ({message})"
            actions.waiting[name] = Waiting(reason, message)
            actions.wake_no_later_than(inputs.now + remaining)
            return
    attempt = next_attempt(inputs.sandbox.attempts(name))
    actions.start.append(StartAction(name, init, attempt, restart_of=failed_at))


def _duration(seconds: float) -> str:
    """Go's ``time.Duration`` formatting for whole-second windows (10s, 1m20s, 5m0s)."""
    whole = round(seconds)
    if whole < 60:
        return f"{seconds:g}s" if seconds != whole else f"{whole}s"
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s"


def _terminal_phase(
    spec: Mapping[str, Any], runs: tuple[ContainerRecord, ...] | list[ContainerRecord], policy: str
) -> str | None:
    """Succeeded/Failed when every app container has finished and none will restart, or an init
    container failed under restartPolicy Never."""
    if policy == "Always":
        return None
    latest: dict[str, ContainerRecord] = {}
    for run in runs:
        latest[run.name] = run
    if policy == "Never":
        for container in spec.get("initContainers") or []:
            last = latest.get(container["name"])
            if last is not None and not last.running and last.exit_code != 0:
                return "Failed"
    exits: list[int] = []
    for container in spec["containers"]:
        last = latest.get(container["name"])
        if last is None or last.running or last.exit_code is None:
            return None
        if should_restart(policy, last.exit_code):
            return None
        exits.append(last.exit_code)
    return "Succeeded" if all(code == 0 for code in exits) else "Failed"
