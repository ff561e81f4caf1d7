"""compute_pod_actions: init order, restart policies, back-off, terminal phases."""

from typing import Any

import pytest

from nodelet.pod.actions import StartFailure, compute_pod_actions
from nodelet.pod.backoff import Backoff
from nodelet.runtime.api import ContainerRecord, SandboxStatus

pytestmark = pytest.mark.unit

NOW = 10_000.0
SANDBOX_AT = 9_000.0


def spec(policy: str = "Always", inits: int = 1) -> dict[str, Any]:
    return {
        "restartPolicy": policy,
        "initContainers": [{"name": f"init{i}"} for i in range(inits)],
        "containers": [{"name": "app"}, {"name": "side"}],
    }


def run(
    name: str, attempt: int = 0, code: int | None = None, at: float = 9_100.0
) -> ContainerRecord:
    finished = None if code is None else at + 1
    return ContainerRecord(name, attempt, 100 + attempt, at, finished, code)


def sandbox(*records: ContainerRecord, ready: bool = True) -> SandboxStatus:
    return SandboxStatus("uid", ready, 42, SANDBOX_AT, None, tuple(records))


def act(
    pod_spec: dict[str, Any],
    box: SandboxStatus | None,
    backoff: Backoff | None = None,
    failures: dict[str, StartFailure] | None = None,
) -> Any:
    return compute_pod_actions(
        "uid", "web_default", pod_spec, box, failures or {}, backoff or Backoff(), NOW
    )


def names(actions: Any) -> list[tuple[str, bool, int]]:
    return [(s.name, s.init, s.attempt) for s in actions.start]


def test_no_sandbox_creates_one() -> None:
    assert act(spec(), None).create_sandbox
    assert act(spec(), sandbox(ready=False)).create_sandbox


def test_init_containers_run_one_at_a_time_in_order() -> None:
    two = spec(inits=2)
    assert names(act(two, sandbox())) == [("init0", True, 0)]
    assert names(act(two, sandbox(run("init0")))) == []
    assert names(act(two, sandbox(run("init0", code=0)))) == [("init1", True, 0)]
    done = sandbox(run("init0", code=0), run("init1", code=0))
    assert names(act(two, done)) == [("app", False, 0), ("side", False, 0)]


def test_failed_init_restarts_unless_never() -> None:
    failed = sandbox(run("init0", code=3))
    assert names(act(spec("OnFailure"), failed)) == [("init0", True, 1)]
    never = act(spec("Never"), failed)
    assert never.start == [] and never.terminal_phase == "Failed"


def test_runs_of_an_old_sandbox_do_not_count_as_progress() -> None:
    old = run("init0", code=0, at=SANDBOX_AT - 100)
    assert names(act(spec(), sandbox(old))) == [("init0", True, 1)]


@pytest.mark.parametrize(
    ("policy", "code", "restarts"),
    [
        ("Always", 0, True),
        ("Always", 1, True),
        ("OnFailure", 0, False),
        ("OnFailure", 1, True),
        ("Never", 1, False),
    ],
)
def test_restart_policy(policy: str, code: int, restarts: bool) -> None:
    box = sandbox(run("init0", code=0), run("app", code=code), run("side"))
    expected = [("app", False, 1)] if restarts else []
    assert names(act(spec(policy), box)) == expected


def test_crash_inside_window_waits_with_crashloopbackoff() -> None:
    backoff = Backoff()
    backoff.next("uid/app", NOW - 5, NOW - 5)  # restarted 5 s ago, window 10 s
    box = sandbox(run("init0", code=0), run("app", 1, code=1, at=NOW - 3), run("side"))
    actions = act(spec(), box, backoff)
    assert actions.start == []
    waiting = actions.waiting["app"]
    assert waiting.reason == "CrashLoopBackOff"
    assert waiting.message.startswith("back-off 10s restarting failed container=app")
    assert actions.wake_at == pytest.approx(NOW - 2 + 10)


def test_start_failure_is_backed_off_and_reported_with_its_reason() -> None:
    backoff = Backoff()
    backoff.next("uid/app", NOW - 1, NOW - 1)
    failures = {"app": StartFailure("RunContainerError", "exec: not found", NOW - 1)}
    box = sandbox(run("init0", code=0), run("side"))
    actions = act(spec(), box, backoff, failures)
    assert actions.waiting["app"].reason == "RunContainerError"
    assert "exec: not found" in actions.waiting["app"].message


def test_terminal_phases() -> None:
    inits = run("init0", code=0)
    ok = sandbox(inits, run("app", code=0), run("side", code=0))
    assert act(spec("Never"), ok).terminal_phase == "Succeeded"
    assert act(spec("OnFailure"), ok).terminal_phase == "Succeeded"
    assert act(spec("Always"), ok).terminal_phase is None
    bad = sandbox(inits, run("app", code=0), run("side", code=2))
    assert act(spec("Never"), bad).terminal_phase == "Failed"


def test_finished_pod_is_not_brought_back_when_its_holder_is_gone() -> None:
    gone = sandbox(run("init0", code=0), run("app", code=0), run("side", code=0), ready=False)
    actions = act(spec("Never"), gone)
    assert not actions.create_sandbox and actions.terminal_phase == "Succeeded"


def test_failed_init_pod_stays_failed_without_its_holder() -> None:
    gone = sandbox(run("init0", code=1), ready=False)
    actions = act(spec("Never"), gone)
    assert not actions.create_sandbox and actions.terminal_phase == "Failed"
