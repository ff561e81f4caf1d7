"""``--config``: kubelet's KubeletConfiguration file (the one kubeadm writes to
``/var/lib/kubelet/config.yaml``) and nodelet's own NodeletConfiguration, read into settings.

A file holds one or more YAML documents; each is a ``KubeletConfiguration``
(``kubelet.config.k8s.io/v1beta1``) or a ``NodeletConfiguration`` (``nodelet.io/v1alpha1``),
each kind at most once over all ``--config`` files. So nodelet's settings can be a second
document beside kubelet's, or a file of their own (``kubeadm upgrade`` rewrites kubelet's file
and would drop a second document from it).

Every key of kubelet's schema that nodelet implements is honoured; every other kubelet key is
accepted and reported once as a warning (nodelet does not do what it asks). A key kubelet does
not know (a typo) or a value of the wrong type is an error naming file, key and why: kubelet
decodes leniently and would run with its default instead of the value meant.

Zero values mean "not set", as kubelet's defaulting reads them: kubeadm writes
``fileCheckFrequency: 0s`` and kubelet then uses 20s.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KUBELET_API_VERSION = "kubelet.config.k8s.io/v1beta1"
KUBELET_KIND = "KubeletConfiguration"
NODELET_API_VERSION = "nodelet.io/v1alpha1"
NODELET_KIND = "NodeletConfiguration"
MANIFEST_VALIDATION_MODES = ("Strict", "Warn")
HOST_IMAGE_ROOTS = ("Overlay", "Node")
"""``hostImageRoot``: the host image on an overlay of the node's ``/`` (its writes stay in the
container), or on the node's ``/`` itself (writes land on the node)."""
TLS_VERSIONS = ("VersionTLS10", "VersionTLS11", "VersionTLS12", "VersionTLS13")
"""kubelet's ``tlsMinVersion`` names (Go's crypto/tls constants)."""
AUTHORIZATION_MODES = ("AlwaysAllow", "Webhook")
MAX_CONFIG_BYTES = 10 * 1024 * 1024
LOOPBACK_HEALTHZ = ("127.0.0.1", "localhost")
"""``healthzBindAddress`` values nodelet accepts: its local API serves 127.0.0.1 only (the
root-only unix socket carries the full API; a remote health check would need more)."""


class ConfigFileError(Exception):
    """A config file nodelet refuses: the agent does not start (kubelet does the same)."""


# -- kubelet's schema (staging/src/k8s.io/kubelet/config/v1beta1/types.go) -------------------

Kind = Any
"""A type: one of the scalar names below, ``("list", Kind)``, ``("map", Kind)``, or a dict
of field name -> Kind (a struct)."""

_STR, _BOOL, _INT32, _INT64, _FLOAT, _DURATION, _ANY = (
    "string",
    "boolean",
    "int32",
    "int64",
    "number",
    "duration",
    "any",
)
_STRINGS = ("list", _STR)
_STRING_MAP = ("map", _STR)

_LOGGING: dict[str, Kind] = {
    "format": _STR,
    "flushFrequency": _ANY,  # a duration string or nanoseconds as a number
    "verbosity": _INT32,
    "vmodule": ("list", {"filePattern": _STR, "verbosity": _INT32}),
    "options": {
        "json": {"splitStream": _BOOL, "infoBufferSize": _ANY},
        "text": {"splitStream": _BOOL, "infoBufferSize": _ANY},
    },
}

KUBELET_FIELDS: dict[str, Kind] = {
    "enableServer": _BOOL,
    "staticPodPath": _STR,
    "podLogsDir": _STR,
    "syncFrequency": _DURATION,
    "fileCheckFrequency": _DURATION,
    "httpCheckFrequency": _DURATION,
    "staticPodURL": _STR,
    "staticPodURLHeader": ("map", _STRINGS),
    "address": _STR,
    "port": _INT32,
    "readOnlyPort": _INT32,
    "tlsCertFile": _STR,
    "tlsPrivateKeyFile": _STR,
    "tlsCipherSuites": _STRINGS,
    "tlsCurvePreferences": ("list", _INT32),
    "tlsMinVersion": _STR,
    "rotateCertificates": _BOOL,
    "serverTLSBootstrap": _BOOL,
    "authentication": {
        "x509": {"clientCAFile": _STR},
        "webhook": {"enabled": _BOOL, "cacheTTL": _DURATION},
        "anonymous": {"enabled": _BOOL},
    },
    "authorization": {
        "mode": _STR,
        "webhook": {"cacheAuthorizedTTL": _DURATION, "cacheUnauthorizedTTL": _DURATION},
    },
    "registryPullQPS": _INT32,
    "registryBurst": _INT32,
    "imagePullCredentialsVerificationPolicy": _STR,
    "preloadedImagesVerificationAllowlist": _STRINGS,
    "eventRecordQPS": _INT32,
    "eventBurst": _INT32,
    "enableDebuggingHandlers": _BOOL,
    "enableContentionProfiling": _BOOL,
    "healthzPort": _INT32,
    "healthzBindAddress": _STR,
    "oomScoreAdj": _INT32,
    "clusterDomain": _STR,
    "clusterDNS": _STRINGS,
    "streamingConnectionIdleTimeout": _DURATION,
    "nodeStatusUpdateFrequency": _DURATION,
    "nodeStatusReportFrequency": _DURATION,
    "nodeLeaseDurationSeconds": _INT32,
    "imageMinimumGCAge": _DURATION,
    "imageMaximumGCAge": _DURATION,
    "imageGCHighThresholdPercent": _INT32,
    "imageGCLowThresholdPercent": _INT32,
    "volumeStatsAggPeriod": _DURATION,
    "kubeletCgroups": _STR,
    "systemCgroups": _STR,
    "cgroupRoot": _STR,
    "cgroupsPerQOS": _BOOL,
    "cgroupDriver": _STR,
    "cpuManagerPolicy": _STR,
    "singleProcessOOMKill": _BOOL,
    "cpuManagerPolicyOptions": _STRING_MAP,
    "cpuManagerReconcilePeriod": _DURATION,
    "draManagerReconcilePeriod": _DURATION,
    "memoryManagerPolicy": _STR,
    "topologyManagerPolicy": _STR,
    "topologyManagerScope": _STR,
    "topologyManagerPolicyOptions": _STRING_MAP,
    "qosReserved": _STRING_MAP,
    "runtimeRequestTimeout": _DURATION,
    "hairpinMode": _STR,
    "maxPods": _INT32,
    "podCIDR": _STR,
    "podPidsLimit": _INT64,
    "resolvConf": _STR,
    "runOnce": _BOOL,
    "cpuCFSQuota": _BOOL,
    "cpuCFSQuotaPeriod": _DURATION,
    "nodeStatusMaxImages": _INT32,
    "maxOpenFiles": _INT64,
    "contentType": _STR,
    "kubeAPIQPS": _INT32,
    "kubeAPIBurst": _INT32,
    "serializeImagePulls": _BOOL,
    "maxParallelImagePulls": _INT32,
    "evictionHard": _STRING_MAP,
    "evictionSoft": _STRING_MAP,
    "evictionSoftGracePeriod": _STRING_MAP,
    "evictionPressureTransitionPeriod": _DURATION,
    "evictionMaxPodGracePeriod": _INT32,
    "evictionMinimumReclaim": _STRING_MAP,
    "mergeDefaultEvictionSettings": _BOOL,
    "podsPerCore": _INT32,
    "enableControllerAttachDetach": _BOOL,
    "protectKernelDefaults": _BOOL,
    "makeIPTablesUtilChains": _BOOL,
    "iptablesMasqueradeBit": _INT32,
    "iptablesDropBit": _INT32,
    "featureGates": ("map", _BOOL),
    "failSwapOn": _BOOL,
    "memorySwap": {"swapBehavior": _STR},
    "containerLogMaxSize": _STR,
    "containerLogMaxFiles": _INT32,
    "containerLogMaxWorkers": _INT32,
    "containerLogMonitorInterval": _DURATION,
    "configMapAndSecretChangeDetectionStrategy": _STR,
    "systemReserved": _STRING_MAP,
    "kubeReserved": _STRING_MAP,
    "reservedSystemCPUs": _STR,
    "showHiddenMetricsForVersion": _STR,
    "systemReservedCgroup": _STR,
    "kubeReservedCgroup": _STR,
    "enforceNodeAllocatable": _STRINGS,
    "allowedUnsafeSysctls": _STRINGS,
    "volumePluginDir": _STR,
    "providerID": _STR,
    "kernelMemcgNotification": _BOOL,
    "logging": _LOGGING,
    "enableSystemLogHandler": _BOOL,
    "enableSystemLogQuery": _BOOL,
    "shutdownGracePeriod": _DURATION,
    "shutdownGracePeriodCriticalPods": _DURATION,
    "shutdownGracePeriodByPodPriority": (
        "list",
        {"priority": _INT32, "shutdownGracePeriodSeconds": _INT64},
    ),
    "crashLoopBackOff": {"maxContainerRestartPeriod": _DURATION},
    "reservedMemory": ("list", {"numaNode": _INT32, "limits": ("map", _ANY)}),
    "enableProfilingHandler": _BOOL,
    "enableDebugFlagsHandler": _BOOL,
    "seccompDefault": _BOOL,
    "memoryThrottlingFactor": _FLOAT,
    "memoryReservationPolicy": _STR,
    "registerWithTaints": (
        "list",
        {"key": _STR, "value": _STR, "effect": _STR, "timeAdded": _STR},
    ),
    "registerNode": _BOOL,
    "tracing": {"endpoint": _STR, "samplingRatePerMillion": _INT32},
    "localStorageCapacityIsolation": _BOOL,
    "containerRuntimeEndpoint": _STR,
    "imageServiceEndpoint": _STR,
    "failCgroupV1": _BOOL,
    "userNamespaces": {"idsPerPod": _INT64},
}
"""Every field of KubeletConfiguration v1beta1 (kubernetes master, 2025) with its JSON type."""

NODELET_FIELDS: dict[str, Kind] = {
    "manifestValidation": _STR,
    "hostImageRoot": _STR,
    "hostImages": _STRINGS,
    "insecureRegistries": _STRINGS,
    "registryMirrors": ("map", _STRINGS),
}


# -- Go durations ----------------------------------------------------------------------------

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_GO_UNITS["h"] = 3600.0
_GO_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def go_duration(text: str) -> float:
    """Seconds in a Go duration (``time.ParseDuration``: ``20s``, ``1m30s``, ``1.5h``,
    ``-2s``, ``0``); ``ValueError`` for anything else, as a bare ``20``."""
    sign, rest = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"invalid duration {text!r}")
    total, position = 0.0, 0
    while position < len(rest):
        match = _GO_PART.match(rest, position)
        if match is None:
            raise ValueError(f"invalid duration {text!r} (Go syntax: 20s, 1m30s, 500ms)")
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        position = match.end()
    return sign * total


def format_duration(seconds: float) -> str:
    """``seconds`` as Go prints a duration, for values nodelet holds (``20s``, ``5m0s``)."""
    if seconds == 0:
        return "0s"
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:g}s"
    if hours or minutes:
        text = f"{int(minutes)}m{text}"
    if hours:
        text = f"{int(hours)}h{text}"
    return text


# -- structural check ------------------------------------------------------------------------

_INT_RANGES = {_INT32: (-(2**31), 2**31 - 1), _INT64: (-(2**63), 2**63 - 1)}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _check(value: Any, kind: Kind, path: str, errors: list[str]) -> None:
    """Append ``path: why`` for every unknown key and wrong type in ``value``; null is unset."""
    if value is None or kind == _ANY:
        return
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object, got {_type_name(value)}")
            return
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in kind:
                errors.append(f"{where}: unknown field{_hint(key, kind)}")
            else:
                _check(item, kind[key], where, errors)
    elif isinstance(kind, tuple):
        container, inner = kind
        if container == "list":
            if not isinstance(value, list):
                errors.append(f"{path}: expected a list, got {_type_name(value)}")
                return
            for index, item in enumerate(value):
                _check(item, inner, f"{path}[{index}]", errors)
        else:
            if not isinstance(value, dict):
                errors.append(f"{path}: expected an object, got {_type_name(value)}")
                return
            for key, item in value.items():
                _check(item, inner, f"{path}[{key}]", errors)
    elif why := _scalar_problem(value, kind):
        errors.append(f"{path}: {why}")


def _scalar_problem(value: Any, kind: str) -> str | None:
    if kind == _STR:
        return None if isinstance(value, str) else f"expected a string, got {_type_name(value)}"
    if kind == _BOOL:
        return (
            None if isinstance(value, bool) else f"expected true or false, got {_type_name(value)}"
        )
    if kind == _DURATION:
        if not isinstance(value, str):
            return f'expected a duration string such as "20s", got {_type_name(value)}'
        try:
            go_duration(value)
        except ValueError as err:
            return str(err)
        return None
    if kind == _FLOAT:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value):
            return f"expected a number, got {_type_name(value)}"
        return None
    low, high = _INT_RANGES[kind]
    if not isinstance(value, int) or isinstance(value, bool):
        return f"expected an integer, got {_type_name(value)}"
    if not low <= value <= high:
        return f"{value} is out of range for {kind}"
    return None


def _hint(key: Any, fields: Mapping[str, Kind]) -> str:
    import difflib

    close = difflib.get_close_matches(str(key), list(fields), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


# -- what nodelet honours ----------------------------------------------------------------------


def _nonnegative_seconds(key: str, value: Any) -> float | None:
    seconds = go_duration(value)
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds or None  # kubelet's defaulting: 0s is unset


def _port(key: str, value: Any) -> int | None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a port (0-65535)")
    return value or None


def _healthz_port(key: str, value: Any) -> int:
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a port (0-65535; 0 disables it)")
    return int(value)  # a pointer in kubelet: an explicit 0 disables the endpoint


def _healthz_bind_address(key: str, value: Any) -> None:
    if value not in ("", *LOOPBACK_HEALTHZ):
        raise ValueError(
            f"{value!r} is not supported: nodelet serves /healthz on 127.0.0.1 only "
            "(use 127.0.0.1, localhost, or leave it out)"
        )


def _text(key: str, value: Any) -> str | None:
    return value or None


def manifest_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a manifest URL: kubelet's HTTP source speaks http(s) only (and a
    ``file:`` URL would read any file on the node)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("http", "https") or not rest:
        return f"{url!r} is not an http:// or https:// URL"
    return None


def _manifest_url(key: str, value: Any) -> str | None:
    if value and (why := manifest_url_problem(value)):
        raise ValueError(why)
    return value or None


def _path(key: str, value: Any) -> Path | None:
    if not value:
        return None
    path = Path(value)
    if not path.is_absolute():
        raise ValueError(f"{value!r} must be an absolute path")
    return path


def _static_pod_path(key: str, value: Any) -> Path | None:
    path = _path(key, value)
    if path is not None and path.is_file():
        raise ValueError(f"{value} is a file; nodelet reads a directory of manifests")
    return path


def _pids(key: str, value: Any) -> int | None:
    return value if value > 0 else None  # kubelet: -1 (and 0) is no limit


def _qps(key: str, value: Any) -> float | None:
    if value < 0:
        raise ValueError("must not be negative")
    if value == 0:
        raise ValueError("0 is not supported: nodelet needs a rate above 0")
    return float(value)


def _burst(key: str, value: Any) -> int | None:
    if value < 0:
        raise ValueError("must not be negative")
    return value or None  # kubelet's defaulting: 0 is 100


def _pod_cidr(key: str, value: Any) -> str | None:
    text = _text(key, value)
    if text is None:
        return None
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as err:
        raise ValueError(f"not a CIDR: {err}") from None


def _read_only_port(key: str, value: Any) -> int:
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a port (0-65535; 0 disables it)")
    return int(value)


def _tls_min_version(key: str, value: Any) -> str | None:
    if value and value not in TLS_VERSIONS:
        raise ValueError(f"{value!r} is not one of {', '.join(TLS_VERSIONS)}")
    return value or None


def _flag(key: str, value: Any) -> bool:
    return bool(value)


def _strings(key: str, value: Any) -> tuple[str, ...]:
    return tuple(value)


def _url_headers(key: str, value: Any) -> tuple[tuple[str, str], ...]:
    return tuple(
        (name, item)
        for name, items in sorted(value.items())
        for item in items or []
        if item is not None
    )


def _log_max_size(key: str, value: Any) -> int | None:
    if not value:
        return None  # kubelet's defaulting: "" is 10Mi
    from nodelet.cgroups.quantity import QuantityError, bytes_of

    try:
        size = bytes_of(value.strip())
    except (QuantityError, ValueError):
        size = 0
    if size < 1:
        raise ValueError(f"{value!r} is not a size (a quantity such as 10Mi)")
    return size


def _log_max_files(key: str, value: Any) -> int:
    if value < 2:
        raise ValueError(f"{value} must be greater than 1 (the current file and a rotated one)")
    return int(value)


def _percent(key: str, value: Any) -> int:
    if not 0 <= value <= 100:
        raise ValueError(f"{value} must be between 0 and 100")
    return int(value)


def _backoff_max(key: str, value: Any) -> float | None:
    seconds = go_duration(value)
    if not 1 <= seconds <= 300:
        raise ValueError("must be between 1s and 300s (kubelet's bounds)")
    return seconds


def _ips(key: str, value: Any) -> tuple[str, ...] | None:
    ips = tuple(item for item in value if item is not None)  # null is unset, as elsewhere
    for item in ips:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address") from None
    return ips or None


def _resolv_conf(key: str, value: Any) -> str:
    """Kept even when empty: kubelet's ``resolvConf`` is a pointer, and "" means no file."""
    return str(value)


Convert = Callable[[str, Any], Any]


def _mode(value: Any) -> str | None:
    if value and value not in AUTHORIZATION_MODES:
        raise ValueError(f"{value!r} is not one of {', '.join(AUTHORIZATION_MODES)}")
    return value or None


HONOURED: dict[str, tuple[str | None, Convert]] = {
    "staticPodPath": ("pod_manifest_path", _static_pod_path),
    "podLogsDir": ("pod_logs_dir", _path),
    "fileCheckFrequency": ("file_check_frequency", _nonnegative_seconds),
    "httpCheckFrequency": ("http_check_frequency", _nonnegative_seconds),
    "staticPodURL": ("manifest_url", _manifest_url),
    "staticPodURLHeader": ("manifest_url_headers", _url_headers),
    "port": ("kubelet_port", _port),
    "address": ("address", _text),
    "readOnlyPort": ("read_only_port", _read_only_port),
    "tlsCertFile": ("tls_cert_file", _path),
    "tlsPrivateKeyFile": ("tls_private_key_file", _path),
    "tlsMinVersion": ("tls_min_version", _tls_min_version),
    "healthzPort": ("healthz_port", _healthz_port),
    "healthzBindAddress": (None, _healthz_bind_address),
    "cgroupRoot": ("cgroup_root", _text),
    "podPidsLimit": ("pod_pids_limit", _pids),
    "kubeAPIQPS": ("kube_api_qps", _qps),
    "kubeAPIBurst": ("kube_api_burst", _burst),
    "nodeStatusUpdateFrequency": ("node_status_update_frequency", _nonnegative_seconds),
    "nodeStatusReportFrequency": ("node_status_report_frequency", _nonnegative_seconds),
    "registerNode": ("register_node", _flag),
    "allowedUnsafeSysctls": ("allowed_unsafe_sysctls", _strings),
    "seccompDefault": ("seccomp_default", _flag),
    "containerLogMaxSize": ("container_log_max_size", _log_max_size),
    "containerLogMaxFiles": ("container_log_max_files", _log_max_files),
    "imageGCHighThresholdPercent": ("image_gc_high_threshold", _percent),
    "imageGCLowThresholdPercent": ("image_gc_low_threshold", _percent),
    "imageMinimumGCAge": ("image_minimum_gc_age", _nonnegative_seconds),
    "imageMaximumGCAge": ("image_maximum_gc_age", _nonnegative_seconds),
    "podCIDR": ("pod_cidr", _pod_cidr),
    "resolvConf": ("resolv_conf", _resolv_conf),
    "clusterDNS": ("cluster_dns", _ips),
    "clusterDomain": ("cluster_domain", _text),
}
"""kubelet key -> (AgentConfig field, converter). A converter returns None for kubelet's
"unset" (the field keeps nodelet's default) and raises ValueError for a value nodelet refuses.
``crashLoopBackOff.maxContainerRestartPeriod`` is honoured too (as ``backoff_max``), and so are
``authentication`` and ``authorization`` (see ``NESTED``)."""

NESTED: dict[tuple[str, ...], tuple[str, Convert]] = {
    ("authentication", "anonymous", "enabled"): ("anonymous_auth", _flag),
    ("authentication", "webhook", "enabled"): ("authentication_token_webhook", _flag),
    ("authentication", "webhook", "cacheTTL"): (
        "authentication_token_webhook_cache_ttl",
        _nonnegative_seconds,
    ),
    ("authentication", "x509", "clientCAFile"): ("client_ca_file", _path),
    ("authorization", "mode"): ("authorization_mode", lambda key, value: _mode(value)),
    ("authorization", "webhook", "cacheAuthorizedTTL"): (
        "authorization_webhook_cache_authorized_ttl",
        _nonnegative_seconds,
    ),
    ("authorization", "webhook", "cacheUnauthorizedTTL"): (
        "authorization_webhook_cache_unauthorized_ttl",
        _nonnegative_seconds,
    ),
}
"""Keys inside kubelet's ``authentication``/``authorization`` objects -> AgentConfig field."""


# -- reading ---------------------------------------------------------------------------------


@dataclass
class FileSettings:
    """What the ``--config`` files set: AgentConfig fields, and what nodelet ignores."""

    values: dict[str, Any] = field(default_factory=dict)
    """AgentConfig field -> value, only for keys the files set (to a non-zero value)."""
    warnings: list[str] = field(default_factory=list)
    """One line per kubelet key that nodelet does not implement."""
    sources: list[str] = field(default_factory=list)
    """``file (kind)`` for every document read."""


def load_files(paths: list[Path]) -> FileSettings:
    """Every ``--config`` file, in order; ``ConfigFileError`` names file, key and reason."""
    settings = FileSettings()
    seen: dict[str, Path] = {}
    for path in paths:
        for document in _documents(path):
            kind = _kind_of(path, document)
            if kind in seen:
                raise ConfigFileError(
                    f"{path}: a second {kind}; the first is in {seen[kind]} (one of each kind)"
                )
            seen[kind] = path
            if kind == KUBELET_KIND:
                _read_kubelet(path, document, settings)
            else:
                _read_nodelet(path, document, settings)
            settings.sources.append(f"{path} ({kind})")
    return settings


def _documents(path: Path) -> list[dict[str, Any]]:
    try:
        data = path.read_bytes()[: MAX_CONFIG_BYTES + 1]
    except OSError as err:
        raise ConfigFileError(f"{path}: cannot read: {err.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"{path}: larger than 10 MiB")
    try:
        documents = [d for d in yaml.safe_load_all(data.decode("utf-8")) if d is not None]
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigFileError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from None
    if not documents:
        raise ConfigFileError(f"{path}: empty; expected a {KUBELET_KIND}")
    for index, document in enumerate(documents):
        if not isinstance(document, dict):
            raise ConfigFileError(f"{path}: document {index + 1} is not an object")
    return documents


def _kind_of(path: Path, document: dict[str, Any]) -> str:
    version, kind = document.get("apiVersion"), document.get("kind")
    if (version, kind) == (KUBELET_API_VERSION, KUBELET_KIND):
        return KUBELET_KIND
    if (version, kind) == (NODELET_API_VERSION, NODELET_KIND):
        return NODELET_KIND
    raise ConfigFileError(
        f"{path}: apiVersion {version!r}, kind {kind!r}: expected {KUBELET_API_VERSION} "
        f"{KUBELET_KIND} or {NODELET_API_VERSION} {NODELET_KIND}"
    )


def _fields_only(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in ("apiVersion", "kind")}


def _read_kubelet(path: Path, document: dict[str, Any], settings: FileSettings) -> None:
    body = _fields_only(document)
    errors: list[str] = []
    _check(body, KUBELET_FIELDS, "", errors)
    if errors:
        raise ConfigFileError("\n".join(f"{path}: {error}" for error in errors))
    for key, value in body.items():
        if value is None:
            continue
        if key == "crashLoopBackOff":
            _crash_loop_back_off(path, value, settings)
            continue
        if key in ("authentication", "authorization"):
            _nested(path, (key,), value, settings)
            continue
        honoured = HONOURED.get(key)
        if honoured is None:
            settings.warnings.append(
                f"{path}: {key}: kubelet setting not implemented by nodelet; ignored"
            )
            continue
        target, convert = honoured
        try:
            converted = convert(key, value)
        except ValueError as err:
            raise ConfigFileError(f"{path}: {key}: {err}") from None
        if target is not None and converted is not None:
            settings.values[target] = converted


def _crash_loop_back_off(path: Path, value: dict[str, Any], settings: FileSettings) -> None:
    period = value.get("maxContainerRestartPeriod")
    if period is None:
        return
    try:
        settings.values["backoff_max"] = _backoff_max("", period)
    except ValueError as err:
        raise ConfigFileError(
            f"{path}: crashLoopBackOff.maxContainerRestartPeriod: {err}"
        ) from None


def _nested(
    path: Path, where: tuple[str, ...], value: dict[str, Any], settings: FileSettings
) -> None:
    """The keys of ``authentication``/``authorization`` (already type-checked) into fields."""
    for key, item in value.items():
        if item is None:
            continue
        at = (*where, key)
        if isinstance(item, dict):
            _nested(path, at, item, settings)
            continue
        target, convert = NESTED[at]
        try:
            converted = convert(".".join(at), item)
        except ValueError as err:
            raise ConfigFileError(f"{path}: {'.'.join(at)}: {err}") from None
        if converted is not None:
            settings.values[target] = converted


def _read_nodelet(path: Path, document: dict[str, Any], settings: FileSettings) -> None:
    body = _fields_only(document)
    errors: list[str] = []
    _check(body, NODELET_FIELDS, "", errors)
    mode = body.get("manifestValidation")
    if mode is not None and not errors and mode not in MANIFEST_VALIDATION_MODES:
        errors.append(f"manifestValidation: {mode!r} is not one of Strict, Warn")
    root = body.get("hostImageRoot")
    if root is not None and not errors and root not in HOST_IMAGE_ROOTS:
        errors.append(f"hostImageRoot: {root!r} is not one of {', '.join(HOST_IMAGE_ROOTS)}")
    if errors:
        raise ConfigFileError("\n".join(f"{path}: {error}" for error in errors))
    if mode is not None:
        settings.values["manifest_validation"] = mode
    if root is not None:
        settings.values["host_image_root"] = root
    mirrors = body.get("registryMirrors")
    if mirrors is not None:
        settings.values["registry_mirrors"] = tuple(
            (registry, tuple(urls or ())) for registry, urls in mirrors.items()
        )
    for key, target in (
        ("hostImages", "host_images"),
        ("insecureRegistries", "insecure_registries"),
    ):
        if body.get(key) is not None:
            settings.values[target] = tuple(body[key])


# -- printing --------------------------------------------------------------------------------


def effective_documents(config: Any) -> list[dict[str, Any]]:
    """The effective AgentConfig as the two documents ``--config`` reads (``--print-config``):
    kubelet's keys that nodelet honours, then nodelet's own."""
    kubelet: dict[str, Any] = {"apiVersion": KUBELET_API_VERSION, "kind": KUBELET_KIND}
    kubelet.update(
        {
            "staticPodPath": str(config.pod_manifest_path),
            "podLogsDir": str(config.pod_logs_dir),
            "fileCheckFrequency": format_duration(config.file_check_frequency),
            "staticPodURL": config.manifest_url,
            "staticPodURLHeader": _header_map(config.manifest_url_headers),
            "httpCheckFrequency": format_duration(config.http_check_frequency),
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": config.healthz_port,
            "address": config.address,
            "port": config.kubelet_port,
            "readOnlyPort": config.read_only_port,
            "tlsCertFile": str(config.tls_cert_file or ""),
            "tlsPrivateKeyFile": str(config.tls_private_key_file or ""),
            "tlsMinVersion": config.tls_min_version,
            "authentication": {
                "x509": {"clientCAFile": str(config.client_ca_file or "")},
                "webhook": {
                    **_set("enabled", config.authentication_token_webhook),
                    "cacheTTL": format_duration(config.authentication_token_webhook_cache_ttl),
                },
                "anonymous": {"enabled": config.anonymous_auth},
            },
            "authorization": {
                **_set("mode", config.authorization_mode or None),
                "webhook": {
                    "cacheAuthorizedTTL": format_duration(
                        config.authorization_webhook_cache_authorized_ttl
                    ),
                    "cacheUnauthorizedTTL": format_duration(
                        config.authorization_webhook_cache_unauthorized_ttl
                    ),
                },
            },
            "cgroupRoot": config.cgroup_root,
            "podPidsLimit": -1 if config.pod_pids_limit is None else config.pod_pids_limit,
            "kubeAPIQPS": _number(config.kube_api_qps),
            "kubeAPIBurst": config.kube_api_burst,
            "nodeStatusUpdateFrequency": format_duration(config.node_status_update_frequency),
            "nodeStatusReportFrequency": format_duration(config.node_status_report_frequency),
            "registerNode": config.register_node,
            "allowedUnsafeSysctls": list(config.allowed_unsafe_sysctls),
            "seccompDefault": config.seccomp_default,
            # Only when set: a printed default would read back as explicit, and an explicit
            # CIDR is never replaced by the Node's spec.podCIDR.
            **_set("podCIDR", config.pod_cidr if config.pod_cidr_explicit else None),
            "resolvConf": config.resolv_conf,
            "clusterDNS": list(config.cluster_dns),
            "clusterDomain": config.cluster_domain,
            "containerLogMaxSize": _size(config.container_log_max_size),
            "containerLogMaxFiles": config.container_log_max_files,
            "imageGCHighThresholdPercent": config.image_gc_high_threshold,
            "imageGCLowThresholdPercent": config.image_gc_low_threshold,
            "imageMinimumGCAge": format_duration(config.image_minimum_gc_age),
            "imageMaximumGCAge": format_duration(config.image_maximum_gc_age),
            "crashLoopBackOff": {"maxContainerRestartPeriod": format_duration(config.backoff_max)},
        }
    )
    nodelet = {
        "apiVersion": NODELET_API_VERSION,
        "kind": NODELET_KIND,
        "manifestValidation": config.manifest_validation,
        "hostImageRoot": config.host_image_root,
        **({"hostImages": list(config.host_images)} if config.host_images else {}),
        **(
            {"insecureRegistries": list(config.insecure_registries)}
            if config.insecure_registries
            else {}
        ),
        **(
            {"registryMirrors": {r: list(urls) for r, urls in config.registry_mirrors}}
            if config.registry_mirrors
            else {}
        ),
    }
    return [kubelet, nodelet]


def _set(key: str, value: Any) -> dict[str, Any]:
    """``{key: value}``, or nothing for a setting left to follow ``--kubeconfig`` (printed
    settings must read back as the same config)."""
    return {} if value is None else {key: value}


def _header_map(headers: tuple[tuple[str, str], ...]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in headers:
        found.setdefault(name, []).append(value)
    return found


def _size(size: int) -> str:
    """A byte count as a quantity kubelet writes (``10Mi``), exact."""
    for suffix, unit in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def print_config(config: Any) -> str:
    """``--print-config``: the effective settings as YAML that ``--config`` reads back, with
    the flag-only ones (no config key in kubelet either) as comments."""
    labels = ",".join(f"{k}={v}" for k, v in config.node_labels)
    header = [
        "# nodelet's effective configuration: flags, then --config files, then defaults.",
        "# Flag-only settings (kubelet has no config key for them either):",
        f"#   --hostname-override={config.node_name}",
        f"#   --node-ip={config.node_ip}",
        f"#   --root-dir={config.root_dir}",
        f"#   --run-dir={config.run_dir}",
        f"#   --kubeconfig={config.kubeconfig or ''}",
        f"#   --node-labels={labels}",
        f"#   --crashloop-backoff-initial={format_duration(config.backoff_initial)}",
    ]
    body = yaml.safe_dump_all(effective_documents(config), sort_keys=False, explicit_start=False)
    return "\n".join(header) + "\n" + body
