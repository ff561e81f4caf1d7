"""exec and port-forward on a mirror pod through the real kube-apiserver, which proxies them to
the agent's kubelet API (its kubelet client certificate, the agent's serving certificate checked
against the test CA, Webhook authorization): Debian's kubectl 1.20 (SPDY/3.1) for ``exec``,
``exec -i`` (10 MB through sha256sum), ``exec -it`` under a real pty, and ``port-forward``
(100 parallel connections of 1 MB each); the official Python client's ``stream()``
(WebSocket) for exec with the exit code and stdin.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import secrets
import select
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from kubernetes.client import CoreV1Api
from kubernetes.stream import stream

from tests.agentharness import Agent, agent_session, free_port, wait_for
from tests.e2e.apiserver import ApiServer, api_client

pytestmark = pytest.mark.e2e

ECHO_PORT = 7007
ECHO = f"""
import signal, socket, socketserver, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
socketserver.ThreadingTCPServer.request_queue_size = 256
server = socketserver.ThreadingTCPServer(("127.0.0.1", {ECHO_PORT}), Echo)
print("echo ready", flush=True)
server.serve_forever()
"""


@dataclass(frozen=True)
class Node:
    api: ApiServer
    agent: Agent
    mirror: str

    def kubectl(
        self, *args: str, data: bytes | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [str(self.api.kubectl_path), "--kubeconfig", str(self.api.admin_kubeconfig), *args]
        return subprocess.run(argv, input=data, capture_output=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def node(apiserver: ApiServer) -> Iterator[Node]:
    name = f"nlt-e2e-{secrets.token_hex(3)}"
    cert, key = apiserver.node_serving_cert(name)
    args = [
        "--hostname-override", name,
        "--kubeconfig", str(apiserver.node_kubeconfig(name)),
        "--node-status-update-frequency", "1s",
        "--address", "127.0.0.1",
        "--port", str(free_port()),
        "--tls-cert-file", str(cert),
        "--tls-private-key-file", str(key),
        "--client-ca-file", str(apiserver.ca_path),
        "--authorization-mode", "Webhook",
        "--authentication-token-webhook",
    ]  # fmt: skip
    pod = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: streams, namespace: default}\n"
        "spec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: echo\n"
        f"    image: host\n    command: {json.dumps(['/usr/bin/python3', '-c', ECHO])}\n"
    )
    with agent_session(args) as make:
        agent = make()
        agent.start()
        agent.write_manifest("streams.yaml", pod)
        node = Node(apiserver, agent, f"streams-{name}")

        def running() -> bool:
            for item in agent.get("/pods")["items"]:
                if item["metadata"]["name"] == node.mirror:
                    statuses = item.get("status", {}).get("containerStatuses", [])
                    return bool(statuses) and "running" in statuses[0]["state"]
            return False

        wait_for(running, 30, "the pod running")
        core = CoreV1Api(api_client(apiserver.admin_kubeconfig))

        def mirrored() -> bool:
            try:
                found = core.read_namespaced_pod(node.mirror, "default")
            except Exception:
                return False
            return bool(found.status and found.status.phase == "Running")

        wait_for(mirrored, 30, "the mirror pod Running")
        wait_for(lambda: b"echo ready" in node.kubectl("logs", node.mirror).stdout, 15, "echo")
        yield node


def test_kubectl_exec_hostname_and_exit_code(node: Node) -> None:
    done = node.kubectl("exec", node.mirror, "--", "sh", "-c", "hostname; exit 3")
    assert done.returncode == 3, done.stderr
    assert done.stdout.decode() == node.mirror + "\n"  # the pod's UTS namespace
    assert b"command terminated with exit code 3" in done.stderr


def test_kubectl_exec_stdin_10mb_through_sha256sum(node: Node) -> None:
    data = os.urandom(10 << 20)
    done = node.kubectl("exec", "-i", node.mirror, "--", "sha256sum", data=data, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_kubectl_exec_it_under_a_pty(node: Node) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    script = '[ -t 0 ] && echo IS-""TTY; stty size; exit 4'
    argv = [str(node.api.kubectl_path), "--kubeconfig", str(node.api.admin_kubeconfig), "exec",
            "-it", node.mirror, "--", "sh", "-c", script]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=10)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    assert "IS-TTY" in text and "33 111" in text, text
    assert code == 4, text


def test_python_client_stream_exec_over_websocket(node: Node) -> None:
    core = CoreV1Api(api_client(node.api.admin_kubeconfig))
    resp = stream(
        core.connect_get_namespaced_pod_exec, node.mirror, "default",
        command=["sh", "-c", "hostname; exit 3"], stderr=True, stdin=False, stdout=True,
        tty=False, _preload_content=False,
    )  # fmt: skip
    resp.run_forever(timeout=30)
    assert resp.read_stdout() == node.mirror + "\n"
    assert resp.returncode == 3
    data = os.urandom(1 << 20)
    resp = stream(
        core.connect_get_namespaced_pod_exec, node.mirror, "default", command=["sha256sum"],
        stderr=True, stdin=True, stdout=True, tty=False, _preload_content=False, binary=True,
    )  # fmt: skip
    for start in range(0, len(data), 1 << 16):
        resp.write_stdin(data[start : start + (1 << 16)])
    resp.close_channel(0)  # v5: the end of stdin
    resp.run_forever(timeout=60)
    assert resp.read_stdout().split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert resp.returncode == 0


def test_kubectl_port_forward_100_parallel_connections(node: Node) -> None:
    local = free_port()
    argv = [str(node.api.kubectl_path), "--kubeconfig", str(node.api.admin_kubeconfig),
            "port-forward", f"pod/{node.mirror}", f"{local}:{ECHO_PORT}"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        assert f"Forwarding from 127.0.0.1:{local} -> {ECHO_PORT}" in first, first

        def one(_: int) -> bool:
            payload = os.urandom(1 << 20)
            with socket.create_connection(("127.0.0.1", local), timeout=60) as conn:
                sender = ThreadPoolExecutor(1)
                sent = sender.submit(_send_all, conn, payload)
                received = bytearray()
                while chunk := conn.recv(1 << 16):
                    received += chunk
                sent.result()
                sender.shutdown()
            return bytes(received) == payload

        with ThreadPoolExecutor(100) as pool:
            results = list(pool.map(one, range(100)))
        assert results == [True] * 100
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _send_all(conn: socket.socket, payload: bytes) -> None:
    conn.sendall(payload)
    conn.shutdown(socket.SHUT_WR)
