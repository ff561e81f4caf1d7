"""PodStatus field by field, as kubelet reports it: phase tables for every restartPolicy and
exit code, whole container statuses, conditions with their reasons, transition times."""

from __future__ import annotations

from typing import Any

import pytest

from nodelet.cgroups.resources import qos_class
from nodelet.model import StaticPod
from nodelet.pod.actions import PodActions, Waiting
from nodelet.pod.status import (
    LOGS_DROPPED_CONDITION,
    build_pod_status,
    container_status,
    get_phase,
)
from nodelet.runtime.api import ContainerRecord, SandboxStatus
from nodelet.util.timefmt import rfc3339

pytestmark = pytest.mark.unit

CREATED = 100.0
NODE_IP = "192.0.2.1"


def pod(policy: str = "Always", inits: int = 0, apps: int = 1, **spec: Any) -> StaticPod:
    manifest: dict[str, Any] = {
        "metadata": {"name": "web-n", "namespace": "default", "uid": "u"},
        "spec": {
            "restartPolicy": policy,
            "initContainers": [{"name": f"init{i}", "image": "busybox"} for i in range(inits)],
            "containers": [{"name": f"app{i}", "image": f"img{i}"} for i in range(apps)],
            **spec,
        },
    }
    return StaticPod("u", "default", "web-n", "/m/web.yaml", manifest)


def run(name: str, attempt: int = 0, code: int | None = None, at: float = 110.0,
        **extra: Any) -> ContainerRecord:  # fmt: skip
    finished = None if code is None else at + 5
    return ContainerRecord(name, attempt, 1000 + attempt, at, finished, code, **extra)


def box(*records: ContainerRecord, ready: bool = True, **extra: Any) -> SandboxStatus:
    return SandboxStatus("u", ready, 7, CREATED, None, records, **extra)


def status(
    p: StaticPod,
    sandbox: SandboxStatus | None,
    actions: PodActions | None = None,
    previous: dict[str, Any] | None = None,
    now: float = 500.0,
) -> dict[str, Any]:
    return build_pod_status(p, sandbox, actions or PodActions(), NODE_IP, previous, now)


def crash_loop(name: str = "app0") -> PodActions:
    return PodActions(waiting={name: Waiting("CrashLoopBackOff", f"back-off 10s {name}")})


def test_rfc3339_is_utc_with_whole_seconds() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1_700_000_000.999) == "2023-11-14T22:13:20Z"


# --- phase: every restartPolicy x exit code, through build_pod_status ----------------------

# (policy, exit code) -> phase once the only container exited and nothing else happens.
EXITED = {
    ("Always", 0): "Running",  # kubelet: about to be restarted
    ("Always", 1): "Running",
    ("OnFailure", 0): "Succeeded",
    ("OnFailure", 1): "Running",
    ("Never", 0): "Succeeded",
    ("Never", 1): "Failed",
}


@pytest.mark.parametrize(("policy", "code"), list(EXITED))
def test_phase_after_the_container_exited(policy: str, code: int) -> None:
    assert status(pod(policy), box(run("app0", code=code)))["phase"] == EXITED[policy, code]


@pytest.mark.parametrize("policy", ["Always", "OnFailure", "Never"])
def test_phase_while_waiting_for_the_first_start_is_pending(policy: str) -> None:
    assert status(pod(policy), box())["phase"] == "Pending"
    assert status(pod(policy), None)["phase"] == "Pending"


@pytest.mark.parametrize("policy", ["Always", "OnFailure", "Never"])
def test_phase_while_running_is_running(policy: str) -> None:
    assert status(pod(policy), box(run("app0")))["phase"] == "Running"


@pytest.mark.parametrize(("policy", "code"), [("Always", 0), ("Always", 1), ("OnFailure", 1)])
def test_crash_looping_pod_is_running_not_pending(policy: str, code: int) -> None:
    """Waiting in CrashLoopBackOff with a last termination counts as stopped, as in kubelet."""
    st = status(pod(policy), box(run("app0", code=code)), crash_loop())
    assert st["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert st["phase"] == "Running"


def test_terminal_phase_decided_by_actions_wins() -> None:
    actions = PodActions(terminal_phase="Failed")
    assert status(pod("Never"), box(run("app0")), actions)["phase"] == "Failed"


@pytest.mark.parametrize(
    ("policy", "codes", "phase"),
    [
        ("Never", [0, 0], "Succeeded"),
        ("Never", [0, 2], "Failed"),
        ("Never", [0, None], "Running"),
        ("OnFailure", [0, 2], "Running"),
        ("OnFailure", [0, 0], "Succeeded"),
        ("Always", [0, 0], "Running"),
    ],
)
def test_phase_of_two_containers(policy: str, codes: list[int | None], phase: str) -> None:
    records = [run(f"app{i}", code=code) for i, code in enumerate(codes)]
    assert status(pod(policy, apps=2), box(*records))["phase"] == phase


def test_one_container_not_started_yet_keeps_the_pod_pending() -> None:
    assert status(pod("Never", apps=2), box(run("app0", code=0)))["phase"] == "Pending"
    assert status(pod("Always", apps=2), box(run("app0")))["phase"] == "Pending"


# Init containers: (policy, init state) -> phase.
@pytest.mark.parametrize(
    ("policy", "init_code", "waiting", "phase"),
    [
        ("Always", None, False, "Pending"),  # init running
        ("Never", None, False, "Pending"),
        ("Never", 1, False, "Failed"),  # init failed, never restarted
        ("OnFailure", 1, False, "Pending"),  # init failed, will be restarted
        ("Always", 1, True, "Pending"),  # init crash looping
        ("Never", 1, True, "Failed"),
        ("OnFailure", 0, False, "Pending"),  # init done, app not started yet
    ],
)
def test_phase_with_an_init_container(
    policy: str, init_code: int | None, waiting: bool, phase: str
) -> None:
    actions = crash_loop("init0") if waiting else None
    st = status(pod(policy, inits=1), box(run("init0", code=init_code)), actions)
    assert st["phase"] == phase


def test_init_container_that_succeeded_earlier_and_waits_is_not_pending() -> None:
    """get_phase reads a waiting init container's last termination: exit 0 is not a failure."""
    init = [{"state": {"waiting": {}}, "lastState": {"terminated": {"exitCode": 0}}}]
    running: list[dict[str, Any]] = [{"state": {"running": {}}, "lastState": {}}]
    assert get_phase({"restartPolicy": "Always"}, init, running) == "Running"
    failed = [{"state": {"waiting": {}}, "lastState": {"terminated": {"exitCode": 1}}}]
    assert get_phase({"restartPolicy": "Always"}, failed, running) == "Pending"
    assert get_phase({"restartPolicy": "Never"}, failed, running) == "Failed"


def test_phase_without_any_container_status_is_pending() -> None:
    assert get_phase({}, [], []) == "Pending"
    assert get_phase({}, [], [{"state": {"running": {}}, "lastState": {}}]) == "Running"


def test_restart_policy_defaults_to_always_for_the_phase() -> None:
    exited = [{"state": {"terminated": {"exitCode": 0}}, "lastState": {}}]
    assert get_phase({}, [], exited) == "Running"
    waited = [{"state": {"waiting": {}}, "lastState": {"terminated": {"exitCode": 1}}}]
    assert get_phase({}, [{"state": {"terminated": {"exitCode": 1}}, "lastState": {}}],
                     waited) == "Pending"  # fmt: skip


# --- whole container statuses -----------------------------------------------------------------


def app_status(sandbox: SandboxStatus | None, actions: PodActions | None = None,
               default: str = "ContainerCreating") -> dict[str, Any]:  # fmt: skip
    return container_status(
        pod(), {"name": "app0", "image": "img0"}, sandbox, actions or PodActions(), default
    )


def test_status_of_a_container_never_started() -> None:
    assert app_status(None) == {
        "name": "app0", "image": "img0", "imageID": "", "restartCount": 0, "ready": False,
        "started": False, "state": {"waiting": {"reason": "ContainerCreating"}}, "lastState": {},
    }  # fmt: skip
    assert app_status(box(), default="PodInitializing")["state"] == {
        "waiting": {"reason": "PodInitializing"}
    }


def test_status_of_a_running_container_after_a_restart() -> None:
    first = ContainerRecord("app0", 0, 6, 103.0, 104.5, 137, 9)
    second = ContainerRecord("app0", 1, 8, 105.0)
    assert app_status(box(first, second)) == {
        "name": "app0", "image": "img0", "imageID": "", "restartCount": 1, "ready": True,
        "started": True, "state": {"running": {"startedAt": "1970-01-01T00:01:45Z"}},
        "lastState": {"terminated": {
            "exitCode": 137, "reason": "Error", "signal": 9,
            "startedAt": "1970-01-01T00:01:43Z", "finishedAt": "1970-01-01T00:01:44Z",
            "containerID": "nodelet://u/app0/0",
        }},
        "containerID": "nodelet://u/app0/1",
    }  # fmt: skip


def test_status_of_a_crash_looping_container() -> None:
    runs = [run("app0", 0, code=1, at=101.0), run("app0", 1, code=2, at=120.0)]
    st = app_status(box(*runs), crash_loop())
    assert st == {
        "name": "app0", "image": "img0", "imageID": "", "restartCount": 1, "ready": False,
        "started": False,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s app0"}},
        "lastState": {"terminated": {
            "exitCode": 2, "reason": "Error", "startedAt": "1970-01-01T00:02:00Z",
            "finishedAt": "1970-01-01T00:02:05Z", "containerID": "nodelet://u/app0/1",
        }},
        "containerID": "nodelet://u/app0/1",
    }  # fmt: skip


def test_status_of_a_completed_container_and_of_a_start_error() -> None:
    st = app_status(box(run("app0", code=0)))
    assert st["state"] == {"terminated": {
        "exitCode": 0, "reason": "Completed", "startedAt": "1970-01-01T00:01:50Z",
        "finishedAt": "1970-01-01T00:01:55Z", "containerID": "nodelet://u/app0/0",
    }}  # fmt: skip
    assert (st["ready"], st["started"], st["lastState"]) == (False, False, {})
    failed = run("app0", code=128, reason="StartError", message="exec: not found")
    terminated = app_status(box(failed))["state"]["terminated"]
    assert (terminated["reason"], terminated["message"]) == ("StartError", "exec: not found")
    assert "signal" not in terminated


def test_a_run_lost_with_its_holder_is_unknown_not_running() -> None:
    lost = run("app0", at=CREATED - 50)  # never journaled an exit, from an earlier holder
    expected = {
        "exitCode": 137, "reason": "ContainerStatusUnknown",
        "message": "The container could not be located when the pod was terminated",
        "startedAt": "1970-01-01T00:00:50Z", "finishedAt": None,
        "containerID": "nodelet://u/app0/0",
    }  # fmt: skip
    assert app_status(box(lost))["state"] == {"terminated": expected}
    assert app_status(box(run("app0"), ready=False))["state"]["terminated"]["finishedAt"] is None
    current = app_status(box(run("app0", at=CREATED)))  # started exactly at creation: current
    assert "running" in current["state"]


def test_restart_count_is_the_highest_attempt_and_never_goes_backwards() -> None:
    runs = [run("app0", 0, code=1), run("app0", 3)]  # attempts 1, 2 lost
    assert status(pod(), box(*runs))["containerStatuses"][0]["restartCount"] == 3
    previous = {"containerStatuses": [{"name": "app0", "restartCount": 5}],
                "initContainerStatuses": [{"name": "init0", "restartCount": 2}]}  # fmt: skip
    st = status(pod(inits=1), box(run("init0", code=0), run("app0")), previous=previous)
    assert st["containerStatuses"][0]["restartCount"] == 5
    assert st["initContainerStatuses"][0]["restartCount"] == 2
    other = {"containerStatuses": [{"name": "other", "restartCount": 9}]}
    assert (
        status(pod(), box(run("app0")), previous=other)["containerStatuses"][0]["restartCount"] == 0
    )


# --- conditions ---------------------------------------------------------------------------


def conditions(st: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if k not in ("lastTransitionTime", "lastProbeTime")}
            for c in st["conditions"]]  # fmt: skip


def test_conditions_of_a_ready_pod() -> None:
    st = status(pod(inits=1), box(run("init0", code=0), run("app0")))
    assert conditions(st) == [
        {"type": "PodReadyToStartContainers", "status": "True"},
        {"type": "Initialized", "status": "True"},
        {"type": "Ready", "status": "True"},
        {"type": "ContainersReady", "status": "True"},
        {"type": "PodScheduled", "status": "True"},
    ]
    assert all(c["lastProbeTime"] is None for c in st["conditions"])
    assert {c["lastTransitionTime"] for c in st["conditions"]} == {"1970-01-01T00:08:20Z"}


def test_conditions_while_initializing() -> None:
    st = status(pod(inits=2, apps=2), box(run("init0", code=0), run("init1")))
    assert conditions(st) == [
        {"type": "PodReadyToStartContainers", "status": "True"},
        {"type": "Initialized", "status": "False", "reason": "ContainersNotInitialized",
         "message": "containers with incomplete status: [init1]"},
        {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
         "message": "containers with unready status: [app0 app1]"},
        {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
         "message": "containers with unready status: [app0 app1]"},
        {"type": "PodScheduled", "status": "True"},
    ]  # fmt: skip


def test_conditions_of_a_finished_pod() -> None:
    st = status(pod("Never", inits=1), box(run("init0", code=0), run("app0", code=0)))
    assert st["phase"] == "Succeeded"
    assert conditions(st)[1:4] == [
        {"type": "Initialized", "status": "True"},
        {"type": "Ready", "status": "False", "reason": "PodCompleted",
         "message": "containers with unready status: [app0]"},
        {"type": "ContainersReady", "status": "False", "reason": "PodCompleted",
         "message": "containers with unready status: [app0]"},
    ]  # fmt: skip
    failed_init = status(pod("Never", inits=1), box(run("init0", code=1)))
    assert failed_init["phase"] == "Failed"
    assert conditions(failed_init)[1] == {"type": "Initialized", "status": "True"}


def test_readiness_gates_keep_a_pod_with_ready_containers_unready() -> None:
    gated = pod(readinessGates=[{"conditionType": "example.com/feature"}])
    assert conditions(status(gated, box(run("app0"))))[2:4] == [
        {"type": "Ready", "status": "False", "reason": "ReadinessGatesNotReady",
         "message": "corresponding condition of pod readiness gate"},
        {"type": "ContainersReady", "status": "True"},
    ]  # fmt: skip


def test_sandbox_conditions() -> None:
    assert conditions(status(pod(), None))[0] == {
        "type": "PodReadyToStartContainers", "status": "False"
    }  # fmt: skip
    assert conditions(status(pod(), box(ready=False)))[0]["status"] == "False"
    actions = PodActions(sandbox_waiting=Waiting("SandboxBackOff", "back-off 10s re-creating"))
    assert conditions(status(pod(), box(ready=False), actions))[0] == {
        "type": "PodReadyToStartContainers", "status": "False", "reason": "SandboxBackOff",
        "message": "back-off 10s re-creating",
    }  # fmt: skip


def test_dropped_logs_are_a_condition_of_their_own() -> None:
    drops = (("app0", "No space left on device"), ("app1", "short write"))
    st = status(pod(apps=2), box(run("app0"), run("app1"), log_drops=drops))
    assert conditions(st)[5:] == [{
        "type": LOGS_DROPPED_CONDITION, "status": "True", "reason": "LogWriteFailed",
        "message": "app0: No space left on device; app1: short write",
    }]  # fmt: skip
    assert LOGS_DROPPED_CONDITION == "nodelet.io/LogsDropped"
    assert len(status(pod(), box(run("app0")))["conditions"]) == 5


def test_transition_time_changes_only_with_the_status() -> None:
    first = status(pod(), box(), now=500.0)
    second = status(pod(), box(run("app0")), previous=first, now=900.0)
    times = {c["type"]: c["lastTransitionTime"] for c in second["conditions"]}
    assert times == {
        "PodReadyToStartContainers": "1970-01-01T00:08:20Z",
        "Initialized": "1970-01-01T00:08:20Z",
        "Ready": "1970-01-01T00:15:00Z",
        "ContainersReady": "1970-01-01T00:15:00Z",
        "PodScheduled": "1970-01-01T00:08:20Z",
    }


# --- the rest of the pod status -------------------------------------------------------------


def test_whole_status_of_a_host_network_pod() -> None:
    st = status(pod(hostNetwork=True), box(run("app0")), now=CREATED)
    assert {k: v for k, v in st.items() if k not in ("conditions", "containerStatuses")} == {
        "phase": "Running",
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "podIP": NODE_IP,
        "podIPs": [{"ip": NODE_IP}],
        "qosClass": "BestEffort",
        "startTime": "1970-01-01T00:01:40Z",
    }


def test_pod_ip_comes_from_the_sandbox_without_host_network() -> None:
    sandbox = SandboxStatus("u", True, 7, CREATED, "10.1.0.5", (run("app0"),))
    st = status(pod(), sandbox)
    assert (st["podIP"], st["podIPs"]) == ("10.1.0.5", [{"ip": "10.1.0.5"}])
    assert "podIP" not in status(pod(), box()) and "podIPs" not in status(pod(), box())


def test_start_time_is_kept_from_the_previous_status() -> None:
    assert "startTime" not in status(pod(), None)
    assert status(pod(), None, previous={"startTime": "earlier"})["startTime"] == "earlier"
    assert status(pod(), box(), previous={"startTime": "earlier"})["startTime"] == "earlier"


def test_init_statuses_only_when_there_are_init_containers() -> None:
    assert "initContainerStatuses" not in status(pod(), box())
    st = status(pod(inits=1), box())
    assert [s["name"] for s in st["initContainerStatuses"]] == ["init0"]
    assert st["initContainerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert st["initContainerStatuses"][0]["image"] == "busybox"


def test_app_containers_wait_in_pod_initializing_while_an_init_container_runs() -> None:
    st = status(pod(inits=1), box(run("init0")))
    assert st["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}


def test_app_containers_wait_in_pod_initializing_whenever_the_pod_has_init_containers() -> None:
    """kubelet's default waiting reason is PodInitializing for any pod with init containers
    (``hasInitContainers``), also while one waits to be restarted or after all finished."""
    looping = status(pod(inits=1), box(run("init0", code=1)), crash_loop("init0"))
    assert looping["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert status(pod(), box())["containerStatuses"][0]["state"] == {
        "waiting": {"reason": "ContainerCreating"}
    }


@pytest.mark.parametrize(
    ("containers", "qos"),
    [
        ({"containers": [{"name": "a"}]}, "BestEffort"),
        ({"containers": [{"name": "a", "resources": {}}]}, "BestEffort"),
        ({"containers": [{"name": "a", "resources": None}]}, "BestEffort"),
        ({"containers": [{"name": "a", "resources": {"requests": {}}}]}, "BestEffort"),
        ({"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}, "Burstable"),
        (
            {
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1"}}}],
                "containers": [{"name": "a"}],
            },
            "Burstable",
        ),
        (
            {
                "containers": [
                    {"name": "a"},
                    {"name": "b", "resources": {"requests": {"memory": "1"}}},
                ]
            },
            "Burstable",
        ),
    ],
)
def test_qos_class(containers: dict[str, Any], qos: str) -> None:
    assert qos_class(containers) == qos


def test_init_containers_running_again_keep_the_pod_pending() -> None:
    """While init containers run (again, in a new holder) the pod is Pending, as kubelet before
    1.28 reports it, whatever the app containers did in the previous holder."""
    init: list[dict[str, Any]] = [
        {"state": {"running": {}}, "lastState": {}},
        {"state": {"waiting": {"reason": "PodInitializing"}}, "lastState": {}},
    ]
    app = [{"state": {"terminated": {"exitCode": 0}}, "lastState": {}}]
    assert get_phase({"restartPolicy": "Always"}, init, app) == "Pending"
    assert get_phase({"restartPolicy": "Always"}, init[1:], app) == "Pending"
    failed: list[dict[str, Any]] = [
        {"state": {"terminated": {"exitCode": 1}}, "lastState": {}},
        {"state": {"waiting": {}}, "lastState": {"terminated": {"exitCode": 1}}},
    ]
    assert get_phase({"restartPolicy": "Never"}, failed, app) == "Failed"
    assert get_phase({"restartPolicy": "Always"}, failed, app) == "Pending"


def test_app_containers_without_init_containers_wait_in_container_creating() -> None:
    st = status(pod(), box())
    assert st["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}


def test_a_container_without_image_reports_an_empty_one() -> None:
    no_image = container_status(pod(), {"name": "app0"}, None, PodActions(), "ContainerCreating")
    assert no_image["image"] == ""


def test_an_exit_without_exit_code_is_unknown() -> None:
    odd = ContainerRecord("app0", 0, 5, 103.0, 104.0, None)
    terminated = app_status(box(odd))["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("ContainerStatusUnknown", 137)


def test_two_init_containers_pending_are_named_in_the_condition() -> None:
    st = status(pod(inits=2), box(run("init0")))
    assert conditions(st)[1]["message"] == "containers with incomplete status: [init0 init1]"


def test_a_previous_status_without_restart_count_counts_as_zero() -> None:
    previous = {"containerStatuses": [{"name": "app0"}]}
    assert (
        status(pod(), box(run("app0")), previous=previous)["containerStatuses"][0]["restartCount"]
        == 0
    )
