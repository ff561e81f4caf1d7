"""The agent pulls a pod's image before its start, as kubelet's image manager: a live
``nodelet run`` against Debian's docker-registry on loopback (started by test_image_pull's
helpers, images pushed by skopeo), requests counted in the registry's log and events read from
the agent's debug log (standalone, events are only logged)."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agentharness import NODE, Agent, agent_session, wait_for
from tests.imagebuild import BuiltImage, busybox_layer, file_entry, nodelet_image, sha, tar_bytes
from tests.system.test_image_pull import Registry, push, run_registry

pytestmark = pytest.mark.system

SLEEP = ["/bin/busybox", "sleep", "1000"]
"""Runs on the host's / (where Debian's busybox-static is) and in the test image alike."""
EVENT = re.compile(r" event pod=(\S+) uid=\S+ (Normal|Warning) (\w+): (.*)$")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with run_registry(tmp_path_factory.mktemp("nlt-registry")) as running:
        yield running


@pytest.fixture(scope="module")
def agent(registry: Registry) -> Iterator[Agent]:
    # A 1 s first back-off window keeps the back-off test short; the schedule is kubelet's
    # doubling all the same (10 s is the default, see the unit tests).
    args = ["-v", "--crashloop-backoff-initial", "1s", "--host-images", "*/nlt/hostish:*"]
    with agent_session(args) as make:
        running = make()
        running.start()
        yield running


def pod(name: str, image: str, **container: Any) -> str:
    spec = {
        "containers": [{"name": "c", "image": image, "command": SLEEP, **container}],
        "terminationGracePeriodSeconds": 1,
    }
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


def events(agent: Agent, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the pod's events, in order."""
    found = []
    for line in agent.output.read_text(errors="replace").splitlines():
        match = EVENT.search(line)
        if match and match.group(1) == f"default/{name}-{NODE}":
            found.append((match.group(2), match.group(3), match.group(4)))
    return found


def waiting(agent: Agent, name: str, reason: str | None = None) -> dict[str, str] | None:
    """The container's waiting state (with ``reason`` only)."""
    status = agent.container_status(name, "c")
    state: dict[str, str] | None = (status or {}).get("state", {}).get("waiting")
    return state if state and reason in (None, state.get("reason")) else None


def request_times(registry: Registry, request: str) -> list[float]:
    """When the registry completed each ``METHOD URI`` request (its log's ``time=``)."""
    method, uri = request.split(" ")
    times = []
    for line in registry.log.read_text().splitlines():
        if "response completed" not in line or f"http.request.uri={uri} " not in line:
            continue
        if f"http.request.method={method} " in line:
            stamp = re.search(r'time="([^"]+)"', line)
            assert stamp, line
            when = datetime.datetime.fromisoformat(stamp.group(1)[:26].rstrip("Z") + "+00:00")
            times.append(when.timestamp())
    return times


def push_image(registry: Registry, tmp_path: Path, repo: str, image: BuiltImage) -> str:
    layout = tmp_path / repo.replace("/", "-")
    image.write_oci(layout, "1")
    reference = f"{registry.host}/{repo}:1"
    push(layout, "1", reference)
    return reference


def test_pod_image_is_pulled_before_the_start_and_shown_in_its_status(
    agent: Agent, registry: Registry, tmp_path: Path
) -> None:
    reference = push_image(registry, tmp_path, "nlt/app", BuiltImage([busybox_layer()]))
    agent.write_manifest("app.json", pod("app", reference))
    status = wait_for(
        lambda: (s := agent.container_status("app", "c")) and s["imageID"] and s, 30, "imageID"
    )
    info = json.loads(nodelet_image(agent.root, "inspect", reference))
    assert (
        status["imageID"] == info["repoDigests"][0] == f"{registry.host}/nlt/app@{info['manifest']}"
    )
    assert status["image"] == reference
    assert "running" in status["state"]
    seen = events(agent, "app")
    pulling = ("Normal", "Pulling", f'Pulling image "{reference}"')
    assert pulling in seen
    pulled = [m for t, r, m in seen if r == "Pulled"]
    assert len(pulled) == 1, seen
    assert re.fullmatch(
        rf'Successfully pulled image "{re.escape(reference)}" in [0-9.]+(ms|s)', pulled[0]
    )
    assert seen.index(pulling) < [r for _, r, _ in seen].index("Started")
    assert registry.requests(r"GET.*/v2/nlt/app/manifests/") == 1
    # The store under the agent's root dir holds it, with its layer unpacked.
    assert (agent.root / "images" / "layers").is_dir()
    assert [layer["diffID"] for layer in info["layers"]] == [
        json.loads(BuiltImage([busybox_layer()]).config())["rootfs"]["diff_ids"][0]
    ]


def test_five_pods_of_one_image_make_one_pull(
    agent: Agent, registry: Registry, tmp_path: Path
) -> None:
    # 24 MB that does not compress: the pull lasts long enough for all five pods to want it.
    big = tar_bytes([file_entry("blob", os.urandom(24 << 20))])
    image = BuiltImage([busybox_layer(), big])
    reference = push_image(registry, tmp_path, "nlt/shared", image)
    names = [f"shared{i}" for i in range(5)]
    for name in names:
        agent.write_manifest(f"{name}.json", pod(name, reference))

    def all_have_it() -> bool:
        return all((agent.container_status(n, "c") or {}).get("imageID") for n in names)

    wait_for(all_have_it, 60, "five pods started on the image")
    assert registry.requests(r"GET.*/v2/nlt/shared/manifests/") == 1
    assert registry.requests(rf"GET.*/v2/nlt/shared/blobs/{sha(image.blobs()[1])}") == 1
    assert registry.requests(rf"GET.*/v2/nlt/shared/blobs/{sha(image.config())}") == 1
    pulling = [n for n in names if any(r == "Pulling" for _, r, _ in events(agent, n))]
    # More than one pod asked while the pull was under way, and they shared it.
    assert len(pulling) >= 2, pulling
    ids = {(agent.container_status(n, "c") or {}).get("imageID") for n in names}
    assert len(ids) == 1


def test_missing_image_err_image_pull_then_back_off_with_growing_gaps(
    agent: Agent, registry: Registry
) -> None:
    reference = f"{registry.host}/nlt/missing:1"
    agent.write_manifest("missing.json", pod("missing", reference))
    onsets: list[float] = []
    reasons: list[str] = []
    messages: dict[str, str] = {}
    deadline = time.monotonic() + 25
    while len(onsets) < 4 and time.monotonic() < deadline:
        state = waiting(agent, "missing")
        if state and state.get("reason") in ("ErrImagePull", "ImagePullBackOff"):
            reason = state["reason"]
            messages[reason] = state["message"]
            if not reasons or reasons[-1] != reason:
                reasons.append(reason)
                if reason == "ErrImagePull":
                    onsets.append(time.monotonic())
        time.sleep(0.02)
    assert len(onsets) == 4, reasons
    assert reasons[:6] == ["ErrImagePull", "ImagePullBackOff"] * 3
    assert "404" in messages["ErrImagePull"] and "MANIFEST_UNKNOWN" in messages["ErrImagePull"]
    assert messages["ImagePullBackOff"] == f'Back-off pulling image "{reference}"'
    gaps = [b - a for a, b in itertools.pairwise(onsets)]
    # Windows of 1, 2 and 4 s: each retry waits its window out, and not much longer.
    for gap, window in zip(gaps, (1.0, 2.0, 4.0), strict=True):
        assert window - 0.1 <= gap <= window + 1.0, gaps
    # The registry saw exactly those pulls, as far apart (its own clock).
    pulls = request_times(registry, r"GET /v2/nlt/missing/manifests/1")
    assert len(pulls) == 4
    pull_gaps = [b - a for a, b in itertools.pairwise(pulls)]
    for gap, window in zip(pull_gaps, (1.0, 2.0, 4.0), strict=True):
        assert window <= gap <= window + 0.5, pull_gaps
    seen = events(agent, "missing")
    failed = [m for t, r, m in seen if r == "Failed" and m.startswith("Failed to pull image")]
    assert failed and failed[0].startswith(f'Failed to pull image "{reference}": registry ')
    assert ("Warning", "Failed", "Error: ErrImagePull") in seen
    assert ("Normal", "BackOff", f'Back-off pulling image "{reference}"') in seen
    assert ("Warning", "Failed", "Error: ImagePullBackOff") in seen
    agent.manifests.joinpath("missing.json").unlink()


def test_never_on_an_absent_image_is_err_image_never_pull(agent: Agent, registry: Registry) -> None:
    reference = f"{registry.host}/nlt/never:1"
    agent.write_manifest("never.json", pod("never", reference, imagePullPolicy="Never"))
    state = wait_for(lambda: waiting(agent, "never", "ErrImageNeverPull"), 20, "ErrImageNeverPull")
    message = f'Container image "{reference}" is not present with pull policy of Never'
    assert state["message"] == message
    assert ("Warning", "ErrImageNeverPull", message) in events(agent, "never")
    assert registry.requests(r"/v2/nlt/never/") == 0


def test_a_host_image_glob_is_never_pulled(agent: Agent, registry: Registry) -> None:
    reference = f"{registry.host}/nlt/hostish:1"
    agent.write_manifest("hostish.json", pod("hostish", reference, imagePullPolicy="Always"))
    wait_for(lambda: agent.running("hostish"), 20, "hostish running")
    status = agent.container_status("hostish", "c")
    assert status is not None and status["imageID"] == ""
    assert not [r for _, r, _ in events(agent, "hostish") if r in ("Pulling", "Pulled")]
    assert registry.requests(r"/v2/nlt/hostish/") == 0


def test_invalid_image_name(agent: Agent) -> None:
    agent.write_manifest("invalid.json", pod("invalid", "NLT/Upper:1"))
    state = wait_for(lambda: waiting(agent, "invalid", "InvalidImageName"), 20, "InvalidImageName")
    assert state["message"].startswith('Failed to apply default image tag "NLT/Upper:1": ')
