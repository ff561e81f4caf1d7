"""Documented manifest rules: every ignored file pattern the README lists, port 0, and the
API server's rule that a pod cannot share both the host's and its own PID namespace."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from nodelet.manifest.load import check_pod, is_ignored, load_manifest
from nodelet.model import Rejection, StaticPod

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_ignored_patterns() -> list[str]:
    """The patterns of the README sentence on ignored files, e.g. ``*.swo``; ``dotfiles`` as
    ``.*``. Read from the README so a newly documented pattern is tested too."""
    text = " ".join(README.read_text().split())
    match = re.search(r"Files named like editor leftovers are ignored: (.*?); subdirectories", text)
    assert match, "the README no longer lists the ignored file names"
    sentence = match.group(1)
    patterns = re.findall(r"`([^`]+)`", sentence)
    if "dotfiles" in sentence:
        patterns.append(".*")
    return patterns


def example_of(pattern: str) -> str:
    return pattern.replace("*", "web.yaml")


def test_the_readme_lists_the_editor_leftovers() -> None:
    patterns = readme_ignored_patterns()
    assert {"*.swo", "*.tmp", "*.swp", "*~", "4913", ".*"} <= set(patterns)


@pytest.mark.parametrize("pattern", readme_ignored_patterns())
def test_every_documented_pattern_is_ignored(pattern: str) -> None:
    assert is_ignored(example_of(pattern)), example_of(pattern)


@pytest.mark.parametrize(
    "name",
    ["web.yaml", "web.json", "web", "swo.yaml", "web.swo.yaml", "web.tmp.yaml", "4914",
     "49130", "web#.yaml", "#web.yaml", "web~.yaml", "web.bak.yaml", "web.SWO", "a.yml"],
)  # fmt: skip
def test_normal_names_are_read(name: str) -> None:
    assert not is_ignored(name)


def pod(**spec: Any) -> dict[str, Any]:
    container = {"name": "app", "image": "host", "command": ["true"]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"containers": [container], **spec}}  # fmt: skip


def test_port_zero_is_refused_through_the_whole_check(tmp_path: Path) -> None:
    manifest = pod()
    manifest["spec"]["containers"][0]["ports"] = [{"containerPort": 0}]
    assert check_pod(manifest, "node") == [
        ("spec.containers[0].ports[0].containerPort", "must be between 1 and 65535")
    ]
    path = tmp_path / "web.json"
    path.write_text(json.dumps(manifest))
    result = load_manifest(str(path), "node")
    assert isinstance(result, Rejection)
    manifest["spec"]["containers"][0]["ports"] = [{"containerPort": 1}]
    path.write_text(json.dumps(manifest))
    assert isinstance(load_manifest(str(path), "node"), StaticPod)


def test_host_pid_and_share_process_namespace_together_are_refused() -> None:
    """The API server's ValidatePodSpec: "ShareProcessNamespace and HostPID cannot both be
    enabled" (on spec.shareProcessNamespace); kubelet refuses such a static pod."""
    fields = [field for field, _ in check_pod(pod(hostPID=True, shareProcessNamespace=True), "n")]
    assert fields == ["spec.shareProcessNamespace"]
    assert check_pod(pod(hostPID=True), "n") == []
    assert check_pod(pod(shareProcessNamespace=True), "n") == []
