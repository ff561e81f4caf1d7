"""``/containers`` on the root-only socket: every container run the agent knows, with its pid,
for ``nodelet ps``, ``inspect``, ``exec`` and ``debug`` (crictl's ``ps``/``inspect``/``exec``).

``?pod=NS/NAME`` narrows to one pod; with ``&container=C`` the answer also carries ``exec``:
what ``nodelet exec`` needs that ``/proc`` does not show, the container's environment and
working dir as prepared, and the seccomp program the agent compiled for it (a filter cannot be
read back from the kernel without ptrace). Env values are secrets: never on the TCP port.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from typing import Any

from nodelet.model import StaticPod
from nodelet.runtime.api import ContainerConfig, ContainerRecord, Runtime, SandboxStatus
from nodelet.server.local import QueryHandler

ConfigOf = Callable[[str, str], ContainerConfig | None]
"""(pod UID, container name) -> the config its running attempt was started with, if known."""


def _no_config(_uid: str, _name: str) -> ContainerConfig | None:
    return None


def containers_route(
    pods: Callable[[], Iterable[StaticPod]], runtime: Runtime, config_of: ConfigOf = _no_config
) -> QueryHandler:
    """The handler: ``pods`` gives the desired pods, ``runtime`` their runs, ``config_of``
    the prepared config of a started container (None when this agent did not start it)."""

    async def handle(query: dict[str, str]) -> tuple[int, Any]:
        wanted = query.get("pod")
        items, matched = [], False
        for pod in sorted(pods(), key=lambda p: (p.namespace, p.name)):
            if wanted is not None and wanted != f"{pod.namespace}/{pod.name}":
                continue
            matched = True
            items.extend(_runs(pod, await runtime.pod_status(pod.uid)))
        if wanted is not None and not matched:
            return 404, f"pod {wanted} not found\n"
        name = query.get("container")
        if name is None:
            return 200, {"items": items}
        for item in items:
            if item["container"] == name:
                item["exec"] = _exec_spec(config_of(item["uid"], name), item["attempt"])
                return 200, {"items": [item]}
        return 404, f"container {name} not found in pod {wanted}\n"

    return handle


def _runs(pod: StaticPod, sandbox: SandboxStatus | None) -> list[dict[str, Any]]:
    """The latest run of every container of ``pod`` (init containers first, as declared)."""
    init = [c["name"] for c in pod.spec.get("initContainers") or []]
    names = [*init, *(c["name"] for c in pod.spec.get("containers") or [])]
    found = []
    for name in names:
        record = sandbox.latest(name) if sandbox is not None else None
        found.append(_item(pod, sandbox, name, name in init, record))
    return found


def _item(
    pod: StaticPod,
    sandbox: SandboxStatus | None,
    name: str,
    init: bool,
    record: ContainerRecord | None,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "namespace": pod.namespace,
        "pod": pod.name,
        "uid": pod.uid,
        "container": name,
        "init": init,
        "holderPid": sandbox.holder_pid if sandbox is not None and sandbox.ready else None,
        "state": "Created",
        "attempt": None,
        "pid": None,
        "startedAt": None,
        "finishedAt": None,
        "exitCode": None,
    }
    if record is None:
        return item
    item.update(
        state="Running" if record.running else "Exited",
        attempt=record.attempt,
        pid=record.pid if record.running else None,
        startedAt=record.started_at,
        finishedAt=record.finished_at,
        exitCode=record.exit_code,
    )
    if record.reason:
        item["reason"] = record.reason
    return item


def _exec_spec(config: ContainerConfig | None, attempt: int | None) -> dict[str, Any]:
    """``known`` is False when this agent did not start the run (it was restarted since):
    then the CLI takes env and working dir from ``/proc`` and refuses a filtered container."""
    if config is None or config.attempt != attempt:
        return {"known": False}
    program = config.seccomp_filter
    return {
        "known": True,
        "env": dict(config.env),
        "workingDir": config.working_dir,
        "seccompBPF": base64.b64encode(program).decode() if program is not None else None,
        "noNewPrivileges": config.no_new_privileges,
    }
