"""Turn a container of the spec into a fully prepared ``ContainerConfig`` for the holder.

Everything kubelet and the CRI runtime decide before exec happens here, in the agent: the
environment (with the downward API and ``$(VAR)`` expansion), argv, mounts, identity, log path.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodelet.image import containerconfig as imageconfig
from nodelet.image.lookup import ImageInfo, read_image_file
from nodelet.image.reference import is_host_image
from nodelet.model import StaticPod
from nodelet.pod.expansion import expand
from nodelet.pod.hooks import HookError, handler_spec, stop_signal
from nodelet.pod.termination import create_file, message_file, under_dev
from nodelet.runtime.api import ContainerConfig, Mount, RootFs, SandboxConfig, UserNamespace
from nodelet.security import paths, seccomp
from nodelet.security.capabilities import CapabilityError, name_of
from nodelet.security.context import container_security
from nodelet.security.identity import IdentityError, pod_description, verify_run_as_non_root
from nodelet.security.sysctls import sandbox_sysctls
from nodelet.security.userns import wants_user_namespace
from nodelet.util import safepath

log = logging.getLogger(__name__)

HOST_PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH for the ``host`` image, which has no image config to take one from."""
HOSTNAME_MAX = 63

_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class ContainerConfigError(Exception):
    """kubelet's CreateContainerConfigError: the spec cannot be turned into a process."""


@dataclass(frozen=True)
class NodeSecurity:
    """What the node adds to every container's securityContext."""

    node_caps: frozenset[int] = frozenset()
    """The agent's own effective capabilities: what ``add: [ALL]`` grants (containerd's rule)."""
    passwd: str = ""
    group: str = ""
    """The ``host`` image's ``/etc/passwd`` and ``/etc/group``: a user's groups and primary gid."""
    seccomp_dir: Path = Path("/var/lib/nodelet/seccomp")
    """Where ``Localhost`` seccomp profiles live."""
    seccomp_default: bool = False
    """``--seccomp-default``: RuntimeDefault for containers that name no profile."""
    host_image_overlay: bool = False
    """``hostImageRoot: Overlay``: a host-image container gets an overlay of the node's ``/``
    (its writes stay in its own dir); False: the node's ``/`` itself."""
    agent_dirs: tuple[str, ...] = ()
    """The agent's run, root and log dirs: their mounts (other pods' roots, shm, netns binds)
    are left out of a host-image root."""


@dataclass(frozen=True)
class PodContext:
    """Per-pod facts every container of the pod needs."""

    pod: StaticPod
    hostname: str
    node_ip: str
    pod_ip: str
    pod_logs_dir: Path
    volume_paths: Mapping[str, str]
    security: NodeSecurity = NodeSecurity()
    hosts_file: str | None = None
    """The pod's managed ``/etc/hosts`` (with its IP), mounted into every container."""
    hostname_file: str | None = None
    """The pod's ``/etc/hostname``, mounted as containerd does (read-only with the root)."""
    resolv_conf_file: str | None = None
    """The pod's ``/etc/resolv.conf`` (``nodelet.pod.dns``), mounted as containerd does."""
    user_namespace: UserNamespace | None = None
    """The pod's user namespace (``hostUsers: false``), as allocated for its sandbox."""
    images: Callable[[str], ImageInfo | None] = lambda _reference: None
    """A non-host image looked up in the local store (``lookup.local_image``); None: not
    stored. The default knows no image, so only the host image runs."""
    is_host_image: Callable[[str], bool] = lambda image: is_host_image(image, ())
    """Whether a reference runs on the node's own ``/``: ``host``, or a ``hostImages`` glob
    (``ImageManager.is_host``); the agent without an image store says yes to every one."""
    pod_dir: Path | None = None
    """The pod's state dir: container roots' upper/work dirs and its /dev/shm live there."""


def pod_hostname(pod: StaticPod, node_hostname: str) -> str:
    """kubelet: the node's for hostNetwork, else spec.hostname or the pod name, cut to 63."""
    spec = pod.spec
    if pod.host_network:
        return node_hostname
    name: str = spec.get("hostname") or pod.name
    return name[:HOSTNAME_MAX].rstrip("-.")


def sandbox_config(
    pod: StaticPod, node_hostname: str, user_namespace: UserNamespace | None = None
) -> SandboxConfig:
    """What the holder needs to create the pod's namespaces (pure); ``user_namespace`` is the
    pod's allocation when it asks for one (``hostUsers: false``)."""
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
        sysctls=sandbox_sysctls(pod.spec),
        user_namespace=user_namespace,
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


def build_container_config(
    ctx: PodContext, container: Mapping[str, Any], attempt: int
) -> ContainerConfig:
    """Everything the holder needs to start ``container`` for restart number ``attempt``."""
    name = container["name"]
    image = _image(ctx, container)
    pod_env = build_env(ctx, container)
    command = [expand(a, pod_env) for a in container.get("command") or []]
    args = [expand(a, pod_env) for a in container.get("args") or []]
    if wants_user_namespace(ctx.pod.spec) and ctx.user_namespace is None:
        raise ContainerConfigError(
            f'container "{name}": the pod asks for a user namespace (hostUsers: false) and has '
            "none allocated; it is not started in the host's"
        )
    node = ctx.security
    passwd, group_file = node.passwd, node.group
    rootfs = None
    if image is None:
        if not command:
            raise ContainerConfigError(
                f'container "{name}": no command: image {container.get("image")!r} runs on the '
                "host filesystem, which has no entrypoint"
            )
        env, argv = pod_env, [*command, *args]
        working_dir = container.get("workingDir") or None
        if node.host_image_overlay and not wants_user_namespace(ctx.pod.spec):
            rootfs = _host_rootfs(ctx, container, attempt)
    else:
        own = {var["name"] for var in container.get("env") or []}
        env = imageconfig.merge_env(
            ctx.hostname, image.config.env, {k: v for k, v in pod_env.items() if k in own}
        )
        config = image.config
        try:
            argv = imageconfig.process_args(command, args, config.entrypoint, config.cmd)
        except imageconfig.ImageConfigError as err:
            raise ContainerConfigError(f'container "{name}": {err}') from None
        working_dir = container.get("workingDir") or config.working_dir or None
        passwd = read_image_file(image.layers, "/etc/passwd") or ""
        group_file = read_image_file(image.layers, "/etc/group") or ""
        container = _with_image_user(ctx, container, config.user, passwd, group_file)
        rootfs = _rootfs(ctx, container, attempt, image)
    try:
        security = container_security(
            ctx.pod, container, node_caps=node.node_caps, passwd=passwd, group=group_file
        )
    except IdentityError as err:
        raise ContainerConfigError(str(err)) from None  # kubelet's whole text names the pod
    except CapabilityError as err:
        raise ContainerConfigError(
            f'container "{name}": securityContext.capabilities: {err}'
        ) from None
    user, group = security.run_as_user, security.run_as_group
    sc = container.get("securityContext") or {}
    pod_sc = ctx.pod.spec.get("securityContext") or {}
    # containerd picks the capability-dependent syscalls by the bounding set.
    caps = security.capabilities
    try:
        seccomp_filter = seccomp.filter_for(
            sc.get("seccompProfile"),
            {name_of(c) for c in caps.bounding} if caps is not None else set(),
            security.privileged,
            node.seccomp_dir,
            pod_profile=pod_sc.get("seccompProfile"),
            seccomp_default=node.seccomp_default,
        )
    except seccomp.SeccompError as err:
        raise ContainerConfigError(f'container "{name}": {err}') from None
    masked, readonly = paths.masked_and_readonly(
        security.privileged, sc.get("procMount") or "Default"
    )
    mounts = [_mount(ctx, name, mount, env) for mount in container.get("volumeMounts") or []]
    mounts[:0] = _managed_file_mounts(ctx, mounts, security.read_only_root)
    message_mount = _termination_mount(
        ctx, container, attempt, image, security.privileged, rootfs is not None
    )
    if message_mount is not None:
        mounts.append(message_mount)  # last, as kubelet's makeMounts: over any volume
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
        working_dir=working_dir,
        mounts=mounts,
        run_as_user=user,
        run_as_group=group,
        supplemental_groups=list(security.supplemental_groups),
        no_new_privileges=security.no_new_privileges,
        own_pid_namespace=not (ctx.pod.host_pid or ctx.pod.share_process_namespace),
        pre_stop=pre_stop,
        stop_signal=signal_number,
        capabilities=caps,
        seccomp_filter=seccomp_filter,
        privileged=security.privileged,
        read_only_root=security.read_only_root,
        masked_paths=masked,
        readonly_paths=readonly,
        user_namespace=ctx.user_namespace,
        rootfs=rootfs,
    )


def _image(ctx: PodContext, container: Mapping[str, Any]) -> ImageInfo | None:
    """The container's stored image; None for the host image (``host`` or ``hostImages``)."""
    reference = container.get("image")
    if not reference or ctx.is_host_image(reference):
        return None
    try:
        info = ctx.images(reference)
    except ValueError as err:
        raise ContainerConfigError(f'container "{container["name"]}": {err}') from None
    if info is None:
        raise ContainerConfigError(
            f'container "{container["name"]}": Container image "{reference}" is not present '
            "in the node's image store (pull it, or import it with nodelet image import)"
        )
    return info


def _with_image_user(
    ctx: PodContext, container: Mapping[str, Any], user: str, passwd: str, group: str
) -> Mapping[str, Any]:
    """The container with the image's User as its runAsUser (and the User's group as its
    runAsGroup), unless the pod or the container sets runAsUser: containerd's ``WithUser``
    then ``WithUserID``, so everything after (groups, hooks, probes) sees one identity."""
    pod_sc = ctx.pod.spec.get("securityContext") or {}
    sc = dict(container.get("securityContext") or {})

    def field(key: str) -> Any:
        return sc[key] if sc.get(key) is not None else pod_sc.get(key)

    if field("runAsUser") is not None:
        return container
    name = container["name"]
    where = pod_description(ctx.pod.name, ctx.pod.namespace, ctx.pod.uid)
    if field("runAsNonRoot") and not imageconfig.user_is_numeric(user):
        raise ContainerConfigError(
            f"container has runAsNonRoot and image has non-numeric user ({user}), cannot verify "
            f'user is non-root (pod: "{where}", container: {name})'
        )
    try:
        image_user = imageconfig.resolve_user(user, passwd, group)
        verify_run_as_non_root(ctx.pod.spec, container, where, image_uid=image_user.uid)
    except imageconfig.ImageConfigError as err:
        raise ContainerConfigError(f'container "{name}": {err}') from None
    except IdentityError as err:
        raise ContainerConfigError(str(err)) from None
    sc["runAsUser"] = image_user.uid
    if image_user.gid is not None and field("runAsGroup") is None:
        sc["runAsGroup"] = image_user.gid
    return {**container, "securityContext": sc}


def _rootfs(
    ctx: PodContext, container: Mapping[str, Any], attempt: int, image: ImageInfo
) -> RootFs:
    """Each start gets a fresh upper dir (containerd makes a new snapshot per container), under
    the pod's state dir so it goes with the pod; /dev/shm is the pod's, or the host's for
    hostIPC."""
    name = container["name"]
    if ctx.pod_dir is None:
        raise ContainerConfigError(f'container "{name}": the pod has no state dir for its root')
    return _root_on(ctx, name, attempt, image.layers)


def _host_rootfs(ctx: PodContext, container: Mapping[str, Any], attempt: int) -> RootFs:
    """The host image's root: an overlay of the node's ``/`` (and of its other mounts, but the
    agent's own dirs), so the node's binaries run and what the container writes outside its
    volumes stays in its upper dir, as with any image (``hostImageRoot: Overlay``)."""
    name = container["name"]
    if ctx.pod_dir is None:
        raise ContainerConfigError(f'container "{name}": the pod has no state dir for its root')
    root = _root_on(ctx, name, attempt, ("/",))
    return dataclasses.replace(root, host=True, host_skip=ctx.security.agent_dirs)


def _root_on(ctx: PodContext, name: str, attempt: int, lower: tuple[str, ...]) -> RootFs:
    assert ctx.pod_dir is not None
    base = safepath.child(ctx.pod_dir / "containers", name) / str(attempt)
    if ctx.pod.host_ipc:
        shm, shm_tmpfs = "/dev/shm", False
    else:
        shm, shm_tmpfs = str(ctx.pod_dir / "shm"), True
    return RootFs(lower, str(base / "upper"), str(base / "work"), shm, shm_tmpfs)


def _managed_file_mounts(ctx: PodContext, mounts: list[Mount], read_only_root: bool) -> list[Mount]:
    """The pod's ``/etc/hostname``, ``/etc/hosts`` and ``/etc/resolv.conf``, each unless the
    container mounts something there itself. ``/etc/hosts`` is kubelet's mount, always
    read-write; containerd makes the other two read-only with a read-only root. They go first,
    so a volume the container mounts over ``/etc`` covers them."""
    taken = {m.target for m in mounts}
    managed = (
        (ctx.hostname_file, "/etc/hostname", read_only_root),
        (ctx.hosts_file, "/etc/hosts", False),
        (ctx.resolv_conf_file, "/etc/resolv.conf", read_only_root),
    )
    return [
        Mount(source, target, read_only=read_only)
        for source, target, read_only in managed
        if source and target not in taken
    ]


def _termination_mount(
    ctx: PodContext,
    container: Mapping[str, Any],
    attempt: int,
    image: ImageInfo | None,
    privileged: bool,
    own_root: bool,
) -> Mount | None:
    """The run's message file bound at ``terminationMessagePath`` (``nodelet.pod.termination``),
    unless binding it would have to write on the host: the target is made in an image
    container's own root, but never through a privileged container's ``/dev`` (the host's,
    where kubelet with runc would leave ``/dev/termination-log`` behind). So does a ``host``
    image container on its overlay (``own_root``); one on the node's ``/`` itself gets it only
    where the path is a file on the host already and the container has a mount namespace of
    its own (not privileged); else it has no file, as before. The file
    is created here if missing, as kubelet's ``makeMounts`` does, and like kubelet a file
    that cannot be created leaves the container without one rather than unstarted."""
    target = container.get("terminationMessagePath") or ""
    if not target or ctx.pod_dir is None:
        return None
    if image is None and not own_root:
        if privileged or not os.path.isfile(target):
            return None
    elif privileged and under_dev(target):
        return None
    source = message_file(ctx.pod_dir, container["name"], attempt)
    try:
        create_file(source, fresh=False)
    except OSError as err:
        log.error("error on creating termination-log file %s: %s", source, err)
        return None
    return Mount(str(source), target, read_only=False)


def _mount(ctx: PodContext, name: str, mount: Mapping[str, Any], env: Mapping[str, str]) -> Mount:
    """A volumeMount as the holder binds it: subPathExpr expanded with the container's env (as
    kubelet does), the path itself resolved by the holder beneath the volume."""
    source = ctx.volume_paths.get(mount["name"])
    if source is None:
        raise ContainerConfigError(f'container "{name}": volume "{mount["name"]}" is not ready')
    sub_path = mount.get("subPath") or None
    if mount.get("subPathExpr"):
        sub_path = expand(mount["subPathExpr"], dict(env))
        if not sub_path or sub_path.startswith("/") or ".." in sub_path.split("/"):
            raise ContainerConfigError(
                f'container "{name}": subPathExpr {mount["subPathExpr"]!r} expands to '
                f"{sub_path!r}, which is not a relative path inside the volume"
            )
    try:
        propagation = paths.propagation_of(mount.get("mountPropagation"))
    except ValueError as err:
        raise ContainerConfigError(f'container "{name}": {err}') from None
    return Mount(
        source,
        mount["mountPath"],
        bool(mount.get("readOnly", False)),
        sub_path=sub_path,
        propagation=propagation,
    )
