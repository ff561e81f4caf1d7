"""The CNI protocol as data: network config files, a plugin's stdin and environment, its result
and its error, by the CNI spec 0.3.0-1.0.0 and libcni's conventions.

Pure except for reading the config directory, so every rule the runtime relies on (which file
wins, what a plugin sees on stdin, which IP is the pod's) is testable without plugins.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodelet.network.api import NetworkError, PortMapping

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
"""Spec versions whose results share one shape (``interfaces``/``ips``); older ones use
``ip4``/``ip6`` and newer ones add verbs (STATUS, GC) this runtime does not speak."""

CONF_EXTENSIONS = (".conf", ".conflist", ".json")
"""What libcni's ``ConfFiles`` and kubelet read from the config directory."""

CHECK_SINCE = "0.4.0"
"""CHECK, and the cached result as DEL's ``prevResult``, arrived in spec 0.4.0."""

_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
"""libcni's ``ValidateContainerID``/``ValidateNetworkName`` pattern."""

_WILDCARD_HOST_IPS = frozenset({"", "0.0.0.0", "::"})


@dataclass(frozen=True)
class PluginConf:
    """One entry of a conflist: its ``type`` names the binary, the rest is the plugin's own."""

    type: str
    conf: Mapping[str, Any]

    @property
    def capabilities(self) -> frozenset[str]:
        """The capabilities the plugin declares (``"capabilities": {"portMappings": true}``)."""
        declared = self.conf.get("capabilities")
        if not isinstance(declared, dict):
            return frozenset()
        return frozenset(name for name, on in declared.items() if on is True)


@dataclass(frozen=True)
class NetworkConfList:
    """A network config list; a single ``.conf`` is wrapped into one (``ConfListFromConf``)."""

    name: str
    cni_version: str
    disable_check: bool
    plugins: tuple[PluginConf, ...]
    source: str
    """The file it came from, for error messages."""

    def to_json(self) -> dict[str, Any]:
        """The list as a conflist object: what the per-pod cache keeps for DEL and CHECK."""
        return {
            "cniVersion": self.cni_version,
            "name": self.name,
            "disableCheck": self.disable_check,
            "plugins": [dict(plugin.conf) for plugin in self.plugins],
        }


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.4.0"`` -> ``(0, 4, 0)``; a malformed version sorts first."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (-1,)


def supports_check(conf: NetworkConfList) -> bool:
    return version_tuple(conf.cni_version) >= version_tuple(CHECK_SINCE)


def valid_id(value: str) -> bool:
    """Whether ``value`` may be a CNI container ID or network name."""
    return bool(_ID.match(value))


def parse_conf_list(data: Mapping[str, Any], source: str) -> NetworkConfList:
    """A conflist object (``.conflist`` or a cached copy) checked for what the runtime needs."""
    name = data.get("name")
    if not isinstance(name, str) or not valid_id(name):
        raise NetworkError(f"CNI config {source}: 'name' must match {_ID.pattern}, got {name!r}")
    version = data.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(SUPPORTED_VERSIONS)
        raise NetworkError(
            f"CNI config {source}: cniVersion {version!r} is not supported (supported: {supported})"
        )
    disable_check = data.get("disableCheck", False)
    if isinstance(disable_check, str) and disable_check.lower() in ("true", "false"):
        disable_check = disable_check.lower() == "true"
    if not isinstance(disable_check, bool):
        raise NetworkError(f"CNI config {source}: 'disableCheck' must be a boolean")
    plugins = data.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise NetworkError(f"CNI config {source}: 'plugins' must be a non-empty list")
    return NetworkConfList(
        name, version, disable_check, tuple(_plugin(p, source) for p in plugins), source
    )


def _plugin(conf: Any, source: str) -> PluginConf:
    if not isinstance(conf, dict):
        raise NetworkError(f"CNI config {source}: every plugin must be a JSON object")
    kind = conf.get("type")
    if not isinstance(kind, str) or not kind or "/" in kind or kind in (".", ".."):
        raise NetworkError(
            f"CNI config {source}: plugin 'type' must be a binary name, got {kind!r}"
        )
    return PluginConf(kind, conf)


def parse_conf_file(path: Path) -> NetworkConfList:
    """One config file; ``.conf``/``.json`` hold a single plugin and are wrapped into a list."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise NetworkError(f"CNI config {path}: {err}") from err
    if not isinstance(data, dict):
        raise NetworkError(f"CNI config {path}: not a JSON object")
    if path.suffix == ".conflist":
        return parse_conf_list(data, str(path))
    wrapped = {
        "cniVersion": data.get("cniVersion"),
        "name": data.get("name"),
        "disableCheck": data.get("disableCheck", False),
        "plugins": [data],
    }
    return parse_conf_list(wrapped, str(path))


def conf_files(conf_dir: Path) -> list[Path]:
    """The config files of ``conf_dir`` in lexical order, as kubelet and containerd pick them."""
    try:
        entries = [p for p in conf_dir.iterdir() if p.suffix in CONF_EXTENSIONS and p.is_file()]
    except FileNotFoundError:
        return []
    return sorted(entries, key=lambda p: p.name)


def load_conf_lists(conf_dir: Path) -> tuple[list[NetworkConfList], list[str]]:
    """Every parseable list in ``conf_dir`` in lexical order, and why the others were skipped.

    Like kubelet, a broken file does not hide a valid one after it: the first valid list wins.
    """
    lists: list[NetworkConfList] = []
    skipped: list[str] = []
    for path in conf_files(conf_dir):
        try:
            lists.append(parse_conf_file(path))
        except NetworkError as err:
            skipped.append(str(err))
    return lists, skipped


def cni_args(namespace: str, name: str, pod_uid: str) -> list[tuple[str, str]]:
    """``CNI_ARGS`` as kubelet and containerd pass them; ``IgnoreUnknown`` keeps plugins that
    know none of the keys from failing."""
    return [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", namespace),
        ("K8S_POD_NAME", name),
        ("K8S_POD_INFRA_CONTAINER_ID", pod_uid),
        ("K8S_POD_UID", pod_uid),
    ]


def format_cni_args(args: Iterable[Sequence[str]]) -> str:
    return ";".join(f"{key}={value}" for key, value in args)


def capability_args(port_mappings: Iterable[PortMapping]) -> dict[str, Any]:
    """The runtime's capability arguments; kubelet always passes ``portMappings`` (maybe empty),
    protocols in lower case, ``hostIP`` only when set."""
    mappings: list[dict[str, Any]] = []
    for mapping in port_mappings:
        entry: dict[str, Any] = {
            "hostPort": mapping.host_port,
            "containerPort": mapping.container_port,
            "protocol": mapping.protocol.lower(),
        }
        if mapping.host_ip:
            entry["hostIP"] = mapping.host_ip
        mappings.append(entry)
    return {"portMappings": mappings}


def plugin_stdin(
    conf: NetworkConfList,
    plugin: PluginConf,
    prev_result: Mapping[str, Any] | None,
    capabilities: Mapping[str, Any],
) -> bytes:
    """A plugin's stdin (libcni ``buildOneConfig``): its own config with the list's ``name`` and
    ``cniVersion``, the previous result, and only the capability arguments it declares."""
    data = dict(plugin.conf)
    data["name"] = conf.name
    data["cniVersion"] = conf.cni_version
    if prev_result is not None:
        data["prevResult"] = prev_result
    runtime_config = {
        key: value for key, value in capabilities.items() if key in plugin.capabilities
    }
    if runtime_config:
        data["runtimeConfig"] = runtime_config
    return json.dumps(data).encode()


def plugin_env(
    command: str,
    container_id: str,
    netns: str,
    ifname: str,
    args: Iterable[Sequence[str]],
    bin_dirs: Sequence[Path],
) -> dict[str, str]:
    """The whole environment of a plugin: the ``CNI_*`` variables and a PATH for the tools
    plugins run (iptables, ip), nothing of the agent's own."""
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": format_cni_args(args),
        "CNI_PATH": ":".join(str(d) for d in bin_dirs),
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }


def parse_result(stdout: bytes, cni_version: str, plugin: str) -> dict[str, Any]:
    """A plugin's ADD result, converted to the list's ``cniVersion`` so the next plugin and the
    cache see one version (libcni ``GetAsVersion``): 1.0.0 dropped each IP's ``version``."""
    try:
        result = json.loads(stdout)
    except ValueError as err:
        raise NetworkError(f"CNI plugin {plugin}: result is not JSON: {err}") from err
    if not isinstance(result, dict):
        raise NetworkError(f"CNI plugin {plugin}: result is not a JSON object")
    if "ip4" in result or "ip6" in result:
        raise NetworkError(f"CNI plugin {plugin}: result in a pre-0.3.0 format is not supported")
    for key in ("ips", "interfaces", "routes"):
        if not isinstance(result.get(key, []), list):
            raise NetworkError(f"CNI plugin {plugin}: result field {key!r} is not a list")
    converted = dict(result)
    converted["cniVersion"] = cni_version
    converted["ips"] = [_ip_as_version(ip, cni_version, plugin) for ip in result.get("ips", [])]
    return converted


def _ip_as_version(ip: Any, cni_version: str, plugin: str) -> dict[str, Any]:
    if not isinstance(ip, dict) or not isinstance(ip.get("address"), str):
        raise NetworkError(f"CNI plugin {plugin}: result IP without an address: {ip!r}")
    try:
        interface = ipaddress.ip_interface(ip["address"])
    except ValueError as err:
        raise NetworkError(f"CNI plugin {plugin}: result IP {ip['address']!r}: {err}") from err
    converted = dict(ip)
    if version_tuple(cni_version) >= (1, 0, 0):
        converted.pop("version", None)
    else:
        converted["version"] = str(interface.version)
    return converted


def parse_error(stdout: bytes, stderr: bytes, returncode: int) -> str:
    """A failed plugin's reason: the spec's ``{"code", "msg", "details"}`` on stdout, else its
    stderr, else the exit status."""
    try:
        error = json.loads(stdout)
    except ValueError:
        error = None
    if isinstance(error, dict) and isinstance(error.get("msg"), str):
        text = str(error["msg"])
        details = error.get("details")
        if isinstance(details, str) and details:
            text += f": {details}"
        if isinstance(error.get("code"), int):
            text += f" (code {error['code']})"
        return text
    last = stderr.decode(errors="replace").strip().splitlines()
    if last:
        return last[-1]
    return f"exited with status {returncode} and no error"


def pod_ips(result: Mapping[str, Any], ifname: str) -> tuple[str, ...]:
    """The pod's addresses in a final result, IPv4 first (status.podIP is the first).

    Those on the sandbox interface ``ifname`` (containerd's rule); a result whose IPs name no
    interface gives all of them.
    """
    interfaces = result.get("interfaces", [])
    ips = [ip for ip in result.get("ips", []) if isinstance(ip, dict)]
    on_ifname = [ip for ip in ips if _is_sandbox_ifname(interfaces, ip.get("interface"), ifname)]
    chosen = on_ifname or [ip for ip in ips if ip.get("interface") is None]
    addresses = [str(ipaddress.ip_interface(ip["address"]).ip) for ip in chosen]
    return tuple(sorted(addresses, key=lambda a: ipaddress.ip_address(a).version))


def _is_sandbox_ifname(interfaces: Any, index: Any, ifname: str) -> bool:
    if not isinstance(index, int) or not isinstance(interfaces, list):
        return False
    if not 0 <= index < len(interfaces) or not isinstance(interfaces[index], dict):
        return False
    interface = interfaces[index]
    return interface.get("name") == ifname and bool(interface.get("sandbox"))


def hostport_conflict(
    wanted: Iterable[PortMapping], taken: Iterable[tuple[PortMapping, str]]
) -> str | None:
    """Why ``wanted`` cannot have its hostPorts, or None.

    portmap itself installs a second DNAT for a port already mapped (the first rule keeps
    winning), so the runtime refuses, as the scheduler's host-port check does: same port and
    protocol, and host IPs equal or either a wildcard.
    """
    taken = list(taken)
    for mapping in wanted:
        for other, owner in taken:
            if _clash(mapping, other):
                return (
                    f"hostPort {mapping.host_port}/{mapping.protocol.upper()}"
                    f" is already used by pod {owner}"
                )
    return None


def _clash(a: PortMapping, b: PortMapping) -> bool:
    if a.host_port <= 0 or a.host_port != b.host_port or a.protocol.upper() != b.protocol.upper():
        return False
    wildcard = a.host_ip in _WILDCARD_HOST_IPS or b.host_ip in _WILDCARD_HOST_IPS
    return wildcard or a.host_ip == b.host_ip
