"""compute_pod_actions in detail: back-off windows and their messages, start failures, attempt
numbers, the holder's own back-off, and which runs count for progress and for the phase."""

from __future__ import annotations

from typing import Any

import pytest

from nodelet.pod.actions import (
    PodActions,
    StartAction,
    StartFailure,
    Waiting,
    backoff_key,
    compute_pod_actions,
    next_attempt,
    sandbox_backoff_key,
    should_restart,
)
from nodelet.pod.backoff import Backoff
from nodelet.runtime.api import ContainerRecord, SandboxStatus

pytestmark = pytest.mark.unit

NOW = 10_000.0
CREATED = 9_000.0
POD = "web_default(uid)"


def spec(policy: str | None = "Always", inits: int = 0, apps: int = 1) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "initContainers": [{"name": f"init{i}"} for i in range(inits)],
        "containers": [{"name": f"app{i}"} for i in range(apps)],
    }
    if policy is not None:
        pod["restartPolicy"] = policy
    return pod


def run(name: str, attempt: int = 0, code: int | None = None, at: float = 9_100.0,
        ends: float | None = None) -> ContainerRecord:  # fmt: skip
    finished = None if code is None else (at + 1 if ends is None else ends)
    return ContainerRecord(name, attempt, 100 + attempt, at, finished, code)


def box(*records: ContainerRecord, ready: bool = True, finished: float | None = None) -> Any:
    return SandboxStatus("uid", ready, 42, CREATED, None, records, finished_at=finished)


def act(pod: dict[str, Any], sandbox: SandboxStatus | None, backoff: Backoff | None = None,
        failures: dict[str, StartFailure] | None = None) -> PodActions:  # fmt: skip
    return compute_pod_actions("uid", POD, pod, sandbox, failures or {}, backoff or Backoff(), NOW)


def starts(actions: PodActions) -> list[tuple[str, bool, int]]:
    return [(s.name, s.init, s.attempt) for s in actions.start]


def test_keys_attempts_and_restart_rule() -> None:
    assert backoff_key("uid", "app") == "uid/app"
    assert sandbox_backoff_key("uid") == "uid/~sandbox"
    assert next_attempt([]) == 0
    assert next_attempt([run("a", 0), run("a", 4), run("a", 2)]) == 5
    table = {(p, c): should_restart(p, c) for p in ("Always", "OnFailure", "Never")
             for c in (0, 1, None)}  # fmt: skip
    assert table == {
        ("Always", 0): True, ("Always", 1): True, ("Always", None): True,
        ("OnFailure", 0): False, ("OnFailure", 1): True, ("OnFailure", None): True,
        ("Never", 0): False, ("Never", 1): False, ("Never", None): False,
    }  # fmt: skip


def test_wake_no_later_than_keeps_the_earliest() -> None:
    actions = PodActions()
    actions.wake_no_later_than(50.0)
    assert actions.wake_at == 50.0
    actions.wake_no_later_than(70.0)
    assert actions.wake_at == 50.0
    actions.wake_no_later_than(20.0)
    assert actions.wake_at == 20.0


def test_default_pod_actions_decide_nothing() -> None:
    actions = PodActions()
    assert (actions.create_sandbox, actions.start, actions.waiting) == (False, [], {})
    assert (actions.wake_at, actions.terminal_phase, actions.sandbox_waiting) == (None, None, None)


# --- the sandbox ------------------------------------------------------------------------------


def test_sandbox_is_created_when_missing_or_dead() -> None:
    assert act(spec(), None) == PodActions(create_sandbox=True)
    assert act(spec(), box(run("app0"), ready=False)) == PodActions(create_sandbox=True)


def test_a_holder_that_died_inside_its_window_is_re_created_after_it() -> None:
    backoff = Backoff(initial=4.0)
    backoff.next(sandbox_backoff_key("uid"), NOW - 3, NOW - 3)
    actions = act(spec(), box(ready=False, finished=NOW - 1), backoff)
    assert actions == PodActions(
        wake_at=NOW + 3,
        sandbox_waiting=Waiting(
            "SandboxBackOff", f"back-off 4s re-creating the sandbox of pod={POD}"
        ),
    )
    later = Backoff(initial=4.0)
    later.next(sandbox_backoff_key("uid"), NOW - 6, NOW - 6)
    assert act(spec(), box(ready=False, finished=NOW - 4), later).create_sandbox
    assert act(spec(), box(ready=False, finished=NOW - 1)).create_sandbox  # no window yet


def test_finished_pod_without_holder_stays_finished_for_every_policy() -> None:
    done = box(run("app0", code=0), ready=False)
    assert act(spec("Never"), done) == PodActions(terminal_phase="Succeeded")
    assert act(spec("OnFailure"), done) == PodActions(terminal_phase="Succeeded")
    assert act(spec("Always"), done) == PodActions(create_sandbox=True)
    assert act(spec(None), done) == PodActions(create_sandbox=True)  # Always by default
    failed = box(run("app0", code=1), ready=False)
    assert act(spec("Never"), failed) == PodActions(terminal_phase="Failed")
    assert act(spec("OnFailure"), failed) == PodActions(create_sandbox=True)


# --- init containers ------------------------------------------------------------------------


def test_init_container_order_and_restarts() -> None:
    two = spec("OnFailure", inits=2)
    assert starts(act(two, box())) == [("init0", True, 0)]
    assert act(two, box(run("init0"))) == PodActions()  # running: wait for it
    assert starts(act(two, box(run("init0", code=0)))) == [("init1", True, 0)]
    assert starts(act(two, box(run("init0", code=0), run("init1", code=5)))) == [("init1", True, 1)]
    done = box(run("init0", code=0), run("init1", code=0))
    assert starts(act(two, done)) == [("app0", False, 0)]


def test_failed_init_container_under_never_fails_the_pod() -> None:
    actions = act(spec("Never", inits=2), box(run("init0", code=0), run("init1", code=1)))
    assert actions == PodActions(terminal_phase="Failed")


def test_a_start_failure_after_a_successful_init_run_runs_it_again() -> None:
    failures = {"init0": StartFailure("CreateContainerError", "no such dir", NOW - 500)}
    actions = act(spec(inits=1), box(run("init0", code=0, ends=NOW - 600)), failures=failures)
    assert starts(actions) == [("init0", True, 1)]


def test_only_runs_of_the_current_holder_count_as_progress() -> None:
    old = run("init0", code=0, at=CREATED - 100)
    assert starts(act(spec(inits=1), box(old))) == [("init0", True, 1)]
    at_creation = run("init0", code=0, at=CREATED)
    assert starts(act(spec(inits=1), box(at_creation))) == [("app0", False, 0)]


# --- app containers, back-off, failures -----------------------------------------------------


def test_every_app_container_is_started_with_its_next_attempt() -> None:
    sandbox = box(run("app0", 0, code=1), run("app0", 1, code=1), run("app2", 0))
    assert starts(act(spec(apps=3), sandbox)) == [("app0", False, 2), ("app1", False, 0)]
    finished = sandbox.containers[1].finished_at
    assert act(spec(apps=3), sandbox).start[0] == StartAction("app0", False, 2, finished)
    assert act(spec(apps=3), sandbox).start[1] == StartAction("app1", False, 0, None)


def test_crash_inside_the_window_waits_the_rest_of_it() -> None:
    backoff = Backoff()
    backoff.next("uid/app0", NOW - 5, NOW - 5)  # restarted 5 s ago: window 10 s
    crashed = box(run("app0", 1, code=1, at=NOW - 4, ends=NOW - 3))
    assert act(spec(), crashed, backoff) == PodActions(
        waiting={"app0": Waiting(
            "CrashLoopBackOff", f"back-off 10s restarting failed container=app0 pod={POD}")},
        wake_at=NOW + 7,
    )  # fmt: skip


def test_crash_after_the_window_restarts_at_once() -> None:
    backoff = Backoff()
    backoff.next("uid/app0", NOW - 30, NOW - 30)
    crashed = box(run("app0", 1, code=1, at=NOW - 20, ends=NOW - 10))
    restart = StartAction("app0", False, 2, restart_of=NOW - 10)
    assert act(spec(), crashed, backoff) == PodActions(start=[restart])
    exactly = box(run("app0", 1, code=1, at=NOW - 20, ends=NOW - 10 + 0.0))
    assert starts(act(spec(), exactly, backoff)) == [("app0", False, 2)]


def test_wake_at_is_the_earliest_window_end() -> None:
    backoff = Backoff()
    backoff.next("uid/app0", NOW - 2, NOW - 2)
    backoff.next("uid/app1", NOW - 2, NOW - 2)
    backoff.next("uid/app1", NOW - 1, NOW - 1)  # doubled: 20 s
    crashed = box(run("app0", 1, code=1, ends=NOW - 1), run("app1", 1, code=1, ends=NOW - 1))
    actions = act(spec(apps=2), crashed, backoff)
    assert actions.wake_at == NOW + 9
    assert actions.waiting["app1"].message.startswith("back-off 20s ")


def test_a_start_failure_reports_its_own_reason_inside_the_window() -> None:
    backoff = Backoff()
    backoff.next("uid/app0", NOW - 1, NOW - 1)
    failures = {"app0": StartFailure("CreateContainerConfigError", "no command", NOW - 1)}
    actions = act(spec(), box(), backoff, failures)
    assert actions == PodActions(
        waiting={"app0": Waiting(
            "CreateContainerConfigError",
            f"no command (back-off 10s restarting failed container=app0 pod={POD})")},
        wake_at=NOW + 9,
    )  # fmt: skip


def test_a_failure_older_than_the_last_run_is_not_its_reason() -> None:
    backoff = Backoff()
    backoff.next("uid/app0", NOW - 3, NOW - 3)
    failures = {"app0": StartFailure("CreateContainerError", "old", NOW - 50)}
    crashed = box(run("app0", 0, code=1, at=NOW - 40, ends=NOW - 3))
    waiting = act(spec(), crashed, backoff, failures).waiting["app0"]
    assert waiting.reason == "CrashLoopBackOff"
    assert act(spec(), crashed, backoff, failures).wake_at == NOW + 7


def test_a_failure_newer_than_the_last_exit_sets_the_window_start() -> None:
    backoff = Backoff()
    backoff.next("uid/app0", NOW - 2, NOW - 2)
    failures = {"app0": StartFailure("CreateContainerError", "new", NOW - 2)}
    crashed = box(run("app0", 0, code=1, at=NOW - 40, ends=NOW - 30))
    actions = act(spec(), crashed, backoff, failures)
    assert actions.waiting["app0"].reason == "CreateContainerError"
    assert actions.wake_at == NOW + 8


def test_a_failure_while_the_container_ran_counts_from_its_exit() -> None:
    backoff = Backoff()
    backoff.next("uid/app0", NOW - 3, NOW - 3)
    failures = {"app0": StartFailure("CreateContainerError", "during", NOW - 35)}
    crashed = box(run("app0", 0, code=1, at=NOW - 40, ends=NOW - 3))
    actions = act(spec(), crashed, backoff, failures)
    assert actions.waiting["app0"].reason == "CrashLoopBackOff"
    assert actions.wake_at == NOW + 7


def test_a_start_failure_after_a_clean_exit_restarts_an_on_failure_container() -> None:
    failures = {"app0": StartFailure("CreateContainerError", "x", NOW - 100)}
    done = box(run("app0", code=0, ends=NOW - 200))
    assert starts(act(spec("OnFailure"), done, failures=failures)) == [("app0", False, 1)]
    assert act(spec("OnFailure"), done).start == []
    older = {"app0": StartFailure("CreateContainerError", "x", NOW - 300)}
    assert act(spec("OnFailure"), done, failures=older).start == []


def test_running_containers_are_left_alone() -> None:
    assert act(spec(apps=2), box(run("app0"), run("app1"))) == PodActions()


# --- terminal phase while the holder lives ---------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "codes", "phase"),
    [
        ("Never", [0, 0], "Succeeded"),
        ("Never", [0, 3], "Failed"),
        ("OnFailure", [0, 0], "Succeeded"),
        ("Always", [0, 0], None),
    ],
)
def test_terminal_phase(policy: str, codes: list[int], phase: str | None) -> None:
    sandbox = box(*(run(f"app{i}", code=c) for i, c in enumerate(codes)))
    actions = act(spec(policy, apps=2), sandbox)
    assert actions.terminal_phase == phase


def test_no_terminal_phase_while_something_runs_or_waits() -> None:
    assert act(spec("Never", apps=2), box(run("app0", code=0), run("app1"))).terminal_phase is None
    backoff = Backoff()
    backoff.next("uid/app1", NOW - 1, NOW - 1)
    looping = box(run("app0", code=0), run("app1", code=1, ends=NOW - 1))
    actions = act(spec("OnFailure", apps=2), looping, backoff)
    assert actions.terminal_phase is None and "app1" in actions.waiting


def test_the_terminal_phase_reads_only_the_current_holders_runs() -> None:
    old = run("app0", code=0, at=CREATED - 10)
    new = run("app0", 1, code=0, at=CREATED + 10)
    assert act(spec("Never"), box(old, new)).terminal_phase == "Succeeded"


def test_a_failed_init_container_without_holder_fails_a_never_pod() -> None:
    assert act(spec("Never", inits=1), box(run("init0", code=2), ready=False)) == PodActions(
        terminal_phase="Failed"
    )
    ok_init = box(run("init0", code=0), run("app0", code=0), ready=False)
    assert act(spec("Never", inits=1), ok_init) == PodActions(terminal_phase="Succeeded")
    running_init = box(run("init0"), ready=False)
    assert act(spec("Never", inits=1), running_init).create_sandbox


@pytest.mark.parametrize(
    ("window", "text"),
    [(10.0, "10s"), (0.5, "0.5s"), (1.5, "1.5s"), (59.0, "59s"), (60.0, "1m0s"),
     (80.0, "1m20s"), (300.0, "5m0s"), (160.0, "2m40s")],
)  # fmt: skip
def test_window_is_written_as_go_durations(window: float, text: str) -> None:
    backoff = Backoff(initial=window, maximum=window)
    backoff.next("uid/app0", NOW, NOW)
    crashed = box(run("app0", code=1, ends=NOW))
    assert act(spec(), crashed, backoff).waiting["app0"].message.startswith(f"back-off {text} ")


def test_a_holder_window_of_less_than_a_second_is_still_waited_for() -> None:
    backoff = Backoff(initial=1.0)
    backoff.next(sandbox_backoff_key("uid"), NOW - 0.5, NOW - 0.5)
    actions = act(spec(), box(ready=False, finished=NOW - 0.5), backoff)
    assert actions.sandbox_waiting is not None and actions.wake_at == NOW + 0.5


def test_restart_policy_defaults_to_always_while_the_holder_runs() -> None:
    assert starts(act(spec(None), box(run("app0", code=0)))) == [("app0", False, 1)]


def test_a_run_started_as_the_holder_was_created_counts_for_the_phase() -> None:
    assert act(spec("Never"), box(run("app0", code=0, at=CREATED))).terminal_phase == "Succeeded"


def test_no_terminal_phase_while_a_container_is_started_again() -> None:
    failures = {"app0": StartFailure("CreateContainerError", "x", NOW - 100)}
    done = box(run("app0", code=0, ends=NOW - 200))
    actions = act(spec("OnFailure"), done, failures=failures)
    assert actions.start and actions.terminal_phase is None


def test_a_crashed_init_container_waits_out_its_window() -> None:
    backoff = Backoff()
    backoff.next("uid/init0", NOW - 2, NOW - 2)
    crashed = box(run("init0", 1, code=1, at=NOW - 3, ends=NOW - 1))
    actions = act(spec("Always", inits=1), crashed, backoff)
    assert actions.start == [] and actions.waiting["init0"].reason == "CrashLoopBackOff"
    assert actions.wake_at == NOW + 9


def test_a_failure_at_the_moment_of_the_exit_is_the_latest_event() -> None:
    failures = {"app0": StartFailure("CreateContainerError", "x", NOW - 200)}
    done = box(run("app0", code=0, ends=NOW - 200))
    assert starts(act(spec("OnFailure"), done, failures=failures)) == [("app0", False, 1)]


def test_a_run_with_an_unknown_exit_code_never_finishes_the_pod() -> None:
    odd = ContainerRecord("app0", 0, 5, 9_100.0, 9_101.0, None)
    assert act(spec("Never"), box(odd)).terminal_phase is None
