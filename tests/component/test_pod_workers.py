"""The pod workers and their dispatch rules against an in-memory runtime: no root, seconds.

Each test drives ``PodWorkers`` the way the agent does (adopt, then full snapshots from the
source) and asserts on what the runtime was asked to do, in order, and on the pod status.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from nodelet.config import AgentConfig
from nodelet.manifest import defaults
from nodelet.manifest.snapshot import SourceSnapshot
from nodelet.model import StaticPod
from nodelet.pod.backoff import Backoff
from nodelet.pod.podrecord import pod_record
from nodelet.pod.worker import WorkerContext, WorkerState
from nodelet.pod.workers import PodWorkers
from nodelet.runtime.api import ContainerConfig, ContainerStartError
from tests.fakes.runtime import FakeClock, FakeRuntime

pytestmark = pytest.mark.component

NODE = "node1"


def static_pod(name: str, *containers: str, version: int = 1, **spec: Any) -> StaticPod:
    raw = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"version": str(version)}},
        "spec": {
            "containers": [
                {"name": c, "image": "host", "command": ["sleep", "1"]} for c in containers
            ],
            **spec,
        },
    }
    manifest = defaults.apply_defaults(raw, NODE, f"/manifests/{name}.yaml", seen=0.0)
    meta = manifest["metadata"]
    return StaticPod(meta["uid"], meta["namespace"], meta["name"], f"/m/{name}.yaml", manifest)


def snapshot(*pods: StaticPod, complete: bool = True) -> SourceSnapshot:
    return SourceSnapshot(pods={p.uid: p for p in pods}, complete=complete)


class World:
    """A dispatcher, its fake runtime and clock, and a way to wait for what they do."""

    def __init__(self, tmp: Path) -> None:
        self.clock = FakeClock()
        self.runtime = FakeRuntime(self.clock)
        self.statuses: dict[str, dict[str, Any]] = {}
        config = AgentConfig(
            node_name=NODE,
            node_ip="192.0.2.1",
            root_dir=tmp / "root",
            run_dir=tmp / "run",
            pod_logs_dir=tmp / "logs",
        )
        ctx = WorkerContext(
            runtime=self.runtime,
            config=config,
            backoff=Backoff(10.0, 300.0),
            on_status=self.statuses.__setitem__,
            clock=self.clock,
        )
        self.pods = PodWorkers(ctx)
        self.runtime.subscribe(self.pods.poke)

    async def until(self, condition: Callable[[], object], what: str) -> None:
        for _ in range(2000):
            if condition():
                return
            await asyncio.sleep(0.001)
        raise AssertionError(f"never happened: {what}; calls: {self.runtime.calls}")

    def waiting_reason(self, uid: str, container: str) -> str | None:
        for status in self.statuses.get(uid, {}).get("containerStatuses", []):
            if status["name"] == container:
                reason: str | None = status["state"].get("waiting", {}).get("reason")
                return reason
        return None

    def tick(self, seconds: float) -> None:
        """Let time pass and wake every worker, as its own timer would."""
        self.clock.advance(seconds)
        for uid in list(self.pods.workers):
            self.pods.poke(uid)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    yield w
    await w.pods.stop()


async def test_an_added_pod_gets_a_sandbox_and_its_containers(world: World) -> None:
    pod = static_pod("web", "a", "b", terminationGracePeriodSeconds=7)
    world.pods.apply(snapshot(pod))
    await world.until(lambda: world.runtime.running(pod.uid) == ["a", "b"], "both running")
    assert [op for op, _, _ in world.runtime.calls] == [
        "run_sandbox", "start_container", "start_container"
    ]  # fmt: skip
    assert world.runtime.ops("run_sandbox")[0][1].grace_seconds == 7.0
    await world.until(lambda: world.statuses[pod.uid]["phase"] == "Running", "Running")


async def test_a_removed_pod_is_killed_with_its_grace_period(world: World) -> None:
    pod = static_pod("web", "a", terminationGracePeriodSeconds=12)
    world.pods.apply(snapshot(pod))
    await world.until(lambda: world.runtime.running(pod.uid), "running")
    world.pods.apply(snapshot())
    await world.until(lambda: pod.uid not in world.pods.workers, "worker gone")
    assert world.runtime.ops("kill_pod") == [(pod.uid, 12.0)]
    assert pod.uid not in world.runtime.pods


async def test_an_update_of_the_same_uid_reaches_the_worker(world: World) -> None:
    pod = static_pod("web", "a")
    world.pods.apply(snapshot(pod))
    await world.until(lambda: world.runtime.running(pod.uid), "running")
    moved = StaticPod(pod.uid, pod.namespace, pod.name, "/m/elsewhere.yaml", pod.manifest)
    world.pods.apply(snapshot(moved))
    assert world.pods.workers[pod.uid].pod.source_path == "/m/elsewhere.yaml"
    assert not world.runtime.ops("kill_pod")  # same UID: same pod, nothing restarted


async def test_an_edit_starts_the_new_pod_only_after_the_old_one_is_gone(world: World) -> None:
    old, new = static_pod("web", "a", version=1), static_pod("web", "a", version=2)
    assert old.uid != new.uid and old.full_name == new.full_name
    world.pods.apply(snapshot(old))
    await world.until(lambda: world.runtime.running(old.uid), "old running")
    world.runtime.kill_gate = asyncio.Event()  # the old pod takes its time to stop
    world.pods.apply(snapshot(new))
    await world.until(lambda: world.runtime.ops("kill_pod"), "old being killed")
    await asyncio.sleep(0.05)
    assert not [uid for uid, _ in world.runtime.ops("run_sandbox") if uid == new.uid]
    assert world.pods.workers[new.uid].state is WorkerState.WAITING
    world.runtime.kill_gate.set()
    await world.until(lambda: world.runtime.running(new.uid), "new running")
    order = [(op, uid) for op, uid, _ in world.runtime.calls if op in ("killed", "run_sandbox")]
    assert order.index(("killed", old.uid)) < order.index(("run_sandbox", new.uid))


async def test_an_edit_while_the_old_pod_is_still_starting(world: World) -> None:
    old, new = static_pod("web", "a", version=1), static_pod("web", "a", version=2)
    world.runtime.start_gate = asyncio.Event()  # the old pod's exec hangs
    world.pods.apply(snapshot(old))
    await world.until(lambda: world.runtime.ops("start_container"), "old starting")
    world.pods.apply(snapshot(new))
    world.runtime.start_gate.set()
    await world.until(lambda: world.runtime.running(new.uid), "new running")
    assert old.uid not in world.runtime.pods
    starts = [uid for uid, _ in world.runtime.ops("start_container")]
    assert starts == [old.uid, new.uid]  # the old pod started nothing more once killed


async def test_a_kill_during_start_sticks(world: World) -> None:
    pod = static_pod("web", "a", "b")
    world.runtime.start_gate = asyncio.Event()
    world.pods.apply(snapshot(pod))
    await world.until(lambda: world.runtime.ops("start_container"), "starting")
    world.pods.apply(snapshot())
    world.pods.apply(snapshot(pod))  # it comes back at once
    world.runtime.start_gate.set()
    await world.until(lambda: world.runtime.running(pod.uid) == ["a", "b"], "running again")
    # The kill was not overwritten: the pod was stopped completely, then started afresh.
    order = [op for op, _, _ in world.runtime.calls if op in ("killed", "run_sandbox")]
    assert order == ["run_sandbox", "killed", "run_sandbox"]


async def test_an_adopted_pod_with_its_manifest_keeps_running(world: World) -> None:
    pod = static_pod("web", "a")
    world.runtime.leave(pod.uid, pod_record(pod))
    await world.runtime.start_container(pod.uid, config_named("a"))
    world.runtime.calls.clear()
    world.pods.adopt(await world.runtime.list_pods())
    world.pods.apply(snapshot(pod))
    await world.until(lambda: world.statuses.get(pod.uid, {}).get("phase") == "Running", "synced")
    assert not world.runtime.ops("kill_pod") and not world.runtime.ops("run_sandbox")


async def test_an_adopted_pod_without_manifest_waits_for_a_complete_read(world: World) -> None:
    pod = static_pod("web", "a")
    world.runtime.leave(pod.uid, pod_record(pod))
    world.pods.adopt(await world.runtime.list_pods())
    world.pods.apply(snapshot(complete=False))  # a file still being written: maybe it is ours
    await asyncio.sleep(0.05)
    assert not world.runtime.ops("kill_pod")
    world.pods.apply(snapshot(complete=True))
    await world.until(lambda: world.runtime.ops("killed"), "orphan killed")


async def test_a_pod_whose_removal_had_begun_is_removed_not_run(world: World) -> None:
    pod = static_pod("web", "a")
    world.runtime.leave(pod.uid, pod_record(pod), terminating=True)
    world.pods.adopt(await world.runtime.list_pods())
    await world.until(lambda: world.runtime.ops("killed"), "removal finished")
    world.pods.apply(snapshot(complete=False))  # not kept like a live adopted pod
    await asyncio.sleep(0.05)
    assert not world.runtime.ops("start_container") and not world.runtime.ops("run_sandbox")
    assert not world.pods.workers and pod.uid not in world.pods.desired


async def test_an_unusable_record_is_stopped_with_the_holders_grace(world: World) -> None:
    world.runtime.leave("0123abcd", {"uid": "0123abcd", "manifest": "oops"})
    world.runtime.pods["0123abcd"].grace_seconds = 45.0
    world.pods.adopt(await world.runtime.list_pods())
    await world.until(lambda: world.runtime.ops("killed"), "stopped")
    assert world.runtime.ops("kill_pod") == [("0123abcd", 45.0)]
    assert not world.pods.workers


async def test_a_crash_loop_backs_off_on_the_injected_clock(world: World) -> None:
    pod = static_pod("web", "a")
    world.pods.apply(snapshot(pod))
    await world.until(lambda: world.runtime.running(pod.uid), "running")

    def starts() -> int:
        return len(world.runtime.ops("start_container"))

    world.runtime.exit(pod.uid, "a", 1)
    await world.until(lambda: starts() == 2, "first restart at once")
    world.runtime.exit(pod.uid, "a", 1)
    await world.until(lambda: world.waiting_reason(pod.uid, "a") == "CrashLoopBackOff", "back-off")
    world.tick(9.9)
    await asyncio.sleep(0.05)
    assert starts() == 2  # inside the 10 s window
    world.tick(0.2)
    await world.until(lambda: starts() == 3, "restart once the window closed")
    world.runtime.exit(pod.uid, "a", 1)
    await world.until(lambda: world.waiting_reason(pod.uid, "a") == "CrashLoopBackOff", "again")
    world.tick(19.9)
    await asyncio.sleep(0.05)
    assert starts() == 3  # the window doubled to 20 s
    world.tick(0.2)
    await world.until(lambda: starts() == 4, "restart after 20 s")


async def test_a_start_error_is_retried_with_back_off(world: World) -> None:
    pod = static_pod("web", "a")
    world.runtime.start_errors["a"] = ContainerStartError("CreateContainerError", "no mount")
    world.pods.apply(snapshot(pod))
    await world.until(lambda: world.waiting_reason(pod.uid, "a") == "CreateContainerError", "err")
    del world.runtime.start_errors["a"]
    world.tick(5)
    await asyncio.sleep(0.05)
    assert not world.runtime.running(pod.uid)
    world.tick(5.1)
    await world.until(lambda: world.runtime.running(pod.uid), "started after the back-off")


def config_named(name: str) -> ContainerConfig:
    return ContainerConfig(name=name, attempt=0, argv=["true"], env={}, log_path="/dev/null")
