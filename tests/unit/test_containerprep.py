"""Container preparation: environment, downward API, argv expansion, identity, mounts."""

from pathlib import Path
from typing import Any

import pytest

from nodelet.model import StaticPod
from nodelet.pod.containerprep import (
    HOST_PATH_ENV,
    ContainerConfigError,
    PodContext,
    build_container_config,
    pod_hostname,
)

pytestmark = pytest.mark.unit


def make_pod(**spec: Any) -> StaticPod:
    manifest = {
        "metadata": {"name": "web-n1", "namespace": "prod", "uid": "u1",
                     "labels": {"app": "web"}, "annotations": {"team": "infra"}},
        "spec": {"nodeName": "n1", "containers": [], **spec},
    }  # fmt: skip
    return StaticPod("u1", "prod", "web-n1", "/m/web.yaml", manifest)


def ctx(pod: StaticPod) -> PodContext:
    return PodContext(pod, "web-n1", "192.0.2.9", "", Path("/logs"), {"data": "/var/lib/x/data"})


def field(path: str) -> dict[str, Any]:
    return {"fieldRef": {"fieldPath": path}}


def test_env_downward_api_and_expansion() -> None:
    container = {
        "name": "app",
        "image": "host",
        "command": ["/bin/echo", "$(GREETING)", "$$(GREETING)"],
        "args": ["$(POD)", "$(UNDEFINED)"],
        "env": [
            {"name": "POD", "valueFrom": field("metadata.name")},
            {"name": "NS", "valueFrom": field("metadata.namespace")},
            {"name": "UID", "valueFrom": field("metadata.uid")},
            {"name": "NODE", "valueFrom": field("spec.nodeName")},
            {"name": "HOST_IP", "valueFrom": field("status.hostIP")},
            {"name": "APP", "valueFrom": field("metadata.labels['app']")},
            {"name": "TEAM", "valueFrom": field("metadata.annotations['team']")},
            {"name": "GREETING", "value": "hi-$(POD)-$(LATER)"},
            {"name": "LATER", "value": "x"},
        ],
    }
    config = build_container_config(ctx(make_pod()), container, attempt=2)
    env = config.env
    assert env["PATH"] == HOST_PATH_ENV and env["HOSTNAME"] == "web-n1"
    assert (env["POD"], env["NS"], env["UID"], env["NODE"]) == ("web-n1", "prod", "u1", "n1")
    assert (env["HOST_IP"], env["APP"], env["TEAM"]) == ("192.0.2.9", "web", "infra")
    assert env["GREETING"] == "hi-web-n1-$(LATER)"  # only earlier variables expand
    assert config.argv == [
        "/bin/echo",
        "hi-web-n1-$(LATER)",
        "$(GREETING)",
        "web-n1",
        "$(UNDEFINED)",
    ]
    assert config.log_path == "/logs/prod_web-n1_u1/app/2.log"


def test_identity_mounts_and_privileges() -> None:
    pod = make_pod(securityContext={"runAsUser": 1000, "runAsGroup": 1000,
                                    "supplementalGroups": [5, 6]})  # fmt: skip
    container = {
        "name": "app",
        "command": ["true"],
        "securityContext": {"runAsUser": 2000, "allowPrivilegeEscalation": False},
        "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
    }
    config = build_container_config(ctx(pod), container, 0)
    assert (config.run_as_user, config.run_as_group) == (2000, 1000)
    # containerd's additional gids: the primary gid too, then supplementalGroups, sorted.
    assert config.supplemental_groups == [5, 6, 1000]
    assert config.no_new_privileges is True
    assert config.capabilities is not None and len(config.capabilities.bounding) == 14
    assert config.seccomp_filter is None  # Unconfined unless asked (kubelet's default)
    assert "/proc/kcore" in config.masked_paths and "/proc/sys" in config.readonly_paths
    assert [(m.source, m.target, m.read_only) for m in config.mounts] == [
        ("/var/lib/x/data", "/data", True)
    ]


def test_run_as_non_root_without_a_user_is_refused() -> None:
    container = {"name": "app", "command": ["true"], "securityContext": {"runAsNonRoot": True}}
    with pytest.raises(ContainerConfigError, match="runAsNonRoot"):
        build_container_config(ctx(make_pod()), container, 0)


def test_host_image_has_no_entrypoint() -> None:
    with pytest.raises(ContainerConfigError, match="no command"):
        build_container_config(ctx(make_pod()), {"name": "app", "image": "host"}, 0)


def test_hostname_rules() -> None:
    assert pod_hostname(make_pod(), "node1") == "web-n1"
    assert pod_hostname(make_pod(hostname="custom"), "node1") == "custom"
    assert pod_hostname(make_pod(hostNetwork=True), "node1") == "node1"
    assert pod_hostname(make_pod(hostname="a" * 62 + "-b"), "n") == "a" * 62


def test_privileged_keeps_the_node_view() -> None:
    container = {"name": "app", "command": ["true"], "securityContext": {"privileged": True}}
    config = build_container_config(ctx(make_pod()), container, 0)
    assert config.privileged and config.capabilities is None
    assert config.masked_paths == () and config.readonly_paths == ()


def test_runtime_default_seccomp_and_read_only_root_reach_the_config() -> None:
    pod = make_pod(securityContext={"seccompProfile": {"type": "RuntimeDefault"}})
    container = {
        "name": "app",
        "command": ["true"],
        "securityContext": {"readOnlyRootFilesystem": True, "procMount": "Unmasked"},
    }
    config = build_container_config(ctx(pod), container, 0)
    assert config.seccomp_filter and len(config.seccomp_filter) % 8 == 0
    assert config.read_only_root is True
    assert config.masked_paths == ()
    unconfined = {**container, "securityContext": {"seccompProfile": {"type": "Unconfined"}}}
    assert build_container_config(ctx(pod), unconfined, 0).seccomp_filter is None


def test_sub_path_expr_and_propagation() -> None:
    container = {
        "name": "app",
        "command": ["true"],
        "env": [{"name": "POD", "valueFrom": field("metadata.name")}],
        "volumeMounts": [
            {"name": "data", "mountPath": "/a", "subPathExpr": "logs/$(POD)",
             "mountPropagation": "HostToContainer"},
            {"name": "data", "mountPath": "/b", "subPath": "x"},
        ],
    }  # fmt: skip
    config = build_container_config(ctx(make_pod()), container, 0)
    assert [(m.sub_path, m.propagation) for m in config.mounts] == [
        ("logs/web-n1", "rslave"),
        ("x", "private"),
    ]
    escape = {**container, "volumeMounts": [{"name": "data", "mountPath": "/a",
                                             "subPathExpr": "$(POD)/../../etc"}]}  # fmt: skip
    with pytest.raises(ContainerConfigError, match="not a relative path"):
        build_container_config(ctx(make_pod()), escape, 0)


def test_run_as_non_root_with_uid_0_is_refused_with_kubelets_text() -> None:
    container = {"name": "app", "command": ["true"],
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 0}}  # fmt: skip
    with pytest.raises(ContainerConfigError, match="runAsUser breaks non-root policy"):
        build_container_config(ctx(make_pod()), container, 0)
