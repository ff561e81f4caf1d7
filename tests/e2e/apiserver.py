"""A real etcd + kube-apiserver on loopback for the e2e tier, with PKI made in Python.

The API server is the one `make envtest` builds (tests/e2e/envtest/): kube-apiserver 1.20.2 from
Debian's source package, or a newer one found on PATH; etcd and kubectl are Debian's. It runs as
a cluster would for a node agent: `--authorization-mode=Node,RBAC` and the NodeRestriction
admission plugin, so a node's client certificate (`CN=system:node:<name>`, `O=system:nodes`) can
do exactly what kubelet may, and nothing more.

Everything lives in one `nlt-` temp dir; both processes are stopped by pid, never by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import config
from kubernetes.client import ApiClient

from tests.agentharness import free_port

KUBE_VERSION = (1, 20, 2)
"""Built by `make envtest` (its KUBE_VERSION); a kube-apiserver on PATH this new or newer wins."""
DEFAULT_ENVTEST_BIN = Path("/var/cache/nodelet/envtest", ".".join(map(str, KUBE_VERSION)))
"""`make envtest`'s cache; `make test` passes the same path as NODELET_ENVTEST_BIN."""
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/12"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
PR_SET_PDEATHSIG = 1

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class EnvtestError(RuntimeError):
    """The API server's binaries are missing, or it did not come up; the message says which."""


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    etcd: Path
    kubectl: Path
    apiserver_version: tuple[int, int, int]


def _version_of(binary: Path | str) -> tuple[int, int, int] | None:
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    found = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
    if found is None:
        return None
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


def find_binaries() -> Binaries:
    """etcd from PATH, kubectl and kube-apiserver from the envtest cache (or a newer apiserver)."""
    bin_dir = Path(os.environ.get("NODELET_ENVTEST_BIN", DEFAULT_ENVTEST_BIN))
    kubectl, etcd = bin_dir / "kubectl", shutil.which("etcd")
    apiserver, version = bin_dir / "kube-apiserver", None
    on_path = shutil.which("kube-apiserver")
    if on_path is not None:
        found = _version_of(on_path)
        if found is not None and found >= KUBE_VERSION:
            apiserver, version = Path(on_path), found
    missing = [str(path) for path in (apiserver, kubectl) if not os.access(path, os.X_OK)]
    if etcd is None:
        missing.append("etcd on PATH")
    if missing or etcd is None:
        raise EnvtestError(f"missing {', '.join(missing)}: run `make envtest` (as root)")
    version = version or _version_of(apiserver)
    if version is None:
        raise EnvtestError(f"{apiserver} --version printed no version")
    return Binaries(apiserver, Path(etcd), kubectl, version)


@dataclass
class Pki:
    """A CA and the certificates it signs, as PEM files in one directory (keys 0600)."""

    directory: Path
    ca_key: ec.EllipticCurvePrivateKey = field(init=False)
    ca_cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nodelet-e2e-ca")])
        self.ca_cert = (
            self._builder(name, self.ca_key.public_key(), issuer=name)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_path.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.crt"

    def _builder(
        self, subject: x509.Name, key: ec.EllipticCurvePublicKey, issuer: x509.Name
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def issue(
        self,
        stem: str,
        common_name: str,
        organizations: tuple[str, ...] = (),
        *,
        server_names: tuple[str, ...] = (),
    ) -> tuple[Path, Path]:
        """Signs a key pair; returns (cert, key) paths. With `server_names`, a serving cert."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
            + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        )
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = self._builder(subject, key.public_key(), self.ca_cert.subject).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if server_names:
            sans: list[x509.GeneralName] = []
            for name in server_names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    sans.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        cert_path, key_path = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(key_path, _pem_private(key))
        return cert_path, key_path

    def key_pair(self, stem: str) -> tuple[Path, Path]:
        """A bare key pair (the service-account signing key); returns (public, private) paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        public_path, private_path = self.directory / f"{stem}.pub", self.directory / f"{stem}.key"
        public_path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        _write_private(private_path, _pem_private(key))
        return public_path, private_path


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, user: str) -> Path:
    """A kubeconfig with one cluster, user and context, referring to the PEM files by path."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "e2e", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [
            {"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}
        ],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
        "current-context": "e2e",
    }
    _write_private(path, json.dumps(config, indent=2).encode())  # kubeconfig is YAML, JSON is YAML
    return path


@dataclass
class ApiServer:
    """A running API server: its URL, CA, kubeconfigs, and kubectl as its admin."""

    server: str
    """`https://127.0.0.1:<port>`."""
    ca_path: Path
    admin_kubeconfig: Path
    """`O=system:masters`: everything is allowed, no admission plugin restricts it."""
    kubectl_path: Path
    pki: Pki
    version: tuple[int, int, int]
    _node_kubeconfigs: dict[str, Path] = field(default_factory=dict)
    _processes: list[_Process] = field(default_factory=list)
    """etcd, then kube-apiserver: `outage` replaces the second."""
    _context: ssl.SSLContext | None = None

    @property
    def apiserver_pid(self) -> int:
        """The running kube-apiserver's pid (benches count its CPU time)."""
        return self._processes[1].popen.pid

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """kube-apiserver stopped (by pid; etcd keeps the data) for the `with` block, then
        started again with the same flags and port, back once `/readyz` is ok."""
        etcd, apiserver = self._processes
        apiserver.stop()
        try:
            yield
        finally:
            restarted = _start(apiserver.name, apiserver.argv, apiserver.log, append=True)
            self._processes[1] = restarted
            assert self._context is not None
            _wait_ready(self.server, self._context, [etcd, restarted])

    def node_kubeconfig(self, node_name: str) -> Path:
        """A kubeconfig for node `node_name` (`CN=system:node:<name>`, `O=system:nodes`): what
        kubelet runs with, so the Node authorizer and NodeRestriction apply to it."""
        if _DNS_SUBDOMAIN.fullmatch(node_name) is None or len(node_name) > 253:
            raise ValueError(f"not a valid node name: {node_name!r}")
        if node_name not in self._node_kubeconfigs:
            cert, key = self.pki.issue(
                f"node-{node_name}", f"system:node:{node_name}", ("system:nodes",)
            )
            self._node_kubeconfigs[node_name] = write_kubeconfig(
                self.pki.directory / f"node-{node_name}.kubeconfig",
                self.server,
                self.ca_path,
                cert,
                key,
                f"system:node:{node_name}",
            )
        return self._node_kubeconfigs[node_name]

    def node_serving_cert(self, node_name: str) -> tuple[Path, Path]:
        """A serving cert (and key) for node `node_name`'s kubelet API, signed by the CA the API
        server checks kubelets against (`--kubelet-certificate-authority`); SANs 127.0.0.1 and
        the node name."""
        return self.pki.issue(
            f"serving-{node_name}", node_name, server_names=("127.0.0.1", node_name)
        )

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig with a client cert for `user` in `groups` (`CN`, `O`), nothing more: what
        RBAC allows it is up to the test."""
        cert, key = self.pki.issue(f"user-{user}", user, groups)
        return write_kubeconfig(
            self.pki.directory / f"user-{user}.kubeconfig",
            self.server,
            self.ca_path,
            cert,
            key,
            user,
        )

    def kubectl(
        self, *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Runs Debian's kubectl with the admin kubeconfig (or `kubeconfig`); with `check`, a
        non-zero exit raises with kubectl's stderr in the message."""
        done = subprocess.run(
            [
                str(self.kubectl_path),
                "--kubeconfig",
                str(kubeconfig or self.admin_kubeconfig),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}"
            )
        return done


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    argv: list[str]

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.name} ({self.log}), last {len(text)} lines:\n" + "\n".join(text)

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL after STOP_TIMEOUT; always reaped."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the forked child


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL, which
    leaves no `finally` to run."""
    if _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def _start(name: str, argv: list[str], log: Path, append: bool = False) -> _Process:
    with log.open("ab" if append else "wb") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (one prctl call, libc already loaded)
        )
    return _Process(name, popen, log, argv)


def _etcd_argv(etcd: Path, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return [
        str(etcd),
        "--name=e2e",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=e2e={peer}",
        "--log-level=warn",
    ]


def _apiserver_argv(
    binaries: Binaries, pki: Pki, work: Path, port: int, etcd_port: int
) -> list[str]:
    serving = pki.issue(
        "apiserver",
        "kube-apiserver",
        server_names=(
            "127.0.0.1",
            "localhost",
            "10.96.0.1",  # the `kubernetes` service's IP in SERVICE_CLUSTER_IP_RANGE
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
        ),
    )
    kubelet_client = pki.issue(
        "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)
    )
    sa_public, sa_private = pki.key_pair("service-account")
    argv = [
        str(binaries.kube_apiserver),
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={work / 'apiserver-certs'}",  # else it writes into /var/run/kubernetes
        f"--tls-cert-file={serving[0]}",
        f"--tls-private-key-file={serving[1]}",
        f"--client-ca-file={pki.ca_path}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        f"--service-account-issuer=https://127.0.0.1:{port}",
        f"--service-account-key-file={sa_public}",
        f"--service-account-signing-key-file={sa_private}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        f"--kubelet-client-certificate={kubelet_client[0]}",
        f"--kubelet-client-key={kubelet_client[1]}",
        f"--kubelet-certificate-authority={pki.ca_path}",
        # A node agent reports `--node-ip 127.0.0.1` as its InternalIP, and its serving cert
        # (`node_serving_cert`) names that IP; the Hostname address is the machine's name.
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        "--allow-privileged=true",  # as kubeadm: mirrors of privileged static pods are accepted
        "--profiling=false",
    ]
    if binaries.apiserver_version < (1, 24, 0):
        # Before 1.24 an unauthenticated port 8080 is open by default; the flag is gone after.
        argv.append("--insecure-port=0")
    return argv


def _wait_ready(url: str, context: ssl.SSLContext, processes: list[_Process]) -> None:
    """Polls `/readyz` until it answers 200; fails early if a process died."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer yet"
    while time.monotonic() < deadline:
        for proc in processes:
            if proc.popen.poll() is not None:
                raise EnvtestError(
                    f"{proc.name} exited {proc.popen.returncode} before the API server was ready\n"
                    + "\n".join(p.tail() for p in processes)
                )
        try:
            with urllib.request.urlopen(f"{url}/readyz", context=context, timeout=5):
                return
        except urllib.error.HTTPError as error:
            last = f"HTTP {error.code}: {error.read(500).decode(errors='replace')}"
        except OSError as error:
            last = str(error)
        time.sleep(0.1)
    raise EnvtestError(
        f"{url}/readyz not ready after {READY_TIMEOUT:.0f} s ({last})\n"
        + "\n".join(p.tail() for p in processes)
    )


@contextlib.contextmanager
def running_apiserver(binaries: Binaries | None = None) -> Iterator[ApiServer]:
    """Starts etcd and kube-apiserver, yields once `/readyz` is ok, stops both by pid after."""
    binaries = binaries or find_binaries()
    work = Path(tempfile.mkdtemp(prefix="nlt-"))
    processes: list[_Process] = []
    try:
        pki = Pki(work / "pki")
        etcd_port, etcd_peer, port = free_port(), free_port(), free_port()
        processes.append(
            _start(
                "etcd",
                _etcd_argv(binaries.etcd, work / "etcd", etcd_port, etcd_peer),
                work / "etcd.log",
            )
        )
        processes.append(
            _start(
                "kube-apiserver",
                _apiserver_argv(binaries, pki, work, port, etcd_port),
                work / "kube-apiserver.log",
            )
        )
        server = f"https://127.0.0.1:{port}"
        admin_cert, admin_key = pki.issue("admin", "nodelet-e2e-admin", ("system:masters",))
        context = ssl.create_default_context(cafile=str(pki.ca_path))
        context.load_cert_chain(admin_cert, admin_key)
        _wait_ready(server, context, processes)
        yield ApiServer(
            server=server,
            ca_path=pki.ca_path,
            admin_kubeconfig=write_kubeconfig(
                work / "admin.kubeconfig", server, pki.ca_path, admin_cert, admin_key, "admin"
            ),
            kubectl_path=binaries.kubectl,
            pki=pki,
            version=binaries.apiserver_version,
            _processes=processes,
            _context=context,
        )
    finally:
        for proc in reversed(processes):  # the API server first: it holds etcd connections
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)


def api_client(kubeconfig: Path) -> ApiClient:
    """An official `kubernetes` client for one kubeconfig, as a user of the library makes it."""
    client: ApiClient = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    return client
