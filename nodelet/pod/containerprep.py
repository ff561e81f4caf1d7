"""Turn a container of the spec into a fully prepared ``ContainerConfig`` for the holder.

Everything kubelet and the CRI runtime decide before exec happens here, in the agent: the
environment (with the downward API and ``$(VAR)`` expansion), argv, mounts, identity, log path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodelet.model import StaticPod
from nodelet.pod.expansion import expand
from nodelet.pod.hooks import HookError, handler_spec, stop_signal
from nodelet.runtime.api import ContainerConfig, Mount, SandboxConfig
from nodelet.util import safepath

HOST_PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH for the ``host`` image, which has no image config to take one from."""
HOSTNAME_MAX = 63

_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class ContainerConfigError(Exception):
    """kubelet's CreateContainerConfigError: the spec cannot be turned into a process."""


@dataclass(frozen=True)
class PodContext:
    """Per-pod facts every container of the pod needs."""

    pod: StaticPod
    hostname: str
    node_ip: str
    pod_ip: str
    pod_logs_dir: Path
    volume_paths: Mapping[str, str]


def pod_hostname(pod: StaticPod, node_hostname: str) -> str:
    """kubelet: the node's for hostNetwork, else spec.hostname or the pod name, cut to 63."""
    spec = pod.spec
    if pod.host_network:
        return node_hostname
    name: str = spec.get("hostname") or pod.name
    return name[:HOSTNAME_MAX].rstrip("-.")


def sandbox_config(pod: StaticPod, node_hostname: str) -> SandboxConfig:
    """What the holder needs to create the pod's namespaces (pure)."""
    return SandboxConfig(
        pod_uid=pod.uid,
        pod_namespace=pod.namespace,
        pod_name=pod.name,
        hostname=pod_hostname(pod, node_hostname),
        host_network=pod.host_network,
        host_pid=pod.host_pid,
        host_ipc=pod.host_ipc,
        share_process_namespace=pod.share_process_namespace,
        grace_seconds=pod.grace_seconds,
    )


def pod_log_dir(pod_logs_dir: Path, pod: StaticPod) -> Path:
    """``/var/log/pods/<namespace>_<name>_<uid>``, kubelet's layout."""
    return safepath.child(pod_logs_dir, f"{pod.namespace}_{pod.name}_{pod.uid}")


def container_log_path(pod_logs_dir: Path, pod: StaticPod, name: str, attempt: int) -> Path:
    return safepath.child(pod_log_dir(pod_logs_dir, pod), name) / f"{attempt}.log"


def _field_ref(ctx: PodContext, path: str) -> str:
    metadata = ctx.pod.manifest["metadata"]
    simple: dict[str, str] = {
        "metadata.name": ctx.pod.name,
        "metadata.namespace": ctx.pod.namespace,
        "metadata.uid": ctx.pod.uid,
        "spec.nodeName": ctx.pod.spec.get("nodeName", ""),
        "spec.serviceAccountName": ctx.pod.spec.get("serviceAccountName", ""),
        "status.podIP": ctx.pod_ip,
        "status.podIPs": ctx.pod_ip,
        "status.hostIP": ctx.node_ip,
        "status.hostIPs": ctx.node_ip,
    }
    if path in simple:
        return simple[path]
    match = _LABEL_REF.match(path)
    if match:
        values: dict[str, str] = metadata.get(match.group(1)) or {}
        return values.get(match.group(2), "")
    raise ContainerConfigError(f"unsupported fieldRef {path!r}")


def build_env(ctx: PodContext, container: Mapping[str, Any]) -> dict[str, str]:
    """Runtime defaults, then the container's env in order, each expanding earlier ones."""
    env = {"PATH": HOST_PATH_ENV, "HOSTNAME": ctx.hostname}
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" in var:
            env[name] = _field_ref(ctx, var["valueFrom"]["fieldRef"]["fieldPath"])
        else:
            env[name] = expand(var.get("value", ""), env)
    return env


def identity(
    pod_spec: Mapping[str, Any], container: Mapping[str, Any]
) -> tuple[int | None, int | None, bool]:
    pod_sc = pod_spec.get("securityContext") or {}
    sc = container.get("securityContext") or {}
    user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot", False))
    return user, group, bool(non_root)


def build_container_config(
    ctx: PodContext, container: Mapping[str, Any], attempt: int
) -> ContainerConfig:
    """Everything the holder needs to start ``container`` for restart number ``attempt``."""
    name = container["name"]
    env = build_env(ctx, container)
    argv = [
        expand(a, env) for a in [*(container.get("command") or []), *(container.get("args") or [])]
    ]
    if not container.get("command"):
        raise ContainerConfigError(
            f'container "{name}": no command: image {container.get("image")!r} runs on the host '
            "filesystem, which has no entrypoint"
        )
    user, group, non_root = identity(ctx.pod.spec, container)
    if non_root and not user:
        raise ContainerConfigError(
            f'container "{name}": container has runAsNonRoot and image will run as root'
        )
    mounts = []
    for mount in container.get("volumeMounts") or []:
        source = ctx.volume_paths.get(mount["name"])
        if source is None:
            raise ContainerConfigError(f'container "{name}": volume "{mount["name"]}" is not ready')
        mounts.append(Mount(source, mount["mountPath"], bool(mount.get("readOnly", False))))
    sc = container.get("securityContext") or {}
    pod_sc = ctx.pod.spec.get("securityContext") or {}
    lifecycle = container.get("lifecycle") or {}
    try:
        pre_stop = None
        if lifecycle.get("preStop"):
            pre_stop = handler_spec(lifecycle["preStop"], container, ctx.pod_ip, user, group)
        signal_number = stop_signal(container)
    except HookError as err:
        raise ContainerConfigError(f'container "{name}": lifecycle: {err}') from None
    return ContainerConfig(
        name=name,
        attempt=attempt,
        argv=argv,
        env=env,
        log_path=str(container_log_path(ctx.pod_logs_dir, ctx.pod, name, attempt)),
        working_dir=container.get("workingDir") or None,
        mounts=mounts,
        run_as_user=user,
        run_as_group=group,
        supplemental_groups=list(pod_sc.get("supplementalGroups") or []),
        no_new_privileges=sc.get("allowPrivilegeEscalation") is False,
        own_pid_namespace=not (ctx.pod.host_pid or ctx.pod.share_process_namespace),
        pre_stop=pre_stop,
        stop_signal=signal_number,
    )
