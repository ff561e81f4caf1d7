"""The Node and its Lease (``NodeSync``, ``LeaseSync``) against an in-memory API server: what
is sent when, and how a deleted or pre-existing Node is handled."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from nodelet.cluster import nodesync
from nodelet.cluster.apiclient import ApiError
from nodelet.cluster.noderesources import NodeResources
from nodelet.cluster.nodesync import LeaseSync, NodeSettings, NodeSync

pytestmark = pytest.mark.component

Json = dict[str, Any]
NODE_PATH = "/api/v1/nodes/n1"
LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1"
GIB = 1 << 30


class FakeApi:
    """Nodes and leases only; records every request as (method, path)."""

    def __init__(self) -> None:
        self.nodes: dict[str, Json] = {}
        self.leases: dict[str, Json] = {}
        self.calls: list[tuple[str, str]] = []
        self.uids = (f"uid-{n}" for n in itertools.count(1))
        self.versions = (str(n) for n in itertools.count(1))

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> Json:
        self.calls.append((method, path))
        if path == "/api/v1/nodes" and method == "POST":
            assert body is not None
            if "n1" in self.nodes:
                raise ApiError(409, "AlreadyExists")
            created = {**body, "metadata": {**body["metadata"], "uid": next(self.uids)}}
            self.nodes["n1"] = created
            return created
        if path.startswith(NODE_PATH):
            node = self.nodes.get("n1")
            if node is None:
                raise ApiError(404, "NotFound")
            if method == "PATCH" and body is not None:
                if "status" in body:
                    node["status"] = body["status"]
                if "metadata" in body:
                    node["metadata"]["labels"] = {
                        **node["metadata"].get("labels", {}), **body["metadata"]["labels"],
                    }  # fmt: skip
            return node
        if path.startswith(LEASE_PATH.rsplit("/", 1)[0]):
            return self._lease(method, body)
        raise AssertionError(f"unexpected {method} {path}")

    def _lease(self, method: str, body: Mapping[str, Any] | None) -> Json:
        lease = self.leases.get("n1")
        if method == "GET":
            if lease is None:
                raise ApiError(404, "NotFound")
            return lease
        assert body is not None
        if method == "POST":
            if lease is not None:
                raise ApiError(409, "AlreadyExists")
        elif lease is None:
            raise ApiError(404, "NotFound")
        elif body["metadata"].get("resourceVersion") != lease["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict")
        stored = {**body, "metadata": {**body["metadata"], "resourceVersion": next(self.versions)}}
        self.leases["n1"] = stored
        return stored

    def count(self, method: str, path: str) -> int:
        return self.calls.count((method, path))


def resources(memory_available: int = 8 * GIB) -> NodeResources:
    return NodeResources(
        cpu_count=2,
        memory_bytes=16 * GIB,
        memory_available_bytes=memory_available,
        ephemeral_storage_bytes=100 * GIB,
        ephemeral_available_bytes=50 * GIB,
        pids_max=4_194_304,
        pids_in_use=300,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sample(monkeypatch: pytest.MonkeyPatch) -> list[NodeResources]:
    """What the node's next status samples: tests change it to change the status."""
    current = [resources()]
    monkeypatch.setattr(nodesync, "sample_resources", lambda _root: current[0])
    return current


def node_sync(api: FakeApi, clock: Clock, uids: list[str], **settings: Any) -> NodeSync:
    config = NodeSettings(name="n1", ip="10.0.0.5", root_dir=Path("/"), hostname="host1",
                          **settings)  # fmt: skip
    return NodeSync(api, config, uids.append, clock=clock)  # type: ignore[arg-type]


def test_registration_creates_the_node_and_posts_its_status(sample: list[NodeResources]) -> None:
    api, clock, uids = FakeApi(), Clock(), list[str]()
    sync = node_sync(api, clock, uids, labels={"tier": "edge"})
    asyncio.run(sync.sync_once())
    assert uids == ["uid-1"] and sync.node_uid == "uid-1"
    node = api.nodes["n1"]
    assert node["metadata"]["labels"]["tier"] == "edge"
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "n1"
    assert api.count("POST", "/api/v1/nodes") == 1
    assert api.count("PATCH", NODE_PATH + "/status") == 1
    assert node["status"]["addresses"][0] == {"type": "InternalIP", "address": "10.0.0.5"}


def test_an_existing_node_is_taken_over_not_duplicated(sample: list[NodeResources]) -> None:
    api, clock, uids = FakeApi(), Clock(), list[str]()
    api.nodes["n1"] = {"metadata": {"name": "n1", "uid": "old-uid", "labels": {"keep": "me"}}}
    sync = node_sync(api, clock, uids)
    asyncio.run(sync.sync_once())
    assert uids == ["old-uid"]
    labels = api.nodes["n1"]["metadata"]["labels"]
    assert labels["keep"] == "me" and labels["kubernetes.io/hostname"] == "n1"
    assert ("PATCH", NODE_PATH) in api.calls


def test_an_unchanged_status_is_read_not_posted_until_the_report_frequency(
    sample: list[NodeResources],
) -> None:
    api, clock, uids = FakeApi(), Clock(), list[str]()
    sync = node_sync(api, clock, uids, status_report_frequency=300.0)

    async def run() -> None:
        await sync.sync_once()  # registers and posts
        for _ in range(3):
            clock.now += 10
            await sync.sync_once()
        assert api.count("PATCH", NODE_PATH + "/status") == 1
        assert api.count("GET", NODE_PATH) == 3
        sample[0] = resources(memory_available=50 << 20)  # under 100 Mi: MemoryPressure
        clock.now += 10
        await sync.sync_once()
        assert api.count("PATCH", NODE_PATH + "/status") == 2
        conditions = {c["type"]: c["status"] for c in api.nodes["n1"]["status"]["conditions"]}
        assert conditions["MemoryPressure"] == "True"
        clock.now += 300
        await sync.sync_once()  # unchanged, but the report is due
        assert api.count("PATCH", NODE_PATH + "/status") == 3

    asyncio.run(run())


def test_a_deleted_node_is_registered_again_with_a_new_uid(sample: list[NodeResources]) -> None:
    api, clock, uids = FakeApi(), Clock(), list[str]()
    sync = node_sync(api, clock, uids, status_report_frequency=10.0)

    async def run() -> None:
        await sync.sync_once()
        del api.nodes["n1"]
        clock.now += 10
        await sync.sync_once()

    asyncio.run(run())
    assert uids == ["uid-1", "uid-2"] and sync.node_uid == "uid-2"
    assert api.count("POST", "/api/v1/nodes") == 2


def test_without_register_node_a_missing_node_is_never_created(
    sample: list[NodeResources],
) -> None:
    api, clock, uids = FakeApi(), Clock(), list[str]()
    sync = node_sync(api, clock, uids, register=False)
    with pytest.raises(ApiError):
        asyncio.run(sync.sync_once())
    assert api.count("POST", "/api/v1/nodes") == 0 and uids == []
    api.nodes["n1"] = {"metadata": {"name": "n1", "uid": "made-by-admin"}}
    asyncio.run(sync.sync_once())
    assert uids == ["made-by-admin"]
    assert api.count("PATCH", NODE_PATH + "/status") == 1


def test_the_lease_is_created_then_updated_with_its_resource_version() -> None:
    api, clock = FakeApi(), Clock()
    lease = LeaseSync(api, "n1", lambda: "uid-1", clock=clock)  # type: ignore[arg-type]

    async def run() -> None:
        await lease.renew_once("uid-1")
        first = api.leases["n1"]["spec"]["renewTime"]
        clock.now += 10
        await lease.renew_once("uid-1")
        assert api.leases["n1"]["spec"]["renewTime"] != first
        # Someone else wrote it meanwhile: a conflict, then read and update.
        api.leases["n1"]["metadata"]["resourceVersion"] = "999"
        clock.now += 10
        await lease.renew_once("uid-1")

    asyncio.run(run())
    assert api.count("POST", LEASE_PATH.rsplit("/", 1)[0]) == 1
    assert api.count("PUT", LEASE_PATH) == 3  # one of them refused with a conflict
    assert api.count("GET", LEASE_PATH) == 2  # the first renewal's, and the conflict's
    assert api.leases["n1"]["spec"]["holderIdentity"] == "n1"
    owner = api.leases["n1"]["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "uid-1" and owner["kind"] == "Node"
    assert lease.renewed_at == clock.now
