"""``nodelet image pull`` from a real registry: Debian's docker-registry (Distribution 2.8) on a
free loopback port, images pushed by Debian's skopeo, requests counted in the registry's log."""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import json
import os
import pty
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.imagebuild import (
    BuiltImage,
    app_layer,
    busybox_layer,
    entry,
    file_entry,
    nodelet_image,
    nodelet_image_fails,
    require_binary,
    sha,
    tar_bytes,
)

pytestmark = pytest.mark.system


@dataclass
class Registry:
    host: str
    log: Path

    def requests(self, pattern: str) -> int:
        """How many requests the registry logged whose method and URI match ``pattern``."""
        lines = self.log.read_text().splitlines()
        return sum(1 for line in lines if "response completed" in line and re.search(pattern, line))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def run_registry(tmp_path: Path, auth: str = "") -> Iterator[Registry]:
    """docker-registry on a free loopback port, its storage and log in ``tmp_path``; stopped
    by pid."""
    binary = require_binary("docker-registry", "docker-registry")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry-data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    log = tmp_path / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"docker-registry did not start: {log.read_text()}")
                time.sleep(0.1)
        yield Registry(f"127.0.0.1:{port}", log)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with run_registry(tmp_path) as running:
        yield running


def push(layout: Path, ref: str, dest: str, all_images: bool = False) -> None:
    skopeo = require_binary("skopeo", "skopeo")
    args = [skopeo, "--insecure-policy", "copy", "-q", "--dest-tls-verify=false"]
    if all_images:
        args.append("--all")
    subprocess.run([*args, f"oci:{layout}:{ref}", f"docker://{dest}"], check=True, timeout=120)


def test_pull_by_tag_and_digest_verified_and_shared(registry: Registry, tmp_path: Path) -> None:
    image = BuiltImage([busybox_layer(), app_layer()])
    image.write_oci(tmp_path / "oci", "1")
    push(tmp_path / "oci", "1", f"{registry.host}/nlt/test:1")
    root = tmp_path / "nlt-root"
    name = f"{registry.host}/nlt/test:1"
    out = nodelet_image(root, "pull", name)
    assert f"pulled {name} ({sha(image.config())})" in out
    info = json.loads(nodelet_image(root, "inspect", name))
    assert info["id"] == sha(image.config())
    assert info["repoDigests"] == [f"{registry.host}/nlt/test@{info['manifest']}"]
    layers = sorted(os.listdir(root / "images/layers"))
    assert layers == sorted(sha(layer)[7:] for layer in image.layers)
    assert (root / "images/layers" / layers[0]).exists()
    blob_gets = registry.requests(r"GET.*/v2/nlt/test/blobs/")
    assert blob_gets == 3  # config and two layers, once each
    # again, by digest: nothing new is downloaded, the name is added
    by_digest = f"{registry.host}/nlt/test@{info['manifest']}"
    nodelet_image(root, "pull", by_digest)
    assert registry.requests(r"GET.*/v2/nlt/test/blobs/") == blob_gets
    listed = json.loads(nodelet_image(root, "ls", "-o", "json"))["images"]
    assert sorted(row["name"] for row in listed) == sorted([name, by_digest])
    # a second image on the same base: only its own layer and config are fetched
    other = BuiltImage([busybox_layer(), tar_bytes([file_entry("other", b"2")])])
    other.write_oci(tmp_path / "oci2", "2")
    push(tmp_path / "oci2", "2", f"{registry.host}/nlt/test:2")
    nodelet_image(root, "pull", f"{registry.host}/nlt/test:2")
    assert registry.requests(r"GET.*/v2/nlt/test/blobs/") == blob_gets + 2


def test_index_resolves_to_the_host_platform(registry: Registry, tmp_path: Path) -> None:
    """A multi-platform index: only the host's manifest, config and layers are fetched."""
    mine = BuiltImage([busybox_layer()], compress=True)
    foreign = BuiltImage([tar_bytes([file_entry("foreign", b"s390x")])])
    layout = tmp_path / "oci"
    mine_digest = mine.write_oci(layout, "mine")
    foreign_digest = foreign.write_oci(layout, "foreign")
    config = json.loads(foreign.config())
    config["architecture"] = "s390x"
    index = json.loads((layout / "index.json").read_text())
    entries = []
    for desc, arch in zip(index["manifests"], ["amd64", "s390x"], strict=True):
        entries.append({k: v for k, v in desc.items() if k != "annotations"})
        entries[-1]["platform"] = {"os": "linux", "architecture": arch}
    from nodelet.image.manifest import host_platform

    entries[0]["platform"]["architecture"] = host_platform().architecture
    entries.reverse()  # the foreign one first: order must not decide
    index_blob = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries,
        }
    ).encode()
    (layout / "blobs/sha256" / sha(index_blob)[7:]).write_bytes(index_blob)
    index["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": sha(index_blob),
            "size": len(index_blob),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }
    )
    (layout / "index.json").write_text(json.dumps(index))
    push(layout, "multi", f"{registry.host}/nlt/multi:1", all_images=True)
    root = tmp_path / "nlt-root"
    nodelet_image(root, "pull", f"{registry.host}/nlt/multi:1")
    info = json.loads(nodelet_image(root, "inspect", f"{registry.host}/nlt/multi:1"))
    assert info["manifest"] == mine_digest
    assert info["id"] == sha(mine.config())
    assert registry.requests(f"GET.*/manifests/{foreign_digest}") == 0
    assert registry.requests(f"GET.*/blobs/{sha(foreign.blobs()[0])}") == 0
    assert sorted(os.listdir(root / "images/layers")) == [sha(mine.layers[0])[7:]]


def test_pull_errors_name_the_registry_and_reason(registry: Registry, tmp_path: Path) -> None:
    root = tmp_path / "nlt-root"
    stderr = nodelet_image_fails(root, "pull", f"{registry.host}/nlt/absent:1")
    assert f"registry {registry.host}" in stderr
    assert "404" in stderr
    assert "MANIFEST_UNKNOWN" in stderr
    assert not (root / "images/index.json").exists()
    closed = f"127.0.0.1:{free_port()}"
    assert f"registry {closed}" in nodelet_image_fails(root, "pull", f"{closed}/nlt/x:1")
    assert "must be lowercase" in nodelet_image_fails(root, "pull", "Bad/Name")


def test_malicious_layer_from_a_registry_fails_the_pull(registry: Registry, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = tar_bytes(
        [
            file_entry("ok", b"fine"),
            (entry("link", b"2", linkname=str(outside)), None),
            file_entry("link/planted", b"evil"),
        ]
    )
    BuiltImage([evil]).write_oci(tmp_path / "oci", "evil")
    push(tmp_path / "oci", "evil", f"{registry.host}/nlt/evil:1")
    root = tmp_path / "nlt-root"
    stderr = nodelet_image_fails(root, "pull", f"{registry.host}/nlt/evil:1")
    assert "'link' is a symlink or not a dir" in stderr
    assert os.listdir(outside) == []
    assert not (root / "images/index.json").exists()
    assert os.listdir(root / "images/layers") == []


class TokenServer:
    """A registry token server (Docker's token auth spec): basic credentials in, an ES256 JWT
    out, signed by a key whose certificate the registry trusts (``rootcertbundle``)."""

    def __init__(self, tmp_path: Path, service: str, issuer: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nlt-token-signer")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = tmp_path / "token-ca.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.der = self.cert.public_bytes(serialization.Encoding.DER)
        self.service, self.issuer = service, issuer
        self.users = {"nlt": "s3cret"}
        self.issued = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                auth = self.headers.get("Authorization", "")
                user, _, password = (
                    base64.b64decode(auth[6:]).decode().partition(":")
                    if auth.startswith("Basic ")
                    else ("", "", "")
                )
                if server.users.get(user) != password or not user:
                    self.send_response(401)
                    self.end_headers()
                    self.wfile.write(b'{"details": "wrong credentials"}')
                    return
                body = json.dumps({"token": server.token(user, query.get("scope", []))})
                server.issued += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def token(self, user: str, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": self.issuer, "sub": user, "aud": self.service, "exp": now + 300,
            "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access,
        }  # fmt: skip
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self.der).decode()]}

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[tuple[Registry, TokenServer]]:
    tokens = TokenServer(tmp_path, "nlt-registry", "nlt-issuer")
    auth = (
        f"auth:\n  token:\n    realm: {tokens.realm}\n    service: nlt-registry\n"
        f"    issuer: nlt-issuer\n    rootcertbundle: {tokens.bundle}\n"
    )
    try:
        with run_registry(tmp_path, auth) as registry:
            yield registry, tokens
    finally:
        tokens.stop()


def test_bearer_token_auth_with_credentials_from_config_json(
    auth_registry: tuple[Registry, TokenServer], tmp_path: Path
) -> None:
    registry, tokens = auth_registry
    image = BuiltImage([busybox_layer()])
    image.write_oci(tmp_path / "oci", "1")
    skopeo = require_binary("skopeo", "skopeo")
    subprocess.run(
        [
            skopeo, "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
            "--dest-creds", "nlt:s3cret", f"oci:{tmp_path / 'oci'}:1",
            f"docker://{registry.host}/nlt/private:1",
        ],
        check=True, timeout=120,
    )  # fmt: skip
    root = tmp_path / "nlt-root"
    name = f"{registry.host}/nlt/private:1"
    stderr = nodelet_image_fails(root, "pull", name)
    assert f"token from {tokens.realm} (no credentials for it): 401" in stderr
    root.mkdir(exist_ok=True)
    config = {"auths": {registry.host: {"auth": base64.b64encode(b"nlt:wrong").decode()}}}
    (root / "config.json").write_text(json.dumps(config))
    stderr = nodelet_image_fails(root, "pull", name)
    assert f"token from {tokens.realm}: 401" in stderr
    config = {"auths": {f"http://{registry.host}": {"username": "nlt", "password": "s3cret"}}}
    (root / "config.json").write_text(json.dumps(config))
    issued = tokens.issued
    nodelet_image(root, "pull", name)
    assert tokens.issued == issued + 1  # one token serves the whole pull
    assert json.loads(nodelet_image(root, "inspect", name))["id"] == sha(image.config())


def test_pull_shows_a_bar_on_a_terminal_and_plain_lines_elsewhere(
    registry: Registry, tmp_path: Path
) -> None:
    image = BuiltImage([busybox_layer(), app_layer()])
    image.write_oci(tmp_path / "oci", "1")
    name = f"{registry.host}/nlt/test:1"
    push(tmp_path / "oci", "1", name)
    main, tty = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nodelet", "image", "pull", name,
             "--root-dir", str(tmp_path / "nlt-tty")],
            stdout=subprocess.PIPE, stderr=tty,
        )  # fmt: skip
        os.close(tty)
        shown = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(main)
    text = shown.decode()
    assert "\r" in text and "] 100%" in text and "MB/s" in text
    total = sum(len(blob) for blob in image.blobs()) / 1e6
    assert f"/{total:.1f} MB" in text  # the layers' size, known from the manifest
    plain = subprocess.run(
        [sys.executable, "-m", "nodelet", "image", "pull", name,
         "--root-dir", str(tmp_path / "nlt-plain")],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert "\r" not in plain.stderr
    assert plain.stderr.strip().splitlines()[-1] == (
        f"pulling {name}: {total:.1f} of {total:.1f} MB (100 %)"
    )
