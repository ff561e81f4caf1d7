"""PodStatus as kubelet reports it: states, reasons, restart counts, phase, conditions."""

from typing import Any

import pytest

from nodelet.model import StaticPod
from nodelet.pod.actions import PodActions, Waiting
from nodelet.pod.status import build_pod_status
from nodelet.runtime.api import ContainerRecord, SandboxStatus

pytestmark = pytest.mark.unit


def pod(policy: str = "Always", host_network: bool = False) -> StaticPod:
    manifest: dict[str, Any] = {
        "metadata": {"name": "web-n", "namespace": "default", "uid": "u"},
        "spec": {
            "restartPolicy": policy,
            "hostNetwork": host_network,
            "initContainers": [{"name": "init", "image": "host"}],
            "containers": [{"name": "app", "image": "host"}],
        },
    }
    return StaticPod("u", "default", "web-n", "/m/web.yaml", manifest)


def box(*records: ContainerRecord) -> SandboxStatus:
    return SandboxStatus("u", True, 7, 100.0, None, records)


def status(p: StaticPod, sb: SandboxStatus | None, actions: PodActions | None = None) -> Any:
    return build_pod_status(p, sb, actions or PodActions(), "192.0.2.1", None, 500.0)


def test_pending_while_initializing() -> None:
    st = status(pod(), box(ContainerRecord("init", 0, 5, 101.0)))
    assert st["phase"] == "Pending"
    assert "running" in st["initContainerStatuses"][0]["state"]
    assert st["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"
    conditions = {c["type"]: c["status"] for c in st["conditions"]}
    assert conditions["Initialized"] == "False" and conditions["Ready"] == "False"


def test_running_after_restart_reports_last_state_and_count() -> None:
    records = (
        ContainerRecord("init", 0, 5, 101.0, 102.0, 0),
        ContainerRecord("app", 0, 6, 103.0, 104.0, 137, 9),
        ContainerRecord("app", 1, 8, 105.0),
    )
    st = status(pod(), box(*records))
    app = st["containerStatuses"][0]
    assert st["phase"] == "Running"
    assert app["restartCount"] == 1 and app["ready"] is True
    assert app["lastState"]["terminated"]["exitCode"] == 137
    assert app["lastState"]["terminated"]["reason"] == "Error"
    assert st["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "True"


def test_crash_loop_is_waiting_with_last_termination() -> None:
    records = (
        ContainerRecord("init", 0, 5, 101.0, 102.0, 0),
        ContainerRecord("app", 0, 6, 103.0, 104.0, 1),
    )
    actions = PodActions(waiting={"app": Waiting("CrashLoopBackOff", "back-off 10s ...")})
    app = status(pod(), box(*records), actions)["containerStatuses"][0]
    assert app["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert app["lastState"]["terminated"]["exitCode"] == 1
    assert app["restartCount"] == 0


def test_succeeded_and_failed() -> None:
    init = ContainerRecord("init", 0, 5, 101.0, 102.0, 0)
    done = status(pod("Never"), box(init, ContainerRecord("app", 0, 6, 103.0, 104.0, 0)))
    assert done["phase"] == "Succeeded"
    failed = status(pod("Never"), box(init, ContainerRecord("app", 0, 6, 103.0, 104.0, 2)))
    assert failed["phase"] == "Failed"


def test_host_network_pod_ip_is_the_node_ip() -> None:
    st = status(pod(host_network=True), box())
    assert st["podIP"] == "192.0.2.1" and st["hostIP"] == "192.0.2.1"
    assert "podIP" not in status(pod(), box())


def test_condition_transition_time_is_kept_while_unchanged() -> None:
    p = pod()
    first = build_pod_status(p, box(), PodActions(), "192.0.2.1", None, 500.0)
    second = build_pod_status(p, box(), PodActions(), "192.0.2.1", first, 900.0)
    assert [c["lastTransitionTime"] for c in second["conditions"]] == [
        c["lastTransitionTime"] for c in first["conditions"]
    ]
