"""Fixtures that run real ``nodelet run`` daemons (see ``tests/agentharness.py``)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest

from tests.agentharness import Agent, agent_session, remove_cgroup_root

FAST_BACKOFF = ["--crashloop-backoff-initial", "1s", "--crashloop-backoff-max", "8s"]
"""kubelet's schedule shape (double per crash, capped) at a tenth of the scale, so tests see it."""


@pytest.fixture
def agents() -> Iterator[Callable[[], Agent]]:
    """A factory of agents sharing one set of dirs: a restarted agent is the next one made."""
    with agent_session(FAST_BACKOFF) as factory:
        yield factory


@pytest.fixture
def agent(agents: Callable[[], Agent]) -> Agent:
    first = agents()
    first.start()
    return first


@pytest.fixture
def cgroup_root() -> Iterator[str]:
    """A cgroup root of the test's own, for tests that look into it (no other agent sweeps
    it); its empty dirs are removed afterwards."""
    root = f"/nlt-{secrets.token_hex(4)}"
    yield root
    remove_cgroup_root(root)
