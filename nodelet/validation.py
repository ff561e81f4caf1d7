"""The semantic rules kubelet and the API server apply to a static pod (names, references,
ranges), collected all at once so the operator fixes a manifest in one go."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

ErrorSink = Callable[[str, str], None]

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
FIELD_REFS = re.compile(
    r"^(metadata\.(name|namespace|uid)|spec\.(nodeName|serviceAccountName)"
    r"|status\.(podIP|podIPs|hostIP|hostIPs)|metadata\.(labels|annotations)\['[^']+'\])$"
)
RESTART_POLICIES = ("Always", "OnFailure", "Never")
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default")
HOST_PATH_TYPES = ("", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket",
                   "CharDevice", "BlockDevice")  # fmt: skip
MAX_ID = 2**31 - 1
MAX_ANNOTATIONS_BYTES = 256 * 1024


def dns_label(value: Any) -> str | None:
    """Why ``value`` is not a DNS-1123 label, or None."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > 63:
        return f"must be no more than 63 characters (is {len(value)})"
    if not DNS1123_LABEL.match(value):
        return (
            "must be a lowercase RFC 1123 label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return None


def dns_subdomain(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > 253:
        return f"must be no more than 253 characters (is {len(value)})"
    if not DNS1123_SUBDOMAIN.match(value):
        return (
            "must be a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def validate(pod: dict[str, Any], node_name: str, error: ErrorSink) -> None:
    """Report every semantic problem of a structurally valid Pod object."""
    if pod.get("apiVersion") != "v1":
        error("apiVersion", f'must be "v1", got {pod.get("apiVersion")!r}')
    if pod.get("kind") != "Pod":
        error("kind", f'must be "Pod", got {pod.get("kind")!r}')
    _metadata(pod.get("metadata") or {}, node_name, error)
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        error("spec", "required")
        return
    _spec(spec, error)


def _metadata(meta: dict[str, Any], node_name: str, error: ErrorSink) -> None:
    name = meta.get("name")
    if not name:
        error("metadata.name", "required (static pods are named by their manifest)")
    elif why := dns_subdomain(name):
        error("metadata.name", f"{name!r} {why}")
    elif why := dns_subdomain(f"{name}-{node_name}"):
        error("metadata.name", f"{name}-{node_name!r} (with the node name) {why}")
    namespace = meta.get("namespace")
    if namespace is not None and (why := dns_label(namespace)):
        error("metadata.namespace", f"{namespace!r} {why}")
    for key, value in (meta.get("labels") or {}).items():
        _qualified_key(f"metadata.labels[{key!r}]", key, error)
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            error(f"metadata.labels[{key!r}]", f"invalid label value {value!r}")
    annotations = meta.get("annotations") or {}
    for key in annotations:
        _qualified_key(f"metadata.annotations[{key!r}]", key, error)
    size = sum(len(k) + len(str(v)) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS_BYTES:
        error("metadata.annotations", f"total size {size} exceeds 256 KiB")


def _qualified_key(path: str, key: str, error: ErrorSink) -> None:
    prefix, _, name = key.rpartition("/")
    if prefix and dns_subdomain(prefix):
        error(path, f"key prefix {prefix!r} must be a DNS subdomain")
    if not name or len(name) > 63 or not QUALIFIED_NAME.match(name):
        error(path, f"invalid key {key!r}")


def _spec(spec: dict[str, Any], error: ErrorSink) -> None:
    containers = spec.get("containers") or []
    if not containers:
        error("spec.containers", "at least one container is required")
    volumes = _volumes(spec.get("volumes") or [], error)
    seen: dict[str, str] = {}
    for kind in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(kind) or []):
            path = f"spec.{kind}[{index}]"
            _container(container, path, volumes, bool(spec.get("hostNetwork")), error)
            name = container.get("name")
            if isinstance(name, str) and name in seen:
                error(f"{path}.name", f"duplicate container name {name!r} (also {seen[name]})")
            elif isinstance(name, str):
                seen[name] = path
    policy = spec.get("restartPolicy")
    if policy is not None and policy not in RESTART_POLICIES:
        error("spec.restartPolicy", f"must be one of {', '.join(RESTART_POLICIES)}")
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and grace < 0:
        error("spec.terminationGracePeriodSeconds", "must be >= 0")
    dns = spec.get("dnsPolicy")
    if dns is not None and dns not in DNS_POLICIES:
        error("spec.dnsPolicy", f"must be one of {', '.join(DNS_POLICIES)}")
    for key in ("hostname", "subdomain"):
        if spec.get(key) is not None and (why := dns_label(spec[key])):
            error(f"spec.{key}", why)
    os_name = (spec.get("os") or {}).get("name")
    if os_name not in (None, "linux"):
        error("spec.os.name", f"nodelet runs Linux pods only, got {os_name!r}")
    _ids(spec.get("securityContext") or {}, "spec.securityContext", error)
    groups = (spec.get("securityContext") or {}).get("supplementalGroups") or []
    for index, group in enumerate(groups):
        if not 0 <= group <= MAX_ID:
            error(f"spec.securityContext.supplementalGroups[{index}]", "must be 0..2147483647")


def _ids(context: dict[str, Any], path: str, error: ErrorSink) -> None:
    for key in ("runAsUser", "runAsGroup"):
        value = context.get(key)
        if value is not None and not 0 <= value <= MAX_ID:
            error(f"{path}.{key}", "must be between 0 and 2147483647")


def _volumes(volumes: list[dict[str, Any]], error: ErrorSink) -> set[str]:
    names: set[str] = set()
    for index, volume in enumerate(volumes):
        path = f"spec.volumes[{index}]"
        name = volume.get("name")
        if why := dns_label(name):
            error(f"{path}.name", why)
        elif name in names:
            error(f"{path}.name", f"duplicate volume name {name!r}")
        names.add(str(name))
        sources = [k for k in volume if k != "name"]
        if len(sources) != 1:
            error(path, f"exactly one volume source is required, got {sources or 'none'}")
        host_path = volume.get("hostPath")
        if isinstance(host_path, dict):
            target = host_path.get("path")
            if not isinstance(target, str) or not target.startswith("/"):
                error(f"{path}.hostPath.path", "must be an absolute path")
            if host_path.get("type", "") not in HOST_PATH_TYPES:
                error(f"{path}.hostPath.type", f"must be one of {', '.join(HOST_PATH_TYPES[1:])}")
    return names


def _container(
    container: dict[str, Any], path: str, volumes: set[str], host_network: bool, error: ErrorSink
) -> None:
    if why := dns_label(container.get("name")):
        error(f"{path}.name", why)
    if not container.get("image"):
        error(f"{path}.image", "required")
    _ids(container.get("securityContext") or {}, f"{path}.securityContext", error)
    for index, var in enumerate(container.get("env") or []):
        name = var.get("name")
        if not name or "=" in name or not name.isprintable():
            error(f"{path}.env[{index}].name", f"invalid environment variable name {name!r}")
        ref = ((var.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if ref is not None and not FIELD_REFS.match(ref):
            where = f"{path}.env[{index}].valueFrom.fieldRef.fieldPath"
            error(where, f"unsupported field {ref!r}")
    port_names: set[str] = set()
    for index, port in enumerate(container.get("ports") or []):
        where = f"{path}.ports[{index}]"
        for key in ("containerPort", "hostPort"):
            number = port.get(key)
            if number is not None and not 1 <= number <= 65535:
                error(f"{where}.{key}", "must be between 1 and 65535")
        if port.get("hostPort") and not host_network:
            error(f"{where}.hostPort", "unsupported: hostPort without hostNetwork (pod network)")
        if port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
            error(f"{where}.protocol", "must be TCP, UDP or SCTP")
        name = port.get("name")
        if name is not None:
            if not IANA_SVC_NAME.match(name) or len(name) > 15:
                error(f"{where}.name", f"invalid port name {name!r}")
            elif name in port_names:
                error(f"{where}.name", f"duplicate port name {name!r}")
            port_names.add(name)
    mount_paths: set[str] = set()
    for index, mount in enumerate(container.get("volumeMounts") or []):
        where = f"{path}.volumeMounts[{index}]"
        if mount.get("name") not in volumes:
            error(f"{where}.name", f"volume {mount.get('name')!r} is not defined in spec.volumes")
        target = mount.get("mountPath")
        if not isinstance(target, str) or not target.startswith("/"):
            error(f"{where}.mountPath", "must be an absolute path")
        elif ".." in target.split("/"):
            error(f"{where}.mountPath", "must not contain '..'")
        elif target in mount_paths:
            error(f"{where}.mountPath", f"{target} is mounted twice")
        mount_paths.add(str(target))
