"""Malformed and invalid manifests, each with the specific error it must produce.

Used by a unit test (``load_manifest`` on each) and by a system test (all of them beside a good
pod in a running agent's manifest dir).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BadManifest:
    filename: str
    expected: str
    """A substring that identifies this file's own error (field path or reason)."""
    content: bytes | None = None
    setup: Callable[[Path], None] | None = None
    """Creates the file itself (links, FIFOs, huge files) when ``content`` cannot say it."""

    def create(self, directory: Path) -> Path:
        path = directory / self.filename
        if self.setup is not None:
            self.setup(path)
        else:
            assert self.content is not None
            path.write_bytes(self.content)
        return path


def pod(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bad"},
        "spec": {"containers": [{"name": "app", "image": "host", "command": ["true"]}]},
    }
    base["spec"].update(spec)
    return base


def with_container(**fields: Any) -> bytes:
    container = {"name": "app", "image": "host", "command": ["true"], **fields}
    return json.dumps(pod(containers=[container])).encode()


def encoded(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _symlink_loop(path: Path) -> None:
    os.symlink(path.name, path)


def _dangling(path: Path) -> None:
    os.symlink("/nonexistent/nlt-missing.yaml", path)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _huge(path: Path) -> None:
    with open(path, "wb") as out:
        out.write(b"# filler\n" * (20 * 1024 * 1024 // 9 + 1))


def _meta(**metadata: Any) -> bytes:
    obj = pod()
    obj["metadata"] = metadata
    return encoded(obj)


BAD_MANIFESTS: list[BadManifest] = [
    BadManifest("bad-yaml.yaml", "invalid YAML at line", b"apiVersion: v1\nkind: Pod\nspec: [\n"),
    BadManifest("wrong-kind.yaml", 'kind: must be "Pod"', encoded({**pod(), "kind": "Service"})),
    BadManifest("wrong-version.yaml", 'apiVersion: must be "v1"', encoded({**pod(), "apiVersion": "v2"})),
    BadManifest("secret-volume.yaml", "spec.volumes[0].secret: static pods may not reference secrets",
                encoded(pod(volumes=[{"name": "s", "secret": {"secretName": "x"}}]))),
    BadManifest("configmap-env.yaml", "configMapKeyRef: static pods may not reference config maps",
                with_container(env=[{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}])),
    BadManifest("bad-pod-name.yaml", "metadata.name: 'Bad_Name'", _meta(name="Bad_Name")),
    BadManifest("no-name.yaml", "metadata.name: required", _meta(labels={"a": "b"})),
    BadManifest("bad-container-name.yaml", "spec.containers[0].name: must be a lowercase RFC 1123",
                with_container(name="App_1")),
    BadManifest("duplicate-containers.yaml", "duplicate container name 'app'",
                encoded(pod(containers=[{"name": "app", "image": "host"}] * 2))),
    BadManifest("garbage.bin", "binary file", bytes(range(256)) * 40),
    BadManifest("latin1.yaml", "not UTF-8 text", b"apiVersion: v1\nkind: Pod # \xe9\xff\n"),
    BadManifest("huge.yaml", "larger than the 10 MiB limit", setup=_huge),
    BadManifest("loop.yaml", "symlink loop", setup=_symlink_loop),
    BadManifest("dangling.yaml", "dangling symlink", setup=_dangling),
    BadManifest("fifo.yaml", "not a regular file", setup=_fifo),
    BadManifest("empty.yaml", "file is empty", b""),
    BadManifest("comments-only.yaml", "file is empty", b"# nothing here\n---\n"),
    BadManifest("two-docs.yaml", "holds 2 documents", encoded(pod()) + b"\n---\n" + encoded(pod())),
    BadManifest("a-list.yaml", "holds a list", encoded([pod()])),
    BadManifest("scalar.yaml", "expected a Pod object, got str", b"just a string\n"),
    BadManifest("typo.yaml", 'spec.containers[0].comand: unknown field (did you mean "command"?)',
                with_container(comand=["x"])),
    BadManifest("wrong-type.yaml", "spec.containers: expected a list, got a string",
                encoded(pod(containers="app"))),
    BadManifest("no-containers.yaml", "spec.containers: at least one container is required",
                encoded(pod(containers=[]))),
    BadManifest("no-image.yaml", "spec.containers[0].image: required",
                encoded(pod(containers=[{"name": "app", "command": ["true"]}]))),
    BadManifest("probe.yaml", "unsupported: spec.containers[0].livenessProbe",
                with_container(livenessProbe={"exec": {"command": ["true"]}})),
    BadManifest("host-port.yaml", "spec.containers[0].ports[0].hostPort: unsupported",
                with_container(ports=[{"containerPort": 80, "hostPort": 8080}])),
    BadManifest("service-account.yaml", "spec.serviceAccountName: static pods may not reference service accounts",
                encoded(pod(serviceAccountName="builder"))),
    BadManifest("pvc.yaml", "persistentVolumeClaim: static pods may not reference persistent volume claims",
                encoded(pod(volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "c"}}]))),
    BadManifest("undefined-volume.yaml", "volume 'nope' is not defined in spec.volumes",
                with_container(volumeMounts=[{"name": "nope", "mountPath": "/mnt"}])),
    BadManifest("relative-mount.yaml", "volumeMounts[0].mountPath: must be an absolute path",
                encoded(pod(volumes=[{"name": "v", "emptyDir": {}}], containers=[
                    {"name": "app", "image": "host", "volumeMounts": [{"name": "v", "mountPath": "data"}]}]))),
    BadManifest("duplicate-volumes.yaml", "duplicate volume name 'v'",
                encoded(pod(volumes=[{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}]))),
    BadManifest("restart-policy.yaml", "spec.restartPolicy: must be one of Always, OnFailure, Never",
                encoded(pod(restartPolicy="Sometimes"))),
    BadManifest("negative-port.yaml", "ports[0].containerPort: must be between 1 and 65535",
                with_container(ports=[{"containerPort": -1}])),
    BadManifest("bad-field-ref.yaml", "unsupported field 'spec.nodeSelector'",
                with_container(env=[{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeSelector"}}}])),
    BadManifest("alias-bomb.yaml", "YAML aliases are not allowed",
                b"a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n"),
    BadManifest("duplicate-key.yaml", "duplicate key 'spec'",
                b"apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {}\nspec: {}\n"),
    BadManifest("limits.yaml", "unsupported: spec.containers[0].resources.limits",
                with_container(resources={"limits": {"cpu": "1"}})),
]  # fmt: skip
