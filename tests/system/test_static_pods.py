"""The bundled ``static-pods/`` (what ``make run`` runs) come up and work on this machine."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentharness import Agent, agent_session, wait_for

pytestmark = pytest.mark.system

BUNDLED = Path(__file__).resolve().parents[2] / "static-pods"


@pytest.fixture
def agent() -> Iterator[Agent]:
    with agent_session(["--host-image-root", "Overlay"]) as make:  # as `make run`: the default
        first = make()
        for manifest in BUNDLED.glob("*.yaml"):
            shutil.copy(manifest, first.manifests / manifest.name)
        first.start()
        yield first


def test_bundled_pods_run(agent: Agent) -> None:
    web = wait_for(lambda: agent.running("web"), 30, "web running")
    assert web["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0

    def fetched() -> bool:
        return any(" 200 OK" in line for line in agent.log_lines(web, "probe-loop"))

    wait_for(fetched, 20, "probe-loop fetched the page served from the emptyDir")
    clock = wait_for(lambda: agent.running("clock"), 30, "clock running")
    wait_for(lambda: agent.log_lines(clock, "clock"), 20, "clock output")
    assert agent.get("/rejected")["items"] == []
