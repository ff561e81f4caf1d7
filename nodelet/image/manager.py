"""Make a container's image present before its start: kubelet's image manager
(``pkg/kubelet/images/image_manager.go``) with one pull per image.

- ``image: host`` and references matching a ``hostImages`` glob are never pulled.
- ``imagePullPolicy`` with kubelet's defaults (``:latest`` or no tag: Always, else IfNotPresent);
  Never on an absent image is ``ErrImageNeverPull``.
- A failed pull opens a back-off window keyed by pod UID and image as written, as kubelet's
  ``backOffKey``; inside it the answer is ``ImagePullBackOff`` without asking the registry.
- One pull per normalised reference however many containers want it (single-flight): later
  callers join the running pull. Pulls run in threads and hold the store's lock shared, so a
  pull never holds back another pod, another image's pull, or the event loop.
- Events and messages are kubelet's: Pulling, Pulled (``already present on machine`` or
  ``Successfully pulled image "X" in 1.2s``), Failed, BackOff, ErrImageNeverPull,
  InspectFailed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from nodelet.image import registry
from nodelet.image.progress import PullProgress, plain_line
from nodelet.image.reference import (
    InvalidImageNameError,
    Reference,
    default_pull_policy,
    is_host_image,
    parse,
)
from nodelet.image.store import ImageRecord, ImageStore
from nodelet.pod.backoff import Backoff
from nodelet.reasons import EVENT_NORMAL, EVENT_WARNING

log = logging.getLogger(__name__)

ERR_IMAGE_PULL = "ErrImagePull"
IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
INVALID_IMAGE_NAME = "InvalidImageName"
ERR_IMAGE_NEVER_PULL = "ErrImageNeverPull"
IMAGE_REASONS = (ERR_IMAGE_PULL, IMAGE_PULL_BACK_OFF, INVALID_IMAGE_NAME, ERR_IMAGE_NEVER_PULL)
"""Waiting reasons (kubelet's ``pkg/kubelet/images/types.go``)."""

PULLING_EVENT = "Pulling"
PULLED_EVENT = "Pulled"
FAILED_EVENT = "Failed"
BACK_OFF_EVENT = "BackOff"
NEVER_PULL_EVENT = "ErrImageNeverPull"
INSPECT_FAILED_EVENT = "InspectFailed"
"""Event reasons (kubelet's ``pkg/kubelet/events``)."""

RETRY_SECONDS = 10.0
"""When a container refused for its image (Never, a bad name) is tried again: kubelet's pod
worker requeues a failed sync after its ``backOffPeriod``, 10 s."""
ERR_IMAGE_PULL_SHOWN_SECONDS = 1.0
"""How long ``ErrImagePull`` is shown before the next look reports ``ImagePullBackOff`` (at most
half the window): kubelet shows the pull's error until its next sync finds the back-off."""
PROGRESS_LOG_SECONDS = 5.0

Emit = Callable[[str, str, str], None]
"""Records an event for the container: (type, reason, message)."""
Puller = Callable[[str], ImageRecord]
"""Pulls a normalised reference into the store; blocking (it runs in a thread)."""


class ImageError(Exception):
    """The container cannot start for its image: a waiting ``reason`` and ``message``, and
    when to try again (epoch seconds)."""

    def __init__(self, reason: str, message: str, retry_at: float) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.retry_at = retry_at


@dataclass(frozen=True)
class PresentImage:
    """What a container runs on."""

    name: str
    """The normalised reference (``docker.io/library/busybox:latest``), or the spec's text for
    a host image: the container status's ``image`` once the container ran."""
    image_id: str
    """``repo@sha256:…`` (kubelet's ``imageID``); empty for a host image."""
    record: ImageRecord | None
    """None for a host image."""

    @property
    def host(self) -> bool:
        return self.record is None


def quoted(text: str) -> str:
    """Go's ``%q`` for the texts an image reference holds."""
    return json.dumps(text, ensure_ascii=False)


def go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()`` (``1.234567s``, ``523.1ms``, ``2m3.5s``), as kubelet
    prints a pull's time."""
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0s"
    if nanos < 1000:
        return f"{nanos}ns"
    if nanos < 1_000_000:
        return _trim(nanos / 1e3) + "µs"
    if nanos < 1_000_000_000:
        return _trim(nanos / 1e6) + "ms"
    minutes, rest = divmod(nanos, 60_000_000_000)
    hours, minutes = divmod(minutes, 60)
    text = _trim(rest / 1e9) + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


def _trim(value: float) -> str:
    return f"{value:.9f}".rstrip("0").rstrip(".")


def find_image(store: ImageStore, ref: Reference) -> ImageRecord | None:
    """The stored image ``ref`` names: by its normalised name, or for ``repo@digest`` any name
    of that repository whose manifest (or index) has that digest."""
    return find_image_in(store.records(), ref)


def find_image_in(records: dict[str, ImageRecord], ref: Reference) -> ImageRecord | None:
    """``find_image`` over records already read."""
    found = records.get(str(ref))
    if found is not None or ref.digest is None:
        return found
    for name, record in sorted(records.items()):
        same_repo = name.split("@")[0].rsplit(":", 1)[0] == ref.name or name.startswith(
            ref.name + "@"
        )
        if same_repo and ref.digest in (record.digest, record.manifest):
            return record
    return None


class ImageManager:
    """One per agent: the pod workers ask it before every container start."""

    def __init__(
        self,
        store: ImageStore,
        puller: Puller,
        backoff: Backoff,
        host_images: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._puller = puller
        self._backoff = backoff
        self._failed_at: dict[str, float] = {}
        self._host_images = host_images
        self._clock = clock
        self._flights: dict[str, asyncio.Future[ImageRecord]] = {}
        self.pulls = 0
        """Pulls started (not joined): one per image however many containers wanted it."""
        self.last_used: dict[str, float] = {}
        """Image ID -> when a container last got it (image garbage collection's LRU)."""
        self.pulled = asyncio.Event()
        """Set when a pull lands: the image filesystem may have filled (image GC clears it)."""

    def is_host(self, image: str) -> bool:
        return is_host_image(image, self._host_images)

    async def ensure(
        self, pod_uid: str, image: str, pull_policy: str | None, emit: Emit
    ) -> PresentImage:
        """The image ``image`` (as written in the spec) present in the store, pulled if the
        policy says so; ``ImageError`` when the container must wait instead."""
        if self.is_host(image):
            return PresentImage(image, "", None)
        now = self._clock()
        try:
            ref = parse(image)
        except InvalidImageNameError as err:
            message = f"Failed to apply default image tag {quoted(image)}: {err}"
            emit(EVENT_WARNING, INSPECT_FAILED_EVENT, message)
            raise ImageError(INVALID_IMAGE_NAME, message, now + RETRY_SECONDS) from None
        policy = pull_policy or default_pull_policy(image)
        record = await asyncio.to_thread(find_image, self.store, ref)
        if policy == "Never" or (policy == "IfNotPresent" and record is not None):
            if record is not None:
                message = f"Container image {quoted(image)} already present on machine"
                emit(EVENT_NORMAL, PULLED_EVENT, message)
                return self._present(ref, record)
            message = f"Container image {quoted(image)} is not present with pull policy of Never"
            emit(EVENT_WARNING, NEVER_PULL_EVENT, message)
            raise ImageError(ERR_IMAGE_NEVER_PULL, message, now + RETRY_SECONDS)
        key = backoff_key(pod_uid, image)
        failed_at = self._failed_at.get(key)
        remaining = 0.0 if failed_at is None else self._backoff.remaining(key, failed_at, now)
        if remaining > 0:
            message = f"Back-off pulling image {quoted(image)}"
            emit(EVENT_NORMAL, BACK_OFF_EVENT, message)
            raise ImageError(IMAGE_PULL_BACK_OFF, message, now + remaining)
        emit(EVENT_NORMAL, PULLING_EVENT, f"Pulling image {quoted(image)}")
        started = time.monotonic()
        try:
            record = await self._single_flight(str(ref))
        except Exception as err:  # any pull failure is the container's ErrImagePull
            message = str(err) or type(err).__name__
            emit(EVENT_WARNING, FAILED_EVENT, f"Failed to pull image {quoted(image)}: {message}")
            failed = self._clock()
            self._backoff.next(key, failed, failed)
            self._failed_at[key] = failed
            shown = min(ERR_IMAGE_PULL_SHOWN_SECONDS, self._backoff.get(key) / 2)
            raise ImageError(ERR_IMAGE_PULL, message, failed + shown) from None
        took = go_duration(time.monotonic() - started)
        emit(EVENT_NORMAL, PULLED_EVENT, f"Successfully pulled image {quoted(image)} in {took}")
        return self._present(ref, record)

    def _present(self, ref: Reference, record: ImageRecord) -> PresentImage:
        self.last_used[record.config] = self._clock()
        return PresentImage(str(ref), ref.with_digest(record.digest), record)

    def image_ids(self, references: Iterable[str]) -> set[str]:
        """The stored image IDs ``references`` (as written in specs) name now (blocking: the
        index is read once); host images and names not stored are left out."""
        records = self.store.records()
        ids = set()
        for reference in references:
            if self.is_host(reference):
                continue
            try:
                ref = parse(reference)
            except InvalidImageNameError:
                continue
            record = find_image_in(records, ref)
            if record is not None:
                ids.add(record.config)
        return ids

    async def _single_flight(self, name: str) -> ImageRecord:
        flight = self._flights.get(name)
        if flight is None:
            self.pulls += 1
            flight = asyncio.ensure_future(asyncio.to_thread(self._puller, name))
            self._flights[name] = flight
            flight.add_done_callback(lambda done: self._landed(name, done))
        else:
            log.info("joining the pull of %s already under way", name)
        # Shielded: a pod removed while waiting does not cancel the others' pull.
        return await asyncio.shield(flight)

    def _landed(self, name: str, flight: asyncio.Future[ImageRecord]) -> None:
        if self._flights.get(name) is flight:
            del self._flights[name]
        if not flight.cancelled() and flight.exception() is None:
            self.pulled.set()  # (the exception is retrieved here: every waiter may have gone)

    def forget_pod(self, pod_uid: str) -> None:
        """Drop a removed pod's back-off windows."""
        prefix = f"{pod_uid}_"
        self._backoff.forget_prefix(prefix)
        for key in [k for k in self._failed_at if k.startswith(prefix)]:
            del self._failed_at[key]

    def image_of(self, image: str) -> PresentImage | None:
        """What ``image`` names in the store now (blocking: a small file read), for a
        container adopted after an agent restart; None when absent or unparsable."""
        if self.is_host(image):
            return PresentImage(image, "", None)
        try:
            ref = parse(image)
        except InvalidImageNameError:
            return None
        record = find_image(self.store, ref)
        return None if record is None else self._present(ref, record)


def backoff_key(pod_uid: str, image: str) -> str:
    """kubelet's ``backOffKey``: pod UID and the image as written."""
    return f"{pod_uid}_{image}"


def registry_puller(
    store: ImageStore,
    insecure: tuple[str, ...],
    auth_file: Path | None,
    certs_dir: Path | None = None,
    mirrors: dict[str, tuple[str, ...]] | None = None,
) -> Puller:
    """Pulls from the image's registry under the store's shared lock; credentials are read from
    ``auth_file`` (a docker ``config.json``) at every pull, so an edit needs no restart; a
    registry's CAs from ``certs_dir/<host:port>/*.crt``, also at every pull."""

    def pull(name: str) -> ImageRecord:
        credentials = registry.load_docker_config(auth_file) if auth_file else {}
        options = registry.RegistryOptions(
            insecure=insecure, credentials=credentials, certs_dir=certs_dir, mirrors=mirrors or {}
        )
        progress = PullProgress(
            name,
            lambda line: log.info("%s", line),
            PROGRESS_LOG_SECONDS,
            lambda name, done, total, _rate: plain_line(name, done, total),
        )
        started = time.monotonic()
        log.info("pulling %s", name)
        with store.puller(lambda: log.info("pull of %s waits for the image store lock", name)):
            record = registry.pull(store, name, options, progress)
        log.info("pulled %s (%s): %.1f MB in %.2fs", name, record.config,
                 progress.done / 1e6, time.monotonic() - started)  # fmt: skip
        return record

    return pull


def image_manager(
    root_dir: Path,
    host_images: tuple[str, ...],
    insecure_registries: tuple[str, ...],
    backoff_initial: float,
    backoff_max: float,
    mirrors: dict[str, tuple[str, ...]] | None = None,
) -> ImageManager:
    """The agent's manager: the store under ``root_dir/images``, credentials from
    ``root_dir/config.json`` (kubelet's ``/var/lib/kubelet/config.json``), registry CAs from
    ``root_dir/certs.d/<host:port>/*.crt`` (containerd's hosts dir), the back-off of
    CrashLoopBackOff (kubelet uses the same 10 s and 300 s for images). Clears what a killed
    pull left in ``tmp/`` unless a CLI writer holds the store now."""
    store = ImageStore(root_dir)
    if store.tmp.is_dir():
        store.try_clear_tmp()
    puller = registry_puller(
        store,
        insecure_registries,
        root_dir / "config.json",
        registry.certs_dir_of(root_dir),
        mirrors,
    )
    return ImageManager(store, puller, Backoff(backoff_initial, backoff_max), host_images)


def is_image_failure(message: str) -> bool:
    """A ``Failed`` event about a container's image ("Failed to pull image ...", "Error:
    ErrImagePull"): kubelet's start counters never see those, the runtime was not asked."""
    return message.startswith("Failed to pull image ") or any(
        message == f"Error: {reason}" for reason in IMAGE_REASONS
    )
