"""Image garbage collection, kubelet's policy (``pkg/kubelet/images/image_gc_manager.go``).

When the image filesystem is at least ``high`` % used, unused images go, least recently used
first, until it is at most ``low`` % used; an image first seen less than ``min_age`` ago, or in
use by any container of any pod the agent has, never goes. kubelet keeps "last used" and
"first detected" in memory, so after a restart every image looks new and unused for
``min_age``; here "last used" is kept in the store's index (written once per pass) and "first
detected" is when the image was stored.

Sizes are not trusted to add up (layers shared between images free nothing until the last
image that needs them goes): the pass removes one image at a time and reads the filesystem's
free space again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nodelet.configfile import format_duration as go_duration
from nodelet.image.store import ImageRecord, ImageStore

log = logging.getLogger(__name__)

GC_PERIOD_SECONDS = 300.0
"""kubelet's ``ImageGCPeriod``."""
DEFAULT_HIGH_PERCENT = 85
DEFAULT_LOW_PERCENT = 80
DEFAULT_MIN_AGE_SECONDS = 120.0


@dataclass(frozen=True)
class GCPolicy:
    high_percent: int = DEFAULT_HIGH_PERCENT
    low_percent: int = DEFAULT_LOW_PERCENT
    min_age: float = DEFAULT_MIN_AGE_SECONDS
    max_age: float = 0.0
    """``imageMaximumGCAge``: an unused image not used for longer goes whatever the disk
    says; 0 turns it off. kubelet first waits that long after its own start (it has no last
    use from before); the last use here survives restarts, so there is no such wait."""

    @property
    def enabled(self) -> bool:
        """kubelet: a high threshold of 100 turns image garbage collection off."""
        return self.high_percent < 100


def policy_problem(
    high: int, low: int, min_age: float = DEFAULT_MIN_AGE_SECONDS, max_age: float = 0.0
) -> str | None:
    """kubelet's validation of the thresholds and ages; None when they are fine."""
    if not 0 <= high <= 100:
        return (
            f"invalid configuration: imageGCHighThresholdPercent ({high}) must be between 0 and 100"
        )
    if not 0 <= low <= 100:
        return (
            f"invalid configuration: imageGCLowThresholdPercent ({low}) must be between 0 and 100"
        )
    if low > high:
        return (
            f"invalid configuration: imageGCLowThresholdPercent ({low}) must be less than or "
            f"equal to imageGCHighThresholdPercent ({high})"
        )
    if max_age < 0:
        return (
            f"invalid configuration: imageMaximumGCAge {go_duration(max_age)} must not be negative"
        )
    if 0 < max_age <= min_age:
        return (
            f"invalid configuration: imageMaximumGCAge {go_duration(max_age)} must be greater "
            f"than imageMinimumGCAge {go_duration(min_age)}"
        )
    return None


@dataclass(frozen=True)
class StoredImage:
    """One image (an image ID) with every name it has in the store."""

    id: str
    names: tuple[str, ...]
    first_seen: float
    last_used: float


@dataclass
class GCResult:
    removed: list[StoredImage] = field(default_factory=list)
    bytes_freed: int = 0
    wanted: int = 0
    """Bytes the pass had to free (0: under the high threshold)."""
    short: bool = False
    """Not enough could be freed: every eligible image went and usage is still above low."""


def usage_percent(capacity: int, available: int) -> int:
    """kubelet's ``100 - int(available*100/capacity)``."""
    return 100 - int(available * 100 / capacity)


def bytes_to_free(capacity: int, available: int, policy: GCPolicy) -> int:
    """What a pass must free: enough to reach ``low`` once ``high`` is reached, else 0."""
    if not policy.enabled or capacity <= 0:
        return 0
    if usage_percent(capacity, available) < policy.high_percent:
        return 0
    return max(0, capacity * (100 - policy.low_percent) // 100 - available)


def group_images(records: Iterable[ImageRecord], last_used: dict[str, float]) -> list[StoredImage]:
    """The store's names grouped by image ID; an image's last use is the latest of what the
    index says and what the agent saw since (``last_used`` by image ID), else when stored."""
    names: dict[str, list[str]] = {}
    stored: dict[str, float] = {}
    used: dict[str, float] = {}
    for record in records:
        names.setdefault(record.config, []).append(record.name)
        stored[record.config] = min(stored.get(record.config, record.stored), record.stored)
        if record.last_used is not None:
            used[record.config] = max(used.get(record.config, 0.0), record.last_used)
    return [
        StoredImage(
            image_id,
            tuple(sorted(image_names)),
            stored[image_id],
            max(used.get(image_id, stored[image_id]), last_used.get(image_id, 0.0)),
        )
        for image_id, image_names in names.items()
    ]


def candidates(
    images: Iterable[StoredImage], in_use: set[str], now: float, policy: GCPolicy
) -> list[StoredImage]:
    """Unused images at least ``min_age`` old, least recently used first (ties: first seen)."""
    eligible = [
        image
        for image in images
        if image.id not in in_use and now - image.first_seen >= policy.min_age
    ]
    return sorted(eligible, key=lambda image: (image.last_used, image.first_seen, image.id))


def too_old(
    images: Iterable[StoredImage], in_use: set[str], now: float, policy: GCPolicy
) -> list[StoredImage]:
    """Unused images last used more than ``max_age`` ago (none when it is 0)."""
    if policy.max_age <= 0:
        return []
    return [
        image
        for image in candidates(images, in_use, now, policy)
        if now - image.last_used > policy.max_age
    ]


def _remove(store: ImageStore, image: StoredImage, why: str) -> None:
    store.remove(list(image.names))
    store.prune()
    log.info("removed image %s (%s): %s", image.id, ", ".join(image.names), why)


def available_bytes(path: str) -> tuple[int, int]:
    """(capacity, available) of the filesystem holding ``path``, as kubelet's image fs stats."""
    stats = os.statvfs(path)
    return stats.f_blocks * stats.f_frsize, stats.f_bavail * stats.f_frsize


def collect(
    store: ImageStore,
    policy: GCPolicy,
    in_use: set[str],
    last_used: dict[str, float],
    now: float,
    fs_stats: Callable[[str], tuple[int, int]] = available_bytes,
) -> GCResult:
    """One pass under the store's writer lock (pulls finish first: what they bring is then
    named, and new for ``min_age``). ``in_use`` and ``last_used`` are keyed by image ID."""
    result = GCResult()
    if not store.index_path.exists():
        return result
    with store.writer(lambda: log.info("image garbage collection waits for the image store")):
        images = group_images(store.records().values(), last_used)
        store.set_last_used({image.id: image.last_used for image in images})
        for image in too_old(images, in_use, now, policy):
            _remove(store, image, f"unused for {now - image.last_used:.0f}s (imageMaximumGCAge)")
            result.removed.append(image)
            images.remove(image)
        capacity, available = fs_stats(str(store.base))
        result.wanted = bytes_to_free(capacity, available, policy)
        if result.wanted <= 0:
            return result
        target = available + result.wanted
        log.info(
            "image filesystem %d%% used (high threshold %d%%): freeing %d bytes",
            usage_percent(capacity, available), policy.high_percent, result.wanted,
        )  # fmt: skip
        for image in candidates(images, in_use, now, policy):
            _remove(store, image, f"last used {now - image.last_used:.0f}s ago")
            result.removed.append(image)
            _capacity, now_available = fs_stats(str(store.base))
            result.bytes_freed = now_available - available
            if now_available >= target:
                return result
        result.short = True
        log.error(
            "Failed to garbage collect required amount of images. Attempted to free %d bytes, "
            "but only found %d bytes eligible to free.",
            result.wanted, max(0, result.bytes_freed),
        )  # fmt: skip
    return result
