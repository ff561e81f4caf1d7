"""Termination messages through the real agent: an image container writes its message file
(bound from the pod's dir at ``terminationMessagePath``) and the status shows it; the log
fallback; the previous run's message as ``lastState``; a ``host`` image container's file only
over a file the host has, the host's own file untouched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.agentharness import Agent, wait_for
from tests.imagebuild import BuiltImage, busybox_layer, docker_archive, nodelet_image
from tests.system.test_wiring import manifest

pytestmark = pytest.mark.system

IMAGE = "nlt.test/termmsg:1"


@pytest.fixture
def agent(agents: Callable[[], Agent]) -> Agent:
    """A live agent whose store holds a busybox image (imported with ``nodelet image``)."""
    first = agents()
    archive = docker_archive([(BuiltImage([busybox_layer()]), [IMAGE])])
    nodelet_image(first.root, "import", "-", stdin=archive)
    first.start()
    return first


def sh(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": IMAGE, "command": ["/bin/sh", "-c", script], **extra}


def terminated(agent: Agent, pod: str, name: str) -> dict[str, Any] | None:
    state = (agent.container_status(pod, name) or {}).get("state") or {}
    found: dict[str, Any] | None = state.get("terminated")
    return found


def pod_dir(agent: Agent, pod: dict[str, Any]) -> Path:
    return agent.root / "pods" / str(pod["metadata"]["uid"])


def test_an_image_container_reports_what_it_wrote(agent: Agent) -> None:
    host_default = Path("/dev/termination-log").exists()
    fallback = {"terminationMessagePolicy": "FallbackToLogsOnError"}
    containers = [
        sh("bye", "echo -n bye > /dev/termination-log; exit 3"),
        # A user of its own writes the 0666 file at a path the image does not have.
        sh("custom", "echo -n custom words > /var/nlt/why; echo wrote=$?",
           terminationMessagePath="/var/nlt/why", securityContext={"runAsUser": 1000}),
        sh("logs", "echo first; echo the cause; exit 2", **fallback),
        sh("file-wins", "echo noise; echo -n from the file > /dev/termination-log; exit 2",
           **fallback),
        sh("read-only", "echo -n still written > /dev/termination-log",
           securityContext={"readOnlyRootFilesystem": True}),
        sh("quiet", "echo the log only; exit 4"),
    ]  # fmt: skip
    agent.write_manifest("msg.json", manifest("msg", containers, restartPolicy="Never"))

    def message(name: str) -> Any:
        state = wait_for(lambda: terminated(agent, "msg", name), 30, f"{name} terminated")
        return state.get("message"), state["exitCode"]

    assert message("bye") == ("bye", 3)
    assert message("custom") == ("custom words", 0)
    assert message("logs") == ("first\nthe cause\n", 2)
    assert message("file-wins") == ("from the file", 2)
    assert message("read-only") == ("still written", 0)
    assert message("quiet") == (None, 4)  # File: the logs are not looked at
    pod = agent.pod("msg")
    assert pod is not None
    runs = pod_dir(agent, pod) / "containers"
    assert (runs / "bye" / "0" / "termination-log").read_text() == "bye"
    # The custom target was made in the container's own root, never on the host.
    assert (runs / "custom" / "0" / "upper" / "var" / "nlt" / "why").read_bytes() == b""
    assert not Path("/var/nlt").exists()
    assert Path("/dev/termination-log").exists() == host_default

    (agent.manifests / "msg.json").unlink()
    wait_for(lambda: agent.pod("msg") is None, 30, "msg removed")
    wait_for(lambda: not pod_dir(agent, pod).exists(), 30, "the pod's dir (and its files) removed")


def test_the_previous_runs_message_stays_as_its_last_state(agent: Agent) -> None:
    script = (
        "echo x >> /data/runs; n=$(wc -l < /data/runs); echo -n run $n > /dev/termination-log; "
        "[ $n -ge 2 ] && exec sleep 3600; exit 1"
    )
    container = sh("app", script, volumeMounts=[{"name": "data", "mountPath": "/data"}])
    text = manifest("again", [container], volumes=[{"name": "data", "emptyDir": {}}])
    agent.write_manifest("again.json", text)

    def second_run() -> dict[str, Any] | None:
        status = agent.container_status("again", "app") or {}
        running = "running" in (status.get("state") or {})
        return status if running and status.get("restartCount") == 1 else None

    status = wait_for(second_run, 40, "the second run running")
    assert status["lastState"]["terminated"]["message"] == "run 1"
    assert status["lastState"]["terminated"]["exitCode"] == 1
    pod = agent.pod("again")
    assert pod is not None
    runs = pod_dir(agent, pod) / "containers" / "app"
    assert (runs / "0" / "termination-log").read_text() == "run 1"
    assert (runs / "1" / "termination-log").read_text() == "run 2"


def test_a_host_image_container_gets_a_file_only_over_a_file_the_host_has(agent: Agent) -> None:
    host_default = Path("/dev/termination-log").exists()
    host_file = agent.base / "nlt-host-message"
    host_file.write_text("the host's own")
    write = "import sys; open(sys.argv[1], 'w').write(sys.argv[2]); sys.exit(int(sys.argv[3]))"

    def py(name: str, path: str, words: str, code: int, **extra: Any) -> dict[str, Any]:
        argv = ["python3", "-c", write, path, words, str(code)]
        return {"name": name, "image": "host", "command": argv, **extra}

    containers = [
        py("over-file", str(host_file), "from the container", 3,
           terminationMessagePath=str(host_file)),
        # The default /dev/termination-log is not on the host: no file, the logs as before.
        {"name": "default", "image": "host", "terminationMessagePolicy": "FallbackToLogsOnError",
         "command": ["python3", "-c", "print('from the log'); raise SystemExit(5)"]},
    ]  # fmt: skip
    agent.write_manifest("hostmsg.json", manifest("hostmsg", containers, restartPolicy="Never"))
    over = wait_for(lambda: terminated(agent, "hostmsg", "over-file"), 30, "over-file ended")
    assert (over["exitCode"], over.get("message")) == (3, "from the container")
    assert host_file.read_text() == "the host's own"
    default = wait_for(lambda: terminated(agent, "hostmsg", "default"), 30, "default ended")
    assert (default["exitCode"], default.get("message")) == (5, "from the log\n")
    assert Path("/dev/termination-log").exists() == host_default
    pod = agent.pod("hostmsg")
    assert pod is not None
    assert not (pod_dir(agent, pod) / "containers" / "default").exists()
