"""The ``host`` image on an overlay of the node's ``/`` (``--host-image-root Overlay``, the
agent's default): the node's files are there, what the container writes outside its volumes is
not written to the node, and the node's other mounts (here a tmpfs of the test's own) are
overlaid too. ``Node`` (which the test harness passes) shares the node's root."""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agentharness import Agent, agent_session, wait_for
from tests.system.conftest import FAST_BACKOFF
from tests.system.test_wiring import manifest

pytestmark = pytest.mark.system

SCRIPT = """
import os, sys, time
top, mounted, volume = sys.argv[1:4]
def attempt(what, action):
    try:
        action()
        print(f"{what}=ok", flush=True)
    except OSError as err:
        print(f"{what}=errno{err.errno}", flush=True)
def write(path):
    with open(path, "w") as f:
        f.write("from the container")
print("os-release=" + str(os.path.exists("/etc/os-release")), flush=True)
print("seen=" + open(os.path.join(mounted, "seen")).read(), flush=True)
print("mode=" + oct(os.stat(mounted).st_mode & 0o7777), flush=True)
attempt("top", lambda: write(top))
attempt("mounted", lambda: write(os.path.join(mounted, "written")))
attempt("volume", lambda: write(os.path.join(volume, "written")))
print("done=1", flush=True)
time.sleep(3600)
"""


@pytest.fixture
def node_tmpfs() -> Iterator[Path]:
    """A tmpfs of the test's own, mounted on the node (a separate mount the overlay of ``/``
    does not show), with a file the container must see."""
    path = Path(tempfile.mkdtemp(prefix="nlt-hostroot-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=1777", "nlt", str(path)],
                   check=True)  # fmt: skip
    try:
        (path / "seen").write_text("from the node")
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


@pytest.fixture
def overlay_agent() -> Iterator[Agent]:
    """An agent on its default host image root (the harness passes Node: overridden here)."""
    with agent_session([*FAST_BACKOFF, "--host-image-root", "Overlay"]) as agents:
        agent = agents()
        agent.start()
        yield agent


def reporter(top: str, mounted: Path, volume: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": "app",
        "image": "host",
        "command": ["python3", "-c", SCRIPT, top, str(mounted), str(volume)],
        "volumeMounts": [{"name": "out", "mountPath": str(volume)}],
        **extra,
    }


def host_path_volume(path: Path) -> list[dict[str, Any]]:
    return [{"name": "out", "hostPath": {"path": str(path), "type": "Directory"}}]


def report(agent: Agent, name: str) -> dict[str, str]:
    pod = wait_for(lambda: agent.running(name), 20, f"{name} running")
    wait_for(lambda: "done=1" in agent.log_lines(pod, "app"), 20, "the report")
    return dict(line.split("=", 1) for line in agent.log_lines(pod, "app") if "=" in line)


def run_reporter(
    agent: Agent, name: str, top: str, mounted: Path, volume: Path, **extra: Any
) -> dict[str, str]:
    """Start a pod of one ``reporter`` container with ``volume`` as its hostPath; its report."""
    container = reporter(top, mounted, volume, **extra)
    agent.write_manifest(
        f"{name}.yaml", manifest(name, [container], volumes=host_path_volume(volume))
    )
    return report(agent, name)


def pod_mounts(uid: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if uid in line]


def test_host_image_writes_stay_in_the_container(
    overlay_agent: Agent, node_tmpfs: Path, tmp_path: Path
) -> None:
    agent = overlay_agent
    top = f"/nlt-{secrets.token_hex(4)}"
    try:
        seen = run_reporter(agent, "hr", top, node_tmpfs, tmp_path)
        assert seen["os-release"] == "True"  # the node's files are the root's lower layer
        assert seen["seen"] == "from the node"  # and its other mounts are there too
        assert seen["mode"] == "0o1777"  # with their own root's mode
        assert (seen["top"], seen["mounted"], seen["volume"]) == ("ok", "ok", "ok")
        assert not os.path.lexists(top), "a write to / reached the node"
        assert not (node_tmpfs / "written").exists(), "a write to a node mount reached it"
        assert (tmp_path / "written").read_text() == "from the container"  # volumes do
        uid = agent.pod("hr")["metadata"]["uid"]  # type: ignore[index]
        upper = agent.root / "pods" / uid / "containers" / "app" / "0" / "upper"
        assert (upper / top.lstrip("/")).read_text() == "from the container"
    finally:
        if os.path.lexists(top):
            os.unlink(top)
    (agent.manifests / "hr.yaml").unlink()
    wait_for(lambda: agent.pod("hr") is None, 20, "hr removed")
    wait_for(lambda: not pod_mounts(uid), 10, "no mount of the pod left")
    assert not upper.exists()


def test_read_only_root_covers_the_node_mounts(
    overlay_agent: Agent, node_tmpfs: Path, tmp_path: Path
) -> None:
    agent = overlay_agent
    top = f"/nlt-{secrets.token_hex(4)}"
    read_only = {"readOnlyRootFilesystem": True}
    seen = run_reporter(agent, "ro", top, node_tmpfs, tmp_path, securityContext=read_only)
    assert (seen["top"], seen["mounted"]) == ("errno30", "errno30")  # EROFS, both
    assert seen["volume"] == "ok"


def test_node_root_shares_the_node_filesystem(
    agent: Agent, node_tmpfs: Path, tmp_path: Path
) -> None:
    top = f"/nlt-{secrets.token_hex(4)}"
    try:
        seen = run_reporter(agent, "nd", top, node_tmpfs, tmp_path)
        assert seen["top"] == "ok"
        assert Path(top).read_text() == "from the container"
        assert (node_tmpfs / "written").read_text() == "from the container"
    finally:
        if os.path.lexists(top):
            os.unlink(top)
