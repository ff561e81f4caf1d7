"""get_phase against a port of kubelet's ``getPhase`` (pkg/kubelet/kubelet_pods.go), for every
combination of up to three app container states and every restartPolicy.

The port is written from kubelet's Go source, independently of nodelet's code, and covers the
states nodelet reports (no ``unknown`` container, no restartable init container).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from nodelet.pod.status import get_phase

pytestmark = pytest.mark.unit

Json = dict[str, Any]

# name -> (state, lastState) as in a v1 ContainerStatus
STATES: dict[str, tuple[Json, Json]] = {
    "running": ({"running": {}}, {}),
    "exited-0": ({"terminated": {"exitCode": 0}}, {}),
    "exited-1": ({"terminated": {"exitCode": 1}}, {}),
    "waiting": ({"waiting": {"reason": "ContainerCreating"}}, {}),
    "restarting-after-0": ({"waiting": {}}, {"terminated": {"exitCode": 0}}),
    "restarting-after-1": ({"waiting": {}}, {"terminated": {"exitCode": 1}}),
    "running-again-after-1": ({"running": {}}, {"terminated": {"exitCode": 1}}),
}


def status(kind: str) -> Json:
    state, last = STATES[kind]
    return {"state": state, "lastState": last}


def kubelet_get_phase(policy: str, init: list[Json], app: list[Json]) -> str:
    """kubelet's getPhase, statement for statement."""
    pending_initialization = failed_initialization = 0
    for st in init:
        if "running" in st["state"]:
            pending_initialization += 1
        elif "terminated" in st["state"]:
            if st["state"]["terminated"]["exitCode"] != 0:
                failed_initialization += 1
        elif "waiting" in st["state"]:
            if "terminated" in st["lastState"]:
                if st["lastState"]["terminated"]["exitCode"] != 0:
                    failed_initialization += 1
            else:
                pending_initialization += 1
        else:
            pending_initialization += 1
    running = waiting = stopped = succeeded = 0
    for st in app:
        if "running" in st["state"]:
            running += 1
        elif "terminated" in st["state"]:
            stopped += 1
            if st["state"]["terminated"]["exitCode"] == 0:
                succeeded += 1
        elif "waiting" in st["state"]:
            if "terminated" in st["lastState"]:
                stopped += 1
            else:
                waiting += 1
    if failed_initialization > 0 and policy == "Never":
        return "Failed"
    any_app_started = any("running" in s["state"] or "terminated" in s["state"] for s in app)
    if (pending_initialization > 0 and not any_app_started) or waiting > 0:
        return "Pending"
    if running > 0:
        return "Running"
    if running == 0 and stopped > 0:
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


APP_COMBINATIONS = [
    list(combo) for size in (1, 2, 3) for combo in itertools.product(STATES, repeat=size)
]


@pytest.mark.parametrize("policy", ["Always", "OnFailure", "Never"])
def test_app_container_phases_match_kubelet(policy: str) -> None:
    done_init = [status("exited-0")]
    mismatches = []
    for combo in APP_COMBINATIONS:
        app = [status(kind) for kind in combo]
        ours = get_phase({"restartPolicy": policy}, done_init, app)
        theirs = kubelet_get_phase(policy, done_init, app)
        if ours != theirs:
            mismatches.append((combo, ours, theirs))
    assert mismatches == []
    assert len(APP_COMBINATIONS) == 7 + 49 + 343


INIT_STATES = ["running", "exited-0", "exited-1", "waiting", "restarting-after-0",
               "restarting-after-1"]  # fmt: skip


@pytest.mark.parametrize("policy", ["Always", "OnFailure", "Never"])
def test_init_container_phases_match_kubelet_while_apps_wait(policy: str) -> None:
    """Until every init container succeeded, the app containers wait to be created."""
    app = [status("waiting"), status("waiting")]
    for combo in itertools.product(INIT_STATES, repeat=2):
        init = [status(kind) for kind in combo]
        assert get_phase({"restartPolicy": policy}, init, app) == kubelet_get_phase(
            policy, init, app
        ), combo
