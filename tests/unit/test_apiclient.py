"""The pure parts of the API client (``nodelet.cluster.apiclient``): the token bucket with an
injected clock, jittered back-off, ApiError's classification, path quoting and the resource
names the request counters use."""

from __future__ import annotations

import random
from urllib.parse import unquote

import pytest

from nodelet.cluster.apiclient import (
    ApiError,
    TokenBucket,
    _resource_of,
    jittered,
    path_of,
)

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- TokenBucket -----------------------------------------------------------------------------


def test_token_bucket_burst_is_available_at_once() -> None:
    bucket = TokenBucket(qps=5.0, burst=3, clock=Clock())
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]


def test_token_bucket_after_the_burst_tokens_are_spaced_by_one_over_qps() -> None:
    bucket = TokenBucket(qps=10.0, burst=2, clock=Clock())
    bucket.reserve()
    bucket.reserve()
    waits = [bucket.reserve() for _ in range(3)]
    assert waits == pytest.approx([0.1, 0.2, 0.3])


def test_token_bucket_refills_at_qps() -> None:
    clock = Clock()
    bucket = TokenBucket(qps=4.0, burst=1, clock=clock)
    assert bucket.reserve() == 0.0
    clock.now += 0.25  # exactly one token
    assert bucket.reserve() == 0.0
    clock.now += 0.125  # half a token
    assert bucket.reserve() == pytest.approx(0.125)


def test_token_bucket_refill_is_capped_at_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(qps=10.0, burst=3, clock=clock)
    for _ in range(3):
        bucket.reserve()
    clock.now += 3600.0  # an hour idle saves no more than the burst
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.1)


def test_token_bucket_a_reservation_in_debt_is_repaid_before_the_next() -> None:
    clock = Clock()
    bucket = TokenBucket(qps=2.0, burst=1, clock=clock)
    bucket.reserve()
    assert bucket.reserve() == pytest.approx(0.5)
    assert bucket.reserve() == pytest.approx(1.0)
    clock.now += 1.0  # the two queued callers used their tokens
    assert bucket.reserve() == pytest.approx(0.5)


@pytest.mark.parametrize(("qps", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0), (1.0, -5)])
def test_token_bucket_rejects_invalid_arguments(qps: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(qps=qps, burst=burst, clock=Clock())


async def test_token_bucket_acquire_sleeps_only_when_in_debt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr("nodelet.cluster.apiclient.asyncio.sleep", fake_sleep)
    bucket = TokenBucket(qps=20.0, burst=1, clock=Clock())
    await bucket.acquire()
    assert slept == []
    await bucket.acquire()
    assert slept == pytest.approx([0.05])


# -- jittered --------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 5, 10, 40])
def test_jittered_is_within_base_and_capped_exponential(attempt: int) -> None:
    random.seed(attempt)
    base, cap = 0.2, 5.0
    upper = min(cap, base * 2.0**attempt)
    values = [jittered(base, attempt, cap) for _ in range(200)]
    assert all(base <= v <= upper for v in values)


def test_jittered_spreads_its_values() -> None:
    random.seed(1)
    values = {round(jittered(1.0, 4, 100.0), 6) for _ in range(50)}
    assert len(values) > 10
    assert max(values) > 8.0  # reaches into the upper half of [1, 16]


def test_jittered_after_a_long_outage_stays_capped() -> None:
    """The retry loops count failures without bound: a 45 minute outage at a 5 s cap reaches
    attempt 1024, where ``2.0 ** attempt`` overflows a float."""
    for attempt in (1023, 1024, 5000):
        value = jittered(0.2, attempt, 5.0)
        assert 0.2 <= value <= 5.0


# -- ApiError --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        *[(status, True) for status in (0, 429, 500, 503, 504)],
        *[(status, False) for status in (400, 401, 403, 404, 409, 422)],
    ],
)
def test_api_error_transient(status: int, transient: bool) -> None:
    assert ApiError(status, "Reason").transient is transient


def test_api_error_not_found_and_conflict() -> None:
    assert ApiError(404, "NotFound").not_found
    assert not ApiError(404, "NotFound").conflict
    assert ApiError(409, "Conflict").conflict
    assert not ApiError(409, "Conflict").not_found
    for status in (0, 400, 410, 500):
        assert not ApiError(status, "X").not_found
        assert not ApiError(status, "X").conflict


def test_api_error_keeps_its_fields_and_message() -> None:
    err = ApiError(409, "AlreadyExists", "pods web exists")
    assert (err.status, err.reason, err.message) == (409, "AlreadyExists", "pods web exists")
    assert str(err) == "409 AlreadyExists: pods web exists"
    assert str(ApiError(0, "Unreachable")) == "0 Unreachable"


# -- path_of ---------------------------------------------------------------------------------


def test_path_of_joins_segments() -> None:
    path = path_of("api", "v1", "namespaces", "kube-system", "pods", "web-node1", "status")
    assert path == "/api/v1/namespaces/kube-system/pods/web-node1/status"


@pytest.mark.parametrize("name", ["a/b", "../x", "a?b=c", "a#b", "a%2Fb", "a b"])
def test_path_of_a_segment_cannot_change_the_path(name: str) -> None:
    path = path_of("api", "v1", "namespaces", "default", "pods", name)
    prefix = "/api/v1/namespaces/default/pods/"
    assert path.startswith(prefix)
    quoted = path[len(prefix) :]
    for char in "/?#":
        assert char not in quoted
    assert path.count("/") == 6


def test_path_of_quotes_percent_so_the_name_round_trips() -> None:
    assert unquote(path_of("pods", "a%2Fb/c").split("/")[-1]) == "a%2Fb/c"


# -- _resource_of ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "resource"),
    [
        ("/api/v1/namespaces/default/pods", "pods"),
        ("/api/v1/namespaces/default/pods/web-node1", "pods"),
        ("/api/v1/namespaces/default/pods/web-node1/status", "pods/status"),
        ("/api/v1/pods", "pods"),
        ("/api/v1/nodes", "nodes"),
        ("/api/v1/nodes/node1", "nodes"),
        ("/api/v1/nodes/node1/status", "nodes/status"),
        ("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", "leases"),
        ("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/node1", "leases"),
        ("/api/v1/namespaces/default/events", "events"),
        ("/api/v1/namespaces/default/events/web.17a", "events"),
        # Names that are resource words do not confuse it.
        ("/api/v1/namespaces/default/pods/pods/status", "pods/status"),
        ("/api/v1/nodes/pods/status", "nodes/status"),
    ],
)
def test_resource_of(path: str, resource: str) -> None:
    assert _resource_of(path) == resource


@pytest.mark.parametrize(
    ("path", "resource"),
    [
        ("/api/v1/namespaces/events/pods/web-node1/status", "pods/status"),
        ("/api/v1/namespaces/pods/pods/web-node1", "pods"),
        ("/api/v1/namespaces/nodes/events", "events"),
    ],
)
def test_resource_of_a_namespace_named_like_a_resource(path: str, resource: str) -> None:
    """Namespaces come from manifests; one named ``events`` or ``pods`` is valid."""
    assert _resource_of(path) == resource
