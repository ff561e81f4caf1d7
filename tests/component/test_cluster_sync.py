"""Mirror pods (``MirrorPods``) and their status (``StatusSync``) against an in-memory API server.

``FakeApi`` answers requests as kube-apiserver would for pods (create with a new UID, delete
with a UID precondition, merge-patch of the status subresource with a UID precondition) and can
go down. It feeds its changes back as watch events on a later loop turn, as ``PodWatch`` does;
tests replay late events by hand. The retry constants are shrunk so each test takes a fraction of
a second.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from nodelet.cluster import mirrorplan
from nodelet.cluster import mirrors as mirrors_module
from nodelet.cluster import statussync as statussync_module
from nodelet.cluster.apiclient import MERGE_PATCH, ApiCaller, ApiError, _resource_of
from nodelet.cluster.mirrorplan import MIRROR_ANNOTATION, mirror_body, mirror_from_object
from nodelet.cluster.mirrors import MirrorPods
from nodelet.cluster.statussync import StatusSync, status_patch
from nodelet.manifest import defaults
from nodelet.model import StaticPod

pytestmark = pytest.mark.component

Json = dict[str, Any]

NODE = "node1"
NODE_UID = "node-uid-1"
PODS = "/api/v1/namespaces/{}/pods"


def static_pod(name: str, version: int = 1) -> StaticPod:
    raw = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"version": str(version)}},
        "spec": {"containers": [{"name": "c", "image": "host", "command": ["sleep", "1"]}]},
    }
    manifest = defaults.apply_defaults(raw, NODE, f"/manifests/{name}.yaml", seen=0.0)
    meta = manifest["metadata"]
    return StaticPod(meta["uid"], meta["namespace"], meta["name"], f"/m/{name}.yaml", manifest)


@dataclass
class Call:
    method: str
    path: str
    body: Json | None
    query: dict[str, str] | None
    content_type: str | None


def merge_patch(target: Json, patch: Json) -> Json:
    """RFC 7386."""
    result = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge_patch(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


@dataclass(repr=False, eq=False)
class FakeApi:
    """Pods by (namespace, name), as the API server stores them."""

    pods: dict[tuple[str, str], Json] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    down: bool = False
    """Every request fails as unreachable (status 0) while set."""
    hold_patches: asyncio.Event | None = None
    """When set to an Event, PATCHes wait for it (a patch in flight)."""
    latency: float = 0.0
    lose_answers: int = 0
    """This many requests are carried out, then answered as unreachable (a lost response)."""
    created: int = 0
    """Pods created (successful POSTs)."""
    watcher: Callable[[str, Json], None] | None = None
    """Receives ADDED, MODIFIED and DELETED events after each change, on a later loop turn, as
    ``PodWatch`` delivers them."""
    _uids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(100))

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Json | None = None,
        query: dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> Json:
        self.requests[f"{method} {_resource_of(path)}"] += 1
        self.calls.append(Call(method, path, copy.deepcopy(body), query, content_type))
        if self.latency:
            await asyncio.sleep(self.latency)
        else:
            await asyncio.sleep(0)
        if method == "PATCH" and self.hold_patches is not None:
            await self.hold_patches.wait()
        if self.down:
            raise ApiError(0, "Unreachable", "connection refused")
        parts = path.strip("/").split("/")
        assert parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods", path
        namespace = parts[3]
        name = parts[5] if len(parts) > 5 else None
        sub = parts[6] if len(parts) > 6 else None
        answer = self._serve(method, namespace, name, sub, body, content_type)
        if self.lose_answers:
            self.lose_answers -= 1
            raise ApiError(0, "Unreachable", "connection reset by peer")
        return answer

    def _serve(
        self,
        method: str,
        namespace: str,
        name: str | None,
        sub: str | None,
        body: Json | None,
        content_type: str | None,
    ) -> Json:
        if method == "POST" and name is None:
            assert body is not None
            return self._create(namespace, body)
        assert name is not None
        key = (namespace, name)
        if method == "GET":
            return copy.deepcopy(self._get(key))
        if method == "DELETE":
            return self._delete(key, body)
        if method == "PATCH" and sub == "status":
            return self._patch_status(key, body, content_type)
        raise AssertionError(f"unexpected {method} {name}/{sub}")

    def _get(self, key: tuple[str, str]) -> Json:
        if key not in self.pods:
            raise ApiError(404, "NotFound", f"pods {key[1]} not found")
        return self.pods[key]

    def _create(self, namespace: str, body: Json) -> Json:
        obj = copy.deepcopy(body)
        meta = obj["metadata"]
        assert meta.get("namespace", namespace) == namespace
        key = (namespace, meta["name"])
        if key in self.pods:
            raise ApiError(409, "AlreadyExists", f"pods {key[1]} already exists")
        assert "uid" not in meta and "resourceVersion" not in meta
        meta["uid"] = f"mirror-uid-{next(self._uids)}"
        meta["resourceVersion"] = str(next(self._versions))
        meta["namespace"] = namespace
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        self.pods[key] = obj
        self.created += 1
        self.emit("ADDED", obj)
        return copy.deepcopy(obj)

    def _delete(self, key: tuple[str, str], options: Json | None) -> Json:
        current = self._get(key)
        precondition = ((options or {}).get("preconditions") or {}).get("uid")
        if precondition is not None and precondition != current["metadata"]["uid"]:
            raise ApiError(409, "Conflict", "Precondition failed: UID in precondition")
        del self.pods[key]
        self.emit("DELETED", current)
        return {"kind": "Status", "status": "Success"}

    def _patch_status(
        self, key: tuple[str, str], body: Json | None, content_type: str | None
    ) -> Json:
        assert content_type == MERGE_PATCH
        assert body is not None
        current = self._get(key)
        uid = (body.get("metadata") or {}).get("uid")
        if uid is not None and uid != current["metadata"]["uid"]:
            raise ApiError(409, "Conflict", "Precondition failed: UID in precondition")
        current["status"] = merge_patch(current.get("status") or {}, body.get("status") or {})
        current["metadata"]["resourceVersion"] = str(next(self._versions))
        self.emit("MODIFIED", current)
        return copy.deepcopy(current)

    def __repr__(self) -> str:  # short: a failing assertion prints it
        return f"FakeApi(pods={sorted(self.pods)}, requests={dict(self.requests)})"

    def emit(self, kind: str, obj: Json) -> None:
        if self.watcher is not None:
            asyncio.get_running_loop().call_soon(self.watcher, kind, copy.deepcopy(obj))

    # -- helpers for tests -------------------------------------------------------------------

    def remove(self, pod: StaticPod) -> Json:
        """``kubectl delete --grace-period=0`` of the pod's mirror, seen by the watch."""
        obj = self.pods.pop((pod.namespace, pod.name))
        self.emit("DELETED", obj)
        return obj

    def mark_deleting(self, pod: StaticPod) -> Json:
        """``kubectl delete`` with a grace period: the mirror gets a deletionTimestamp."""
        obj = self.pods[(pod.namespace, pod.name)]
        obj["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        self.emit("MODIFIED", obj)
        return copy.deepcopy(obj)

    def mirror(self, pod: StaticPod) -> Json | None:
        return self.pods.get((pod.namespace, pod.name))

    def calls_of(self, method: str, sub: str = "") -> list[Call]:
        return [
            c for c in self.calls if c.method == method and (not sub or c.path.endswith("/" + sub))
        ]

    def add_pod(self, obj: Json) -> Json:
        meta = obj["metadata"]
        meta.setdefault("uid", f"mirror-uid-{next(self._uids)}")
        meta.setdefault("resourceVersion", str(next(self._versions)))
        self.pods[(meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)


async def eventually(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


class Cluster:
    """MirrorPods and StatusSync wired as ClusterSync wires them, on a FakeApi."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api
        caller = cast(ApiCaller, api)
        self.mirrored: list[str] = []
        self.mirrors = MirrorPods(caller, NODE, self._on_mirror)
        self.status = StatusSync(caller, self.mirrors)
        api.watcher = self.mirrors.on_event
        self._task: asyncio.Task[None] | None = None

    def _on_mirror(self, full_name: str) -> None:
        self.mirrored.append(full_name)
        self.status.mirror_changed(full_name)

    def start(self) -> None:
        self._task = asyncio.create_task(self.mirrors.run())

    async def close(self) -> None:
        if self._task is not None:
            # Cancel until it ends: Python 3.11's wait_for swallows a cancellation that races
            # with the awaited event being set, which a busy mirror loop makes likely.
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=0.05)
        await self.mirrors.close()
        await self.status.close()

    def ready(self, *pods: StaticPod, listed: list[Json] | None = None) -> None:
        """The usual start: pods from the manifests, node registered, first list seen."""
        self.mirrors.set_desired(pods, sources_ready=True)
        self.mirrors.set_node_uid(NODE_UID)
        self.mirrors.on_list(listed or [])

    def watch(self, kind: str, obj: Json) -> None:
        self.mirrors.on_event(kind, copy.deepcopy(obj))

    async def settle(self, seconds: float = 0.05) -> None:
        await asyncio.sleep(seconds)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (mirrors_module, statussync_module):
        monkeypatch.setattr(module, "RETRY_BASE_SECONDS", 0.005)
        monkeypatch.setattr(module, "RETRY_CAP_SECONDS", 0.02)


class PlanCounter:
    """Counts the mirror loop's plans: one per wake-up of ``MirrorPods.run``."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(
        self, desired: Any, mirrors: Any, node_uid: str, sources_ready: bool
    ) -> mirrorplan.MirrorPlan:
        self.count += 1
        return mirrorplan.plan_mirrors(desired, mirrors, node_uid, sources_ready)


@pytest.fixture
def plans(monkeypatch: pytest.MonkeyPatch) -> PlanCounter:
    counter = PlanCounter()
    monkeypatch.setattr("nodelet.cluster.mirrors.plan_mirrors", counter)
    return counter


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
async def cluster(api: FakeApi) -> AsyncIterator[Cluster]:
    world = Cluster(api)
    world.start()
    try:
        yield world
    finally:
        await world.close()


# -- MirrorPods: creating ------------------------------------------------------------------


async def test_nothing_is_created_before_the_first_list(cluster: Cluster, api: FakeApi) -> None:
    pod = static_pod("web")
    cluster.mirrors.set_desired([pod], sources_ready=True)
    cluster.mirrors.set_node_uid(NODE_UID)
    await cluster.settle()
    assert api.calls == []
    cluster.mirrors.on_list([])
    await eventually(lambda: api.mirror(pod) is not None)
    assert api.requests["POST pods"] == 1


async def test_nothing_is_created_before_the_node_uid_is_known(
    cluster: Cluster, api: FakeApi
) -> None:
    pod = static_pod("web")
    cluster.mirrors.set_desired([pod], sources_ready=True)
    cluster.mirrors.on_list([])
    await cluster.settle()
    assert api.calls == []
    cluster.mirrors.set_node_uid(NODE_UID)
    await eventually(lambda: api.mirror(pod) is not None)
    mirror = api.mirror(pod)
    assert mirror is not None
    assert mirror["metadata"]["ownerReferences"][0]["uid"] == NODE_UID


async def test_create_after_list_posts_the_mirror_body(cluster: Cluster, api: FakeApi) -> None:
    pod = static_pod("web")
    cluster.ready(pod)
    await eventually(lambda: cluster.mirrors.mirror_of(pod) is not None)
    (post,) = api.calls_of("POST")
    assert post.path == PODS.format(pod.namespace)
    assert post.body is not None
    assert post.body["metadata"]["annotations"][MIRROR_ANNOTATION] == pod.uid
    assert post.body["spec"]["nodeName"] == NODE
    stored = api.mirror(pod)
    assert stored is not None
    local = cluster.mirrors.mirror_of(pod)
    assert local is not None and local.uid == stored["metadata"]["uid"]
    assert pod.full_name in cluster.mirrored
    await cluster.settle()
    assert api.requests["POST pods"] == 1


async def test_an_existing_valid_mirror_is_kept(cluster: Cluster, api: FakeApi) -> None:
    pod = static_pod("web")
    existing = api.add_pod(mirror_body(pod, NODE, NODE_UID))
    cluster.ready(pod, listed=[existing])
    await cluster.settle()
    assert api.calls == []
    mirror = cluster.mirrors.mirror_of(pod)
    assert mirror is not None and mirror.uid == existing["metadata"]["uid"]


async def test_an_orphan_mirror_is_deleted_once_sources_are_ready(
    cluster: Cluster, api: FakeApi
) -> None:
    orphan = api.add_pod(mirror_body(static_pod("gone"), NODE, NODE_UID))
    cluster.mirrors.set_node_uid(NODE_UID)
    cluster.mirrors.set_desired([], sources_ready=False)
    cluster.mirrors.on_list([orphan])
    await cluster.settle()
    assert api.calls_of("DELETE") == []
    cluster.mirrors.set_desired([], sources_ready=True)
    await eventually(lambda: not api.pods)
    assert cluster.mirrors.mirrors == {}


# -- MirrorPods: the watch -----------------------------------------------------------------


async def test_a_deleted_mirror_is_created_again(cluster: Cluster, api: FakeApi) -> None:
    pod = static_pod("web")
    cluster.ready(pod)
    await eventually(lambda: api.mirror(pod) is not None)
    first = api.mirror(pod)
    assert first is not None
    api.remove(pod)
    await eventually(lambda: api.mirror(pod) is not None)
    second = api.mirror(pod)
    assert second is not None
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert api.requests["POST pods"] == 2
    mirror = cluster.mirrors.mirror_of(pod)
    assert mirror is not None and mirror.uid == second["metadata"]["uid"]


async def test_a_mirror_being_deleted_is_deleted_at_once_and_created_again(
    cluster: Cluster, api: FakeApi
) -> None:
    pod = static_pod("web")
    cluster.ready(pod)
    await eventually(lambda: api.mirror(pod) is not None)
    first = api.mirror(pod)
    assert first is not None
    old_uid = first["metadata"]["uid"]
    api.mark_deleting(pod)
    await eventually(lambda: (m := api.mirror(pod)) is not None and m["metadata"]["uid"] != old_uid)
    (delete,) = api.calls_of("DELETE")
    assert delete.path == f"{PODS.format(pod.namespace)}/{pod.name}"
    assert delete.body is not None
    assert delete.body["gracePeriodSeconds"] == 0
    assert delete.body["preconditions"] == {"uid": old_uid}
    methods = [c.method for c in api.calls]
    assert methods == ["POST", "DELETE", "POST"]


async def test_a_stale_mirror_from_the_list_is_replaced(cluster: Cluster, api: FakeApi) -> None:
    old = static_pod("web", version=1)
    new = static_pod("web", version=2)
    assert old.full_name == new.full_name and old.uid != new.uid
    stale = api.add_pod(mirror_body(old, NODE, NODE_UID))
    cluster.ready(new, listed=[stale])
    await eventually(lambda: cluster.mirrors.mirror_of(new) is not None)
    assert [c.method for c in api.calls] == ["DELETE", "POST"]
    stored = api.mirror(new)
    assert stored is not None
    assert stored["metadata"]["annotations"][MIRROR_ANNOTATION] == new.uid


async def test_a_late_watch_event_for_a_deleted_mirror_does_not_resurrect_it(
    cluster: Cluster, api: FakeApi
) -> None:
    pod = static_pod("web")
    cluster.ready(pod)
    await eventually(lambda: api.mirror(pod) is not None)
    first = api.mirror(pod)
    assert first is not None
    first = copy.deepcopy(first)
    deleting = api.mark_deleting(pod)
    await eventually(
        lambda: (
            (m := cluster.mirrors.mirror_of(pod)) is not None and m.uid != first["metadata"]["uid"]
        )
    )
    current = cluster.mirrors.mirror_of(pod)
    assert current is not None
    # The watch is behind: it still shows the first mirror being added and modified.
    cluster.watch("ADDED", first)
    cluster.watch("MODIFIED", deleting)
    cluster.watch("DELETED", deleting)
    await cluster.settle()
    mirror = cluster.mirrors.mirror_of(pod)
    assert mirror is not None and mirror.uid == current.uid
    assert cluster.mirrors.mirrors[pod.full_name].uid == current.uid
    assert api.requests["DELETE pods"] == 1
    assert api.requests["POST pods"] == 2


async def test_a_watch_event_for_a_non_mirror_pod_is_ignored(
    cluster: Cluster, api: FakeApi
) -> None:
    cluster.ready()
    plain = {"metadata": {"namespace": "default", "name": "x", "uid": "u"}, "spec": {}}
    cluster.watch("ADDED", plain)
    await cluster.settle()
    assert cluster.mirrors.mirrors == {}
    assert api.calls == []


# -- StatusSync ----------------------------------------------------------------------------


RUNNING: Json = {"phase": "Running", "podIP": "10.0.0.2", "conditions": [{"type": "Ready"}]}


async def test_a_status_update_is_one_merge_patch_on_the_status_subresource(
    cluster: Cluster, api: FakeApi
) -> None:
    pod = static_pod("web")
    cluster.ready(pod)
    await eventually(lambda: cluster.mirrors.mirror_of(pod) is not None)
    cluster.status.update(pod, RUNNING)
    await eventually(lambda: cluster.status.in_sync(pod))
    (patch,) = api.calls_of("PATCH")
    assert patch.path == f"{PODS.format(pod.namespace)}/{pod.name}/status"
    assert patch.content_type == MERGE_PATCH
    stored = api.mirror(pod)
    assert stored is not None
    assert patch.body is not None
    assert patch.body["metadata"] == {"uid": stored["metadata"]["uid"]}
    assert stored["status"] == RUNNING
    await cluster.settle()
    assert len(api.calls_of("PATCH")) == 1
    assert api.requests["PATCH pods/status"] == 1


async def test_the_same_status_again_sends_nothing(cluster: Cluster, api: FakeApi) -> None:
    pod = static_pod("web")
    cluster.ready(pod)
    await eventually(lambda: cluster.mirrors.mirror_of(pod) is not None)
    cluster.status.update(pod, RUNNING)
    await eventually(lambda: cluster.status.in_sync(pod))
    cluster.status.update(pod, copy.deepcopy(RUNNING))
    await cluster.settle()
    assert len(api.calls_of("PATCH")) == 1


async def test_rapid_updates_while_a_patch_is_in_flight_coalesce(
    cluster: Cluster, api: FakeApi
) -> None:
    pod = static_pod("web")
    cluster.ready(pod)
    await eventually(lambda: cluster.mirrors.mirror_of(pod) is not None)
    api.hold_patches = asyncio.Event()
    for n in range(10):
        cluster.status.update(pod, {"phase": "Running", "message": f"update {n}"})
        await asyncio.sleep(0)
    await eventually(lambda: len(api.calls_of("PATCH")) >= 1)
    api.hold_patches.set()
    await eventually(lambda: cluster.status.in_sync(pod))
    await cluster.settle()
    patches = api.calls_of("PATCH")
    assert 1 <= len(patches) <= 2
    stored = api.mirror(pod)
    assert stored is not None
    assert stored["status"]["message"] == "update 9"
    assert patches[-1].body is not None
    assert patches[-1].body["status"]["message"] == "update 9"


async def test_no_patch_while_the_mirror_is_missing_then_one_when_it_appears(
    cluster: Cluster, api: FakeApi
) -> None:
    pod = static_pod("web")
    cluster.mirrors.set_desired([pod], sources_ready=True)
    cluster.status.update(pod, RUNNING)  # before any mirror can exist
    await cluster.settle()
    assert api.calls == []
    assert not cluster.status.in_sync(pod)
    cluster.mirrors.set_node_uid(NODE_UID)
    cluster.mirrors.on_list([])
    await eventually(lambda: cluster.status.in_sync(pod))
    assert [c.method for c in api.calls] == ["POST", "PATCH"]
    stored = api.mirror(pod)
    assert stored is not None
    assert stored["status"] == RUNNING


async def test_status_follows_the_mirror_when_it_is_replaced(
    cluster: Cluster, api: FakeApi
) -> None:
    pod = static_pod("web")
    cluster.ready(pod)
    await eventually(lambda: cluster.mirrors.mirror_of(pod) is not None)
    cluster.status.update(pod, RUNNING)
    await eventually(lambda: cluster.status.in_sync(pod))
    first = api.mirror(pod)
    assert first is not None
    api.remove(pod)
    await eventually(
        lambda: (
            (m := api.mirror(pod)) is not None and m["metadata"]["uid"] != first["metadata"]["uid"]
        )
    )
    await eventually(lambda: cluster.status.in_sync(pod))
    second = api.mirror(pod)
    assert second is not None
    assert second["status"] == RUNNING  # qosClass from the server was removed as well
    last = api.calls_of("PATCH")[-1]
    assert last.body is not None
    assert last.body["metadata"]["uid"] == second["metadata"]["uid"]


async def test_forgotten_pod_is_not_patched(cluster: Cluster, api: FakeApi) -> None:
    pod = static_pod("web")
    cluster.mirrors.set_desired([pod], sources_ready=True)
    cluster.status.update(pod, RUNNING)
    cluster.status.forget_name(pod.full_name)
    cluster.mirrors.set_node_uid(NODE_UID)
    cluster.mirrors.on_list([])
    await eventually(lambda: api.mirror(pod) is not None)
    await cluster.settle()
    assert api.calls_of("PATCH") == []
    assert cluster.status.known() == []


# -- outages -------------------------------------------------------------------------------


async def test_an_outage_converges_once_the_server_is_back_without_duplicates(
    cluster: Cluster, api: FakeApi
) -> None:
    pods = [static_pod(name) for name in ("a", "b", "c")]
    api.down = True
    cluster.ready(*pods)
    for pod in pods:
        cluster.status.update(pod, {**RUNNING, "message": pod.name})
    await eventually(lambda: api.requests["POST pods"] >= 6)  # each pod retried at least once
    assert api.pods == {}
    assert not any(cluster.status.in_sync(pod) for pod in pods)
    api.down = False
    await eventually(lambda: all(cluster.status.in_sync(pod) for pod in pods))
    await cluster.settle()
    for pod in pods:
        stored = api.mirror(pod)
        assert stored is not None
        assert stored["status"]["message"] == pod.name
    assert len(api.pods) == 3
    # One successful create per pod, none of them replaced.
    assert api.created == 3
    assert api.calls_of("DELETE") == []
    uids = sorted(p["metadata"]["uid"] for p in api.pods.values())
    assert len(set(uids)) == 3
    for pod in pods:
        mirror = cluster.mirrors.mirror_of(pod)
        stored = api.mirror(pod)
        assert mirror is not None and stored is not None
        assert mirror.uid == stored["metadata"]["uid"]


async def test_a_create_whose_answer_was_lost_is_adopted_not_duplicated(
    cluster: Cluster, api: FakeApi
) -> None:
    """The POST reached the server but its answer did not come back, and the watch has not
    shown the new pod yet: the retry conflicts, and the existing mirror is taken."""
    api.watcher = None
    api.lose_answers = 1
    pod = static_pod("web")
    cluster.ready(pod)
    await eventually(lambda: cluster.mirrors.mirror_of(pod) is not None)
    await cluster.settle()
    assert api.created == 1
    stored = api.mirror(pod)
    assert stored is not None
    mirror = cluster.mirrors.mirror_of(pod)
    assert mirror is not None and mirror.uid == stored["metadata"]["uid"]
    assert [c.method for c in api.calls] == ["POST", "POST", "GET"]
    assert api.calls_of("DELETE") == []


async def test_status_patches_retry_through_an_outage(cluster: Cluster, api: FakeApi) -> None:
    pod = static_pod("web")
    cluster.ready(pod)
    await eventually(lambda: cluster.mirrors.mirror_of(pod) is not None)
    api.down = True
    cluster.status.update(pod, RUNNING)
    await eventually(lambda: len(api.calls_of("PATCH")) >= 3)
    cluster.status.update(pod, {**RUNNING, "message": "newest"})
    api.down = False
    await eventually(lambda: cluster.status.in_sync(pod))
    stored = api.mirror(pod)
    assert stored is not None
    assert stored["status"]["message"] == "newest"
    assert api.requests["POST pods"] == 1


async def test_a_mirror_that_cannot_be_created_is_retried_with_back_off(
    cluster: Cluster, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod that is not a mirror holds the name (someone created it through the API): the
    create conflicts, and the retries must be spaced out, not sent as fast as the loop runs."""
    monkeypatch.setattr(mirrors_module, "RETRY_BASE_SECONDS", 0.05)
    monkeypatch.setattr(mirrors_module, "RETRY_CAP_SECONDS", 0.1)
    pod = static_pod("web")
    api.add_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"namespace": pod.namespace, "name": pod.name},
            "spec": {"nodeName": NODE, "containers": []},
        }
    )
    cluster.ready(pod)
    await asyncio.sleep(0.3)
    # With back-off from 50 ms (at most 100 ms), 0.3 s leaves room for a handful of tries.
    assert 1 <= api.requests["POST pods"] <= 8
    assert cluster.mirrors.mirror_of(pod) is None


async def test_the_mirror_loop_does_not_spin_while_a_retried_request_is_in_flight(
    cluster: Cluster, api: FakeApi, plans: PlanCounter
) -> None:
    """After one failure the pod's retry deadline passes while its retry is still in flight;
    the loop must wait for the request, not re-plan continuously."""
    pod = static_pod("web")
    api.down = True
    cluster.ready(pod)
    await eventually(lambda: api.requests["POST pods"] >= 1)
    api.latency = 0.3  # the retry hangs, as a request to an unreachable server does
    await eventually(lambda: api.requests["POST pods"] >= 2)
    plans_before = plans.count
    await asyncio.sleep(0.2)
    assert plans.count - plans_before <= 5
    api.down = False
    api.latency = 0.0


async def test_a_failed_create_for_a_pod_that_is_gone_leaves_no_busy_loop(
    cluster: Cluster, api: FakeApi, plans: PlanCounter
) -> None:
    """A create failed, then the manifest was removed: its retry deadline must not keep the
    loop waking up with a zero timeout forever."""
    pod = static_pod("web")
    api.down = True
    cluster.ready(pod)
    await eventually(lambda: api.requests["POST pods"] >= 1)
    cluster.mirrors.set_desired([], sources_ready=True)
    await asyncio.sleep(0.05)
    plans_before = plans.count
    await asyncio.sleep(0.2)
    assert plans.count - plans_before <= 5


# -- status_patch --------------------------------------------------------------------------


def test_status_patch_removes_keys_the_server_holds_but_the_status_lacks() -> None:
    server = {"phase": "Pending", "qosClass": "BestEffort", "podIP": "10.0.0.9"}
    status = {"phase": "Running", "podIP": "10.0.0.2"}
    patch = status_patch("uid-1", status, server)
    assert patch == {
        "metadata": {"uid": "uid-1"},
        "status": {"phase": "Running", "podIP": "10.0.0.2", "qosClass": None},
    }
    assert merge_patch(server, patch["status"]) == status
    assert status == {"phase": "Running", "podIP": "10.0.0.2"}  # not mutated


def test_status_patch_with_nothing_on_the_server_is_the_status() -> None:
    status = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    assert status_patch("u", status, {}) == {"metadata": {"uid": "u"}, "status": status}


def test_mirror_from_created_object_round_trip(api: FakeApi) -> None:
    """The fake's answers are what the executor reads: a created mirror parses back."""
    pod = static_pod("web")
    created = api._create(pod.namespace, mirror_body(pod, NODE, NODE_UID))
    mirror = mirror_from_object(created)
    assert mirror is not None
    assert mirror.config_hash == pod.uid
    assert mirror.owner_uid == NODE_UID
    assert mirror.full_name == pod.full_name
