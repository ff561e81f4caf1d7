"""Session-wide safety: the test process adopts orphans so nothing it started can escape.

Holders deliberately outlive the agent that made them. With pytest as a child subreaper they are
reparented here (not to PID 1, which on some test VMs never reaps), so fixtures can find every
process a test started, kill it by pid, and reap it.
"""

from __future__ import annotations

import ctypes
import os

import pytest

PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture(scope="session", autouse=True)
def _adopt_orphans() -> None:
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
