"""Every bad manifest gets its own clear error naming the file; none raises."""

import copy
import json
import logging
from pathlib import Path

import pytest

from nodelet.manifest import defaults, load, validation
from nodelet.manifest.load import display_path, load_manifest
from nodelet.model import Rejection, StaticPod
from tests.badmanifests import BAD_FILE_NAMES, BAD_MANIFESTS, BadManifest, pod

pytestmark = pytest.mark.unit


def test_there_are_at_least_thirty() -> None:
    assert len(BAD_MANIFESTS) >= 30
    names = [b.filename for b in BAD_MANIFESTS + BAD_FILE_NAMES]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("bad", BAD_MANIFESTS + BAD_FILE_NAMES, ids=lambda b: repr(b.filename))
def test_rejected_with_its_own_error(bad: BadManifest, tmp_path: Path) -> None:
    path = bad.create(tmp_path)
    result = load_manifest(str(path), "nlt-node")
    assert isinstance(result, Rejection), f"{bad.filename} was accepted"
    messages = [str(e) for e in result.errors]
    assert any(bad.expected in m for m in messages), messages
    assert all(m.startswith(display_path(str(path))) for m in messages)
    for message in messages:  # shown in logs, JSON and terminals: one printable line
        assert message.isprintable(), message
        message.encode("utf-8")
    json.dumps([message, result.path, result.pod_name]).encode("utf-8")


def test_a_file_name_that_is_not_utf8_is_shown_escaped(tmp_path: Path) -> None:
    path = tmp_path / "web-\udcff.yaml"
    path.write_text(json.dumps(pod()))
    result = load_manifest(str(path), "nlt-node")
    assert isinstance(result, Rejection)
    assert result.path == f"{tmp_path}/web-\\xff.yaml"


@pytest.mark.parametrize(
    "env",
    [[{"name": "A", "value": None}], [{"name": "A", "valueFrom": None}], [{"name": "A"}]],
    ids=["value-null", "valueFrom-null", "neither"],
)
def test_a_null_field_is_an_unset_field(env: list[dict[str, object]], tmp_path: Path) -> None:
    """As the API server decodes it: the pod that runs holds no null a consumer could meet."""
    path = tmp_path / "env.yaml"
    obj = pod(containers=[{"name": "app", "image": "host", "command": ["true"], "env": env}])
    obj["metadata"]["creationTimestamp"] = None
    path.write_text(json.dumps(obj))
    result = load_manifest(str(path), "nlt-node")
    assert isinstance(result, StaticPod), result
    assert result.spec["containers"][0]["env"] == [{"name": "A"}]
    assert "null" not in json.dumps(result.manifest)


def test_a_null_field_keeps_the_uid_nodelet_always_gave_the_file(tmp_path: Path) -> None:
    """kubeadm writes ``creationTimestamp: null``: an upgrade must not restart such a pod."""
    path = tmp_path / "etcd.yaml"
    obj = pod()
    obj["metadata"]["creationTimestamp"] = None
    path.write_text(json.dumps(obj))
    result = load_manifest(str(path), "nlt-node")
    assert isinstance(result, StaticPod)
    before = copy.deepcopy(obj)  # how the UID was computed before issue 21: nulls included
    defaults.api_defaults(before)
    assert result.uid == defaults.content_uid(before, "nlt-node", str(path))
    assert "creationTimestamp" not in result.manifest["metadata"]


@pytest.mark.parametrize(
    "uid", ["0b7e7a8c-6f1e-4b8e-9d1c-2f4a7c1e5d3b", "6dc2d2ab3a7c1b0f9e8d7c6b5a4f3e2d", "A-1"]
)
def test_real_uids_are_accepted(uid: str, tmp_path: Path) -> None:
    path = tmp_path / "pod.yaml"
    obj = pod()
    obj["metadata"]["uid"] = uid
    path.write_text(json.dumps(obj))
    result = load_manifest(str(path), "nlt-node")
    assert isinstance(result, StaticPod) and result.uid == uid


def test_an_unexpected_exception_becomes_the_files_rejection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(validation, "validate", broken)
    path = tmp_path / "pod.yaml"
    path.write_text(json.dumps(pod()))
    with caplog.at_level(logging.ERROR, logger=load.__name__):
        result = load_manifest(str(path), "nlt-node")
    assert isinstance(result, Rejection)
    assert [str(e) for e in result.errors] == [
        f"{path}: internal error while checking: RuntimeError: boom"
    ]
    assert "Traceback" in caplog.text and "boom" in caplog.text


SECRET = "c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1sZWF2ZS10aGlzLWZpbGUtZXZlci1ldmVyLWV2ZXI" * 2


@pytest.mark.parametrize(
    "text",
    [
        f"root:{SECRET}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",  # /etc/shadow
        f"{SECRET}\n",
        f"apiVersion: v1\nkind: {SECRET}\nmetadata: {{name: {SECRET}}}\nspec: {{}}\n",
        f"apiVersion: {SECRET}\n{SECRET}: x\nspec: {{hostname: {SECRET}}}\n",
        f"a: !{SECRET} x\n",
        f"a: !!{SECRET} x\n",
        f"%TAG !{SECRET}! tag:x\n---\na: 1\n",
        f"a: !{SECRET}!x y\n",  # "found undefined tag handle '!...!'"
        f"a: b\n{SECRET}: [\n",
        f"- {SECRET}\n- b\n",
        f'{{"apiVersion": "v1", "kind": "Pod", "{SECRET}": 1, "spec": {{"containers": 1}}}}',
        f"a: 1\na: {SECRET}\n{SECRET}: 1\n{SECRET}: 2\n",
    ],
)
def test_rejections_never_echo_the_files_text(text: str, tmp_path: Path) -> None:
    """A link in the manifest dir may point at any file (/etc/shadow): rejections are read by
    people who may not read that file, so they quote at most 64 characters of any value."""
    secret_file = tmp_path / "shadow"
    secret_file.write_text(text)
    (tmp_path / "link.yaml").symlink_to(secret_file)
    result = load_manifest(str(tmp_path / "link.yaml"), "nlt-node")
    assert isinstance(result, Rejection)
    for error in result.errors:
        assert SECRET[:65] not in str(error), str(error)
