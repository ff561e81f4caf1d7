"""Every bad manifest gets its own clear error naming the file; none raises."""

from pathlib import Path

import pytest

from nodelet.manifests import load_manifest
from nodelet.model import Rejection
from tests.badmanifests import BAD_MANIFESTS, BadManifest

pytestmark = pytest.mark.unit


def test_there_are_at_least_thirty() -> None:
    assert len(BAD_MANIFESTS) >= 30
    assert len({b.filename for b in BAD_MANIFESTS}) == len(BAD_MANIFESTS)


@pytest.mark.parametrize("bad", BAD_MANIFESTS, ids=lambda b: b.filename)
def test_rejected_with_its_own_error(bad: BadManifest, tmp_path: Path) -> None:
    path = bad.create(tmp_path)
    result = load_manifest(str(path), "nlt-node")
    assert isinstance(result, Rejection), f"{bad.filename} was accepted"
    messages = [str(e) for e in result.errors]
    assert any(bad.expected in m for m in messages), messages
    assert all(m.startswith(str(path)) for m in messages)
