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


def yaml_pod(
    metadata: str = "{name: bad}",
    spec: str = "{containers: [{name: app, image: host}]}",
    extra: str = "",
) -> bytes:
    """A pod written as YAML, for shapes JSON cannot say (non-string keys, tags)."""
    return f"apiVersion: v1\nkind: Pod\nmetadata: {metadata}\nspec: {spec}\n{extra}".encode()


HOSTILE: list[BadManifest] = [
    # Shapes that used to raise out of load_manifest (and so kill the agent on every start).
    BadManifest("deep-brackets.yaml", "nested deeper than 64 levels", b"[" * 1000 + b"]" * 1000),
    BadManifest("deep-in-pod.yaml", "nested deeper than 64 levels",
                yaml_pod(extra="status: " + "{a: " * 500 + "1" + "}" * 500)),
    BadManifest("containers-null-item.yaml", "spec.containers[0]: null is not allowed in a list",
                encoded(pod(containers=[None]))),
    BadManifest("volumes-null-item.yaml", "spec.volumes[0]: null is not allowed in a list",
                encoded(pod(volumes=[None]))),
    BadManifest("hostpath-null.yaml", "spec.volumes[0]: exactly one volume source is required, got none",
                encoded(pod(volumes=[{"name": "v", "hostPath": None}]))),
    BadManifest("supplemental-groups-null.yaml",
                "spec.securityContext.supplementalGroups[0]: null is not allowed in a list",
                encoded(pod(securityContext={"supplementalGroups": [None]}))),
    BadManifest("int-label-key.yaml", "metadata.labels[1]: keys must be strings, got an integer",
                yaml_pod(metadata="{name: bad, labels: {1: a}}")),
    BadManifest("bool-field-key.yaml", "spec.True: field names must be strings, got a boolean",
                yaml_pod(spec="{containers: [{name: app, image: host}], true: 1}")),
    BadManifest("list-key.yaml", "a key must be a string, got a list (line 5)",
                yaml_pod(extra="? [a, b]\n: c\n")),
    BadManifest("object-key.yaml", "a key must be a string, got an object",
                yaml_pod(metadata="{name: bad, {a: b}: c}")),
    BadManifest("huge-int.yaml", "integer out of range: must fit in 64 bits (line 4)",
                yaml_pod(spec="{terminationGracePeriodSeconds: " + "9" * 5000 + ", containers: []}")),
    BadManifest("huge-hex-int.yaml", "integer out of range: must fit in 64 bits",
                yaml_pod(spec="{terminationGracePeriodSeconds: 0x" + "f" * 40 + ", containers: []}")),
    BadManifest("infinite-number.yaml", "numbers must be finite, got inf",
                yaml_pod(spec="{containers: [{name: app, image: host}], priority: .inf}")),
    BadManifest("binary-tag.yaml", "YAML tag 'tag:yaml.org,2002:binary' is not allowed",
                yaml_pod(metadata="{name: !!binary aGVsbG8=}")),
    BadManifest("lone-surrogate.yaml", "lone surrogate escape in a string",
                b'{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad\\ud800"}}'),
    BadManifest("command-null-item.yaml", "spec.containers[0].command[0]: null is not allowed in a list",
                with_container(command=[None])),
    BadManifest("field-ref-null.yaml", "spec.containers[0].env[0].valueFrom: must specify fieldRef",
                with_container(env=[{"name": "A", "valueFrom": {"fieldRef": None}}])),
    BadManifest("field-path-missing.yaml", "env[0].valueFrom.fieldRef.fieldPath: required",
                with_container(env=[{"name": "A", "valueFrom": {"fieldRef": {}}}])),
    BadManifest("value-and-value-from.yaml", "env[0].valueFrom: may not be set when value is not empty",
                with_container(env=[{"name": "A", "value": "x",
                                     "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}])),
    BadManifest("nul-in-host-path.yaml", "spec.volumes[0].hostPath.path: must not contain NUL characters",
                encoded(pod(volumes=[{"name": "v", "hostPath": {"path": "/tmp/a\0b"}}]))),
    BadManifest("nul-in-command.yaml", "spec.containers[0].command[0]: must not contain NUL",
                with_container(command=["/bin/true\0x"])),
    BadManifest("env-name-int.yaml", "spec.containers[0].env[0].name: expected a string, got an integer",
                with_container(env=[{"name": 5, "value": "x"}])),
    # Names that reach paths: the UID names directories under the run and state dirs.
    BadManifest("uid-traversal.yaml", "metadata.uid: '../../victim' is not a valid UID",
                _meta(name="bad", uid="../../victim")),
    BadManifest("uid-absolute.yaml", "metadata.uid: '/etc' is not a valid UID", _meta(name="bad", uid="/etc")),
    BadManifest("uid-dotdot.yaml", "metadata.uid: '..' is not a valid UID", _meta(name="bad", uid="..")),
    BadManifest("uid-newline.yaml", "metadata.uid: 'abc\\n' is not a valid UID", _meta(name="bad", uid="abc\n")),
    BadManifest("uid-int.yaml", "metadata.uid: expected a string, got an integer", _meta(name="bad", uid=7)),
    BadManifest("name-newline.yaml", "metadata.name: 'bad\\n' must be a lowercase RFC 1123 subdomain",
                _meta(name="bad\n")),
    BadManifest("namespace-int.yaml", "metadata.namespace: expected a string, got an integer",
                _meta(name="bad", namespace=5)),
    BadManifest("namespace-traversal.yaml", "metadata.namespace: '..' must be a lowercase RFC 1123 label",
                _meta(name="bad", namespace="..")),
    BadManifest("container-name-list.yaml", "spec.containers[0].name: expected a string, got a list",
                with_container(name=["app"])),
    BadManifest("volume-name-int.yaml", "spec.volumes[0].name: expected a string, got an integer",
                encoded(pod(volumes=[{"name": 5, "emptyDir": {}}]))),
    BadManifest("volume-name-traversal.yaml", "spec.volumes[0].name: must be a lowercase RFC 1123 label",
                encoded(pod(volumes=[{"name": "../x", "emptyDir": {}}]))),
    # Paths that step out (kubelet's validatePathNoBacksteps; runc wants an absolute cwd).
    BadManifest("host-path-backstep.yaml", "spec.volumes[0].hostPath.path: must not contain '..'",
                encoded(pod(volumes=[{"name": "v", "hostPath": {"path": "/var/../etc"}}]))),
    BadManifest("working-dir-relative.yaml", "spec.containers[0].workingDir: must be an absolute path",
                with_container(workingDir="tmp/x")),
    BadManifest("working-dir-backstep.yaml", "spec.containers[0].workingDir: must not contain '..'",
                with_container(workingDir="/tmp/../x/sub")),
    # A file full of mistakes gets a bounded rejection.
    BadManifest("many-errors.yaml", "... and 450 more errors",
                encoded({**pod(), **{f"unknown{i}": 1 for i in range(500)}})),
]  # fmt: skip
"""Files that crashed the agent, or reached paths, before issue 21; each is rejected alone."""

BAD_FILE_NAMES: list[BadManifest] = [
    BadManifest("name-not-utf8-\udcff.yaml", "file name is not valid UTF-8", encoded(pod())),
    BadManifest("name-with-newline\n.yaml", "file name holds control or invisible characters",
                encoded(pod())),
]  # fmt: skip
"""A valid pod under a name that cannot be shown as is; kept apart since the path a rejection
shows is escaped (``manifests.display_path``), not the file's own name."""


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
    BadManifest("scalar.yaml", "expected a Pod object, got a string", b"just a string\n"),
    BadManifest("typo.yaml", 'spec.containers[0].comand: unknown field (did you mean "command"?)',
                with_container(comand=["x"])),
    BadManifest("wrong-type.yaml", "spec.containers: expected a list, got a string",
                encoded(pod(containers="app"))),
    BadManifest("no-containers.yaml", "spec.containers: at least one container is required",
                encoded(pod(containers=[]))),
    BadManifest("no-image.yaml", "spec.containers[0].image: required",
                encoded(pod(containers=[{"name": "app", "command": ["true"]}]))),
    BadManifest("probe.yaml", "spec.containers[0].livenessProbe.grpc.port: required",
                with_container(livenessProbe={"grpc": {"service": "etcd"}})),
    BadManifest("probe-threshold.yaml", "spec.containers[0].livenessProbe.successThreshold: must be 1",
                with_container(livenessProbe={"exec": {"command": ["true"]}, "successThreshold": 2})),
    BadManifest("probe-port.yaml", "readinessProbe.httpGet.port: no container port is named 'web'",
                with_container(readinessProbe={"httpGet": {"port": "web"}})),
    BadManifest("probe-handlers.yaml", "startupProbe: may not specify more than 1 handler type",
                with_container(startupProbe={"exec": {"command": ["true"]}, "tcpSocket": {"port": 1}})),
    BadManifest("init-probe.yaml", "spec.initContainers[0].livenessProbe: may not be set for init containers",
                encoded(pod(initContainers=[{"name": "i", "image": "host", "command": ["true"],
                                             "livenessProbe": {"exec": {"command": ["true"]}}}]))),
    BadManifest("host-port.yaml", "spec.containers[0].ports[0].protocol: unsupported: an SCTP hostPort",
                with_container(ports=[{"containerPort": 80, "hostPort": 8080, "protocol": "SCTP"}])),
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
    BadManifest("limits.yaml", "resources.limits['hugepages-2Mi']: unsupported resource",
                with_container(resources={"limits": {"hugepages-2Mi": "2Mi"}})),
    BadManifest("request-over-limit.yaml", "resources.requests['memory']: must be less than or equal to memory limit",
                with_container(resources={"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}})),
    BadManifest("message-path.yaml", "spec.containers[0].terminationMessagePath: must be an absolute path",
                with_container(terminationMessagePath="tmp/why")),
    BadManifest("deadline.yaml", "spec.activeDeadlineSeconds: must be a positive integer",
                encoded(pod(activeDeadlineSeconds=0))),
    BadManifest("bad-quantity.yaml", "resources.requests['cpu']: ",
                with_container(resources={"requests": {"cpu": "lots"}})),
    BadManifest("two-handlers.yaml", "lifecycle.preStop: may not specify more than 1 handler type",
                with_container(lifecycle={"preStop": {"exec": {"command": ["true"]},
                                                      "sleep": {"seconds": 1}}})),
    BadManifest("no-handler.yaml", "lifecycle.preStop: must specify a handler type",
                with_container(lifecycle={"preStop": {}})),
    BadManifest("hook-port.yaml", "lifecycle.preStop.httpGet.port: no container port is named 'admin'",
                with_container(lifecycle={"preStop": {"httpGet": {"port": "admin"}}})),
    BadManifest("stop-signal.yaml", "lifecycle.stopSignal: unknown signal 'SIGNOPE'",
                with_container(lifecycle={"stopSignal": "SIGNOPE"})),
    BadManifest("tcp-hook.yaml", "unsupported: spec.containers[0].lifecycle.preStop.tcpSocket",
                with_container(lifecycle={"preStop": {"tcpSocket": {"port": 80}}})),
    BadManifest("post-start.yaml", "unsupported: spec.containers[0].lifecycle.postStart.tcpSocket",
                with_container(lifecycle={"postStart": {"tcpSocket": {"port": 80}}})),
    BadManifest("bidirectional.yaml", "Bidirectional mount propagation is available only to privileged containers",
                with_container(volumeMounts=[{"name": "v", "mountPath": "/v", "mountPropagation": "Bidirectional"}])),
    BadManifest("subpath-up.yaml", "volumeMounts[0].subPath: must not contain '..'",
                with_container(volumeMounts=[{"name": "v", "mountPath": "/v", "subPath": "../x"}])),
    BadManifest("seccomp-localhost.yaml", "localhostProfile: must be set when seccomp type is Localhost",
                with_container(securityContext={"seccompProfile": {"type": "Localhost"}})),
    BadManifest("capability.yaml", 'capabilities.add[0]: unknown capability "NOPE"',
                with_container(securityContext={"capabilities": {"add": ["NOPE"]}})),
    BadManifest("privileged-nnp.yaml", "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
                with_container(securityContext={"privileged": True, "allowPrivilegeEscalation": False})),
    BadManifest("sysctl-name.yaml", "spec.securityContext.sysctls[0].name: must have at most 253 characters",
                encoded(pod(securityContext={"sysctls": [{"name": "bad name!", "value": "1"}]}))),
    BadManifest("hugepages-medium.yaml", "emptyDir.medium: unsupported: medium 'HugePages'",
                encoded(pod(volumes=[{"name": "v", "emptyDir": {"medium": "HugePages"}}]))),
    BadManifest("downward-up.yaml", "downwardAPI.items[0].path: must not contain '..'",
                encoded(pod(volumes=[{"name": "v", "downwardAPI": {"items": [
                    {"path": "../x", "fieldRef": {"fieldPath": "metadata.name"}}]}}]))),
    BadManifest("host-users-host-network.yaml",
                "spec.hostNetwork: Forbidden: when `pod.Spec.HostUsers` is false",
                encoded(pod(hostUsers=False, hostNetwork=True))),
    BadManifest("dns-none-alone.yaml",
                "spec.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None",
                encoded(pod(dnsPolicy="None"))),
    BadManifest("dns-four-nameservers.yaml",
                "spec.dnsConfig.nameservers: must not have more than 3 nameservers",
                encoded(pod(dnsConfig={"nameservers": ["1.1.1.1", "2.2.2.2", "3.3.3.3",
                                                       "4.4.4.4"]}))),
    BadManifest("host-alias-ip.yaml", "spec.hostAliases[0].ip: must be a valid IP address",
                encoded(pod(hostAliases=[{"ip": "300.1.1.1", "hostnames": ["x"]}]))),
    *HOSTILE,
]  # fmt: skip
