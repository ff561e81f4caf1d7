"""CNI mode: the pod network is whatever the node's CNI config list says (flannel, calico, the
reference bridge/host-local/portmap), run by the CNI spec as kubelet and containerd run it.

Every attachment is cached under ``state_dir/results`` before its ADD starts (libcni caches
only after, so a crash mid-ADD would leak the IP): the cache gives DEL the very config, CNI_ARGS,
capability arguments and ``prevResult`` of the ADD even when the config dir changed, lets
``sweep`` DEL what a crash left behind, and is the node's hostPort registry. The pod's netns is
pinned (``netnspin``) from ADD until its DEL succeeded, so DEL always has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nodelet.network import cniconf, netnspin
from nodelet.network.api import NetworkError, PodNetworkRequest, PodNetworkResult, PortMapping
from nodelet.network.cniconf import NetworkConfList, PluginConf
from nodelet.runtime.rundir import make_private_dir, read_json_object, write_atomically

log = logging.getLogger(__name__)

DEFAULT_CONF_DIR = Path("/etc/cni/net.d")
DEFAULT_BIN_DIRS = (Path("/opt/cni/bin"), Path("/usr/lib/cni"))
"""The upstream default and Debian's ``containernetworking-plugins``."""

IFNAME = "eth0"
CACHE_KIND = "nodeletCniCacheV1"


@dataclass(frozen=True)
class Attachment:
    """One pod on the CNI network: what its ADD was given, and its result once it succeeded."""

    pod_uid: str
    namespace: str
    name: str
    network: NetworkConfList
    cni_args: tuple[tuple[str, str], ...]
    capability_args: Mapping[str, Any]
    port_mappings: tuple[PortMapping, ...]
    netns_path: str
    """The pin of the pod's netns: what every plugin of this attachment is given."""
    netns_id: tuple[int, int]
    """(st_dev, st_ino) of the netns at ADD: a path is handed to DEL only while it is still
    that namespace (a reused pid's /proc path is another pod's)."""
    result: Mapping[str, Any] | None = None
    """None while the ADD runs (or after it failed and its DEL did too)."""

    @property
    def owner(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": CACHE_KIND,
            "containerId": self.pod_uid,
            "ifName": IFNAME,
            "namespace": self.namespace,
            "name": self.name,
            "networkName": self.network.name,
            "config": self.network.to_json(),
            "configSource": self.network.source,
            "cniArgs": [list(arg) for arg in self.cni_args],
            "capabilityArgs": dict(self.capability_args),
            "portMappings": [vars(m) for m in self.port_mappings],
            "netns": self.netns_path,
            "netnsId": list(self.netns_id),
            "result": self.result,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attachment:
        """A cached attachment; raises (KeyError, TypeError, ValueError, NetworkError) on a
        damaged one."""
        if data["kind"] != CACHE_KIND:
            raise ValueError(f"kind {data['kind']!r}")
        dev, ino = data["netnsId"]
        result = data["result"]
        return cls(
            pod_uid=str(data["containerId"]),
            namespace=str(data["namespace"]),
            name=str(data["name"]),
            network=cniconf.parse_conf_list(data["config"], str(data["configSource"])),
            cni_args=tuple((str(k), str(v)) for k, v in data["cniArgs"]),
            capability_args=dict(data["capabilityArgs"]),
            port_mappings=tuple(PortMapping(**m) for m in data["portMappings"]),
            netns_path=str(data["netns"]),
            netns_id=(int(dev), int(ino)),
            result=dict(result) if result is not None else None,
        )


def netns_id(path: str) -> tuple[int, int] | None:
    """The identity of the namespace at ``path``, or None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class CniNetwork:
    """The ``PodNetwork`` of CNI mode. Plugins run as subprocesses off the event loop; one pod's
    operations are serialized, different pods' run concurrently (plugins lock for themselves)."""

    def __init__(
        self,
        conf_dir: Path | str = DEFAULT_CONF_DIR,
        bin_dirs: Sequence[Path | str] = DEFAULT_BIN_DIRS,
        state_dir: Path | str = Path("/var/lib/nodelet/cni"),
        *,
        pin_dir: Path | str | None = None,
        plugin_timeout: float = 60.0,
    ) -> None:
        """``pin_dir`` (default ``state_dir/netns``) is best on a tmpfs such as /run: pins die
        with the boot, as the namespaces do."""
        self._conf_dir = Path(conf_dir)
        self._bin_dirs = tuple(Path(d) for d in bin_dirs)
        self._cache_dir = Path(state_dir) / "results"
        self._pin_dir = Path(pin_dir) if pin_dir is not None else Path(state_dir) / "netns"
        self._timeout = plugin_timeout
        self._network: NetworkConfList | None = None
        self._network_stamp: object = None
        self._attachments: dict[str, Attachment] = {}
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    # -- PodNetwork ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the cache and pick the network; a missing config is logged, not fatal: pods
        fail with the reason until one appears (kubelet's NetworkNotReady)."""
        await asyncio.to_thread(make_private_dir, self._cache_dir)
        self._attachments = await asyncio.to_thread(self._load_cache)
        try:
            await self.network()
        except NetworkError as err:
            log.warning("CNI network not ready: %s", err)

    async def setup(self, req: PodNetworkRequest) -> PodNetworkResult:
        if not cniconf.valid_id(req.pod_uid):
            raise NetworkError(f"pod uid {req.pod_uid!r} is not a valid CNI container ID")
        async with self._pod_lock(req.pod_uid):
            current = netns_id(req.netns_path)
            if current is None:
                raise NetworkError(f"pod network namespace {req.netns_path} does not exist")
            known = self._attachments.get(req.pod_uid)
            if (
                known is not None
                and known.result is not None
                and known.netns_id == current
                and known.port_mappings == req.port_mappings
            ):
                return PodNetworkResult(cniconf.pod_ips(known.result, IFNAME))
            if known is not None:
                await self._delete(known, req.netns_path)
            return await self._add(req, await self.network(), current)

    async def teardown(self, pod_uid: str, netns_path: str | None) -> None:
        async with self._pod_lock(pod_uid):
            known = self._attachments.get(pod_uid)
            if known is not None:
                await self._delete(known, netns_path)

    async def sweep(self, keep: Collection[str]) -> None:
        """DEL every cached attachment of a pod not in ``keep``; all are tried, then the
        failures are raised together (their cache stays for the next sweep)."""
        failures: list[str] = []
        for uid in [uid for uid in self._attachments if uid not in keep]:
            try:
                await self.teardown(uid, None)
            except NetworkError as err:
                failures.append(str(err))
        if failures:
            raise NetworkError("; ".join(failures))

    def ips_of(self, pod_uid: str) -> tuple[str, ...]:
        known = self._attachments.get(pod_uid)
        if known is None or known.result is None:
            return ()
        return cniconf.pod_ips(known.result, IFNAME)

    # -- beyond the protocol ------------------------------------------------------------------

    async def check(self, pod_uid: str, netns_path: str) -> None:
        """CHECK the pod's attachment with its ADD's config and result (spec >= 0.4.0)."""
        async with self._pod_lock(pod_uid):
            known = self._attachments.get(pod_uid)
            if known is None or known.result is None:
                raise NetworkError(f"pod {pod_uid} has no CNI attachment to check")
            network = known.network
            if not cniconf.supports_check(network):
                raise NetworkError(
                    f"CNI network {network.name}: cniVersion {network.cni_version}"
                    " does not support CHECK"
                )
            if network.disable_check:
                return
            netns = self._netns_for(known, netns_path)
            if not netns:
                raise NetworkError(f"pod {known.owner} network namespace is gone")
            for plugin in network.plugins:
                await self._run(known, plugin, "CHECK", netns, known.result)

    async def network(self) -> NetworkConfList:
        """The network new pods join: the first valid list in the config dir, re-read when
        the dir changes (a CNI daemon may install its config after the agent started)."""
        stamp = await asyncio.to_thread(self._dir_stamp)
        if self._network is not None and stamp == self._network_stamp:
            return self._network
        lists, skipped = await asyncio.to_thread(cniconf.load_conf_lists, self._conf_dir)
        for candidate in lists:
            reason = await self._unusable(candidate)
            if reason is None:
                if self._network is None or self._network != candidate:
                    log.info("CNI network %s from %s", candidate.name, candidate.source)
                self._network, self._network_stamp = candidate, stamp
                return candidate
            skipped.append(reason)
        self._network = None
        detail = f": {'; '.join(skipped)}" if skipped else ""
        raise NetworkError(f"no usable CNI network config in {self._conf_dir}{detail}")

    # -- ADD / DEL ----------------------------------------------------------------------------

    async def _add(
        self, req: PodNetworkRequest, network: NetworkConfList, current: tuple[int, int]
    ) -> PodNetworkResult:
        taken = [
            (mapping, other.owner)
            for uid, other in self._attachments.items()
            if uid != req.pod_uid
            for mapping in other.port_mappings
        ]
        conflict = cniconf.hostport_conflict(req.port_mappings, taken)
        if conflict is not None:
            raise NetworkError(conflict)
        pinned = self._pin_dir / req.pod_uid
        pending = Attachment(
            pod_uid=req.pod_uid,
            namespace=req.namespace,
            name=req.name,
            network=network,
            cni_args=tuple(cniconf.cni_args(req.namespace, req.name, req.pod_uid)),
            capability_args=cniconf.capability_args(req.port_mappings),
            port_mappings=req.port_mappings,
            netns_path=str(pinned),
            netns_id=current,
        )
        # Reserved in memory before the first await: a concurrent setup sees the hostPorts.
        self._attachments[req.pod_uid] = pending
        try:
            await asyncio.to_thread(self._save, pending)
            await asyncio.to_thread(self._pin, req.netns_path, pinned, current, pending.owner)
            result = await self._add_all(pending)
            ips = cniconf.pod_ips(result, IFNAME)
            if not ips:
                raise NetworkError(f"CNI network {network.name} gave pod {pending.owner} no IP")
        except BaseException as err:
            await self._undo_add(pending, err)
            raise
        done = replace(pending, result=result)
        self._attachments[req.pod_uid] = done
        await asyncio.to_thread(self._save, done)
        return PodNetworkResult(ips)

    async def _add_all(self, pending: Attachment) -> dict[str, Any]:
        result: dict[str, Any] | None = None
        for plugin in pending.network.plugins:
            stdout = await self._run(pending, plugin, "ADD", pending.netns_path, result)
            result = cniconf.parse_result(stdout, pending.network.cni_version, plugin.type)
        assert result is not None  # a list has at least one plugin
        return result

    async def _undo_add(self, pending: Attachment, err: BaseException) -> None:
        """DEL what a failed ADD may have made (containerd does the same); if even that fails
        the pending cache entry stays for teardown or the next sweep."""
        if isinstance(err, asyncio.CancelledError):
            return
        try:
            await self._delete(pending, pending.netns_path)
        except NetworkError as del_err:
            log.warning("pod %s: DEL after a failed ADD failed: %s", pending.owner, del_err)

    async def _delete(self, known: Attachment, netns_path: str | None) -> None:
        """DEL in reverse order with the cached config and, from 0.4.0, the cached result.

        Every plugin runs even when one fails (DEL is idempotent by spec, and a failing portmap
        must not leak the IP), and a failed pass is repeated once: plugins make progress before
        failing (bridge 1.1.1, after an ADD cut short before its masquerade chain existed,
        removes the veth and the IP, then fails on the missing chain; its next DEL succeeds).
        Failures left after that are raised and the cache kept for a later retry.
        """
        netns = self._netns_for(known, netns_path)
        prev = known.result if cniconf.supports_check(known.network) else None
        failures: list[str] = []
        for _ in range(2):
            failures.clear()
            for plugin in reversed(known.network.plugins):
                try:
                    await self._run(known, plugin, "DEL", netns, prev)
                except NetworkError as err:
                    failures.append(str(err))
            if not failures:
                break
            log.warning("pod %s: CNI DEL failed, trying once more: %s", known.owner, failures)
        if failures:
            raise NetworkError("; ".join(failures))
        await asyncio.to_thread(self._unpin, known)
        await asyncio.to_thread(self._forget, known.pod_uid)
        if self._attachments.get(known.pod_uid) is known:
            del self._attachments[known.pod_uid]

    def _netns_for(self, known: Attachment, netns_path: str | None) -> str:
        """The netns path to hand a plugin: the pin, else the given path, only while it is
        still the pod's namespace; else empty, which DEL allows."""
        for path in (known.netns_path, netns_path):
            if path and netns_id(path) == known.netns_id:
                return path
        return ""

    # -- running plugins ----------------------------------------------------------------------

    async def _run(
        self,
        known: Attachment,
        plugin: PluginConf,
        command: str,
        netns: str,
        prev_result: Mapping[str, Any] | None,
    ) -> bytes:
        where = f"CNI plugin {plugin.type} (network {known.network.name})"
        path = self._find(plugin.type)
        if path is None:
            dirs = ":".join(str(d) for d in self._bin_dirs)
            raise NetworkError(f"{where}: {command} for pod {known.owner}: not found in {dirs}")
        stdin = cniconf.plugin_stdin(known.network, plugin, prev_result, known.capability_args)
        env = cniconf.plugin_env(
            command, known.pod_uid, netns, IFNAME, known.cni_args, self._bin_dirs
        )
        code, stdout, stderr = await self._exec(path, stdin, env, f"{where}: {command}")
        if stderr:
            log.debug("%s %s stderr: %s", where, command, stderr.decode(errors="replace"))
        if code != 0:
            reason = cniconf.parse_error(stdout, stderr, code)
            raise NetworkError(f"{where}: {command} for pod {known.owner} failed: {reason}")
        return stdout

    async def _exec(
        self, path: Path, stdin: bytes, env: dict[str, str], what: str
    ) -> tuple[int, bytes, bytes]:
        """Run one plugin with a deadline; on timeout or cancel its whole process group is
        killed (plugins start iptables and friends)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                str(path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd="/",
                start_new_session=True,
            )
        except OSError as err:
            raise NetworkError(f"{what}: cannot run {path}: {err}") from err
        try:
            async with asyncio.timeout(self._timeout):
                stdout, stderr = await proc.communicate(stdin)
        except TimeoutError:
            await _kill_group(proc)
            raise NetworkError(f"{what}: no answer within {self._timeout:g}s") from None
        except BaseException:
            await _kill_group(proc)
            raise
        assert proc.returncode is not None
        return proc.returncode, stdout, stderr

    def _find(self, kind: str) -> Path | None:
        for directory in self._bin_dirs:
            candidate = directory / kind
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        return None

    async def _unusable(self, candidate: NetworkConfList) -> str | None:
        """Why a list cannot be used (kubelet's ``ValidateNetworkList``): a plugin missing, or
        one that does not speak the list's version; None when usable."""
        for plugin in candidate.plugins:
            path = self._find(plugin.type)
            if path is None:
                dirs = ":".join(str(d) for d in self._bin_dirs)
                return f"CNI config {candidate.source}: plugin {plugin.type} not found in {dirs}"
            env = {"CNI_COMMAND": "VERSION", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
            stdin = json.dumps({"cniVersion": candidate.cni_version}).encode()
            what = f"CNI plugin {plugin.type}: VERSION"
            try:
                code, stdout, _ = await self._exec(path, stdin, env, what)
                info = json.loads(stdout) if code == 0 else None
            except (NetworkError, ValueError) as err:
                return f"CNI config {candidate.source}: {what}: {err}"
            versions = info.get("supportedVersions") if isinstance(info, dict) else None
            if not isinstance(versions, list) or candidate.cni_version not in versions:
                return (
                    f"CNI config {candidate.source}: plugin {plugin.type} does not support"
                    f" cniVersion {candidate.cni_version}"
                )
        return None

    # -- pins and the cache ------------------------------------------------------------------

    def _pin(self, source: str, pinned: Path, expected: tuple[int, int], owner: str) -> None:
        try:
            netnspin.pin(source, pinned)
        except OSError as err:
            raise NetworkError(f"pod {owner}: cannot pin its netns {source}: {err}") from err
        if netns_id(str(pinned)) != expected:
            raise NetworkError(f"pod {owner}: network namespace {source} changed while pinned")

    def _unpin(self, known: Attachment) -> None:
        try:
            netnspin.unpin(Path(known.netns_path))
        except OSError as err:
            raise NetworkError(f"pod {known.owner}: cannot unpin its netns: {err}") from err

    def _cache_file(self, pod_uid: str) -> Path:
        return self._cache_dir / f"{pod_uid}-{IFNAME}.json"

    def _save(self, attachment: Attachment) -> None:
        data = json.dumps(attachment.to_json(), sort_keys=True).encode()
        path = self._cache_file(attachment.pod_uid)
        try:
            write_atomically(path, data)
        except OSError as err:
            raise NetworkError(
                f"pod {attachment.owner}: cannot write CNI cache {path}: {err}"
            ) from err

    def _forget(self, pod_uid: str) -> None:
        path = self._cache_file(pod_uid)
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise NetworkError(f"pod {pod_uid}: cannot remove CNI cache {path}: {err}") from err

    def _load_cache(self) -> dict[str, Attachment]:
        attachments: dict[str, Attachment] = {}
        for path in sorted(self._cache_dir.glob(f"*-{IFNAME}.json")):
            data = read_json_object(path)
            if data is None:
                continue
            try:
                attachment = Attachment.from_json(data)
            except (KeyError, TypeError, ValueError, NetworkError) as err:
                log.error("ignoring damaged CNI cache %s (its pod may leak): %s", path, err)
                continue
            attachments[attachment.pod_uid] = attachment
        return attachments

    def _dir_stamp(self) -> object:
        """What changes when a config file is added, removed, renamed or rewritten."""
        files = cniconf.conf_files(self._conf_dir)
        stamps = []
        for path in files:
            with contextlib.suppress(OSError):
                st = path.stat()
                stamps.append((path.name, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    @contextlib.asynccontextmanager
    async def _pod_lock(self, pod_uid: str) -> AsyncIterator[None]:
        """One operation at a time per pod; the lock lives only while someone holds or awaits it."""
        lock, users = self._locks.setdefault(pod_uid, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[pod_uid]


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
