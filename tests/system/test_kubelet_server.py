"""The kubelet API on a live agent: HTTPS with the self-signed pair (kept across restarts) and
a client CA, AlwaysAllow with anonymous requests, kubelet's routes, and ``/containerLogs``
byte-exact against the containers' known output for every query parameter."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nodelet.logs.reader import parse_line, rfc3339_nano
from tests.agentharness import NODE, Agent, agent_session, free_port, wait_for
from tests.system.test_wiring import manifest

pytestmark = pytest.mark.system

MAIN = (
    'i=0; while [ $i -lt 5 ]; do echo "line $i"; i=$((i+1)); done; '
    "echo err >&2; printf 'no newline'; sleep 0.2; echo ' done'; exec sleep 3600"
)
MAIN_OUTPUT = b"line 0\nline 1\nline 2\nline 3\nline 4\nerr\nno newline done\n"
COUNTED = "n=$(cat /mnt/{c} 2>/dev/null || echo 0); echo $((n+1)) > /mnt/{c}; "
CRASH = COUNTED.format(c="crash") + 'echo "run $n"; sleep 1; exit 1'
TICKER = COUNTED.format(c="tick") + 'for i in 0 1 2 3 4 5; do echo "$n-$i"; sleep 0.4; done'


@dataclass
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path
    stranger_cert: Path
    stranger_key: Path


def _name(cn: str, org: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(parts)


def _cert(
    subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey, ca: bool,
) -> x509.Certificate:  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )


def _write(directory: Path, name: str, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A client CA with one client (admin, group system:masters) and a stranger's own CA."""
    directory = tmp_path_factory.mktemp("nlt-pki")
    ca_key, other_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _cert(_name("nlt-client-ca"), ca_key, _name("nlt-client-ca"), ca_key, True)
    other = _cert(_name("nlt-other-ca"), other_key, _name("nlt-other-ca"), other_key, True)
    ca_file, _ = _write(directory, "ca", ca, ca_key)
    client_key, stranger_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    client = _cert(_name("nlt-admin", "system:masters"), client_key, ca.subject, ca_key, False)
    stranger = _cert(_name("nlt-stranger"), stranger_key, other.subject, other_key, False)
    cert_file, key_file = _write(directory, "client", client, client_key)
    stranger_cert, stranger_key_file = _write(directory, "stranger", stranger, stranger_key)
    return Pki(ca_file, cert_file, key_file, stranger_cert, stranger_key_file)


@dataclass
class Server:
    agent: Agent
    port: int
    read_only_port: int
    make: Callable[[], Agent]

    @property
    def cert(self) -> Path:
        return self.agent.root / "pki" / "kubelet.crt"

    def context(self, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        """Trusts only the agent's self-signed certificate, and checks its names."""
        context = ssl.create_default_context(cafile=self.cert)
        if client is not None:
            context.load_cert_chain(*client)
        return context

    def connect(self, client: tuple[Path, Path] | None = None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.context(client), timeout=20
        )

    def get(self, path: str, client: tuple[Path, Path] | None = None) -> tuple[int, str, bytes]:
        connection = self.connect(client)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.getheader("Content-Type") or "", response.read()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def server(pki: Pki) -> Iterator[Server]:
    port, read_only = free_port(), free_port()
    flags = [
        "--crashloop-backoff-initial", "1s", "--crashloop-backoff-max", "2s",
        "--port", str(port), "--read-only-port", str(read_only),
        "--authorization-mode", "AlwaysAllow", "--anonymous-auth", "true",
        "--client-ca-file", str(pki.ca_file),
    ]  # fmt: skip
    with agent_session(flags) as make:
        agent = make()
        agent.start()
        agent.write_manifest(
            "logs.json",
            manifest(
                "logs",
                [
                    {"name": "main", "image": "host", "command": ["sh", "-c", MAIN]},
                    {
                        "name": "crash",
                        "image": "host",
                        "command": ["sh", "-c", CRASH],
                        "volumeMounts": [{"name": "data", "mountPath": "/mnt"}],
                    },
                    {
                        "name": "ticker",
                        "image": "host",
                        "command": ["sh", "-c", TICKER],
                        "volumeMounts": [{"name": "data", "mountPath": "/mnt"}],
                    },
                ],
                volumes=[{"name": "data", "emptyDir": {}}],
            ),
        )
        wait_for(lambda: agent.running("logs", "main"), 30, "pod logs running")
        yield Server(agent, port, read_only, make)


def pod_path(container: str, query: str = "") -> str:
    return f"/containerLogs/default/logs-{NODE}/{container}" + (f"?{query}" if query else "")


def logs(server: Server, container: str, query: str = "") -> bytes:
    status, kind, body = server.get(pod_path(container, query))
    assert status == 200, body
    assert kind == "text/plain; charset=utf-8"
    return body


def cri_lines(server: Server, container: str, attempt: int) -> list[tuple[str, str, bytes]]:
    """(timestamp, stream, text) of each whole line of a run, read from its CRI file."""
    pod = server.agent.pod("logs")
    assert pod is not None
    path = server.agent.log_dir(pod, container) / f"{attempt}.log"
    found, pending = [], b""
    for raw in path.read_bytes().splitlines():
        chunk = parse_line(raw)
        assert chunk is not None
        if not pending:
            stamp = chunk.timestamp
        pending += chunk.content
        if not chunk.partial:
            found.append((stamp, chunk.stream, pending + b"\n"))
            pending = b""
    return found


def main_done(server: Server) -> list[tuple[str, str, bytes]]:
    def whole() -> list[tuple[str, str, bytes]] | None:
        lines = cri_lines(server, "main", 0)
        return lines if len(lines) == 7 else None

    return wait_for(whole, 20, "main's output")


# -- TLS --------------------------------------------------------------------------------------


def test_self_signed_pair_is_private_and_names_the_node(server: Server) -> None:
    key = server.agent.root / "pki" / "kubelet.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    cert = x509.load_pem_x509_certificate(server.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert NODE in names.get_values_for_type(x509.DNSName)
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1"}
    # The client checks the name 127.0.0.1 against it (create_default_context does).
    status, _, body = server.get("/healthz")
    assert (status, body) == (200, b"ok")


def test_client_certificates_of_the_client_ca_only(server: Server, pki: Pki) -> None:
    status, _, _ = server.get("/healthz", client=(pki.cert_file, pki.key_file))
    assert status == 200
    with pytest.raises((ssl.SSLError, ConnectionError)):
        server.get("/healthz", client=(pki.stranger_cert, pki.stranger_key))


def test_tls_below_the_minimum_is_refused(server: Server) -> None:
    context = server.context()
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.minimum_version = ssl.TLSVersion.TLSv1
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        connection.request("GET", "/healthz")
    connection.close()


# -- routes -----------------------------------------------------------------------------------


def test_pods_configz_runningpods_metrics(server: Server) -> None:
    status, kind, body = server.get("/pods")
    assert (status, kind) == (200, "application/json")
    pods = json.loads(body)
    assert pods["kind"] == "PodList"
    item = next(p for p in pods["items"] if p["metadata"]["name"] == f"logs-{NODE}")
    assert "mirror" not in item and item["status"]["phase"] == "Running"

    config = json.loads(server.get("/configz")[2])["kubeletconfig"]
    assert config["staticPodPath"] == str(server.agent.manifests)
    assert config["port"] == server.port and config["readOnlyPort"] == server.read_only_port
    assert config["authorization"]["mode"] == "AlwaysAllow"
    assert config["authentication"]["anonymous"]["enabled"] is True
    assert config["authentication"]["x509"]["clientCAFile"].endswith("ca.crt")

    running = json.loads(server.get("/runningpods/")[2])["items"]
    mine = next(p for p in running if p["metadata"]["name"] == f"logs-{NODE}")
    assert "main" in {c["name"] for c in mine["spec"]["containers"]}

    status, kind, body = server.get("/metrics")
    assert status == 200 and kind.startswith("text/plain; version=0.0.4")
    assert b"kubelet_running_pods" in body
    assert server.get("/metrics/probes")[0] == 200
    status, _, body = server.get("/healthz/ping")
    assert (status, body) == (200, b"ok")


def test_get_only_routes_refuse_other_methods(server: Server) -> None:
    connection = server.connect()
    connection.request("POST", "/pods")
    response = connection.getresponse()
    assert (response.status, response.getheader("Allow"), response.read()) == (
        405,
        "GET",
        b"Method Not Allowed",
    )
    connection.close()


def test_read_only_port_serves_only_kubelets_unauthenticated_routes(server: Server) -> None:
    def plain(path: str) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", server.read_only_port, timeout=10)
        try:
            connection.request("GET", path)
            return connection.getresponse().status
        finally:
            connection.close()

    assert plain("/pods") == 200
    assert plain("/healthz") == 200
    assert plain("/configz") == 404
    assert plain(pod_path("main")) == 404
    assert plain("/logs/") == 404


def test_node_logs_files_and_listing(server: Server) -> None:
    directory = Path("/var/log") / f"nlt-{secrets.token_hex(4)}"
    directory.mkdir()
    try:
        (directory / "a b.log").write_bytes(b"node log\x00bytes\n")
        (directory / "sub").mkdir()
        os.symlink("/etc/hostname", directory / "escape.log")
        status, _, body = server.get(f"/logs/{directory.name}/a%20b.log")
        assert (status, body) == (200, b"node log\x00bytes\n")
        status, kind, body = server.get(f"/logs/{directory.name}/")
        assert status == 200 and kind.startswith("text/html")
        assert b'<a href="a%20b.log">a b.log</a>' in body and b'<a href="sub/">sub/</a>' in body
        assert server.get(f"/logs/{directory.name}")[0] == 301
        assert server.get(f"/logs/{directory.name}/escape.log")[0] == 404
        assert server.get("/logs/../etc/hostname")[0] in (400, 404)
    finally:
        shutil.rmtree(directory)


# -- containerLogs ------------------------------------------------------------------------------


def test_container_logs_every_parameter(server: Server) -> None:
    lines = main_done(server)
    assert b"".join(text for _, _, text in lines) == MAIN_OUTPUT
    assert logs(server, "main") == MAIN_OUTPUT
    assert logs(server, "main", "tailLines=2") == b"err\nno newline done\n"
    assert logs(server, "main", "tail=1") == b"no newline done\n"
    assert logs(server, "main", "tail=all") == MAIN_OUTPUT
    assert logs(server, "main", "tailLines=0") == b""
    assert logs(server, "main", "limitBytes=10") == MAIN_OUTPUT[:10]
    assert logs(server, "main", "stream=Stderr") == b"err\n"
    assert logs(server, "main", "stream=Stdout") == MAIN_OUTPUT.replace(b"err\n", b"")
    stamped = b"".join(rfc3339_nano(stamp).encode() + b" " + text for stamp, _, text in lines)
    assert logs(server, "main", "timestamps=true") == stamped
    assert logs(server, "main", "timestamps=1&limitBytes=40") == stamped[:40]
    since = lines[5][0]  # "err"
    assert logs(server, "main", f"sinceTime={since}") == b"err\nno newline done\n"
    assert logs(server, "main", "sinceSeconds=3600") == MAIN_OUTPUT
    time.sleep(1.2)
    assert logs(server, "main", "sinceSeconds=1") == b""


def test_container_logs_previous_run(server: Server) -> None:
    def restarted() -> dict[str, Any] | None:
        status = server.agent.container_status("logs", "crash")
        last = (status or {}).get("lastState", {}).get("terminated")
        return status if status and status["restartCount"] >= 2 and last else None

    status = wait_for(restarted, 30, "crash restarted twice")
    previous = int(status["lastState"]["terminated"]["containerID"].rpartition("/")[2])
    assert logs(server, "crash", "previous=true") == f"run {previous}\n".encode()
    body = server.get(pod_path("main", "previous=true"))
    assert body[0] == 400
    assert (
        body[2] == f'previous terminated container "main" in pod "logs-{NODE}" not found'.encode()
    )


def test_follow_streams_the_run_and_ends_with_it(server: Server) -> None:
    def fresh_run() -> int | None:
        status = server.agent.container_status("logs", "ticker")
        if not status or "running" not in status["state"]:
            return None
        attempt = int(status["containerID"].rpartition("/")[2])
        lines = [t for _, _, t in cri_lines(server, "ticker", attempt)]
        return attempt + 1 if len(lines) <= 1 else None  # not yet past its first tick

    attempt = wait_for(fresh_run, 40, "a ticker run that just began") - 1
    connection = server.connect()
    connection.request("GET", pod_path("ticker", "follow=true"))
    response = connection.getresponse()
    assert response.status == 200
    started = time.monotonic()
    first = response.readline()
    body = first + response.read()  # ends when the run ends
    took = time.monotonic() - started
    connection.close()
    run_lines = [t for _, _, t in cri_lines(server, "ticker", attempt)]
    assert len(run_lines) == 6, run_lines
    assert body == b"".join(run_lines)
    assert first.split(b"-")[0] == body.split(b"-")[0]  # one run's counter all through
    assert 1.0 < took < 10, "follow must wait for new lines, then end with the run"


def test_container_logs_refusals(server: Server) -> None:
    missing = server.get(f"/containerLogs/default/nope-{NODE}/main")
    assert missing[0] == 404 and missing[2] == f'pod "nope-{NODE}" does not exist'.encode()
    container = server.get(pod_path("nope"))
    assert container[0] == 404
    assert container[2] == f'container "nope" not found in pod "logs-{NODE}"'.encode()
    assert server.get(pod_path("main", "tailLines=x"))[:3:2] == (
        400,
        b'{"message": "Unable to decode query."}',
    )
    assert server.get(pod_path("main", "limitBytes=0"))[:3:2] == (
        422,
        b'{"message": "Invalid request."}',
    )


# -- restarts ---------------------------------------------------------------------------------


def test_self_signed_pair_is_reused_across_restarts(server: Server) -> None:
    before = server.cert.read_bytes()
    der = x509.load_pem_x509_certificate(before).public_bytes(serialization.Encoding.DER)
    server.agent.signal(signal.SIGTERM)
    again = server.make()
    again.start()
    server.agent = again
    wait_for(lambda: _healthy(server), 20, "kubelet API after the restart")
    assert server.cert.read_bytes() == before
    raw = socket.create_connection(("127.0.0.1", server.port))
    with server.context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.getpeercert(binary_form=True) == der


def _healthy(server: Server) -> bool:
    try:
        return server.get("/healthz")[0] == 200
    except OSError:
        return False
