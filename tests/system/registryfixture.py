"""A registry as a node meets one: Debian's docker-registry (started by test_image_pull's
``run_registry``) serving HTTPS with a certificate from a test CA and ``auth: htpasswd`` (bcrypt
entries, made with the stdlib ``crypt``); and a throttling TCP proxy in front of it, for a pull
slow enough to be interrupted."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import shutil
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.imagebuild import require_binary
from tests.system.test_image_pull import Registry, run_registry

with warnings.catch_warnings():  # deprecated in 3.11, gone in 3.13: then apache2-utils' htpasswd
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt


@dataclass
class TestCA:
    """A CA and a server certificate it signed for ``127.0.0.1`` and ``localhost``."""

    __test__ = False  # not a pytest class

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def make(cls, where: Path) -> TestCA:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.UTC)

        def builder(
            subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey
        ) -> x509.CertificateBuilder:
            return (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(issuer)
                .public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
            )

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nlt-test-ca")])
        usage = x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False,
        )  # fmt: skip
        ca_cert = (
            builder(ca_name, ca_name, ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        alt = x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        )
        cert = (
            builder(name, ca_name, key.public_key())
            .add_extension(alt, critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        where.mkdir(parents=True, exist_ok=True)
        found = cls(where / "ca.crt", where / "server.cert", where / "server.key")
        found.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        found.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        found.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return found


def htpasswd_line(user: str, password: str) -> str:
    """An htpasswd entry with a bcrypt hash (the only kind docker-registry accepts)."""
    return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"


@dataclass
class SecureRegistry:
    """A running HTTPS + htpasswd registry."""

    registry: Registry
    ca: TestCA
    users: dict[str, str]

    @property
    def host(self) -> str:
        return self.registry.host

    def trust(self, root_dir: Path, host: str | None = None) -> None:
        """Make a node with ``root_dir`` trust the test CA for ``host`` (the registry's own
        by default): ``<root-dir>/certs.d/<host:port>/ca.crt``."""
        target = root_dir / "certs.d" / (host or self.host)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.ca.ca, target / "ca.crt")

    def push(self, layout: Path, ref: str, repo_tag: str) -> str:
        """Push ``oci:LAYOUT:REF`` as ``<host>/<repo_tag>`` with skopeo, verifying the
        registry's certificate and logging in; returns the reference."""
        skopeo = require_binary("skopeo", "skopeo")
        user, password = next(iter(self.users.items()))
        dest = f"{self.host}/{repo_tag}"
        subprocess.run(
            [
                skopeo, "--insecure-policy", "copy", "-q",
                "--dest-cert-dir", str(self.ca.ca.parent), "--dest-creds", f"{user}:{password}",
                f"oci:{layout}:{ref}", f"docker://{dest}",
            ],
            check=True, timeout=120,
        )  # fmt: skip
        return dest


@contextlib.contextmanager
def run_secure_registry(tmp_path: Path, users: dict[str, str]) -> Iterator[SecureRegistry]:
    """docker-registry with TLS from a fresh test CA and htpasswd auth for ``users``."""
    ca = TestCA.make(tmp_path / "tls")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("".join(htpasswd_line(u, p) for u, p in users.items()))
    config = (
        f"  tls:\n    certificate: {ca.cert}\n    key: {ca.key}\n"
        f"auth:\n  htpasswd:\n    realm: nlt-registry\n    path: {htpasswd}\n"
    )
    with run_registry(tmp_path, config) as registry:
        yield SecureRegistry(registry, ca, dict(users))


@dataclass
class ThrottlingProxy:
    """A TCP proxy on a free loopback port that forwards to ``upstream`` and lets at most
    ``rate`` bytes a second come back; counts what it forwarded."""

    upstream: tuple[str, int]
    rate: int
    forwarded: int = 0
    _server: socket.socket = field(init=False)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, 0), daemon=True).start()
            threading.Thread(
                target=self._pipe, args=(upstream, client, self.rate), daemon=True
            ).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, rate: int) -> None:
        chunk = max(1024, rate // 20) if rate else 65536
        try:
            while not self._stopping.is_set():
                data = source.recv(chunk)
                if not data:
                    break
                sink.sendall(data)
                if rate:
                    self.forwarded += len(data)
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def stop(self) -> None:
        self._stopping.set()
        self._server.close()


@contextlib.contextmanager
def throttled(host: str, rate: int) -> Iterator[ThrottlingProxy]:
    """A :class:`ThrottlingProxy` to ``host`` (``ip:port``), stopped on exit."""
    address, _, port = host.rpartition(":")
    proxy = ThrottlingProxy((address, int(port)), rate)
    try:
        yield proxy
    finally:
        proxy.stop()
