"""Agent settings: one frozen dataclass, filled from flags by the CLI; the agent's own dirs."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nodelet.pod.backoff import DEFAULT_INITIAL_SECONDS, DEFAULT_MAX_SECONDS

log = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
"""Mode of the run dir, the root dir and the log dir: what they hold is root's alone (see
README "Security model"). Nothing that is not root needs to traverse them: holders, the zygote
and ``nodelet logs`` run as root, and a container user reaches its volumes through bind mounts,
which do not depend on the modes of the source's parent dirs."""

SOCKET_NAME = "nodelet.sock"


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    """The Node's name: ``--hostname-override`` or the lowercased host name, as kubelet."""
    node_ip: str
    """The address reported as hostIP (and podIP for hostNetwork pods)."""
    pod_manifest_path: Path = Path("/etc/kubernetes/manifests")
    root_dir: Path = Path("/var/lib/nodelet")
    """Persistent state: pod volumes (emptyDir)."""
    run_dir: Path = Path("/run/nodelet")
    """Runtime state that must survive agent restarts but not reboots: holders, journals."""
    pod_logs_dir: Path = Path("/var/log/pods")
    healthz_port: int = 10248
    """Local API port on 127.0.0.1 (``/healthz``, redacted ``/pods``); 0 disables it. The full
    API is on the root-only unix socket ``socket_path``, which is always served."""
    file_check_frequency: float = 20.0
    """Relist period of the manifest dir; inotify catches changes sooner."""
    settle_seconds: float = 2.0
    """A file changed without a close-after-write event is read once it has been quiet this long."""
    backoff_initial: float = DEFAULT_INITIAL_SECONDS
    backoff_max: float = DEFAULT_MAX_SECONDS
    resync_seconds: float = 10.0
    """Every pod is synced at least this often even without events (kubelet's resync)."""
    cgroup_root: str = "/nodelet"
    """Where pod cgroups go in each hierarchy (kubelet's ``--cgroup-root``); its own, so a
    kubelet's ``/kubepods`` on the same host is never touched."""
    pod_pids_limit: int | None = None
    """``--pod-max-pids``: the most processes a pod may have; None is unlimited (kubelet's -1)."""
    kubeconfig: Path | None = None
    """The API server and the node's credentials; None runs standalone (no Node, no mirrors)."""
    register_node: bool = True
    """Create the Node when missing (kubelet's ``--register-node``); else only update it."""
    node_labels: tuple[tuple[str, str], ...] = ()
    """``--node-labels`` on top of the ones kubelet sets itself."""
    node_status_update_frequency: float = 10.0
    node_status_report_frequency: float = 300.0
    """An unchanged Node status is posted this often; kubelet's default, 5 min, unless
    ``--node-status-update-frequency`` was given (then the same, as kubelet's defaulting)."""
    kube_api_qps: float = 50.0
    """Requests per second to the API server (kubelet >= 1.27's default; older kubelets' 5 is
    why their mirror pods lag by seconds)."""
    kube_api_burst: int = 100
    kubelet_port: int = 10250
    """kubelet's ``--port``: the HTTPS kubelet API listens here and the Node advertises it in
    ``daemonEndpoints``; 0 turns the API off (nodelet's own: kubelet has no off switch)."""
    address: str = "0.0.0.0"
    """kubelet's ``--address``: where the kubelet API (and the read-only port) listen."""
    read_only_port: int = 0
    """kubelet's ``--read-only-port``: plain HTTP without auth for the read-only routes; 0 is off,
    kubelet's default since the port publishes pod specs to anyone who can reach the node."""
    tls_cert_file: Path | None = None
    """The kubelet API's serving certificate; None (with no key either) writes a self-signed pair
    once under ``<root-dir>/pki``, as kubelet does."""
    tls_private_key_file: Path | None = None
    tls_min_version: str = ""
    """kubelet's ``tlsMinVersion`` (``VersionTLS12``, ``VersionTLS13``); empty is TLS 1.2."""
    client_ca_file: Path | None = None
    """kubelet's ``authentication.x509.clientCAFile``: certificates it signed authenticate."""
    anonymous_auth: bool = False
    """A request without credentials is ``system:anonymous``; off (kubelet's flag says on, its
    config file's default says off: nodelet takes the safe one)."""
    authentication_token_webhook: bool | None = None
    """Bearer tokens through a ``TokenReview``; None is on with a kubeconfig, else off."""
    authentication_token_webhook_cache_ttl: float = 120.0
    authorization_mode: str = ""
    """``AlwaysAllow`` or ``Webhook`` (``SubjectAccessReview``); empty is ``Webhook`` with a
    kubeconfig and ``AlwaysAllow`` standalone (see ``effective_authorization_mode``)."""
    authorization_webhook_cache_authorized_ttl: float = 300.0
    authorization_webhook_cache_unauthorized_ttl: float = 30.0
    allowed_unsafe_sysctls: tuple[str, ...] = ()
    """``--allowed-unsafe-sysctls``: names or ``prefix*`` patterns allowed beyond the safe set."""
    seccomp_default: bool = False
    """``--seccomp-default``: containers without a seccomp profile get ``RuntimeDefault``."""
    user_namespaces_range: tuple[int, int] = (65536, 65536 * 110)
    """``--user-namespaces-range=FIRST:COUNT``: host ids given to pods with ``hostUsers:
    false``, 65536 per pod (kubelet's default: from 65536, for 110 pods)."""
    manifest_validation: str = "Strict"
    """``Strict`` refuses a manifest with unknown fields; ``Warn`` drops them and runs it, as
    kubelet's lenient decoding does, showing each dropped field as a warning."""
    manifest_url: str = ""
    """kubelet's ``--manifest-url`` (``staticPodURL``): a Pod or PodList polled over HTTP."""
    manifest_url_headers: tuple[tuple[str, str], ...] = ()
    """``--manifest-url-header``: headers sent with every request to ``manifest_url``."""
    http_check_frequency: float = 20.0
    """Poll period of ``manifest_url`` (kubelet's ``httpCheckFrequency``)."""
    container_log_max_size: int = 10 * 2**20
    """Bytes a container log file may reach before the holder rotates it (kubelet's
    ``containerLogMaxSize``, 10Mi)."""
    container_log_max_files: int = 5
    """Log files kept per container, the current one included (``containerLogMaxFiles``);
    older rotated ones are removed, all but the newest rotated one gzipped."""
    network_plugin: str = "builtin"
    """``builtin`` (a bridge, a veth and an IP per pod), ``cni`` (the conflist's plugins) or
    ``none`` (kubelet's old noop plugin: a pod's network namespace has only loopback)."""
    pod_cidr: str = "10.85.0.0/24"
    """The built-in network's pod CIDR (kubelet's ``podCIDR``); its first address is the
    bridge's."""
    pod_cidr_explicit: bool = False
    """``pod_cidr`` came from ``--pod-cidr`` or a config file: the Node's ``spec.podCIDR``
    (assigned by the API server's side) does not replace it."""
    pod_bridge: str = "nodelet0"
    pod_cidr_routes: tuple[tuple[str, str], ...] = ()
    """(peer pod CIDR, peer node IP): host-gw routes, so pods on two nodes talk without NAT."""
    network_table: str = "nodelet"
    """The nftables table the built-in network owns (NAT for hostPorts and egress)."""
    cni_conf_dir: Path = Path("/etc/cni/net.d")
    cni_bin_dirs: tuple[Path, ...] = (Path("/opt/cni/bin"), Path("/usr/lib/cni"))
    host_images: tuple[str, ...] = ()
    """``hostImages``: globs of references that run on the node's own filesystem (as ``image:
    host``) and are never pulled, e.g. ``registry.k8s.io/etcd:*`` on a node with etcd installed."""
    image_gc_high_threshold: int = 85
    """``imageGCHighThresholdPercent``: image GC starts at this % of the image fs used (100:
    never)."""
    image_gc_low_threshold: int = 80
    """``imageGCLowThresholdPercent``: and frees down to this %."""
    image_minimum_gc_age: float = 120.0
    """``imageMinimumGCAge``: an image stored more recently is never collected."""
    image_maximum_gc_age: float = 0.0
    """``imageMaximumGCAge``: an unused image not used for longer is collected (0: never)."""
    host_image_root: str = "Overlay"
    """``hostImageRoot``: ``Overlay`` (the default) runs the host image on an overlay of the
    node's ``/`` (nothing written outside volumes reaches the node); ``Node`` on the node's
    ``/`` itself, with the node's /proc and /sys."""
    insecure_registries: tuple[str, ...] = ()
    registry_mirrors: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """``registryMirrors``: (registry as references name it, its mirror URLs in order)."""
    """Registries (``host[:port]``) pulled from over plain HTTP; loopback ones always may."""
    resolv_conf: str = "/etc/resolv.conf"
    """kubelet's ``--resolv-conf``: the node's resolver file pods' resolv.conf starts from;
    empty for none (``Default`` pods then ask 127.0.0.1)."""
    cluster_dns: tuple[str, ...] = ()
    """kubelet's ``--cluster-dns``: the nameservers of ``ClusterFirst`` pods."""
    cluster_domain: str = ""
    """kubelet's ``--cluster-domain``: search domains of ``ClusterFirst`` pods, pod FQDNs."""

    @property
    def effective_authorization_mode(self) -> str:
        """The kubelet API's authorization: as set, else Webhook when there is an API server."""
        if self.authorization_mode:
            return self.authorization_mode
        return "Webhook" if self.kubeconfig is not None else "AlwaysAllow"

    @property
    def effective_token_webhook(self) -> bool:
        """Bearer tokens are checked by the API server: as set, else when there is one."""
        if self.authentication_token_webhook is not None:
            return self.authentication_token_webhook
        return self.kubeconfig is not None

    @property
    def pki_dir(self) -> Path:
        """kubelet's ``--cert-dir`` default, ``<root-dir>/pki``: the self-signed serving pair."""
        return self.root_dir / "pki"

    @property
    def network_state_dir(self) -> Path:
        """IP allocations and hostPort claims: they outlive agent restarts and crashes."""
        return self.root_dir / "network"

    @property
    def seccomp_dir(self) -> Path:
        """Where ``seccompProfile: Localhost`` profiles live (kubelet's ``<root-dir>/seccomp``)."""
        return self.root_dir / "seccomp"

    @property
    def pods_state_dir(self) -> Path:
        return self.root_dir / "pods"

    @property
    def socket_path(self) -> Path:
        """The root-only local API: the full ``/pods`` (env values included) and ``/rejected``."""
        return self.run_dir / SOCKET_NAME

    @property
    def private_dirs(self) -> tuple[Path, ...]:
        """The agent's top-level dirs, each created or tightened to ``PRIVATE_DIR_MODE``."""
        return (self.run_dir, self.root_dir, self.pod_logs_dir)


class UnsafeDirError(Exception):
    """A configured dir that others can write to or that belongs to another user."""


def ensure_private_dir(path: Path, mode: int = PRIVATE_DIR_MODE) -> None:
    """Create ``path`` (and missing parents, with the default mode) with ``mode``, or tighten an
    existing one to it: an older nodelet created these dirs 0755.

    An existing dir owned by another user, or writable by group or others (``/tmp``, say), is
    refused instead: it is not the agent's own dir, tightening it would break its other users,
    and anyone who can write to it can swap what the agent puts there.
    """
    created = False
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=mode)  # the umask may clear bits; the chmod below sets them exactly
            created = True
        except FileExistsError:
            pass  # a racing creator, or not a dir: the checks below judge it
    info = path.stat()  # follows a symlink: a link to a dir of its own is fine
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirError(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise UnsafeDirError(f"{path} belongs to uid {info.st_uid}, not to the agent; refusing it")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirError(
            f"{path} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}); "
            "give the agent a directory of its own"
        )
    if stat.S_IMODE(info.st_mode) != mode:
        if not created:
            log.warning(
                "tightening the mode of %s from %04o to %04o",
                path,
                stat.S_IMODE(info.st_mode),
                mode,
            )
        path.chmod(mode)
