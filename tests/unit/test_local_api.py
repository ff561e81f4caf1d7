"""What the local API shows to whom: redaction of the TCP port's ``/pods`` and ``/rejected``,
the root-only socket, and the agent's private dirs."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from nodelet.cli.client import LocalAPIClient, fetch_unix
from nodelet.cli.main import build_parser
from nodelet.config import AgentConfig, UnsafeDirError, ensure_private_dir
from nodelet.manifest.load import load_manifest
from nodelet.model import ManifestError, Rejection
from nodelet.server.local import (
    REDACTED,
    LocalServer,
    public_field_path,
    redact_pod,
    redact_pod_list,
    redacted_rejection_list,
    rejection_list,
)
from tests.agentharness import free_port

pytestmark = pytest.mark.unit


def secret_pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "app-n1",
            "namespace": "default",
            "uid": "u1",
            "labels": {"tier": "web"},
            "annotations": {
                "kubernetes.io/config.hash": "u1",
                "kubernetes.io/config.source": "file",
                "kubectl.kubernetes.io/last-applied-configuration": '{"env": "hunter2"}',
            },
        },
        "spec": {
            "initContainers": [
                {
                    "name": "init",
                    "image": "host",
                    "command": ["true"],
                    "env": [{"name": "INIT_TOKEN", "value": "init-secret"}],
                }
            ],
            "containers": [
                {
                    "name": "app",
                    "image": "host",
                    "command": ["sleep", "3600"],
                    "env": [
                        {"name": "SECRET", "value": "hunter2"},
                        {"name": "EMPTY", "value": ""},
                        {
                            "name": "NODE",
                            "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                        },
                    ],
                },
                {"name": "noenv", "image": "host", "command": ["sleep", "1"]},
            ],
            "nodeName": "n1",
        },
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "app", "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}
            ],
        },
    }


def without_env_values(pod: dict[str, Any]) -> dict[str, Any]:
    """``pod`` with the fields redaction may change taken out, to compare the rest."""
    rest = copy.deepcopy(pod)
    rest["metadata"].pop("annotations", None)
    for kind in ("initContainers", "containers"):
        for container in rest["spec"].get(kind, []):
            for var in container.get("env", []):
                var.pop("value", None)
    return rest


def test_redaction_hides_every_env_value_and_keeps_everything_else() -> None:
    pod = secret_pod()
    original = copy.deepcopy(pod)
    shown = redact_pod(pod)
    text = json.dumps(shown)
    for secret in ("hunter2", "init-secret"):
        assert secret not in text
    assert pod == original, "the agent's own record must not change"
    init_env = shown["spec"]["initContainers"][0]["env"]
    app_env = shown["spec"]["containers"][0]["env"]
    assert init_env == [{"name": "INIT_TOKEN", "value": REDACTED}]
    assert app_env[0] == {"name": "SECRET", "value": REDACTED}
    assert app_env[1] == {"name": "EMPTY", "value": REDACTED}
    assert app_env[2] == original["spec"]["containers"][0]["env"][2]  # no value: untouched
    assert shown["spec"]["containers"][1] == original["spec"]["containers"][1]
    assert without_env_values(shown) == without_env_values(original)  # the same shape and rest


def test_redaction_keeps_only_kubelets_annotations() -> None:
    annotations = redact_pod(secret_pod())["metadata"]["annotations"]
    assert annotations == {
        "kubernetes.io/config.hash": "u1",
        "kubernetes.io/config.source": "file",
        "kubectl.kubernetes.io/last-applied-configuration": REDACTED,
    }


def test_redaction_of_a_pod_list_keeps_the_list() -> None:
    pod_list = {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [secret_pod()]}
    shown = redact_pod_list(pod_list)
    assert {k: v for k, v in shown.items() if k != "items"} == {
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
    }
    assert shown["items"] == [redact_pod(secret_pod())]
    assert shown["items"][0]["status"] == secret_pod()["status"]


def test_redaction_of_a_real_defaulted_pod(tmp_path: Path) -> None:
    manifest = tmp_path / "app.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: app}\nspec:\n  containers:\n"
        "  - name: app\n    image: host\n    command: [sleep, '1']\n"
        "    env: [{name: SECRET, value: hunter2}]\n"
    )
    pod = load_manifest(str(manifest), "n1")
    assert not isinstance(pod, Rejection)
    shown = redact_pod(pod.manifest)
    assert "hunter2" not in json.dumps(shown)
    assert shown["metadata"]["annotations"] == pod.manifest["metadata"]["annotations"]


def test_public_field_paths_keep_schema_names_only() -> None:
    assert public_field_path("spec.containers[0].env[1].value") == (
        "spec.containers[0].env[1].value"
    )
    assert public_field_path("spec.containers[0].comand") == "spec.containers[0].*"
    assert public_field_path("metadata.labels['secret-line-xyz']") == "metadata.labels[*]"
    assert public_field_path("secret-line-xyz") == "*"
    assert public_field_path("hunter2") == "*"
    assert public_field_path("spec.hunter2.containers") == "spec.*"
    assert public_field_path("metadata.namex-y") == "metadata.*"


def shadow_like_rejection(path: str) -> Rejection:
    return Rejection(
        path,
        (
            ManifestError(path, "", "expected a mapping, got 'root:secret-line-xyz:19000'"),
            ManifestError(path, "secret-line-xyz", "unknown field"),
            ManifestError(path, "spec.containers[0].comand", 'unknown field (did you mean "x")'),
        ),
        pod_name="secret line xyz",
    )


def test_rejection_redaction_keeps_paths_and_field_paths_only() -> None:
    path = "/etc/kubernetes/manifests/link.yaml"
    full = rejection_list([shadow_like_rejection(path)])
    assert "secret-line-xyz" in json.dumps(full)  # root sees every reason
    shown = redacted_rejection_list([shadow_like_rejection(path)])
    assert "secret-line-xyz" not in json.dumps(shown)
    assert shown == {
        "items": [
            {
                "path": path,
                "podName": None,  # not a DNS name, so it may be file content
                "errors": [
                    f"{path}: {REDACTED}",
                    f"{path}: *: {REDACTED}",
                    f"{path}: spec.containers[0].*: {REDACTED}",
                ],
            }
        ]
    }
    named = Rejection(path, (ManifestError(path, "spec.containers", "x"),), pod_name="web")
    assert redacted_rejection_list([named])["items"][0]["podName"] == "web"


def test_real_rejection_of_secret_file_is_redacted(tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:secret-line-xyz:19000:0:99999:7:::\nsecret-line-xyz: 1\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(secret)
    result = load_manifest(str(link), "n1")
    assert isinstance(result, Rejection)
    assert "secret-line-xyz" in json.dumps(rejection_list([result]))  # a shadow line is a key
    assert "secret-line-xyz" not in json.dumps(redacted_rejection_list([result]))


def test_private_dirs_are_created_0700_and_tightened(tmp_path: Path) -> None:
    fresh = tmp_path / "a" / "run"
    ensure_private_dir(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    old.chmod(0o755)
    ensure_private_dir(old)
    assert stat.S_IMODE(old.stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(UnsafeDirError):
        ensure_private_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777  # someone else's: left alone


def test_client_defaults_come_from_the_agent_config() -> None:
    args = build_parser().parse_args(["pods"])
    assert args.run_dir == AgentConfig.run_dir
    assert args.healthz_port == AgentConfig.healthz_port
    run = build_parser().parse_args(["run"])
    assert (run.run_dir, run.root_dir) == (AgentConfig.run_dir, AgentConfig.root_dir)


def routes(view: str) -> dict[str, Any]:
    return {"/pods": lambda: (200, {"view": view})}


async def test_socket_is_0600_full_and_removed_on_close(tmp_path: Path) -> None:
    sock = tmp_path / "nodelet.sock"
    sock.write_text("stale socket of a killed agent")
    server = LocalServer("127.0.0.1", 0, routes("public"), routes("private"), sock)
    await server.start()
    try:
        info = sock.lstat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.geteuid()
        assert sorted(os.listdir(tmp_path)) == ["nodelet.sock"]  # no staging left behind
        answer = await asyncio.to_thread(fetch_unix, sock, "/pods")
        assert answer == {"view": "private"}
    finally:
        await server.close()
    assert not sock.exists()


async def test_client_uses_the_socket_else_the_tcp_port(tmp_path: Path) -> None:
    port = free_port()
    server = LocalServer("127.0.0.1", port, routes("public"), routes("private"), None)
    await server.start()  # TCP only: the client falls back, and says it is redacted
    try:
        client = LocalAPIClient(tmp_path, port)
        assert await asyncio.to_thread(client.get, "/pods") == {"view": "public"}
        assert client.redacted is True
        assert client.socket_error == "No such file or directory"
    finally:
        await server.close()
    sock = tmp_path / "nodelet.sock"
    server = LocalServer("127.0.0.1", port, routes("public"), routes("private"), sock)
    await server.start()
    try:
        client = LocalAPIClient(tmp_path, port)
        assert await asyncio.to_thread(client.get, "/pods") == {"view": "private"}
        assert client.redacted is False
    finally:
        await server.close()
