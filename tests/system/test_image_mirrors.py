"""Registry mirrors against Debian's docker-registry on loopback (plain HTTP, as loopback
registries may be): a mirror serves when the registry is down, a mirror without the image
falls back to the registry, every failing source is named, and the agent's pulls use the
mirrors of its ``--registry-mirrors``. Who served what is counted in each registry's log."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentharness import agent_session, wait_for
from tests.imagebuild import (
    BuiltImage,
    app_layer,
    busybox_layer,
    nodelet_image,
    nodelet_image_fails,
)
from tests.system.conftest import FAST_BACKOFF
from tests.system.test_image_pull import Registry, free_port, push, run_registry
from tests.system.test_wiring import manifest

pytestmark = pytest.mark.system


@pytest.fixture
def two_registries(tmp_path: Path) -> Iterator[tuple[Registry, Registry]]:
    """(one holding nlt/test:1, one empty)."""
    (tmp_path / "full").mkdir()
    (tmp_path / "empty").mkdir()
    with (
        run_registry(tmp_path / "full") as full,
        run_registry(tmp_path / "empty") as empty,
    ):
        image = BuiltImage([busybox_layer(), app_layer()], cmd=["sleep 3600"])
        image.write_oci(tmp_path / "oci", "1")
        push(tmp_path / "oci", "1", f"{full.host}/nlt/test:1")
        yield full, empty


def names(root: Path) -> list[str]:
    listed = json.loads(nodelet_image(root, "ls", "-o", "json"))["images"]
    return sorted(row["name"] for row in listed)


def test_a_mirror_serves_while_the_registry_is_down(
    two_registries: tuple[Registry, Registry], tmp_path: Path
) -> None:
    full, _empty = two_registries
    upstream = f"127.0.0.1:{free_port()}"  # nothing listens there
    image = f"{upstream}/nlt/test:1"
    root = tmp_path / "nlt-root"
    out = nodelet_image(root, "pull", image, "--registry-mirror", f"{upstream}=http://{full.host}")
    assert f"pulled {image}" in out
    assert names(root) == [image]  # the image keeps its own name
    assert full.requests(r"GET.*/v2/nlt/test/manifests/1") == 1
    assert full.requests(r"GET.*/v2/nlt/test/blobs/") == 3


def test_a_mirror_without_the_image_falls_back_to_the_registry(
    two_registries: tuple[Registry, Registry], tmp_path: Path
) -> None:
    full, empty = two_registries
    image = f"{full.host}/nlt/test:1"
    root = tmp_path / "nlt-root"
    nodelet_image(root, "pull", image, "--registry-mirror", f"{full.host}=http://{empty.host}")
    assert names(root) == [image]
    assert empty.requests(r"GET.*/v2/nlt/test/manifests/1") == 1  # asked first, had nothing
    assert full.requests(r"GET.*/v2/nlt/test/blobs/") == 3


def test_every_failing_source_is_named(
    two_registries: tuple[Registry, Registry], tmp_path: Path
) -> None:
    _full, empty = two_registries
    upstream = f"127.0.0.1:{free_port()}"
    stderr = nodelet_image_fails(
        tmp_path / "nlt-root", "pull", f"{upstream}/nlt/test:1",
        "--registry-mirror", f"{upstream}=http://{empty.host}",
    )  # fmt: skip
    assert (
        f"mirror {empty.host}: registry {empty.host}: GET /v2/nlt/test/manifests/1: 404" in stderr
    )
    assert f"registry {upstream}:" in stderr


def test_a_plain_http_mirror_must_be_insecure_or_loopback(tmp_path: Path) -> None:
    stderr = nodelet_image_fails(
        tmp_path / "nlt-root", "pull", "docker.io/library/busybox:1",
        "--registry-mirror", "docker.io=http://mirror.nlt.test:5000",
    )  # fmt: skip
    assert "is plain HTTP: list mirror.nlt.test:5000 in insecureRegistries" in stderr
    proc = subprocess.run(
        [sys.executable, "-m", "nodelet", "run", "--registry-mirrors",
         "docker.io=http://mirror.nlt.test:5000", "--root-dir", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "registryMirrors: docker.io: 'http://mirror.nlt.test:5000' is plain HTTP" in proc.stderr


def test_the_agent_pulls_through_its_mirrors(two_registries: tuple[Registry, Registry]) -> None:
    full, _empty = two_registries
    upstream = f"127.0.0.1:{free_port()}"
    mirrors = f"{upstream}=http://{full.host}"
    with agent_session([*FAST_BACKOFF, "--registry-mirrors", mirrors]) as agents:
        agent = agents()
        agent.start()
        container = {"name": "app", "image": f"{upstream}/nlt/test:1",
                     "command": ["/bin/sh", "-c", "sleep 3600"]}  # fmt: skip
        agent.write_manifest("m.yaml", manifest("m", [container]))
        wait_for(lambda: agent.running("m"), 60, "the pod on the mirrored image running")
        status = agent.container_status("m", "app")
        assert status is not None and status["image"] == f"{upstream}/nlt/test:1"
        assert full.requests(r"GET.*/v2/nlt/test/manifests/1") == 1
