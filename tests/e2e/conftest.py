"""The e2e tier's API server: one real etcd + kube-apiserver for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.apiserver import ApiServer, EnvtestError, find_binaries, running_apiserver


@pytest.fixture(scope="session")
def apiserver() -> Iterator[ApiServer]:
    """Started on first use (≈ seconds), stopped by pid at the end of the session.

    Missing binaries fail the test rather than skip it: `make test` builds them first, and an
    e2e tier that silently skipped would hide a broken `make envtest`.
    """
    try:
        binaries = find_binaries()
    except EnvtestError as error:
        pytest.fail(str(error), pytrace=False)
    with running_apiserver(binaries) as server:
        yield server
