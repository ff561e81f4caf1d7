"""kubelet's HTTP source (``--manifest-url``, ``staticPodURL``): a Pod or a PodList fetched
every ``httpCheckFrequency`` and run as static pods, as ``pkg/kubelet/config/http.go`` does.

- Pods are named and hashed as kubelet names pods from a URL (``common.go`` ``applyDefaults``):
  name ``<name>-<node>``, UID the hash of the pod and ``url:<url>`` (no host, unlike a file),
  annotations ``kubernetes.io/config.source: http`` and ``config.hash``, no NoExecute
  toleration (kubelet adds that to file pods only).
- A failed request, a status other than 200, or a body that cannot be used keeps the last
  good set: kubelet keeps its pods when the URL fails. A 200 with an empty body is an empty
  set (kubelet's "zero-length data": the source is seen, its pods are removed).
- A PodList is used whole or not at all, as in kubelet: one bad pod keeps the last good set,
  and the bad pod is listed among the rejections.
- Until the URL answered once, the merged set is incomplete, so no adopted pod is stopped.

The request runs in a worker thread (stdlib ``urllib``), so a slow server never stalls pods.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from nodelet.manifest import defaults, snapshot
from nodelet.manifest.load import (
    MAX_MANIFEST_BYTES,
    STRICT,
    ManifestParseError,
    ManifestWarnings,
    check_lenient,
    display_path,
    parse_documents,
)
from nodelet.manifest.snapshot import SourceSnapshot
from nodelet.model import ManifestError, Rejection, StaticPod
from nodelet.util.timefmt import rfc3339_nano

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 10.0
"""kubelet's http.Client timeout for the manifest URL."""
LOUD_FAILURES = 3
"""Failures logged as warnings before the rest go to debug (kubelet: 3, then V(4))."""
HTTP_SOURCE = "http"

Result = StaticPod | Rejection


class FetchError(Exception):
    """The URL gave nothing usable this time: the last good set stays."""


def fetch(url: str, headers: tuple[tuple[str, str], ...]) -> bytes:
    """The body of a 200 answer (at most ``MAX_MANIFEST_BYTES``), else ``FetchError``."""
    if not url.lower().startswith(("http://", "https://")):
        raise FetchError(f"{url}: not an http:// or https:// URL")
    request = urllib.request.Request(url, headers=dict(_joined(headers)))
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
            data: bytes = response.read(MAX_MANIFEST_BYTES + 1)
            status = response.status
    except urllib.error.HTTPError as err:
        raise FetchError(f"{url}: {err.code} {err.reason}") from None
    except (OSError, ValueError) as err:  # URLError, timeouts, refused, a malformed URL
        raise FetchError(f"{url}: {getattr(err, 'reason', err)}") from None
    if status != 200:
        raise FetchError(f"{url}: {status}")
    if len(data) > MAX_MANIFEST_BYTES:
        raise FetchError(f"{url}: answer larger than the 10 MiB limit")
    return data


def _joined(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Repeated header names as one comma-joined header, as HTTP allows."""
    found: dict[str, list[str]] = {}
    for name, value in headers:
        found.setdefault(name, []).append(value)
    return {name: ", ".join(values) for name, values in found.items()}


def url_uid(pod: dict[str, Any], url: str) -> str:
    """kubelet: the pod's hash, then ``url:<url>`` (a URL pod's UID does not name the host)."""
    hasher = hashlib.md5(usedforsecurity=False)
    hasher.update(json.dumps(pod, sort_keys=True, separators=(",", ":")).encode())
    hasher.update(f"url:{url}".encode())
    return hasher.hexdigest()


def apply_url_defaults(raw: dict[str, Any], node_name: str, url: str, seen: float) -> StaticPod:
    """The pod kubelet would run from a checked ``raw`` served by ``url``."""
    hashed = copy.deepcopy(raw)
    hashed.pop("status", None)
    defaults.api_defaults(hashed)
    pod: dict[str, Any] = defaults.drop_nulls(raw)
    pod.pop("status", None)
    defaults.api_defaults(pod)
    meta = pod["metadata"]
    uid = meta.get("uid") or url_uid(hashed, url)
    meta["uid"] = uid
    meta["name"] = f"{meta['name']}-{node_name.lower()}"
    meta["namespace"] = meta.get("namespace") or "default"
    pod["spec"]["nodeName"] = node_name
    annotations = dict(meta.get("annotations") or {})
    annotations[defaults.HASH_ANNOTATION] = uid
    annotations[defaults.SOURCE_ANNOTATION] = HTTP_SOURCE
    annotations[defaults.SEEN_ANNOTATION] = rfc3339_nano(seen)
    meta["annotations"] = annotations
    pod["status"] = {"phase": "Pending"}
    return StaticPod(uid, meta["namespace"], meta["name"], url, pod)


def parse_answer(
    data: bytes, url: str, node_name: str, validation: str = STRICT, seen: float | None = None
) -> tuple[list[Result], bool]:
    """The pods (and warnings) in one answer, and whether it may replace the last good set
    (False: something in it was rejected; the rejections are in the list)."""
    shown = display_path(url)
    try:
        documents = parse_documents(data)
    except ManifestParseError as err:
        return [_rejected(shown, "", err.reason)], False
    if len(documents) != 1 or not isinstance(documents[0], dict):
        return [_rejected(shown, "", "expected one Pod or PodList object")], False
    document = documents[0]
    kind = document.get("kind")
    when = time.time() if seen is None else seen
    if kind == "Pod":
        items, prefix = [document], ""
    elif kind == "PodList" and isinstance(document.get("items") or [], list):
        items, prefix = list(document.get("items") or []), "items"
    else:
        return [_rejected(shown, "kind", "expected a Pod or a PodList")], False
    results: list[Result] = []
    usable = True
    for index, item in enumerate(items):
        where = f"{prefix}[{index}]." if prefix else ""
        if not isinstance(item, dict):
            results.append(_rejected(shown, where.rstrip("."), "expected a Pod object"))
            usable = False
            continue
        pod = {"apiVersion": "v1", "kind": "Pod", **item} if prefix else item
        checked = check_lenient(pod, shown, node_name, validation)
        if isinstance(checked, Rejection):
            results.append(_prefixed(checked, where))
            usable = False
            continue
        raw, warnings = checked
        results.append(apply_url_defaults(raw, node_name, url, when))
        if warnings is not None:
            results.append(_prefixed(warnings, where))
    return results, usable


def _rejected(shown: str, field: str, reason: str) -> Rejection:
    return Rejection(shown, (ManifestError(shown, field, reason),))


def _prefixed(found: Rejection, where: str) -> Rejection:
    errors = tuple(
        ManifestError(e.path, f"{where}{e.field}".rstrip("."), e.reason) for e in found.errors
    )
    if isinstance(found, ManifestWarnings):
        return ManifestWarnings(found.path, errors, found.pod_name)
    return Rejection(found.path, errors, found.pod_name)


class URLSource:
    """Polls one URL and calls ``on_snapshot`` with its full set after every usable answer."""

    def __init__(
        self,
        url: str,
        headers: tuple[tuple[str, str], ...],
        node_name: str,
        on_snapshot: Callable[[SourceSnapshot], None],
        *,
        period: float = 20.0,
        manifest_validation: str = STRICT,
    ) -> None:
        self._url = url
        self._headers = headers
        self._node = node_name
        self._emit = on_snapshot
        self._period = period
        self._validation = manifest_validation
        self._data: bytes | None = None
        self._good: list[Result] | None = None
        """The pods (and warnings) of the last usable answer; None before the first."""
        self._first_seen: dict[str, str] = {}
        self._failures = 0

    async def run(self) -> None:
        """Poll now and every period, until cancelled."""
        while True:
            try:
                await self.poll()
            except Exception:  # a bug in reading one answer must not end the polling
                log.exception("internal error while reading pods from %s", self._url)
            await asyncio.sleep(self._period)

    async def poll(self) -> None:
        try:
            data = await asyncio.to_thread(fetch, self._url, self._headers)
        except FetchError as err:
            self._failed(str(err))
            return
        if self._failures:
            log.info("read pods from %s again", display_path(self._url))
            self._failures = 0
        if data == self._data:
            return
        self._data = data
        if not data:
            log.error("zero-length answer from %s: no pods from it", display_path(self._url))
            self._good = []
            self._emit(snapshot.build([], True, self._first_seen))
            return
        results, usable = await asyncio.to_thread(
            parse_answer, data, self._url, self._node, self._validation
        )
        for result in results:
            for error in result.errors if isinstance(result, Rejection) else ():
                if isinstance(result, ManifestWarnings):
                    log.warning("manifest warning: %s", error)
                else:
                    log.error("manifest rejected: %s (keeping the pods it served before)", error)
        if usable:
            self._good = results
            self._emit(snapshot.build(results, True, self._first_seen))
        else:  # kubelet sends nothing: the last good set stays, and the source is not "seen"
            rejections = [r for r in results if isinstance(r, Rejection)]
            kept = self._good or []
            complete = self._good is not None
            self._emit(snapshot.build([*kept, *rejections], complete, self._first_seen))

    def _failed(self, why: str) -> None:
        self._failures += 1
        if self._failures <= LOUD_FAILURES:
            log.warning("failed to read pods from URL: %s; keeping its pods", why)
        else:
            log.debug("failed to read pods from URL: %s", why)
