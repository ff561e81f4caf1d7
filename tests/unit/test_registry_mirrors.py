"""Registry mirror settings: the flags' ``REGISTRY=URL`` form, the config file's
``registryMirrors``, and which endpoints are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodelet.configfile import ConfigFileError, effective_documents, load_files
from nodelet.image.registry import mirror_problem, parse_mirrors
from tests.unit.test_configfile_rules import agent

pytestmark = pytest.mark.unit


def test_flag_items_keep_their_order_per_registry() -> None:
    assert parse_mirrors(
        ["docker.io=https://a", "quay.io=https://q", "docker.io=https://b:5000"]
    ) == {
        "docker.io": ("https://a", "https://b:5000"),
        "quay.io": ("https://q",),
    }


@pytest.mark.parametrize("item", ["docker.io", "=https://a", "docker.io="])
def test_an_item_without_both_sides_is_refused(item: str) -> None:
    with pytest.raises(ValueError, match="expected REGISTRY=URL"):
        parse_mirrors([item])


def test_endpoints_that_are_refused() -> None:
    assert mirror_problem("docker.io", "https://m:5000", ()) is None
    assert mirror_problem("docker.io", "http://127.0.0.1:5000", ()) is None  # loopback
    assert mirror_problem("docker.io", "http://m:5000", ("m:5000",)) is None  # insecure
    assert "is plain HTTP" in str(mirror_problem("docker.io", "http://m:5000", ()))
    assert "not an https:// or http:// URL" in str(mirror_problem("docker.io", "ftp://m", ()))
    assert "not an https:// or http:// URL" in str(mirror_problem("docker.io", "m:5000", ()))
    assert "no path" in str(mirror_problem("docker.io", "https://m/v2/mirror", ()))


def test_the_config_file_sets_mirrors_and_prints_them(tmp_path: Path) -> None:
    path = tmp_path / "nodelet.yaml"
    path.write_text(
        "apiVersion: nodelet.io/v1alpha1\nkind: NodeletConfiguration\n"
        "registryMirrors:\n  docker.io: [https://a, https://b]\n"
    )
    values = load_files([path]).values
    assert values["registry_mirrors"] == (("docker.io", ("https://a", "https://b")),)
    printed = effective_documents(agent(registry_mirrors=values["registry_mirrors"]))[1]
    assert printed["registryMirrors"] == {"docker.io": ["https://a", "https://b"]}
    path.write_text(
        "apiVersion: nodelet.io/v1alpha1\nkind: NodeletConfiguration\n"
        "registryMirrors:\n  docker.io: https://a\n"
    )
    with pytest.raises(ConfigFileError, match="registryMirrors"):
        load_files([path])
