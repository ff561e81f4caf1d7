"""The kubelet API's serving pair when none is configured: self-signed, written once.

kubelet writes ``<cert-dir>/kubelet.crt`` and ``kubelet.key`` the first time it starts without
``--tls-cert-file`` and reuses them from then on, so a client that pinned the certificate keeps
trusting the node across restarts. nodelet does the same under ``<root-dir>/pki``. The names
the node is reached by (its name, addresses, localhost) are subject alternative names, so a
client that checks hostnames against a pinned certificate succeeds.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

CERT_NAME = "kubelet.crt"
KEY_NAME = "kubelet.key"
KEY_MODE = 0o600
VALIDITY = datetime.timedelta(days=365)
"""kubelet's self-signed certificate lasts one year (client-go's GenerateSelfSignedCertKey)."""


def ensure_pair(pki_dir: Path, node_name: str, addresses: Iterable[str] = ()) -> tuple[Path, Path]:
    """``(cert, key)`` under ``pki_dir``: the pair already there when both files exist, else a
    new self-signed one for ``node_name``, ``addresses``, ``localhost`` and ``127.0.0.1``."""
    cert, key = pki_dir / CERT_NAME, pki_dir / KEY_NAME
    if cert.is_file() and key.is_file():
        return cert, key
    pki_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_pem, key_pem = self_signed(node_name, addresses)
    _write(key, key_pem)  # the key first: a cert without its key is never left alone
    _write(cert, cert_pem)
    return cert, key


def self_signed(node_name: str, addresses: Iterable[str]) -> tuple[bytes, bytes]:
    """A PEM certificate and PKCS#8 RSA-2048 key, CN ``<node>@<unix time>`` as kubelet's."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"{node_name}@{int(now.timestamp())}")]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_alt_names(node_name, addresses)), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
    )
    certificate = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _alt_names(node_name: str, addresses: Iterable[str]) -> list[x509.GeneralName]:
    """DNS names and IPs, each once, in the order given (the node's name first)."""
    names: list[x509.GeneralName] = []
    for value in (node_name, *addresses, "localhost", "127.0.0.1"):
        if not value:
            continue
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            entry = x509.DNSName(value)
        if entry not in names:
            names.append(entry)
    return names


def _write(path: Path, data: bytes) -> None:
    """Atomically, mode 0600 from the start (a temp file in the same dir, then a rename)."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(fd, KEY_MODE)
        file.write(data)
        file.flush()
        os.fsync(fd)
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
