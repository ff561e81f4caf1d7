"""The event recorder against an in-memory API: bodies, counting by PATCH, aggregation, the spam
budget, retries and the queue bound, all with an injected clock and instant retry sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from nodelet.cluster.events import (
    COMBINED_PREFIX,
    MAX_QUEUED_EVENTS,
    EventRecorder,
    ObjectRef,
)

pytestmark = pytest.mark.unit

Json = dict[str, Any]

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
POD = ObjectRef("Pod", "kube-system", "web-n1", "uid-1", field_path="spec.containers{web}")
NODE = ObjectRef("Node", "", "n1", "n1")


class FakeSink:
    """Events by (namespace, name); the first ``failures`` requests raise ConnectionError."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], Json] = {}
        self.calls: list[tuple[str, str, str, Json]] = []
        self.failures = 0
        self._version = 0

    def _maybe_fail(self) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("connection refused")

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self.calls.append(("create", namespace, name, copy.deepcopy(body)))
        self._maybe_fail()
        assert (namespace, name) not in self.events, "AlreadyExists"
        assert "resourceVersion" not in body["metadata"]
        self._version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self._version)
        self.events[namespace, name] = stored
        return copy.deepcopy(stored)

    async def patch(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch", namespace, name, copy.deepcopy(body)))
        self._maybe_fail()
        if (namespace, name) not in self.events:
            raise LookupError(f"events {name!r} not found")
        self.events[namespace, name].update(body)
        return copy.deepcopy(self.events[namespace, name])

    def verbs(self) -> list[str]:
        return [verb for verb, *_ in self.calls]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self) -> None:
        self.sink = FakeSink()
        self.clock = Clock()
        self.sleeps: list[float] = []
        self.recorder = EventRecorder(
            self.sink, "kubelet", "n1", clock=self.clock, retry_sleep=self._sleep
        )

    async def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def event(self, message: str, ref: ObjectRef = POD, reason: str = "BackOff") -> None:
        self.recorder.event(ref, "Warning", reason, message)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self.recorder.run())
        try:
            yield
            await asyncio.wait_for(self.recorder.wait_idle(), 5)
            assert not task.done(), "run() must keep going"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def flush(self) -> None:
        async with self.running():
            pass


def scenario(body: Callable[[Harness], Awaitable[None]]) -> Harness:
    async def main() -> Harness:
        h = Harness()
        await body(h)
        return h

    return asyncio.run(main())


def test_first_event_body_has_every_field_client_go_sets() -> None:
    async def body(h: Harness) -> None:
        h.clock.now = T0 + 0.5
        h.recorder.event(POD, "Normal", "Pulled", "Container image already present")
        await h.flush()

    h = scenario(body)
    name = f"web-n1.{1_700_000_000_500_000_000:x}"
    assert h.sink.calls == [
        (
            "create",
            "kube-system",
            name,
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": "kube-system"},
                "involvedObject": {
                    "kind": "Pod",
                    "namespace": "kube-system",
                    "name": "web-n1",
                    "uid": "uid-1",
                    "apiVersion": "v1",
                    "fieldPath": "spec.containers{web}",
                },
                "reason": "Pulled",
                "message": "Container image already present",
                "type": "Normal",
                "source": {"component": "kubelet", "host": "n1"},
                "firstTimestamp": "2023-11-14T22:13:20Z",
                "lastTimestamp": "2023-11-14T22:13:20Z",
                "count": 1,
                "reportingComponent": "kubelet",
                "reportingInstance": "n1",
            },
        )
    ]
    assert (h.recorder.sent, h.recorder.dropped) == (1, 0)


def test_node_event_goes_to_default_namespace_without_empty_ref_fields() -> None:
    async def body(h: Harness) -> None:
        h.recorder.event(NODE, "Normal", "NodeReady", "Node n1 status is now: NodeReady")
        await h.flush()

    h = scenario(body)
    [(verb, namespace, _, sent)] = h.sink.calls
    assert (verb, namespace, sent["metadata"]["namespace"]) == ("create", "default", "default")
    assert sent["involvedObject"] == {"kind": "Node", "name": "n1", "uid": "n1", "apiVersion": "v1"}


def test_identical_events_patch_the_first_with_a_rising_count() -> None:
    async def body(h: Harness) -> None:
        h.event("Back-off restarting failed container")
        h.clock.now = T0 + 60
        h.event("Back-off restarting failed container")
        h.clock.now = T0 + 120
        h.event("Back-off restarting failed container")
        await h.flush()

    h = scenario(body)
    assert h.sink.verbs() == ["create", "patch", "patch"]
    name = h.sink.calls[0][2]
    assert [call[2] for call in h.sink.calls] == [name, name, name]
    assert [call[3] for call in h.sink.calls[1:]] == [
        {
            "count": 2,
            "lastTimestamp": "2023-11-14T22:14:20Z",
            "message": "Back-off restarting failed container",
        },
        {
            "count": 3,
            "lastTimestamp": "2023-11-14T22:15:20Z",
            "message": "Back-off restarting failed container",
        },
    ]
    stored = h.sink.events["kube-system", name]
    assert (stored["count"], stored["firstTimestamp"]) == (3, "2023-11-14T22:13:20Z")


def test_a_different_field_path_is_a_different_event() -> None:
    other = ObjectRef("Pod", "kube-system", "web-n1", "uid-1", field_path="spec.containers{log}")

    async def body(h: Harness) -> None:
        h.event("Back-off")
        h.event("Back-off", ref=other)
        await h.flush()

    assert scenario(body).sink.verbs() == ["create", "create"]


def test_patch_of_an_expired_event_creates_it_again_with_its_name_and_count() -> None:
    async def body(h: Harness) -> None:
        h.event("Back-off")
        await h.flush()
        h.sink.events.clear()  # the API server's event TTL ran out
        h.clock.now = T0 + 3600
        h.event("Back-off")
        await h.flush()
        h.clock.now = T0 + 3660
        h.event("Back-off")
        await h.flush()

    h = scenario(body)
    assert h.sink.verbs() == ["create", "patch", "create", "patch"]
    name = h.sink.calls[0][2]
    recreated = h.sink.calls[2][3]
    assert recreated["metadata"] == {"name": name, "namespace": "kube-system"}
    assert (recreated["count"], recreated["firstTimestamp"], recreated["lastTimestamp"]) == (
        2,
        "2023-11-14T22:13:20Z",
        "2023-11-14T23:13:20Z",
    )
    assert h.sink.calls[3][2] == name
    assert h.sink.events["kube-system", name]["count"] == 3


def test_tenth_similar_message_is_combined_and_later_ones_patch_it() -> None:
    async def body(h: Harness) -> None:
        for i in range(1, 12):
            h.event(f"probe failed: attempt {i}", reason="Unhealthy")
        h.event("other reason", reason="Killing")
        h.event("probe failed: attempt 1", reason="Unhealthy")  # one of the first nine
        await h.flush()

    h = scenario(body)
    assert h.sink.verbs() == ["create"] * 10 + ["patch", "create", "patch"]
    assert [call[3]["message"] for call in h.sink.calls[:9]] == [
        f"probe failed: attempt {i}" for i in range(1, 10)
    ]
    combined = h.sink.calls[9][3]
    assert combined["message"] == COMBINED_PREFIX + "probe failed: attempt 10"
    assert (combined["reason"], combined["count"]) == ("Unhealthy", 1)
    names = {call[2] for call in h.sink.calls[:10]}
    assert len(names) == 10
    assert h.sink.calls[10][2:] == (
        combined["metadata"]["name"],
        {
            "count": 2,
            "lastTimestamp": "2023-11-14T22:13:20Z",
            "message": COMBINED_PREFIX + "probe failed: attempt 11",
        },
    )
    assert h.sink.calls[11][3]["message"] == "other reason"
    assert h.sink.calls[12][2] == h.sink.calls[0][2]
    assert h.sink.calls[12][3]["count"] == 2


def test_similar_messages_spread_over_more_than_ten_minutes_stay_apart() -> None:
    async def body(h: Harness) -> None:
        for i in range(1, 10):
            h.event(f"probe failed: attempt {i}", reason="Unhealthy")
        await h.flush()
        h.clock.now = T0 + 601
        h.event("probe failed: attempt 10", reason="Unhealthy")
        await h.flush()

    h = scenario(body)
    assert h.sink.calls[-1][3]["message"] == "probe failed: attempt 10"


def test_spam_filter_drops_the_26th_event_per_object_and_refills_one_per_300s() -> None:
    async def body(h: Harness) -> None:
        for _ in range(26):
            h.event("Back-off")
        h.event("Back-off", ref=NODE)  # another object has its own budget
        await h.flush()
        assert (h.recorder.sent, h.recorder.dropped) == (26, 1)
        h.clock.now = T0 + 299
        h.event("Back-off")
        await h.flush()
        assert (h.recorder.sent, h.recorder.dropped) == (26, 2)
        h.clock.now = T0 + 300
        h.event("Back-off")
        h.event("Back-off")
        await h.flush()
        assert (h.recorder.sent, h.recorder.dropped) == (27, 3)

    h = scenario(body)
    assert h.sink.verbs() == ["create"] + ["patch"] * 24 + ["create", "patch"]


def test_transient_failures_are_retried_until_the_write_succeeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("random.random", lambda: 0.25)

    async def body(h: Harness) -> None:
        h.sink.failures = 3
        h.event("Back-off")
        await h.flush()

    h = scenario(body)
    assert h.sink.verbs() == ["create"] * 4
    assert len(h.sink.events) == 1
    assert len(h.sleeps) == 3
    assert h.sleeps == [2.5, 10, 10]  # the first sleep is jittered, as in client-go
    assert (h.recorder.sent, h.recorder.dropped) == (4, 0)


def test_a_failed_patch_is_retried_as_a_patch() -> None:
    async def body(h: Harness) -> None:
        h.event("Back-off")
        await h.flush()
        h.sink.failures = 1
        h.event("Back-off")
        await h.flush()

    h = scenario(body)
    assert h.sink.verbs() == ["create", "patch", "patch"]
    assert h.sink.events["kube-system", h.sink.calls[0][2]]["count"] == 2


def test_after_twelve_failed_tries_the_event_is_dropped_and_the_loop_goes_on() -> None:
    async def body(h: Harness) -> None:
        h.sink.failures = 12
        h.event("lost")
        h.event("kept", reason="Killing")
        await h.flush()

    h = scenario(body)
    assert h.sink.verbs() == ["create"] * 13
    assert len(h.sleeps) == 11
    assert [event["message"] for event in h.sink.events.values()] == ["kept"]
    assert (h.recorder.sent, h.recorder.dropped) == (13, 1)


def test_a_full_queue_drops_new_events() -> None:
    async def body(h: Harness) -> None:
        for i in range(MAX_QUEUED_EVENTS + 5):
            h.event("Created", ref=ObjectRef("Pod", "default", f"p{i}", f"u{i}"))
        assert h.recorder.dropped == 5
        await h.flush()

    h = scenario(body)
    assert len(h.sink.events) == MAX_QUEUED_EVENTS
    assert {call[2].split(".")[0] for call in h.sink.calls} == {
        f"p{i}" for i in range(MAX_QUEUED_EVENTS)
    }


def test_long_messages_are_cut_to_1024_bytes_on_a_character_boundary() -> None:
    async def body(h: Harness) -> None:
        h.event("x" * 1024, reason="Exact")
        h.event("é" * 600, reason="Long")
        await h.flush()

    h = scenario(body)
    exact, long = (call[3]["message"] for call in h.sink.calls)
    assert exact == "x" * 1024
    assert long.endswith(" ...")
    assert long.startswith("é" * 510)
    assert len(long.encode()) <= 1024


def test_unsupported_event_type_is_dropped() -> None:
    async def body(h: Harness) -> None:
        h.recorder.event(POD, "Error", "Failed", "boom")
        await h.flush()

    h = scenario(body)
    assert h.sink.calls == []
    assert h.recorder.dropped == 1
