"""The semantic rules kubelet and the API server apply to a static pod (names, references,
ranges), collected all at once so the operator fixes a manifest in one go.

Names matter beyond style here: the pod UID names the pod's directories under the run and
state dirs, and namespace, pod, container and volume names name log and volume directories. So
every one is checked whatever its YAML type (a number or a list is an error, never skipped),
and a UID must be a plain token that cannot step out of a directory.

Every function is total: it runs after the structural check (``podschema``) and may be handed
a value of any shape that check already reported; it skips such a value rather than raising.
"""

from __future__ import annotations

import ipaddress
import re
import signal
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

from nodelet.cgroups.quantity import QuantityError, parse_quantity
from nodelet.manifest import securitycontext
from nodelet.manifest.schema import plain, show
from nodelet.probe.worker import ProbeSpec

ErrorSink = Callable[[str, str], None]

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
POD_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,127}")
"""UUIDs and kubelet's md5 hex fit; '/', '.', '_', NUL and whitespace never do, so a UID is
always a single, plain directory name (``_`` separates the parts of a pod's log dir name)."""
FIELD_REFS = re.compile(
    r"metadata\.(name|namespace|uid)|spec\.(nodeName|serviceAccountName)"
    r"|status\.(podIP|podIPs|hostIP|hostIPs)|metadata\.(labels|annotations)\['[^']+'\]"
)
RESTART_POLICIES = ("Always", "OnFailure", "Never")
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
DNS_SEARCH = re.compile(
    r"[a-z0-9_]([-a-z0-9_]*[a-z0-9_])?(\.[a-z0-9_]([-a-z0-9_]*[a-z0-9_])?)*"
)  # fmt: skip
"""The API server's relaxed search domain (``RelaxedDNSSearchValidation``, GA in 1.34)."""
MAX_DNS_NAMESERVERS = 3
MAX_DNS_SEARCH_PATHS = 32
MAX_DNS_SEARCH_CHARS = 2048
HOST_PATH_TYPES = ("", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket",
                   "CharDevice", "BlockDevice")  # fmt: skip
PROTOCOLS = ("TCP", "UDP", "SCTP")
MOUNT_PROPAGATIONS = ("Bidirectional", "HostToContainer", "None")
FILE_MODE_RULE = "must be a number between 0 and 0777 (octal), both inclusive"
VOLUME_FIELD_REFS = (
    "metadata.annotations", "metadata.labels", "metadata.name", "metadata.namespace",
    "metadata.uid",
)  # fmt: skip
RESOURCE_FIELD_REFS = ("limits.cpu", "limits.memory", "requests.cpu", "requests.memory")
"""What a downwardAPI volume may publish of a container's resources here: nodelet enforces
cpu and memory only, so ephemeral-storage and hugepages have no value to publish."""
CPU_DIVISORS = (Fraction(1, 1000), Fraction(1))
MEMORY_DIVISORS = tuple(
    Fraction(base**power) for base in (1000, 1024) for power in range(7)
)  # 1, 1k/1Ki ... 1E/1Ei
MAX_ID = 2**31 - 1
MAX_ANNOTATIONS_BYTES = 256 * 1024


# -- shape helpers: a value of the wrong shape was reported by podschema; skip it here --------


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _objects(value: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, item) of every object in a list; anything else yields nothing."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, dict):
                yield index, item


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _has_backstep(path: str) -> bool:
    """kubelet's ``validatePathNoBacksteps``: any ``..`` element, wherever it is."""
    return ".." in path.split("/")


# -- names ------------------------------------------------------------------------------------


def dns_label(value: Any) -> str | None:
    """Why ``value`` is not a DNS-1123 label, or None."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > 63:
        return f"must be no more than 63 characters (is {len(value)})"
    if not DNS1123_LABEL.fullmatch(value):
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
    if not DNS1123_SUBDOMAIN.fullmatch(value):
        return (
            "must be a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def pod_uid(value: Any) -> str | None:
    """Why ``value`` cannot be a pod UID (it names directories), or None."""
    if not isinstance(value, str) or not POD_UID.fullmatch(value):
        return (
            f"{show(value)} is not a valid UID: 1 to 128 letters, digits and '-', starting "
            "with a letter or digit (a UUID); it names the pod's directories"
        )
    return None


# -- the pod ----------------------------------------------------------------------------------


def validate(pod: Any, node_name: str, error: ErrorSink) -> None:
    """Report every semantic problem of a Pod object (of any shape)."""
    if not isinstance(pod, dict):
        error("", "expected a Pod object")
        return
    if pod.get("apiVersion") != "v1":
        error("apiVersion", f'must be "v1", got {show(pod.get("apiVersion"))}')
    if pod.get("kind") != "Pod":
        error("kind", f'must be "Pod", got {show(pod.get("kind"))}')
    _metadata(_obj(pod.get("metadata")), node_name, error)
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        error("spec", "required")
        return
    _spec(spec, error)
    annotations = _obj(_obj(pod.get("metadata")).get("annotations"))
    securitycontext.apparmor_annotations(annotations, spec, error)


def _metadata(meta: dict[str, Any], node_name: str, error: ErrorSink) -> None:
    name = meta.get("name")
    if name is None or name == "":
        error("metadata.name", "required (static pods are named by their manifest)")
    elif why := dns_subdomain(name):
        error("metadata.name", f"{show(name)} {why}" if isinstance(name, str) else why)
    elif why := dns_subdomain(f"{name}-{node_name}"):
        error("metadata.name", f"{show(f'{name}-{node_name}')} (with the node name) {why}")
    namespace = meta.get("namespace")
    if namespace is not None and (why := dns_label(namespace)):
        error("metadata.namespace", f"{show(namespace)} {why}")
    uid = meta.get("uid")
    if uid is not None and uid != "" and (why := pod_uid(uid)):
        error("metadata.uid", why)
    labels = meta.get("labels")
    for key, value in _obj(labels).items():
        where = f"metadata.labels[{show(key)}]"
        if not isinstance(key, str):
            error(where, "label keys must be strings")
            continue
        _qualified_key(where, key, error)
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.fullmatch(value):
            error(where, f"invalid label value {show(value)}")
    annotations = _obj(meta.get("annotations"))
    for key in annotations:
        if isinstance(key, str):
            _qualified_key(f"metadata.annotations[{show(key)}]", key, error)
    size = sum(
        len(k) + len(v) for k, v in annotations.items() if isinstance(k, str) and isinstance(v, str)
    )
    if size > MAX_ANNOTATIONS_BYTES:
        error("metadata.annotations", f"total size {size} exceeds 256 KiB")


def _qualified_key(path: str, key: str, error: ErrorSink) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash and dns_subdomain(prefix):
        error(path, f"key prefix {show(prefix)} must be a DNS subdomain")
    if not name or len(name) > 63 or not QUALIFIED_NAME.fullmatch(name):
        error(path, f"invalid key {show(key)}")


def _spec(spec: dict[str, Any], error: ErrorSink) -> None:
    containers = spec.get("containers")
    if containers is None or containers == []:
        error("spec.containers", "at least one container is required")
    names = {
        name
        for kind in ("initContainers", "containers")
        for _, container in _objects(spec.get(kind))
        if isinstance(name := container.get("name"), str)
    }
    volumes = _volumes(spec.get("volumes"), names, error)
    seen: dict[str, str] = {}
    host_network = spec.get("hostNetwork") is True
    host_users = spec.get("hostUsers") is not False
    linux = _obj(spec.get("os")).get("name") == "linux"
    for kind in ("initContainers", "containers"):
        for index, container in _objects(spec.get(kind)):
            path = f"spec.{kind}[{index}]"
            _container(container, path, volumes, host_network, error)
            context = _obj(container.get("securityContext"))
            securitycontext.container_context(
                context, f"{path}.securityContext", host_users, linux, error
            )
            _probes(container, path, kind == "initContainers", error)
            name = container.get("name")
            if isinstance(name, str) and name in seen:
                error(f"{path}.name", f"duplicate container name {show(name)} (also {seen[name]})")
            elif isinstance(name, str):
                seen[name] = path
    policy = spec.get("restartPolicy")
    if policy is not None and policy not in RESTART_POLICIES:
        error("spec.restartPolicy", f"must be one of {', '.join(RESTART_POLICIES)}")
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and (_int(deadline) is None or deadline <= 0):
        error("spec.activeDeadlineSeconds", "must be a positive integer")
    grace = _int(spec.get("terminationGracePeriodSeconds"))
    if grace is not None and grace < 0:
        error("spec.terminationGracePeriodSeconds", "must be >= 0")
    dns = spec.get("dnsPolicy")
    if dns is not None and dns not in DNS_POLICIES:
        error("spec.dnsPolicy", f"must be one of {', '.join(DNS_POLICIES)}")
    for key in ("hostname", "subdomain"):
        if spec.get(key) is not None and (why := dns_label(spec[key])):
            error(f"spec.{key}", why)
    _dns_config(spec.get("dnsConfig"), dns, error)
    _host_aliases(spec.get("hostAliases"), error)
    if not host_users:
        _host_users(spec, error)
    if spec.get("hostPID") is True and spec.get("shareProcessNamespace") is True:
        error(
            "spec.shareProcessNamespace", "ShareProcessNamespace and HostPID cannot both be enabled"
        )
    os_name = _obj(spec.get("os")).get("name")
    if os_name not in (None, "linux"):
        error("spec.os.name", f"nodelet runs Linux pods only, got {show(os_name)}")
    context = _obj(spec.get("securityContext"))
    _ids(context, "spec.securityContext", error)
    securitycontext.pod_context(spec, linux, error)
    groups = context.get("supplementalGroups")
    for index, group in enumerate(groups if isinstance(groups, list) else []):
        number = _int(group)
        if number is not None and not 0 <= number <= MAX_ID:
            error(f"spec.securityContext.supplementalGroups[{index}]", "must be 0..2147483647")


def _dns_config(config: Any, policy: Any, error: ErrorSink) -> None:
    """The API server's ``validatePodDNSConfig``: ``None`` needs a nameserver; libc's limits."""
    path = "spec.dnsConfig"
    if policy == "None":
        if not isinstance(config, dict):
            error(path, "Required value: must provide `dnsConfig` when `dnsPolicy` is None")
            return
        if not config.get("nameservers"):
            error(
                f"{path}.nameservers",
                "Required value: must provide at least one DNS nameserver when `dnsPolicy` is None",
            )
            return
    if not isinstance(config, dict):
        return
    servers = config.get("nameservers")
    servers = servers if isinstance(servers, list) else []
    if len(servers) > MAX_DNS_NAMESERVERS:
        error(f"{path}.nameservers", f"must not have more than {MAX_DNS_NAMESERVERS} nameservers")
    for index, server in enumerate(servers):
        if not _is_ip(server):
            error(f"{path}.nameservers[{index}]", "must be a valid IP address")
    searches = config.get("searches")
    searches = [s for s in searches if isinstance(s, str)] if isinstance(searches, list) else []
    if len(searches) > MAX_DNS_SEARCH_PATHS:
        error(f"{path}.searches", f"must not have more than {MAX_DNS_SEARCH_PATHS} search paths")
    if len(" ".join(searches)) > MAX_DNS_SEARCH_CHARS:
        error(
            f"{path}.searches",
            f"must not have more than {MAX_DNS_SEARCH_CHARS} characters (including spaces) in "
            "the search list",
        )
    for index, search in enumerate(searches):
        name = search.removesuffix(".")
        if search != "." and (len(name) > 253 or not DNS_SEARCH.fullmatch(name)):
            error(
                f"{path}.searches[{index}]",
                "must be a lowercase RFC 1123 subdomain of at most 253 characters (letters, "
                "digits, '-', '_' and '.'), or '.'",
            )
    for index, option in _objects(config.get("options")):
        if not option.get("name"):
            error(f"{path}.options[{index}]", "Required value: must not be empty")


def _host_aliases(aliases: Any, error: ErrorSink) -> None:
    """The API server's ``ValidateHostAliases``: an IP and DNS-1123 subdomain hostnames."""
    for index, alias in _objects(aliases):
        path = f"spec.hostAliases[{index}]"
        if not _is_ip(alias.get("ip")):
            error(f"{path}.ip", "must be a valid IP address")
        names = alias.get("hostnames")
        for position, name in enumerate(names if isinstance(names, list) else []):
            if why := dns_subdomain(name):
                error(f"{path}.hostnames[{position}]", why)


def _host_users(spec: dict[str, Any], error: ErrorSink) -> None:
    """The API server's ``validateHostUsers``: no host namespace next to a user namespace
    (its field names and text, ``HostPID``/``HostIPC`` capitalised as it writes them)."""
    for key, shown in (("hostNetwork", "hostNetwork"), ("hostPID", "HostPID"),
                       ("hostIPC", "HostIPC")):  # fmt: skip
        if spec.get(key) is True:
            error(f"spec.{shown}", "Forbidden: when `pod.Spec.HostUsers` is false")


def _ids(context: dict[str, Any], path: str, error: ErrorSink) -> None:
    for key in ("runAsUser", "runAsGroup"):
        value = _int(context.get(key))
        if value is not None and not 0 <= value <= MAX_ID:
            error(f"{path}.{key}", "must be between 0 and 2147483647")


def _volumes(volumes: Any, containers: set[str], error: ErrorSink) -> set[str]:
    names: set[str] = set()
    for index, volume in _objects(volumes):
        path = f"spec.volumes[{index}]"
        name = volume.get("name")
        if why := dns_label(name):
            error(f"{path}.name", why)
        elif name in names:
            error(f"{path}.name", f"duplicate volume name {show(name)}")
        elif isinstance(name, str):
            names.add(name)
        sources = [k for k, v in volume.items() if k != "name" and v is not None]
        if len(sources) != 1:
            got = f"[{', '.join(show(s) for s in sources[:4])}]" if sources else "none"
            error(path, f"exactly one volume source is required, got {got}")
        host_path = volume.get("hostPath")
        if isinstance(host_path, dict):
            target = host_path.get("path")
            if not isinstance(target, str) or not target.startswith("/"):
                error(f"{path}.hostPath.path", "must be an absolute path")
            elif _has_backstep(target):
                error(f"{path}.hostPath.path", "must not contain '..'")
            if host_path.get("type", "") not in HOST_PATH_TYPES:
                error(f"{path}.hostPath.type", f"must be one of {', '.join(HOST_PATH_TYPES[1:])}")
        _empty_dir(volume.get("emptyDir"), f"{path}.emptyDir", error)
        _downward_api(volume.get("downwardAPI"), f"{path}.downwardAPI", containers, error)
    return names


def _empty_dir(empty_dir: Any, path: str, error: ErrorSink) -> None:
    """The media nodelet provides (disk, or tmpfs for ``Memory``) and a usable size limit."""
    if not isinstance(empty_dir, dict):
        return
    medium = empty_dir.get("medium", "")
    if isinstance(medium, str) and medium.startswith("HugePages"):
        error(f"{path}.medium", f"unsupported: medium {show(medium)} (nodelet has no hugepages)")
    elif medium not in ("", "Memory"):
        error(f"{path}.medium", securitycontext.not_supported(medium, ("", "Memory")))
    limit = empty_dir.get("sizeLimit")
    if limit is None:
        return
    negative = limit < 0 if isinstance(limit, int | float) else str(limit).startswith("-")
    if negative:
        error(f"{path}.sizeLimit", "SizeLimit field must be a valid resource quantity")
        return
    try:
        size = parse_quantity(limit)
    except QuantityError as err:
        error(f"{path}.sizeLimit", str(err))
        return
    if size == 0:
        error(f"{path}.sizeLimit", "must be greater than zero (a limit of 0 would be no limit)")


def _file_mode(mode: Any, where: str, error: ErrorSink) -> None:
    number = _int(mode)
    if number is not None and not 0 <= number <= 0o777:
        error(where, FILE_MODE_RULE)


def _downward_api(source: Any, path: str, containers: set[str], error: ErrorSink) -> None:
    """``validateDownwardAPIVolumeSource``: modes, local paths, the fields a volume may show."""
    if not isinstance(source, dict):
        return
    _file_mode(source.get("defaultMode"), f"{path}.defaultMode", error)
    for index, item in _objects(source.get("items")):
        where = f"{path}.items[{index}]"
        target = item.get("path")
        if not isinstance(target, str) or not target:
            error(f"{where}.path", "required")
        else:
            securitycontext.local_descending_path(target, f"{where}.path", error)
            if target.startswith("..") and not target.startswith("../"):
                error(f"{where}.path", "must not start with '..'")
        field_ref, resource_ref = item.get("fieldRef"), item.get("resourceFieldRef")
        if field_ref is not None and resource_ref is not None:
            error(where, "fieldRef and resourceFieldRef can not be specified simultaneously")
        elif field_ref is not None:
            _volume_field_ref(_obj(field_ref), f"{where}.fieldRef", error)
        elif resource_ref is not None:
            _resource_field_ref(_obj(resource_ref), f"{where}.resourceFieldRef", containers, error)
        else:
            error(where, "one of fieldRef and resourceFieldRef is required")
        _file_mode(item.get("mode"), f"{where}.mode", error)


def _volume_field_ref(ref: dict[str, Any], path: str, error: ErrorSink) -> None:
    """``validateObjectFieldSelector`` with the paths a volume may publish."""
    version = ref.get("apiVersion", "v1")
    if version != "v1":
        error(f"{path}.apiVersion", f"unsupported pod version: {show(version)}")
        return
    field_path = ref.get("fieldPath")
    if not isinstance(field_path, str) or not field_path:
        error(f"{path}.fieldPath", "required")
        return
    subscript = re.fullmatch(r"(metadata\.[a-z]+)\['(.*)'\]", field_path, re.DOTALL)
    if subscript and subscript[1] in ("metadata.labels", "metadata.annotations"):
        key = subscript[2].lower() if subscript[1] == "metadata.annotations" else subscript[2]
        _qualified_key(path, key, error)
    elif subscript:
        error(path, f"{show(subscript[1])} does not support subscript")
    elif field_path not in VOLUME_FIELD_REFS:
        error(f"{path}.fieldPath", securitycontext.not_supported(field_path, VOLUME_FIELD_REFS))


def _resource_field_ref(
    ref: dict[str, Any], path: str, containers: set[str], error: ErrorSink
) -> None:
    """``validateContainerResourceFieldSelector`` for a volume: the container is named (and
    exists, or kubelet could not fill the file), the resource is one nodelet enforces."""
    name, resource = ref.get("containerName"), ref.get("resource")
    if not name:
        error(f"{path}.containerName", "required")
    elif name not in containers:
        error(f"{path}.containerName", f"no container is named {show(name)}")
    if not resource:
        error(f"{path}.resource", "required")
        return
    if resource not in RESOURCE_FIELD_REFS:
        error(f"{path}.resource", securitycontext.not_supported(resource, RESOURCE_FIELD_REFS))
        return
    divisor = ref.get("divisor")
    if divisor is None:
        return
    try:
        value = parse_quantity(divisor)
    except QuantityError as err:
        error(f"{path}.divisor", str(err))
        return
    cpu = resource.endswith(".cpu")
    if value != 0 and value not in (CPU_DIVISORS if cpu else MEMORY_DIVISORS):
        allowed = "1m and 1" if cpu else "1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei"
        kind = "cpu" if cpu else "memory"
        error(
            f"{path}.divisor",
            f"only divisor's values {allowed} are supported with the {kind} resource",
        )


def _container(
    container: dict[str, Any], path: str, volumes: set[str], host_network: bool, error: ErrorSink
) -> None:
    if why := dns_label(container.get("name")):
        error(f"{path}.name", why)
    image = container.get("image")
    if image is None or image == "":
        error(f"{path}.image", "required")
    working_dir = container.get("workingDir")
    if isinstance(working_dir, str) and working_dir:
        if not working_dir.startswith("/"):
            error(f"{path}.workingDir", "must be an absolute path (the runtime needs one)")
        elif _has_backstep(working_dir):
            error(f"{path}.workingDir", "must not contain '..'")
    _termination_message(container, path, error)
    _ids(_obj(container.get("securityContext")), f"{path}.securityContext", error)
    _env(container.get("env"), path, error)
    _ports(container.get("ports"), path, host_network, error)
    privileged = _obj(container.get("securityContext")).get("privileged") is True
    _mounts(container.get("volumeMounts"), path, volumes, privileged, error)
    _lifecycle(_obj(container.get("lifecycle")), container, f"{path}.lifecycle", error)
    _resources(_obj(container.get("resources")), f"{path}.resources", error)


TERMINATION_MESSAGE_POLICIES = ("File", "FallbackToLogsOnError")


def _termination_message(container: dict[str, Any], path: str, error: ErrorSink) -> None:
    """The API server's policy values; the path must be one the runtime can bind at (absolute,
    as a mountPath: the API server leaves that to the runtime, which fails the start)."""
    policy = container.get("terminationMessagePolicy")
    if policy not in (None, "", *TERMINATION_MESSAGE_POLICIES):
        error(
            f"{path}.terminationMessagePolicy",
            securitycontext.not_supported(policy, TERMINATION_MESSAGE_POLICIES),
        )
    target = container.get("terminationMessagePath")
    if target is None or target == "":
        return
    if not isinstance(target, str) or not target.startswith("/"):
        error(f"{path}.terminationMessagePath", "must be an absolute path")
    elif _has_backstep(target):
        error(f"{path}.terminationMessagePath", "must not contain '..'")


ENFORCED_RESOURCES = ("cpu", "memory")
"""What cgroups enforce here; ``ephemeral-storage`` is kubelet's eviction, not implemented."""


def _resources(resources: dict[str, Any], path: str, error: ErrorSink) -> None:
    """Known resources with valid quantities, and no request above its limit (the API
    server's rules): a limit nodelet cannot enforce is refused, not ignored."""
    for kind in ("requests", "limits"):
        for name, value in _obj(resources.get(kind)).items():
            where = f"{path}.{kind}[{show(name)}]"
            if name not in ENFORCED_RESOURCES:
                error(
                    where,
                    f"unsupported resource (nodelet enforces {', '.join(ENFORCED_RESOURCES)})",
                )
                continue
            try:
                parse_quantity(value)
            except QuantityError as err:
                error(where, str(err))
    requests, limits = _obj(resources.get("requests")), _obj(resources.get("limits"))
    for name in ENFORCED_RESOURCES:
        try:
            over = (
                name in requests
                and name in limits
                and parse_quantity(requests[name]) > parse_quantity(limits[name])
            )
        except QuantityError:
            continue  # reported above
        if over:
            error(f"{path}.requests[{show(name)}]", f"must be less than or equal to {name} limit")


PROBE_KINDS = ("startup", "liveness", "readiness")
PROBE_HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")


def _probes(container: dict[str, Any], path: str, init: bool, error: ErrorSink) -> None:
    """The API server's probe rules: not on init containers, exactly one handler, kubelet's
    bounds on timing and thresholds, and a port the container can resolve."""
    for kind in PROBE_KINDS:
        probe = container.get(f"{kind}Probe")
        if not isinstance(probe, dict):
            continue
        where = f"{path}.{kind}Probe"
        if init:
            error(where, "may not be set for init containers")
            continue
        handlers = [h for h in PROBE_HANDLERS if probe.get(h) is not None]
        if not handlers:
            error(where, "must specify a handler type (exec, httpGet, tcpSocket or grpc)")
        elif len(handlers) > 1:
            error(where, f"may not specify more than 1 handler type (found {', '.join(handlers)})")
        if not (_obj(probe.get("exec")).get("command") or probe.get("exec") is None):
            error(f"{where}.exec.command", "required")
        grpc = probe.get("grpc")
        if grpc is not None and _int(_obj(grpc).get("port")) is None:
            error(f"{where}.grpc.port", "required: the gRPC port as a number")
        for handler in ("httpGet", "tcpSocket"):
            port = _obj(probe.get(handler)).get("port")
            if isinstance(port, str) and not port.isdigit():
                names = {p.get("name") for _, p in _objects(container.get("ports"))}
                if port not in names:
                    error(f"{where}.{handler}.port", f"no container port is named {port!r}")
            elif probe.get(handler) is not None and port is None:
                error(f"{where}.{handler}.port", "required")
        try:
            ProbeSpec.from_k8s(kind, probe)
        except ValueError as err:
            field, _, why = str(err).partition(": ")
            error(f"{path}.{field}" if why else where, why or str(err))


HANDLER_KINDS = ("exec", "httpGet", "sleep", "tcpSocket")
STOP_SIGNALS = frozenset(s.name for s in signal.Signals if s.name.startswith("SIG") and
                         not s.name.startswith("SIG_"))  # fmt: skip


def _lifecycle(
    lifecycle: dict[str, Any], container: dict[str, Any], path: str, error: ErrorSink
) -> None:
    """The API server's handler rules (exactly one kind), a port the container can resolve,
    a command to run, and a stop signal Linux has."""
    for hook in ("postStart", "preStop"):
        handler = lifecycle.get(hook)
        if not isinstance(handler, dict):
            continue
        kinds = [k for k in HANDLER_KINDS if handler.get(k) is not None]
        where = f"{path}.{hook}"
        if not kinds:
            error(where, "must specify a handler type (exec, httpGet or sleep)")
        elif len(kinds) > 1:
            error(where, f"may not specify more than 1 handler type (found {', '.join(kinds)})")
        if not (_obj(handler.get("exec")).get("command") or handler.get("exec") is None):
            error(f"{where}.exec.command", "required")
        port = _obj(handler.get("httpGet")).get("port")
        if isinstance(port, str) and not port.isdigit():
            names = {p.get("name") for _, p in _objects(container.get("ports"))}
            if port not in names:
                error(f"{where}.httpGet.port", f"no container port is named {port!r}")
        seconds = _int(_obj(handler.get("sleep")).get("seconds"))
        if handler.get("sleep") is not None and (seconds is None or seconds < 0):
            error(f"{where}.sleep.seconds", "must be a non-negative integer")
    stop = lifecycle.get("stopSignal")
    if stop is not None and stop not in STOP_SIGNALS:
        error(f"{path}.stopSignal", f"unknown signal {stop!r} (SIGTERM, SIGUSR1, SIGQUIT, ...)")


def _env(env: Any, path: str, error: ErrorSink) -> None:
    for index, var in _objects(env):
        where = f"{path}.env[{index}]"
        name = var.get("name")
        if not isinstance(name, str) or not name or "=" in name or not name.isprintable():
            error(f"{where}.name", f"invalid environment variable name {show(name)}")
        value_from = var.get("valueFrom")
        if not isinstance(value_from, dict):
            continue  # absent, or reported by podschema
        if var.get("value") not in (None, ""):
            error(f"{where}.valueFrom", "may not be set when value is not empty")
        sources = [k for k, v in value_from.items() if v is not None]
        if len(sources) > 1:
            error(f"{where}.valueFrom", "may not have more than one source")
        elif "fieldRef" not in sources:
            if not any(value_from[k] for k in sources):  # a set one is reported by fieldpolicy
                error(f"{where}.valueFrom", "must specify fieldRef (the source static pods use)")
            continue
        field_ref = value_from.get("fieldRef")
        if not isinstance(field_ref, dict):
            continue
        ref = field_ref.get("fieldPath")
        if not isinstance(ref, str) or not ref:
            error(f"{where}.valueFrom.fieldRef.fieldPath", "required")
        elif not FIELD_REFS.fullmatch(ref):
            error(f"{where}.valueFrom.fieldRef.fieldPath", f"unsupported field {show(ref)}")


def _is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(value if isinstance(value, str) else "")
    except ValueError:
        return False
    return True


def _ports(ports: Any, path: str, host_network: bool, error: ErrorSink) -> None:
    names: set[str] = set()
    for index, port in _objects(ports):
        where = f"{path}.ports[{index}]"
        if port.get("containerPort") is None:
            error(f"{where}.containerPort", "required")
        for key in ("containerPort", "hostPort"):
            number = _int(port.get(key))
            if number is not None and not 1 <= number <= 65535:
                error(f"{where}.{key}", "must be between 1 and 65535")
        protocol = port.get("protocol")
        host_port = _int(port.get("hostPort"))
        container_port = _int(port.get("containerPort"))
        in_range = all(p is not None and 1 <= p <= 65535 for p in (host_port, container_port))
        if host_network and in_range and host_port != container_port:
            error(f"{where}.hostPort", "must match `containerPort` when `hostNetwork` is true")
        if host_port and not host_network and protocol == "SCTP":
            error(f"{where}.protocol", "unsupported: an SCTP hostPort (the pod network maps TCP "
                  "and UDP)")  # fmt: skip
        host_ip = port.get("hostIP")
        if host_ip is not None and not _is_ip(host_ip):
            error(f"{where}.hostIP", "must be a valid IP address")
        if protocol is not None and protocol not in PROTOCOLS:
            error(f"{where}.protocol", "must be TCP, UDP or SCTP")
        name = port.get("name")
        if name is None:
            continue
        if not isinstance(name, str) or len(name) > 15 or not IANA_SVC_NAME.fullmatch(name):
            error(f"{where}.name", f"invalid port name {show(name)}")
        elif name in names:
            error(f"{where}.name", f"duplicate port name {show(name)}")
        else:
            names.add(name)


def _mounts(mounts: Any, path: str, volumes: set[str], privileged: bool, error: ErrorSink) -> None:
    targets: set[str] = set()
    for index, mount in _objects(mounts):
        where = f"{path}.volumeMounts[{index}]"
        name = mount.get("name")
        if not isinstance(name, str) or name not in volumes:
            error(f"{where}.name", f"volume {show(name)} is not defined in spec.volumes")
        target = mount.get("mountPath")
        if not isinstance(target, str) or not target.startswith("/"):
            error(f"{where}.mountPath", "must be an absolute path")
        elif _has_backstep(target):
            error(f"{where}.mountPath", "must not contain '..'")
        elif target in targets:
            error(f"{where}.mountPath", f"{plain(target)} is mounted twice")
        else:
            targets.add(target)
        _sub_path(mount, where, error)
        propagation = mount.get("mountPropagation")
        if propagation is not None and propagation not in MOUNT_PROPAGATIONS:
            error(
                f"{where}.mountPropagation",
                securitycontext.not_supported(propagation, MOUNT_PROPAGATIONS),
            )
        elif propagation == "Bidirectional" and not privileged:
            error(
                f"{where}.mountPropagation",
                "Bidirectional mount propagation is available only to privileged containers",
            )


def _sub_path(mount: dict[str, Any], where: str, error: ErrorSink) -> None:
    """A subPath (or the unexpanded subPathExpr) stays beneath the volume; not both."""
    sub_path, expression = mount.get("subPath"), mount.get("subPathExpr")
    if isinstance(sub_path, str) and sub_path:
        securitycontext.local_descending_path(sub_path, f"{where}.subPath", error)
    if isinstance(expression, str) and expression:
        if sub_path:
            error(f"{where}.subPathExpr", "subPathExpr and subPath are mutually exclusive")
        securitycontext.local_descending_path(expression, f"{where}.subPathExpr", error)
