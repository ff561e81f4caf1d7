"""The pure parts of operating nodelet: notify environment and datagrams, the health checks'
freshness rules and bodies, and the metrics' counting rules and exposition."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodelet import reasons
from nodelet.model import ManifestError, Rejection, StaticPod
from nodelet.ops import health, notify, systemd
from nodelet.ops.health import Check, SyncLoopMonitor
from nodelet.ops.metrics import (
    AgentMetrics,
    AgentView,
    container_name,
    container_states,
    rejection_reason,
)
from nodelet.ops.systemd import SystemdReporter
from nodelet.runtime.api import ContainerRecord, SandboxStatus

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pod(uid: str = "u1", name: str = "web") -> StaticPod:
    manifest = {"metadata": {"name": name, "namespace": "default"}, "spec": {"containers": []}}
    return StaticPod(uid=uid, namespace="default", name=name, source_path="/m", manifest=manifest)


# -- notify ----------------------------------------------------------------------------------


def test_environment_is_read_and_removed() -> None:
    env = {"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42", "X": "1"}
    taken = notify.take_environment(env, 42)
    assert taken == notify.NotifyEnv("@sd", 30.0, None)
    assert env == {"X": "1"}  # nothing a forked holder could inherit


@pytest.mark.parametrize(
    ("usec", "owner", "expected"),
    [
        ("2000000", None, 2.0),
        ("2000000", "7", 2.0),
        ("2000000", "8", None),  # meant for another process
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        (None, None, None),
        ("2000000", "x", None),
    ],
)
def test_watchdog_seconds(usec: str | None, owner: str | None, expected: float | None) -> None:
    assert notify.watchdog_seconds(usec, owner, 7) == expected


def test_abstract_and_path_addresses() -> None:
    assert notify.socket_address("@name") == b"\0name"
    assert notify.socket_address("/run/systemd/notify") == "/run/systemd/notify"


def test_one_datagram_per_message(tmp_path: Path) -> None:
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        sender = notify.Notifier(path)
        assert sender.send("READY=1", "STATUS=1 of 1 pods running, 0 rejected")
        assert sender.send("WATCHDOG=1")
        sender.close()
        assert listener.recv(4096) == b"READY=1\nSTATUS=1 of 1 pods running, 0 rejected"
        assert listener.recv(4096) == b"WATCHDOG=1"


def test_abstract_socket_datagram() -> None:
    name = f"@nlt-notify-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(notify.socket_address(name))
        assert notify.Notifier(name).send("STOPPING=1")
        assert listener.recv(64) == b"STOPPING=1"


def test_missing_socket_never_raises(tmp_path: Path) -> None:
    sender = notify.Notifier(str(tmp_path / "absent.sock"))
    assert sender.enabled
    assert not sender.send("WATCHDOG=1")
    assert not notify.Notifier(None).send("READY=1")


# -- health ----------------------------------------------------------------------------------


def test_healthz_bodies_are_kubelets() -> None:
    good = [Check("ping"), Check("syncloop")]
    assert health.healthz(good) == (200, "ok")
    bad = [Check("ping"), Check("syncloop", "sync loop took longer than expected")]
    assert health.healthz(bad) == (
        500,
        "[+]ping ok\n[-]syncloop failed: reason withheld\nhealthz check failed\n",
    )
    status, body = health.healthz(bad, verbose=True)
    assert status == 500 and "[-]syncloop failed: sync loop took longer than expected\n" in body
    assert health.single(bad[1]) == (
        500,
        "internal server error: sync loop took longer than expected\n",
    )
    assert health.single(good[0]) == (200, "ok")


def test_sync_loop_goes_stale_only_for_a_stuck_worker() -> None:
    clock = Clock()
    monitor = SyncLoopMonitor(resync_seconds=10, clock=clock)
    assert monitor.stale_after == health.SYNC_LOOP_MIN_STALE_SECONDS  # kubelet's 5 min floor
    assert SyncLoopMonitor(resync_seconds=200).stale_after == 400

    async def sync_pass(seconds: float, fail: bool = False) -> float | None:
        clock.now += seconds
        if fail:
            raise RuntimeError("sync failed")
        return None

    async def scenario() -> None:
        await monitor.around("a", sync_pass(1))
        with pytest.raises(RuntimeError):
            await monitor.around("b", sync_pass(1, fail=True))  # a failed pass is progress
        clock.now += 299
        assert monitor.check(["a", "b"]).ok
        clock.now += 2
        stuck = monitor.check(["a", "b"])
        assert not stuck.ok and stuck.error is not None and "2 pod worker(s)" in stuck.error
        assert monitor.check(["c"]).ok  # never synced: not judged (the loop starts it at once)
        assert monitor.check([]).ok  # only syncing workers count (waiting, terminating: not)
        await monitor.around("a", sync_pass(0))
        await monitor.around("b", sync_pass(0))
        assert monitor.check(["a", "b"]).ok
        monitor.forget(["a"])
        clock.now += 400
        assert "pod uid=a " in (monitor.check(["a", "b"]).error or "")

    asyncio.run(scenario())


def test_a_pass_that_never_ends_is_stale() -> None:
    clock = Clock()
    monitor = SyncLoopMonitor(resync_seconds=10, clock=clock)

    async def scenario() -> None:
        hang = asyncio.Event()
        task = asyncio.create_task(monitor.around("a", hang.wait()))
        await asyncio.sleep(0)
        clock.now += 301
        assert not monitor.check(["a"]).ok
        hang.set()
        await task
        assert monitor.check(["a"]).ok

    asyncio.run(scenario())


def test_source_check() -> None:
    assert health.source_check(last_relist=100, started=0, period=20, now=150).ok
    stale = health.source_check(last_relist=100, started=0, period=20, now=151)
    assert stale.name == "manifestsource" and "last relist 51s ago" in (stale.error or "")
    assert health.source_check(last_relist=0, started=0, period=20, now=50).ok
    first = health.source_check(last_relist=0, started=0, period=20, now=51)
    assert "no relist completed since start" in (first.error or "")


# -- metrics ---------------------------------------------------------------------------------


def rejection(field: str, reason: str) -> Rejection:
    return Rejection("/m/x.yaml", (ManifestError("/m/x.yaml", field, reason),))


def test_rejection_reasons_never_quote_the_file() -> None:
    assert rejection_reason(rejection("", "pending: held open for writing by pid 1")) == "pending"
    assert rejection_reason(rejection("", "invalid YAML at line 3: secret")) == "unreadable"
    assert rejection_reason(rejection("", "internal error while checking: X")) == "internal"
    assert rejection_reason(rejection("spec.containers[0].name", "required")) == "invalid"
    dup = rejection("metadata.name", "pod default/web is already defined by /m/a.yaml")
    assert rejection_reason(dup) == "duplicate"


def run(name: str, attempt: int, finished: bool) -> ContainerRecord:
    return ContainerRecord(name, attempt, 10 + attempt, 1.0, 2.0 if finished else None)


def test_container_states_count_the_latest_run() -> None:
    alive = SandboxStatus("a", True, 1, 0.0, containers=(
        run("app", 0, True), run("app", 1, False), run("side", 0, True),
    ))  # fmt: skip
    dead = SandboxStatus("b", False, None, 0.0, containers=(run("app", 0, False),))
    assert container_states([alive, dead]) == {
        "running": 1, "exited": 1, "created": 0, "unknown": 1,
    }  # fmt: skip


def test_container_name_from_field_path() -> None:
    assert container_name("spec.containers{app}") == "app"
    assert container_name("spec.initContainers{init-db}") == "init-db"
    assert container_name("") == ""


def metrics_for(
    pods: Iterable[StaticPod] = (),
    rejected: list[Rejection] | None = None,
    sandboxes: Iterable[SandboxStatus] = (),
    clock: Clock | None = None,
) -> AgentMetrics:
    view = AgentView(
        node_name="n1",
        pods=lambda: [(p, None) for p in pods],
        rejected=lambda: rejected or [],
        mirror_pods=lambda: 0,
        sandboxes=lambda: sandboxes,
        cgroups=lambda: None,
        api=lambda: None,
    )
    return AgentMetrics(view, clock=clock or Clock())


def samples(metrics: AgentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_follow_the_pod_events() -> None:
    metrics = metrics_for()
    metrics.pod_event(reasons.CREATED_EVENT, "spec.containers{app}", None)
    metrics.pod_event(reasons.STARTED_EVENT, "spec.containers{app}", None)
    metrics.pod_event(reasons.STARTED_EVENT, "spec.initContainers{init}", None)
    metrics.pod_event(reasons.FAILED_EVENT, "spec.containers{app}", reasons.START_ERROR)
    metrics.pod_event(reasons.FAILED_EVENT, "spec.containers{app}", None)
    metrics.pod_event(reasons.FAILED_POST_START_HOOK, "spec.containers{app}", None)
    metrics.pod_event(reasons.KILLING_EVENT, "spec.containers{app}", None)
    got = samples(metrics)
    started = "kubelet_started_containers_total"
    errors = "kubelet_started_containers_errors_total"
    assert got[(started, (("container_type", "container"),))] == 3  # every attempt
    assert got[(started, (("container_type", "init_container"),))] == 1
    by_code = {dict(k[1])["code"]: v for k, v in got.items() if k[0] == errors}
    assert by_code == {
        reasons.START_ERROR: 1,
        reasons.CREATE_CONTAINER_CONFIG_ERROR: 1,  # failed before the runtime was asked
        "PostStartHookError": 1,
    }


def test_restarts_and_start_durations() -> None:
    clock = Clock()
    metrics = metrics_for(clock=clock)
    metrics.pods_applied(set(), {"adopted"})  # first snapshot: the pod found at start...
    metrics.pods_applied({"adopted"}, {"adopted", "new"})
    clock.now += 2.5
    metrics.pod_phase("new", "Pending")
    metrics.pod_phase("new", "Running")
    metrics.pod_phase("new", "Running")  # only the first Running is a start
    metrics.pods_applied({"adopted", "new"}, {"adopted"})
    metrics.pods_applied({"adopted"}, {"adopted", "new"})  # same UID back: restarted
    metrics.pods_applied({"adopted", "new"}, {"adopted", "new", "other"})
    got = samples(metrics)
    assert got[("kubelet_restarted_pods_total", (("static", "true"),))] == 1
    assert got[("kubelet_restarted_pods_total", (("static", ""),))] == 0
    assert got[("kubelet_pod_start_duration_seconds_count", ())] == 1
    assert got[("kubelet_pod_start_duration_seconds_sum", ())] == 2.5
    assert got[("kubelet_pod_start_duration_seconds_bucket", (("le", "3.0"),))] == 1
    assert got[("kubelet_pod_start_duration_seconds_bucket", (("le", "2.0"),))] == 0


def test_adopted_pods_have_no_start_duration() -> None:
    metrics = metrics_for()
    metrics.pods_applied({"adopted"}, {"adopted"})  # in the desired set before the first read
    metrics.pod_phase("adopted", "Running")
    assert samples(metrics)[("kubelet_pod_start_duration_seconds_count", ())] == 0


def test_worker_durations_by_operation() -> None:
    metrics = metrics_for()
    first, edited = pod(), pod()
    metrics.synced(first, 0.2)
    metrics.synced(first, 0.01)
    metrics.synced(edited, 0.03)  # a new object for the same UID: update()
    got = samples(metrics)
    count = "kubelet_pod_worker_duration_seconds_count"
    assert got[(count, (("operation_type", "create"),))] == 1
    assert got[(count, (("operation_type", "sync"),))] == 1
    assert got[(count, (("operation_type", "update"),))] == 1


def test_scrape_gauges_from_state() -> None:
    sandbox = SandboxStatus("u1", True, 5, 0.0, containers=(run("app", 0, False),))
    rejected = [rejection("", "file is empty"), rejection("spec", "bad")]
    metrics = metrics_for([pod()], rejected, [sandbox])
    metrics.runtime_operation("start_container", 0.01, failed=True)
    got = samples(metrics)
    assert got[("kubelet_running_pods", ())] == 1
    assert got[("nodelet_holders_alive", ())] == 1
    assert got[("kubelet_desired_pods", (("static", "true"),))] == 1
    assert got[("kubelet_running_containers", (("container_state", "running"),))] == 1
    assert got[("nodelet_manifest_rejections", (("reason", "unreadable"),))] == 1
    assert got[("nodelet_manifest_rejections", (("reason", "invalid"),))] == 1
    assert got[("kubelet_node_name", (("node", "n1"),))] == 1
    assert (
        got[("kubelet_runtime_operations_errors_total", (("operation_type", "start_container"),))]
        == 1
    )
    assert not any(name.endswith("_created") for name, _ in got)


def test_registries_are_per_agent() -> None:
    one, two = metrics_for(), metrics_for()
    one.pod_event(reasons.STARTED_EVENT, "spec.containers{app}", None)
    key = ("kubelet_started_containers_total", (("container_type", "container"),))
    assert samples(one)[key] == 1 and samples(two)[key] == 0


# -- systemd reporter ------------------------------------------------------------------------


class Datagrams:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def read(self) -> list[str]:
        got = []
        while True:
            try:
                got.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return got


def test_ready_waits_for_a_complete_read_but_not_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(systemd, "READY_AT_THE_LATEST", 0.2)
    listener = Datagrams(tmp_path / "n")
    reporter = SystemdReporter(
        notify.NotifyEnv(str(tmp_path / "n")),
        lambda complete: "0 of 1 pods running" + ("" if complete else "; incomplete"),
        list,
    )

    async def scenario() -> None:
        reporter.sources_read(complete=False)  # a file still held open by its writer
        await asyncio.sleep(0.05)
        assert listener.read() == []
        await asyncio.sleep(0.3)
        assert listener.read() == ["READY=1\nSTATUS=0 of 1 pods running; incomplete"]
        reporter.sources_read(complete=True)
        await asyncio.sleep(1.2)  # STATUS= waits for the rate limit, then follows
        assert listener.read() == ["STATUS=0 of 1 pods running"]
        reporter.stopping()
        assert listener.read() == ["STOPPING=1\nSTATUS=stopping; pods keep running"]

    asyncio.run(scenario())


def test_watchdog_pings_only_while_healthy(tmp_path: Path) -> None:
    listener = Datagrams(tmp_path / "n")
    checks = [Check("syncloop", "stuck")]
    reporter = SystemdReporter(notify.NotifyEnv(str(tmp_path / "n"), 0.1), str, lambda: checks)

    async def scenario() -> None:
        task = asyncio.create_task(reporter.heartbeat())
        await asyncio.sleep(0.3)
        assert listener.read() == []  # a stuck worker or a stale source: no pings
        checks[:] = [Check("syncloop")]
        await asyncio.sleep(0.3)
        assert listener.read().count("WATCHDOG=1") >= 3  # every half timeout
        task.cancel()

    asyncio.run(scenario())
    no_watchdog = SystemdReporter(notify.NotifyEnv(str(tmp_path / "n")), str, list)
    asyncio.run(asyncio.wait_for(no_watchdog.heartbeat(), 1))  # returns at once
