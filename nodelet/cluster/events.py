"""kubelet's recorder of core/v1 Events, with client-go's EventCorrelator.

Follows ``k8s.io/client-go/tools/record`` (``event.go``, ``events_cache.go``) so that the
cluster sees what a kubelet would send: the same bodies, the same counting of repeats by PATCH,
the same aggregation of similar events and the same per-object spam budget. Every write goes
through an injected :class:`EventSink`; the module does no IO of its own.

Deliberate differences from client-go:

- Cache keys are tuples, not fields joined with ``""`` (which lets ``("ab", "c")`` meet
  ``("a", "bc")``). The source and reporting fields are left out of the keys: they are the
  same for every event of one recorder.
- Messages are cut to 1024 bytes (UTF-8, ending in ``" ..."``). client-go's recorder does not
  cut, and the API checks ``message <= 1024`` only for events that carry ``eventTime``, which
  these do not; but the events.k8s.io API, the scheduler (``truncateMessage``) and
  ``validation.NoteLengthLimit`` all hold notes to 1024, and a kubelet event is read by people.
- Names are ``<object>.<unix nanos in hex>`` as in client-go, but a name never repeats: two
  events on the same clock tick get successive nanoseconds, rather than one failing to create.
- An aggregated event keeps ``reportingComponent``/``reportingInstance`` (client-go's copy
  drops them, an accident of how it builds the copy).
- The correlator remembers an event when it correlates it and not again from the server's
  reply (client-go's ``UpdateState``): the reply echoes what was sent, and the resourceVersion
  it would add is never used, since the PATCH is not conditional. The sink's return value is
  therefore unused.
- A CREATE that finds nothing (404: the namespace is gone) is dropped at once; client-go drops
  every API rejection, but this sink only tells 404 apart, so anything else is retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar

from nodelet.util.timefmt import rfc3339

log = logging.getLogger(__name__)

Json = dict[str, Any]

NORMAL = "Normal"
WARNING = "Warning"

MAX_QUEUED_EVENTS = 1000
"""The broadcaster's queue (``maxQueuedEvents``): past it, new events are dropped."""
MAX_TRIES_PER_EVENT = 12
RETRY_SLEEP = 10.0
LRU_ENTRIES = 4096
AGGREGATE_MAX_EVENTS = 10
AGGREGATE_INTERVAL = 600.0
SPAM_BURST = 25
SPAM_REFILL_EVERY = 300.0
"""One token per 300 s (client-go's ``qps = 1/300``), kept as a period so refills are exact."""
MAX_MESSAGE_BYTES = 1024
COMBINED_PREFIX = "(combined from similar events): "
_CUT = " ..."


@dataclass(frozen=True)
class ObjectRef:
    """The ``involvedObject`` of an event."""

    kind: str
    namespace: str
    name: str
    uid: str
    api_version: str = "v1"
    field_path: str = ""


class EventSink(Protocol):
    """Where events go. ``patch`` raises :class:`LookupError` on 404; any other error is
    taken as transient and the write is retried."""

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def patch(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class _Event:
    ref: ObjectRef
    type: str
    reason: str
    message: str
    name: str
    first: float
    last: float
    count: int = 1

    @property
    def namespace(self) -> str:
        # Cluster-scoped objects (the Node) have their events in "default", as in client-go.
        return self.ref.namespace or "default"

    def describe(self) -> str:
        ref = self.ref
        where = f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
        return f"{ref.kind} {where} uid={ref.uid} {self.type} {self.reason}"


def truncate_message(message: str) -> str:
    data = message.encode()
    if len(data) <= MAX_MESSAGE_BYTES:
        return message
    return data[: MAX_MESSAGE_BYTES - len(_CUT)].decode(errors="ignore") + _CUT


def _spam_key(event: _Event) -> Hashable:
    ref = event.ref
    return (ref.kind, ref.namespace, ref.name, ref.uid, ref.api_version)


def _aggregate_key(event: _Event) -> Hashable:
    ref = event.ref
    return (ref.kind, ref.namespace, ref.name, ref.uid, ref.api_version, event.type, event.reason)


def _event_key(event: _Event) -> Hashable:
    ref = event.ref
    return (
        ref.kind,
        ref.namespace,
        ref.name,
        ref.field_path,
        ref.uid,
        ref.api_version,
        event.type,
        event.reason,
        event.message,
    )


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _LRU(Generic[K, V]):
    """groupcache's ``lru.Cache``: a hit refreshes an entry, an add past the size evicts the
    least recently used one."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def add(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self._size:
            self._items.popitem(last=False)


class _Names:
    """``<object>.<unix nanos hex>``, strictly increasing so that no two events share a name."""

    def __init__(self) -> None:
        self._last = 0

    def __call__(self, object_name: str, now: float) -> str:
        self._last = max(int(now * 1_000_000_000), self._last + 1)
        return f"{object_name}.{self._last:x}"


@dataclass
class _Similar:
    messages: set[str] = field(default_factory=set)
    last: float = 0.0


@dataclass(frozen=True)
class _Observation:
    count: int
    first: float
    name: str


class _TokenBucket:
    """A full bucket of ``burst`` tokens refilled one per ``every`` seconds."""

    def __init__(self, burst: int, every: float, now: float) -> None:
        self._burst = float(burst)
        self._every = every
        self._tokens = float(burst)
        self._at = now

    def try_accept(self, now: float) -> bool:
        elapsed = max(0.0, now - self._at)
        self._tokens = min(self._burst, self._tokens + elapsed / self._every)
        self._at = max(self._at, now)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class _Correlator:
    """client-go's ``EventCorrelator``: aggregate, then count repeats, then spam-filter.

    The order is client-go's, quirks included: an event the spam filter drops has still been
    counted, so the next repeat that gets through carries the higher count.
    """

    def __init__(self, names: _Names) -> None:
        self._names = names
        self._similar: _LRU[Hashable, _Similar] = _LRU(LRU_ENTRIES)
        self._seen: _LRU[Hashable, _Observation] = _LRU(LRU_ENTRIES)
        self._spam: _LRU[Hashable, _TokenBucket] = _LRU(LRU_ENTRIES)

    def correlate(self, event: _Event, now: float) -> tuple[_Event, Json | None] | None:
        """The event to write and, for a repeat, the PATCH body; None to drop it as spam."""
        event, key = self._aggregate(event, now)
        event, patch = self._observe(event, key)
        bucket = self._spam.get(_spam_key(event)) or _TokenBucket(
            SPAM_BURST, SPAM_REFILL_EVERY, now
        )
        self._spam.add(_spam_key(event), bucket)
        if not bucket.try_accept(now):
            return None
        return event, patch

    def _aggregate(self, event: _Event, now: float) -> tuple[_Event, Hashable]:
        """Past 10 messages for one (object, type, reason) within a rolling 10 minutes, replace
        the event by one combined event, keyed so that later ones patch it."""
        key = _aggregate_key(event)
        similar = self._similar.get(key)
        if similar is None or now - similar.last > AGGREGATE_INTERVAL:
            similar = _Similar()
        similar.messages.add(event.message)
        similar.last = now
        self._similar.add(key, similar)
        if len(similar.messages) < AGGREGATE_MAX_EVENTS:
            return event, _event_key(event)
        # As client-go's PopAny, the set stays one short of the limit so that each new message
        # tips it over again. Of the choices PopAny may make this one drops the newest, so the
        # outcome does not hang on hash order: the first nine messages keep their own events.
        similar.messages.discard(event.message)
        combined = _Event(
            ref=event.ref,
            type=event.type,
            reason=event.reason,
            message=truncate_message(COMBINED_PREFIX + event.message),
            name=self._names(event.ref.name, now),
            first=now,
            last=now,
        )
        return combined, key

    def _observe(self, event: _Event, key: Hashable) -> tuple[_Event, Json | None]:
        """A repeat takes the first occurrence's name, first timestamp and count + 1."""
        seen = self._seen.get(key)
        patch: Json | None = None
        if seen is not None:
            event = replace(event, name=seen.name, first=seen.first, count=seen.count + 1)
            patch = {
                "count": event.count,
                "lastTimestamp": rfc3339(event.last),
                "message": event.message,
            }
        self._seen.add(key, _Observation(event.count, event.first, event.name))
        return event, patch


class EventRecorder:
    """Queues events without blocking and writes them, one at a time, through the sink.

    ``dropped`` counts events lost to the spam filter, a full queue, exhausted retries, a
    CREATE answered 404 or a bad type; ``sent`` counts API requests, failed ones included.
    """

    def __init__(
        self,
        sink: EventSink,
        component: str,
        host: str,
        clock: Callable[[], float] = time.time,
        retry_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._sink = sink
        self._component = component
        self._host = host
        self._clock = clock
        self._retry_sleep = retry_sleep
        self._names = _Names()
        self._correlator = _Correlator(self._names)
        self._queue: asyncio.Queue[_Event] = asyncio.Queue(MAX_QUEUED_EVENTS)
        self.dropped = 0
        self.sent = 0

    def event(self, ref: ObjectRef, type_: str, reason: str, message: str) -> None:
        """Record an event; never blocks and never raises. Call from the event loop's thread."""
        if type_ not in (NORMAL, WARNING):
            self.dropped += 1
            log.error("unsupported event type %r, event dropped: %s %s", type_, ref, reason)
            return
        now = self._clock()
        event = _Event(
            ref=ref,
            type=type_,
            reason=reason,
            message=truncate_message(message),
            name=self._names(ref.name, now),
            first=now,
            last=now,
        )
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("too many queued events, event dropped: %s", event.describe())

    async def run(self) -> None:
        """Write queued events forever; only cancellation ends it."""
        while True:
            event = await self._queue.get()
            try:
                await self._record(event)
            except Exception:
                self.dropped += 1
                log.exception("internal error while recording event %s", event.describe())
            finally:
                self._queue.task_done()

    async def wait_idle(self) -> None:
        """Return once every event queued so far is written or dropped (needs ``run``)."""
        await self._queue.join()

    async def _record(self, event: _Event) -> None:
        correlated = self._correlator.correlate(event, self._clock())
        if correlated is None:
            self.dropped += 1
            log.debug("event dropped by the spam filter: %s", event.describe())
            return
        event, patch = correlated
        for tries in range(1, MAX_TRIES_PER_EVENT + 1):
            try:
                await self._write(event, patch)
            except LookupError as err:
                self.dropped += 1
                log.warning("event rejected, not retrying: %s: %s", event.describe(), err)
                return
            except Exception as err:
                log.warning("unable to write event %s (try %d): %r", event.describe(), tries, err)
            else:
                return
            if tries < MAX_TRIES_PER_EVENT:
                # client-go randomizes the first sleep so that nodes do not retry in step
                # after an API server outage.
                await self._retry_sleep(
                    RETRY_SLEEP * random.random() if tries == 1 else RETRY_SLEEP
                )
        self.dropped += 1
        log.warning("unable to write event (retry limit exceeded): %s", event.describe())

    async def _write(self, event: _Event, patch: Json | None) -> None:
        """PATCH a repeat; CREATE a first occurrence, or a repeat whose event is gone (events
        expire after an hour), with the old name and count and no resourceVersion."""
        if patch is not None:
            self.sent += 1
            try:
                await self._sink.patch(event.namespace, event.name, patch)
                return
            except LookupError:
                pass
        self.sent += 1
        await self._sink.create(event.namespace, self._body(event))

    def _body(self, event: _Event) -> Json:
        ref = event.ref
        involved = {
            "kind": ref.kind,
            "namespace": ref.namespace,
            "name": ref.name,
            "uid": ref.uid,
            "apiVersion": ref.api_version,
            "fieldPath": ref.field_path,
        }
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event.name, "namespace": event.namespace},
            # ObjectReference's fields are all omitempty.
            "involvedObject": {k: v for k, v in involved.items() if v},
            "reason": event.reason,
            "message": event.message,
            "type": event.type,
            "source": {"component": self._component, "host": self._host},
            "firstTimestamp": rfc3339(event.first),
            "lastTimestamp": rfc3339(event.last),
            "count": event.count,
            "reportingComponent": self._component,
            "reportingInstance": self._host,
        }
