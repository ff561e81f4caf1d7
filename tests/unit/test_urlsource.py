"""URL pods named and hashed as kubelet's, a list used whole or not at all, the union of
sources, and Warn-mode warnings told once per pod."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nodelet.manifest import snapshot
from nodelet.manifest.load import ManifestWarnings
from nodelet.manifest.merge import MergedSources
from nodelet.manifest.snapshot import SourceSnapshot
from nodelet.manifest.urlsource import parse_answer
from nodelet.manifest.warnings import WarningEvents
from nodelet.model import Rejection, StaticPod

pytestmark = pytest.mark.unit

URL = "http://127.0.0.1:8080/pods"


def pod(name: str, **container: Any) -> dict[str, Any]:
    spec = {"containers": [{"name": "main", "image": "host", "command": ["true"], **container}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def answer(document: dict[str, Any], url: str = URL, validation: str = "Strict") -> Any:
    return parse_answer(json.dumps(document).encode(), url, "node-1", validation, seen=0.0)


def test_url_pods_are_named_and_hashed_by_url() -> None:
    [first], usable = answer(pod("web"))
    assert usable and isinstance(first, StaticPod)
    assert first.name == "web-node-1"
    assert first.source_path == URL
    annotations = first.manifest["metadata"]["annotations"]
    assert annotations["kubernetes.io/config.source"] == "http"
    assert annotations["kubernetes.io/config.hash"] == first.uid
    assert "tolerations" not in first.spec
    [other], _ = answer(pod("web"), url=URL + "?v=2")
    assert other.uid != first.uid  # the URL is part of the hash
    [changed], _ = answer(pod("web", args=["x"]))
    assert changed.uid != first.uid


def test_a_pod_list_is_used_whole_or_not_at_all() -> None:
    results, usable = answer({"kind": "PodList", "items": [pod("a"), pod("b")]})
    assert usable and [r.name for r in results] == ["a-node-1", "b-node-1"]
    bad = pod("b")
    bad["spec"]["containers"][0]["name"] = "Bad_Name"
    results, usable = answer({"kind": "PodList", "items": [pod("a"), bad]})
    assert not usable
    [rejection] = [r for r in results if isinstance(r, Rejection)]
    assert rejection.path == URL
    assert rejection.errors[0].field == "items[1].spec.containers[0].name"


def test_warn_mode_drops_unknown_fields_of_url_pods() -> None:
    results, usable = answer(pod("web", comand=["x"]), validation="Warn")
    assert usable
    running, warned = results
    assert isinstance(running, StaticPod) and isinstance(warned, ManifestWarnings)
    assert "comand" not in running.containers[0]
    _, usable = answer(pod("web", comand=["x"]))
    assert not usable


def test_the_union_is_complete_once_every_source_reported() -> None:
    seen: list[SourceSnapshot] = []
    merged = MergedSources(["file", "http"], seen.append)
    [file_pod], _ = answer(pod("web"), url="/etc/kubernetes/manifests/web.yaml")
    [url_pod], _ = answer(pod("web"))
    [url_other], _ = answer(pod("other"))
    merged.sink("file")(snapshot.build([file_pod], True, {}))
    assert not seen[-1].complete
    merged.sink("http")(snapshot.build([url_pod, url_other], True, {}))
    union = seen[-1]
    assert union.complete
    assert set(union.pods) == {file_pod.uid, url_other.uid}  # the dir wins a name
    assert [r.path for r in union.rejected] == [URL]


def test_warnings_are_told_once_per_pod_version() -> None:
    events = WarningEvents()
    results, _ = answer(pod("web", comand=["x"]), validation="Warn")
    state = snapshot.build(results, True, {})
    [(told, message)] = events.new(state)
    assert told.name == "web-node-1" and "comand" in message
    assert events.new(state) == []
    results, _ = answer(pod("web", comand=["y"], args=["z"]), validation="Warn")
    assert len(events.new(snapshot.build(results, True, {}))) == 1  # a new UID: told again
