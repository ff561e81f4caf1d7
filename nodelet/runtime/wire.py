"""The agent's records in the holder's wire schema (``nodelet.holder.protocol``): built field by
field, so a field added on one side and not the other is a type error, not a silent drop."""

from __future__ import annotations

import base64
import signal
from pathlib import Path
from typing import cast

from nodelet.holder import protocol
from nodelet.runtime.api import ContainerConfig, Mount, RootFs, SandboxConfig, UserNamespace


def container_spec(config: ContainerConfig) -> protocol.ContainerSpec:
    spec: protocol.ContainerSpec = {
        "name": config.name,
        "attempt": config.attempt,
        "argv": list(config.argv),
        "env": dict(config.env),
        "log_path": config.log_path,
        "working_dir": config.working_dir,
        "mounts": [_mount_spec(m) for m in config.mounts],
        "run_as_user": config.run_as_user,
        "run_as_group": config.run_as_group,
        "supplemental_groups": list(config.supplemental_groups),
        "no_new_privileges": config.no_new_privileges,
        "own_pid_namespace": config.own_pid_namespace,
    }
    # Optional keys only when set: a holder started by an older agent never sees them.
    if config.pre_stop:
        spec["pre_stop"] = cast(protocol.HookSpec, config.pre_stop)
    if config.stop_signal != signal.SIGTERM:
        spec["stop_signal"] = config.stop_signal
    if config.cgroup_procs:
        spec["cgroup_procs"] = list(config.cgroup_procs)
    if config.capabilities is not None:
        caps = config.capabilities
        spec["capabilities"] = {
            "bounding": list(caps.bounding),
            "effective": list(caps.effective),
            "permitted": list(caps.permitted),
            "inheritable": list(caps.inheritable),
            "ambient": list(caps.ambient),
        }
    if config.seccomp_filter is not None:
        spec["seccomp_bpf"] = base64.b64encode(config.seccomp_filter).decode()
    if config.privileged:
        spec["privileged"] = True
    if config.read_only_root:
        spec["read_only_root"] = True
    if config.masked_paths:
        spec["masked_paths"] = list(config.masked_paths)
    if config.readonly_paths:
        spec["readonly_paths"] = list(config.readonly_paths)
    if config.log_max_bytes:
        spec["log_max_bytes"] = config.log_max_bytes
    if config.user_namespace is not None:
        spec["user_namespace"] = _user_namespace(config.user_namespace)
    if config.rootfs is not None:
        spec["rootfs"] = _rootfs(config.rootfs)
    return spec


def _rootfs(rootfs: RootFs) -> protocol.RootfsSpec:
    spec: protocol.RootfsSpec = {
        "lower": list(rootfs.lower),
        "upper": rootfs.upper,
        "work": rootfs.work,
        "shm": rootfs.shm,
        "shm_tmpfs": rootfs.shm_tmpfs,
    }
    if rootfs.host:
        spec["host"] = True
        spec["host_skip"] = list(rootfs.host_skip)
    return spec


def _user_namespace(userns: UserNamespace) -> protocol.UserNamespaceSpec:
    mapping = [0, userns.host_id, userns.length]
    return {"uid_map": [list(mapping)], "gid_map": [list(mapping)]}


def _mount_spec(mount: Mount) -> protocol.MountSpec:
    spec: protocol.MountSpec = {
        "source": mount.source,
        "target": mount.target,
        "read_only": mount.read_only,
    }
    if mount.sub_path:
        spec["sub_path"] = mount.sub_path
    if mount.propagation != "private":
        spec["propagation"] = mount.propagation
    return spec


def sandbox_request(config: SandboxConfig, pod_dir: Path) -> protocol.SandboxRequest:
    """The namespaces the holder creates: the pod's own unless it asked for the host's."""
    request: protocol.SandboxRequest = {
        "pod_dir": str(pod_dir),
        "pod_uid": config.pod_uid,
        "hostname": config.hostname,
        "net": not config.host_network,
        "ipc": not config.host_ipc,
        "uts": not config.host_network,
        "pid": config.share_process_namespace and not config.host_pid,
        "grace_seconds": config.grace_seconds,
    }
    if config.cgroup_procs:
        request["cgroup_procs"] = list(config.cgroup_procs)
    if config.sysctls:
        request["sysctls"] = [[name, value] for name, value in config.sysctls]
    if config.user_namespace is not None:
        request["user_namespace"] = _user_namespace(config.user_namespace)
    return request
