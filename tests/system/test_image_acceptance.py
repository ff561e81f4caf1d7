"""Issue 15's acceptance through a live agent and a registry as a node meets one: Debian's
docker-registry over HTTPS (a test CA the node trusts through ``<root-dir>/certs.d``) with
htpasswd auth, credentials from the agent's ``<root-dir>/config.json``; images built from
Debian's busybox-static and pushed by skopeo; archives written by skopeo imported and run;
the agent killed -9 in the middle of a pull slowed by a throttling proxy."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agentharness import Agent, agent_session, wait_for
from tests.imagebuild import (
    BuiltImage,
    busybox_layer,
    entry,
    file_entry,
    nodelet_image,
    require_binary,
    sha,
    tar_bytes,
)
from tests.system.registryfixture import SecureRegistry, run_secure_registry, throttled
from tests.system.test_image_pull_agent import waiting
from tests.system.test_wiring import manifest

pytestmark = pytest.mark.system

USER, PASSWORD = "nlt", "s3cret-pw"

ENTRY = b"""#!/bin/sh
echo uid=$(id -u):$(id -g)
echo pwd=$(pwd)
echo greeting=$GREETING
echo root=$(ls / | tr '\\n' ' ')
echo motd=$(test -e /etc/motd && echo yes || echo no)
echo ready=1
exec sleep 3600
"""
"""The image's ENTRYPOINT: what the container is, printed from inside."""


def app_layer() -> bytes:
    """The second image's top layer: whites out the base's /etc/motd, adds the entrypoint."""
    return tar_bytes(
        [
            (entry("etc", tarfile.DIRTYPE), None),
            file_entry("etc/.wh.motd", b""),
            (entry("app", tarfile.DIRTYPE), None),
            file_entry("app/entry.sh", ENTRY, mode=0o755),
        ]
    )


def app_image() -> BuiltImage:
    """Shares the base layer of ``BuiltImage([busybox_layer()])``; Entrypoint /app/entry.sh,
    User 1000:1000, WorkingDir /app, Env GREETING=hi (BuiltImage's config)."""
    return BuiltImage([busybox_layer(), app_layer()], entrypoint=["/app/entry.sh"], cmd=[])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRegistry]:
    with run_secure_registry(tmp_path_factory.mktemp("nlt-registry"), {USER: PASSWORD}) as reg:
        yield reg


@pytest.fixture(scope="module")
def pushed(registry: SecureRegistry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The base image and the app image (sharing its base layer) in the registry."""
    layout = tmp_path_factory.mktemp("nlt-oci")
    BuiltImage([busybox_layer()], entrypoint=[], cmd=[]).write_oci(layout, "base")
    app_image().write_oci(layout, "app")
    return {
        "base": registry.push(layout, "base", "nlt/base:1"),
        "app": registry.push(layout, "app", "nlt/app:1"),
    }


@pytest.fixture(scope="module")
def agent(registry: SecureRegistry) -> Iterator[Agent]:
    with agent_session(["-v", "--crashloop-backoff-initial", "1s"]) as make:
        running = make()
        registry.trust(running.root)
        running.start()
        yield running


def login(root: Path, host: str, user: str, password: str) -> None:
    """The node's docker-style config.json (kubelet's /var/lib/kubelet/config.json)."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (root / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))


def our_mounts(agent: Agent, every_namespace: bool = False) -> list[str]:
    """Lines of the host's mount table (or, ``every_namespace``, of every process's: a
    container's overlay is only in its own mount namespace) naming this agent's dirs: mount
    point, overlay upper/lower/work dir, bind source."""
    tables = (
        Path("/proc").glob("[0-9]*/mountinfo")
        if every_namespace
        else [Path("/proc/self/mountinfo")]
    )
    found = []
    for table in tables:
        try:
            text = table.read_text(encoding="utf-8")
        except OSError:  # the process ended
            continue
        found += [
            f"{table.parent.name}: {line}" for line in text.splitlines() if str(agent.base) in line
        ]
    return found


def pod_dir(agent: Agent, pod: dict[str, Any]) -> Path:
    return agent.root / "pods" / str(pod["metadata"]["uid"])


def remove(agent: Agent, name: str, pod: dict[str, Any]) -> None:
    (agent.manifests / f"{name}.json").unlink()
    wait_for(lambda: agent.pod(name) is None, 30, f"{name} removed")
    wait_for(lambda: not pod_dir(agent, pod).exists(), 30, "the pod's dir removed")


def test_wrong_credentials_err_image_pull_with_the_registry_reason_then_back_off(
    agent: Agent, registry: SecureRegistry, pushed: dict[str, str]
) -> None:
    login(agent.root, registry.host, USER, "wrong")
    sleeper = {"name": "c", "image": pushed["base"], "command": ["/bin/busybox", "sleep", "3600"]}
    agent.write_manifest("auth.json", manifest("auth", [sleeper]))
    state = wait_for(lambda: waiting(agent, "auth", "ErrImagePull"), 30, "ErrImagePull")
    # The registry's own answer: 401 and its error code and message.
    assert (
        f"registry {registry.host}: GET /v2/nlt/base/manifests/1: 401 Unauthorized"
        in (state["message"])
    )
    assert "UNAUTHORIZED: authentication required" in state["message"]
    wait_for(lambda: waiting(agent, "auth", "ImagePullBackOff"), 10, "ImagePullBackOff")
    # Right credentials in config.json (read at every pull): the next try pulls over TLS.
    login(agent.root, registry.host, USER, PASSWORD)
    wait_for(lambda: agent.running("auth"), 30, "auth running after the fix")
    status = agent.container_status("auth", "c")
    assert status is not None and status["imageID"].startswith(f"{registry.host}/nlt/base@sha256:")
    pod = agent.pod("auth")
    assert pod is not None
    remove(agent, "auth", pod)


def test_untrusted_certificate_is_named(agent: Agent, registry: SecureRegistry) -> None:
    """``localhost:PORT`` is the same registry (its certificate names localhost too), but no
    CA is trusted for that name: the pull fails on the certificate, and says so."""
    image = f"localhost:{registry.host.rsplit(':', 1)[1]}/nlt/base:1"
    agent.write_manifest("untrusted.json", manifest("untrusted", [{"name": "c", "image": image}]))
    state = wait_for(lambda: waiting(agent, "untrusted", "ErrImagePull"), 30, "ErrImagePull")
    assert "CERTIFICATE_VERIFY_FAILED" in state["message"], state
    (agent.manifests / "untrusted.json").unlink()
    wait_for(lambda: agent.pod("untrusted") is None, 30, "removed")


def test_pod_runs_the_pulled_image_as_its_config_says_and_leaves_nothing(
    agent: Agent, registry: SecureRegistry, pushed: dict[str, str]
) -> None:
    login(agent.root, registry.host, USER, PASSWORD)
    marker = f"nlt-acc-{os.getpid()}"
    containers: list[dict[str, Any]] = [
        {"name": "app", "image": pushed["app"]},  # Entrypoint, User, WorkingDir, Env: the image's
        {
            "name": "base",
            "image": pushed["base"],
            "command": [
                "/bin/sh", "-c",
                f"echo motd=$(cat /etc/motd); echo x > /{marker}; echo wrote=$?; sleep 3600",
            ],
            "securityContext": {"runAsUser": 0},  # the image's / belongs to root
        },
    ]  # fmt: skip
    agent.write_manifest("run.json", manifest("run", containers))
    pod = wait_for(lambda: agent.running("run"), 60, "run running")

    def value(container: str, key: str) -> str:
        return agent.log_value(pod, container, key)

    assert value("app", "ready") == "1"
    assert value("app", "uid") == "1000:1000"
    assert value("app", "pwd") == "/app"
    assert value("app", "greeting") == "hi"
    # The image's files and the runtime's mount points; nothing of the host's /.
    assert value("app", "root").split() == ["app", "bin", "dev", "etc", "proc", "sys"]
    assert value("app", "motd") == "no"  # whited out by the app image's top layer
    assert value("base", "motd") == "base layer"  # the shared base layer keeps it
    assert value("base", "wrote") == "0"
    assert not Path(f"/{marker}").exists()
    upper = pod_dir(agent, pod) / "containers" / "base" / "0" / "upper"
    assert (upper / marker).read_text() == "x\n"
    # The base layer was fetched once: the app image's pull found it stored.
    info = json.loads(nodelet_image(agent.root, "inspect", pushed["app"]))
    base_diff = info["layers"][0]["diffID"]
    base = json.loads(nodelet_image(agent.root, "inspect", pushed["base"]))
    assert base["layers"][0]["diffID"] == base_diff
    assert [line for line in our_mounts(agent) if " overlay " in line] == []
    # The overlays are in the containers' mount namespaces, upper dirs under the pod's dir.
    overlays = [line for line in our_mounts(agent, every_namespace=True) if " overlay " in line]
    assert any(f"upperdir={upper}" in line for line in overlays), overlays
    remove(agent, "run", pod)
    assert not upper.exists()
    assert not Path(f"/{marker}").exists()
    assert our_mounts(agent, every_namespace=True) == []


def test_skopeo_archives_imported_into_the_node_run(agent: Agent, tmp_path: Path) -> None:
    skopeo = require_binary("skopeo", "skopeo")
    layout = tmp_path / "oci"
    app_image().write_oci(layout, "1")
    archives = {
        "docker": (f"docker-archive:{tmp_path}/docker.tar:nlt.test/acc-docker:1", []),
        "oci": (f"oci-archive:{tmp_path}/oci.tar:1", ["--repo", "nlt.test/acc-oci"]),
    }
    for dest, extra in archives.values():
        subprocess.run(
            [skopeo, "--insecure-policy", "copy", "-q", f"oci:{layout}:1", dest],
            check=True, timeout=120,
        )  # fmt: skip
        nodelet_image(agent.root, "import", dest.split(":")[1], *extra)
    containers = [
        {"name": "docker", "image": "nlt.test/acc-docker:1"},
        {"name": "oci", "image": "nlt.test/acc-oci:1"},
    ]
    agent.write_manifest("imported.json", manifest("imported", containers))
    pod = wait_for(lambda: agent.running("imported"), 30, "imported running")
    for name in ("docker", "oci"):
        assert agent.log_value(pod, name, "ready") == "1"
        assert agent.log_value(pod, name, "uid") == "1000:1000"
        assert agent.log_value(pod, name, "motd") == "no"
        status = agent.container_status("imported", name)
        assert status is not None and status["imageID"]
    remove(agent, "imported", pod)
    assert our_mounts(agent, every_namespace=True) == []


def blob_digests_verify(root: Path) -> None:
    for blob in (root / "images" / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, blob


def test_agent_killed_during_a_pull_finishes_it_on_its_next_start(
    registry: SecureRegistry, tmp_path: Path
) -> None:
    # 12 MB that does not compress, through a proxy letting 3 MB/s back: a pull of ~4 s.
    big = tar_bytes([file_entry("big", os.urandom(12 << 20))])
    image = BuiltImage([busybox_layer(), big, app_layer()], entrypoint=["/app/entry.sh"], cmd=[])
    image.write_oci(tmp_path / "oci", "1")
    registry.push(tmp_path / "oci", "1", "nlt/big:1")
    with (
        throttled(registry.host, 3 << 20) as proxy,
        agent_session(["-v"]) as make,
    ):
        first = make()
        registry.trust(first.root, proxy.host)
        login(first.root, proxy.host, USER, PASSWORD)
        first.start()
        reference = f"{proxy.host}/nlt/big:1"
        first.write_manifest("big.json", manifest("big", [{"name": "c", "image": reference}]))
        wait_for(lambda: proxy.forwarded > 4 << 20, 30, "the pull under way")
        assert first.proc is not None
        first.proc.kill()
        first.proc.wait(timeout=10)
        assert proxy.forwarded < 12 << 20  # killed in the middle
        index = first.root / "images" / "index.json"
        assert not index.exists() or reference not in index.read_text()  # nothing named
        second = make()
        second.start()
        pod = wait_for(lambda: second.running("big"), 60, "big running after the restart")
        assert second.log_value(pod, "c", "uid") == "1000:1000"
        # Both agents (one log) started the pull: the second redid what the first left.
        started = f"nodelet.image.manager: pulling {reference}\n"
        assert second.output.read_text().count(started) == 2
        info = json.loads(nodelet_image(second.root, "inspect", reference))
        assert info["id"] == sha(image.config())
        assert info["manifest"] == sha(image.manifest())
        assert [layer["diffID"] for layer in info["layers"]] == [sha(x) for x in image.layers]
        blob_digests_verify(second.root)
        assert os.listdir(second.root / "images" / "tmp") == []
