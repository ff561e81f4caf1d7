"""The probers against real servers and processes: HTTP(S) and TCP on the host's loopback and on
the loopback of a network namespace made for the test, exec probes inside a child's namespaces.

Every process started here is killed by its pid at the end, whatever the outcome."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nodelet.probe.exec import MAX_OUTPUT, exec_probe, start_time
from nodelet.probe.http import MAX_BODY, USER_AGENT, http_probe, resolve_port
from nodelet.probe.netns import socket_in_netns
from nodelet.probe.result import Outcome, ProbeResult
from nodelet.probe.tcp import tcp_probe

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)"),
]

SERVER = r"""
import ctypes, http.server, json, ssl, subprocess, sys, time

port, marker, flags = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
if "--netns" in flags:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET: this process alone moves
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path
        if path == "/ok":
            self.answer(200, marker.encode())
        elif path == "/fail":
            self.answer(500, b"broken")
        elif path == "/redirect":
            self.answer(302, b"", [("Location", "/ok")])
        elif path == "/redirect-absolute":
            self.answer(301, b"", [("Location", f"http://127.0.0.1:{port}/ok")])
        elif path == "/redirect-to-fail":
            self.answer(307, b"", [("Location", "/fail")])
        elif path == "/redirect-to-headers":
            self.answer(302, b"", [("Location", "/headers")])
        elif path.startswith("/loop/"):
            hop = int(path.rsplit("/", 1)[1])
            self.answer(302, b"", [("Location", f"/loop/{hop + 1}")])
        elif path == "/away":
            self.answer(302, b"moved", [("Location", "http://nlt-elsewhere.invalid/ok")])
        elif path.startswith("/headers"):
            body = {"path": path, "headers": [[k, v] for k, v in self.headers.items()]}
            self.answer(200, json.dumps(body).encode())
        elif path == "/big":
            self.answer(200, b"x" * 100_000)
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"chunk", b"ed-", marker.encode()):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/slow":
            time.sleep(5)
            self.answer(200, b"late")
        else:
            self.answer(404, b"no such page")


server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
server.daemon_threads = True
if "--tls" in flags:
    at = flags.index("--tls")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(flags[at + 1], flags[at + 2])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gone(pid: int) -> bool:
    """The process exited (a zombie waiting for init to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pid: int, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return gone(pid)


class Processes:
    """Children of the test, killed by pid on teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen[str]] = []
        self.extra_pids: list[int] = []

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env
        )
        self.started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"{argv[:3]} did not start: {line!r} rc={proc.poll()}"
        return proc

    def server(self, port: int, marker: str, *flags: str) -> subprocess.Popen[str]:
        script = self.workdir / "server.py"
        if not script.exists():
            script.write_text(SERVER)
        return self.start([sys.executable, str(script), str(port), marker, *flags])

    def cleanup(self) -> None:
        for pid in self.extra_pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        for proc in self.started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def procs() -> Iterator[Processes]:
    workdir = Path(tempfile.mkdtemp(prefix="nlt-probes-"))
    processes = Processes(workdir)
    try:
        yield processes
    finally:
        processes.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def host_server(procs: Processes) -> int:
    port = free_port()
    procs.server(port, "host")
    return port


@pytest.fixture
def netns_server(procs: Processes, host_server: int) -> tuple[str, int, int]:
    """A server in a new network namespace on the same port as ``host_server`` and on one the
    host does not serve: (netns path, shared port, netns-only port)."""
    only_here = free_port()
    proc = procs.server(host_server, "netns", "--netns")
    second = procs.start([
        "nsenter", f"--net=/proc/{proc.pid}/ns/net", "--",
        sys.executable, str(procs.workdir / "server.py"), str(only_here), "netns-only",
    ])  # fmt: skip
    assert second.pid
    netns = f"/proc/{proc.pid}/ns/net"
    assert os.readlink(netns) != os.readlink("/proc/self/ns/net")
    return netns, host_server, only_here


def probe(path: str, port: int, netns: str | None = None, **http_get: object) -> ProbeResult:
    return asyncio.run(
        http_probe(
            {"path": path, **http_get}, pod_ip="127.0.0.1", port=port, netns=netns, timeout=2.0
        )
    )


# --- HTTP on the host ---------------------------------------------------------------------


def test_http_statuses(host_server: int) -> None:
    assert probe("/ok", host_server) == ProbeResult(Outcome.SUCCESS, "host")
    assert probe("/fail", host_server) == ProbeResult(
        Outcome.FAILURE, "HTTP probe failed with statuscode: 500"
    )
    assert probe("/missing", host_server) == ProbeResult(
        Outcome.FAILURE, "HTTP probe failed with statuscode: 404"
    )


def test_http_redirects_to_the_same_host_are_followed(host_server: int) -> None:
    assert probe("/redirect", host_server) == ProbeResult(Outcome.SUCCESS, "host")
    assert probe("/redirect-absolute", host_server) == ProbeResult(Outcome.SUCCESS, "host")
    assert probe("/redirect-to-fail", host_server).message == (
        "HTTP probe failed with statuscode: 500"
    )


def test_http_redirect_to_another_host_is_a_success_with_a_warning(host_server: int) -> None:
    assert probe("/away", host_server) == ProbeResult(
        Outcome.SUCCESS, "Probe terminated redirects, Response body: moved", warning=True
    )


def test_http_redirect_loop_stops_after_ten(host_server: int) -> None:
    result = probe("/loop/0", host_server)
    assert result == ProbeResult(
        Outcome.FAILURE,
        f'Get "http://127.0.0.1:{host_server}/loop/10": stopped after 10 redirects',
    )


def test_http_headers_sent_as_kubelet(host_server: int) -> None:
    result = probe(
        "/headers?x=1",
        host_server,
        httpHeaders=[{"name": "x-custom-thing", "value": "a"}, {"name": "X-Other", "value": "b"}],
    )
    assert result.outcome is Outcome.SUCCESS
    sent = json.loads(result.message)
    assert sent["path"] == "/headers?x=1"
    headers = dict(sent["headers"])
    assert headers["User-Agent"] == USER_AGENT == "kube-probe/1.20"
    assert headers["Accept"] == "*/*"
    assert headers["Host"] == f"127.0.0.1:{host_server}"
    assert headers["Connection"] == "close"
    assert headers["X-Custom-Thing"] == "a"  # Go's canonical header names
    assert headers["X-Other"] == "b"
    assert "Accept-Encoding" not in headers  # kubelet disables compression


def test_http_header_overrides(host_server: int) -> None:
    result = probe(
        "/redirect-to-headers",
        host_server,
        httpHeaders=[
            {"name": "Host", "value": "nlt-virtual.example"},
            {"name": "User-Agent", "value": "nlt-agent"},
            {"name": "Accept", "value": ""},
        ],
    )
    sent = json.loads(result.message)
    headers = dict(sent["headers"])
    assert sent["path"] == "/headers"
    assert headers["Host"] == "nlt-virtual.example"  # kept through a relative redirect
    assert headers["User-Agent"] == "nlt-agent"
    assert "Accept" not in headers  # an empty Accept removes it, as kubelet
    assert headers["Referer"] == f"http://127.0.0.1:{host_server}/redirect-to-headers"


def test_http_body_is_read_to_10k_only(host_server: int) -> None:
    result = probe("/big", host_server)
    assert result.outcome is Outcome.SUCCESS
    assert result.message == "x" * MAX_BODY


def test_http_chunked_body(host_server: int) -> None:
    assert probe("/chunked", host_server) == ProbeResult(Outcome.SUCCESS, "chunked-host")


def test_http_timeout_is_a_failure(host_server: int) -> None:
    began = time.monotonic()
    result = asyncio.run(
        http_probe({"path": "/slow"}, pod_ip="127.0.0.1", port=host_server, netns=None, timeout=0.5)
    )
    assert time.monotonic() - began < 2.0
    assert result == ProbeResult(
        Outcome.FAILURE,
        f'Get "http://127.0.0.1:{host_server}/slow": context deadline exceeded '
        "(Client.Timeout exceeded while awaiting headers)",
    )


def test_http_connect_that_never_completes_is_a_dial_timeout() -> None:
    """A listener whose accept queue is full drops new SYNs: the connect stays under way until
    the probe's timeout, which kubelet reports as Go's dial i/o timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = []
        for _ in range(3):  # fill the accept queue; later SYNs are dropped
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            queued.append(client)
        time.sleep(0.1)
        try:
            began = time.monotonic()
            result = asyncio.run(
                http_probe({"path": "/"}, pod_ip="127.0.0.1", port=port, netns=None, timeout=0.5)
            )
            took = time.monotonic() - began
        finally:
            for client in queued:
                client.close()
    assert 0.4 < took < 2.0
    assert result == ProbeResult(
        Outcome.FAILURE,
        f'Get "http://127.0.0.1:{port}/": dial tcp 127.0.0.1:{port}: i/o timeout '
        "(Client.Timeout exceeded while awaiting headers)",
    )


def test_http_connection_refused() -> None:
    port = free_port()
    assert probe("/", port) == ProbeResult(
        Outcome.FAILURE,
        f'Get "http://127.0.0.1:{port}/": dial tcp 127.0.0.1:{port}: connect: connection refused',
    )


def self_signed(workdir: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nlt-probe-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "cert.pem", workdir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def test_https_self_signed_without_verification(procs: Processes) -> None:
    port = free_port()
    procs.server(port, "tls", "--tls", *self_signed(procs.workdir))
    assert probe("/ok", port, scheme="HTTPS") == ProbeResult(Outcome.SUCCESS, "tls")
    assert probe("/redirect", port, scheme="HTTPS") == ProbeResult(Outcome.SUCCESS, "tls")
    assert probe("/fail", port, scheme="HTTPS").outcome is Outcome.FAILURE


def test_resolve_port() -> None:
    container = {"ports": [{"name": "metrics", "containerPort": 2381}]}
    assert resolve_port(8080, container) == 8080
    assert resolve_port("metrics", container) == 2381
    assert resolve_port("9090", container) == 9090  # kubelet's last ditch: a number as a string
    with pytest.raises(ValueError, match="port web not found"):
        resolve_port("web", container)
    with pytest.raises(ValueError, match="invalid port number: 0"):
        resolve_port(0, container)
    with pytest.raises(ValueError, match="invalid port number: 70000"):
        resolve_port("70000", container)


# --- the pod's network namespace ------------------------------------------------------------


def test_http_probe_goes_into_the_netns(netns_server: tuple[str, int, int]) -> None:
    netns, shared, only_here = netns_server
    # Same address, same port: the namespace decides which server answers.
    assert probe("/ok", shared, netns) == ProbeResult(Outcome.SUCCESS, "netns")
    assert probe("/ok", shared, None) == ProbeResult(Outcome.SUCCESS, "host")
    # A port only the pod serves: reachable through its netns, refused on the host.
    assert probe("/ok", only_here, netns) == ProbeResult(Outcome.SUCCESS, "netns-only")
    assert probe("/ok", only_here, None).message.endswith("connect: connection refused")


def test_http_probe_without_pod_ip_uses_the_pods_loopback(
    netns_server: tuple[str, int, int],
) -> None:
    netns, _, only_here = netns_server
    result = asyncio.run(
        http_probe({"path": "/ok"}, pod_ip="", port=only_here, netns=netns, timeout=2.0)
    )
    assert result == ProbeResult(Outcome.SUCCESS, "netns-only")


def test_tcp_probe(host_server: int, netns_server: tuple[str, int, int]) -> None:
    netns, _, only_here = netns_server
    closed = free_port()

    def tcp(port: int, ns: str | None) -> ProbeResult:
        return asyncio.run(tcp_probe("127.0.0.1", port, netns=ns, timeout=1.0))

    assert tcp(host_server, None) == ProbeResult(Outcome.SUCCESS)
    assert tcp(closed, None) == ProbeResult(
        Outcome.FAILURE, f"dial tcp 127.0.0.1:{closed}: connect: connection refused"
    )
    assert tcp(only_here, netns) == ProbeResult(Outcome.SUCCESS)
    assert tcp(only_here, None).outcome is Outcome.FAILURE


def test_tcp_probe_into_a_vanished_netns_fails() -> None:
    result = asyncio.run(
        tcp_probe("127.0.0.1", 80, netns="/proc/nlt-no-such-pid/ns/net", timeout=1.0)
    )
    assert result.outcome is Outcome.FAILURE
    assert "no such file or directory" in result.message


def test_socket_in_netns_leaves_the_callers_thread_alone(
    netns_server: tuple[str, int, int],
) -> None:
    netns, _, only_here = netns_server
    before = os.readlink("/proc/thread-self/ns/net")
    threads = threading.active_count()
    sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(2)
        sock.connect(("127.0.0.1", only_here))  # a blocking connect, long after the thread
    assert os.readlink("/proc/thread-self/ns/net") == before
    assert threading.active_count() == threads


# --- exec ---------------------------------------------------------------------------------


@pytest.fixture
def container(procs: Processes) -> int:
    """A process in new mount, UTS, IPC, network and PID namespaces (PID 1 of its own), with an
    environment of its own: the pid, on the host, of the probes' target."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NLT_MARK": "from-the-container"}
    unshare = procs.start(
        [
            "unshare", "--mount", "--uts", "--ipc", "--net", "--pid", "--fork", "--kill-child",
            "--mount-proc", "sh", "-c", "hostname nlt-probe-ctr; echo ready; exec sleep 300",
        ],
        env=env,
    )  # fmt: skip
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children").read_text().split()
    assert len(children) == 1
    target = int(children[0])
    procs.extra_pids.append(target)
    return target


@pytest.fixture
def plain_container(procs: Processes) -> int:
    """A process in its own network and UTS namespaces, in the host's PID namespace (so the
    pids a probe writes are host pids)."""
    proc = procs.start(["unshare", "--net", "--uts", "sh", "-c", "echo ready; exec sleep 300"])
    return proc.pid


def run_exec(command: list[str], target: int, **kwargs: object) -> ProbeResult:
    options: dict[str, object] = {"uid": None, "gid": None, "timeout": 5.0, **kwargs}
    return asyncio.run(exec_probe(command, target_pid=target, **options))  # type: ignore[arg-type]


def test_exec_runs_in_all_the_containers_namespaces(container: int) -> None:
    kinds = ["mnt", "uts", "ipc", "net", "pid"]
    script = "hostname; for n in " + " ".join(kinds) + "; do readlink /proc/self/ns/$n; done"
    result = run_exec(["sh", "-c", script], container)
    assert result.outcome is Outcome.SUCCESS, result.message
    lines = result.message.split()
    assert lines[0] == "nlt-probe-ctr"
    expected = [os.readlink(f"/proc/{container}/ns/{kind}") for kind in kinds]
    assert lines[1:] == expected
    mine = [os.readlink(f"/proc/self/ns/{kind}") for kind in kinds]
    assert all(a != b for a, b in zip(expected, mine, strict=True))


def test_exec_sees_the_containers_environment(container: int) -> None:
    result = run_exec(["sh", "-c", 'echo "$NLT_MARK"'], container)
    assert result == ProbeResult(Outcome.SUCCESS, "from-the-container\n")


def test_exec_runs_as_the_containers_user(container: int) -> None:
    result = run_exec(["sh", "-c", "id -u; id -g"], container, uid=65534, gid=65533)
    assert result == ProbeResult(Outcome.SUCCESS, "65534\n65533\n")


def test_exec_exit_codes(container: int) -> None:
    assert run_exec(["true"], container) == ProbeResult(Outcome.SUCCESS, "")
    result = run_exec(["sh", "-c", "echo out; echo err >&2; exit 3"], container)
    assert result == ProbeResult(Outcome.FAILURE, "out\nerr\n")
    assert run_exec(["false"], container).outcome is Outcome.FAILURE


def test_exec_output_is_capped(container: int) -> None:
    result = run_exec(["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"], container)
    assert result == ProbeResult(Outcome.SUCCESS, "x" * MAX_OUTPUT)


def test_exec_on_a_gone_process_is_unknown() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert run_exec(["true"], child.pid).outcome is Outcome.UNKNOWN


def probe_pids(workdir: Path) -> str:
    """A probe command that records its shell's and its child's host pids, then hangs."""
    return (
        f"sleep 300 & echo $! > {workdir}/child.tmp; mv {workdir}/child.tmp {workdir}/child; "
        f"echo $$ > {workdir}/shell; wait"
    )


def test_exec_timeout_kills_the_probe(plain_container: int, procs: Processes) -> None:
    began = time.monotonic()
    result = run_exec(["sh", "-c", probe_pids(procs.workdir)], plain_container, timeout=0.7)
    assert time.monotonic() - began < 3.0
    shell = int((procs.workdir / "shell").read_text())
    child = int((procs.workdir / "child").read_text())
    procs.extra_pids += [shell, child]
    command = f"sh -c {probe_pids(procs.workdir)}"
    assert result == ProbeResult(Outcome.FAILURE, f'command "{command}" timed out')
    assert wait_gone(shell)
    assert wait_gone(child)
    assert not gone(plain_container)  # the container itself is left alone


def test_exec_does_not_wait_for_what_the_command_left_behind(
    plain_container: int, procs: Processes
) -> None:
    """A process that escaped the probe's session and holds its output must not hold the probe:
    it ends when the command does (and this test kills the straggler by its recorded pid)."""
    record = procs.workdir / "escaped"
    script = f"setsid sleep 300 & echo $! > {record}; echo done"
    began = time.monotonic()
    result = run_exec(["sh", "-c", script], plain_container, timeout=10.0)
    procs.extra_pids.append(int(record.read_text()))
    assert time.monotonic() - began < 3.0
    assert result == ProbeResult(Outcome.SUCCESS, "done\n")


def test_exec_cancelled_kills_the_probe(plain_container: int, procs: Processes) -> None:
    async def scenario() -> None:
        task = asyncio.ensure_future(
            exec_probe(
                ["sh", "-c", probe_pids(procs.workdir)],
                target_pid=plain_container,
                uid=None,
                gid=None,
                timeout=30.0,
            )
        )
        for _ in range(300):
            if (procs.workdir / "child").exists() and (procs.workdir / "shell").exists():
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    shell = int((procs.workdir / "shell").read_text())
    child = int((procs.workdir / "child").read_text())
    procs.extra_pids += [shell, child]
    assert wait_gone(shell)
    assert wait_gone(child)


def test_exec_joins_the_cgroup_before_running(plain_container: int) -> None:
    root = Path("/sys/fs/cgroup/pids")
    if not (root / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 pids hierarchy here")
    cgroup = root / f"nlt-probe-{secrets.token_hex(4)}"
    cgroup.mkdir()
    try:
        result = run_exec(
            ["cat", "/proc/self/cgroup"],
            plain_container,
            cgroup_procs=[str(cgroup / "cgroup.procs")],
        )
        assert result.outcome is Outcome.SUCCESS
        assert f"pids:/{cgroup.name}\n" in result.message
    finally:
        for _ in range(100):
            try:
                cgroup.rmdir()
                break
            except OSError:
                time.sleep(0.02)


def test_exec_probe_gets_the_containers_security() -> None:
    """A ``drop: [ALL]`` container with no_new_privs and RuntimeDefault, started by the holder's
    spawn path: the probe command shows what the container has, not the agent's root set."""
    from tests.system.test_enter import ZERO, _config, _start, fields

    config = _config([])
    pid = _start(config)
    started = start_time(pid)
    assert started is not None
    try:
        result = run_exec(["cat", "/proc/self/status"], pid, container=config,
                          target_start_time=started)  # fmt: skip
        assert result.outcome is Outcome.SUCCESS, result.message
        status = fields(result.message)
        assert status["Uid"].split() == ["1000"] * 4
        assert (status["CapEff"], status["CapBnd"]) == (ZERO, ZERO)
        assert (status["NoNewPrivs"], status["Seccomp"]) == ("1", "2")
        gone = run_exec(["true"], pid, container=config, target_start_time=started + 1)
        assert gone == ProbeResult(
            Outcome.UNKNOWN, f"process {pid} is not the container's (its pid was reused)"
        )
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
