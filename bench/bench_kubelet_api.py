"""The kubelet API through a real kube-apiserver (issue 17): exec, logs and port-forward figures.

etcd and kube-apiserver 1.20 from tests/e2e/apiserver.py (``make envtest`` builds them) and
Debian's kubectl 1.20 (SPDY/3.1); the agent as ``nodelet run --kubeconfig <node kubeconfig>``
with its kubelet API on loopback, a serving cert from the test CA and Webhook authorization, as
tests/e2e/test_kubelet_stream_e2e.py runs it. One static pod with two containers:

1. ``kubectl exec <mirror> -c serve -- true`` against ``nodelet exec <pod> -c serve -- true``
   on the same container: wall-clock round trip of the whole command, p50/p95 (goal: kubectl
   within 1.5x of nodelet exec);
2. ``kubectl logs <mirror> -c logger`` of a 100 MB log (one million 100-byte lines, written by
   the container at once; timed once the CRI log holds all of it) to /dev/null: MB/s (goal
   >= 100 MB/s); also into a pipe this script reads (and checks the byte count of), and, to
   tell the server path from kubectl's own cost, curl of the same ``pods/log`` URL of the API
   server (kubectl 1.20 reads the answer line by line and writes each line with a write(2) of
   its own, a million system calls here);
3. ``kubectl port-forward`` to a server in the pod that sends 200 MiB on each connection, read
   by this script, against the same server read directly: a socket this script creates inside
   the pod's network namespace (``setns`` on a thread, as the probes do) and connects to the
   pod's 127.0.0.1 (goal >= 50 %).

Each figure is measured NODELET_BENCH_REPEATS times (default 3; the machine may be shared) and
printed with its spread and the load average. Without the envtest binaries the bench prints why
and skips. NODELET_BENCH_RUNS sets the exec round trips per repeat (default 20).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes.client import CoreV1Api

from nodelet.probe.netns import socket_in_netns
from tests.agentharness import Agent, agent_session, free_port, wait_for
from tests.e2e.apiserver import (
    ApiServer,
    EnvtestError,
    api_client,
    find_binaries,
    running_apiserver,
)

RUNS = int(os.environ.get("NODELET_BENCH_RUNS", "20"))
REPEATS = int(os.environ.get("NODELET_BENCH_REPEATS", "3"))
TIMEOUT = 60.0
MB = 1_000_000
"""Rates in MB/s of 10^6 bytes."""
LOG_LINES = 1_000_000  # of 100 bytes (99 + newline): 100 MB
FORWARD_BYTES = 200 << 20
SERVE_PORT = 7100
READ_SIZE = 1 << 20

LOGGER = f"""
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
out = sys.stdout.buffer
block = (b"a" * 99 + b"\\n") * 10000
for _ in range({LOG_LINES} // 10000):
    out.write(block)
out.write(b"logger done\\n")
out.flush()
while True:
    time.sleep(3600)
"""
"""Writes the 100 MB log at once, then a last line that says the log is complete."""

SERVER = f"""
import signal, socket, socketserver, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
chunk = memoryview(bytes({READ_SIZE}))
class Send(socketserver.BaseRequestHandler):
    def handle(self):
        for _ in range({FORWARD_BYTES // READ_SIZE}):
            self.request.sendall(chunk)
        self.request.shutdown(socket.SHUT_WR)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
server = socketserver.ThreadingTCPServer(("127.0.0.1", {SERVE_PORT}), Send)
server.serve_forever()
"""
"""Sends 200 MiB of zeros on every connection, then closes its side."""


def manifest(mark: str) -> str:
    def container(name: str, code: str) -> dict[str, object]:
        return {"name": name, "image": "host", "command": ["/usr/bin/python3", "-c", code, mark]}

    spec = {
        "terminationGracePeriodSeconds": 1,
        "containers": [container("serve", SERVER), container("logger", LOGGER)],
    }
    meta = {"name": "kbench", "namespace": "default"}
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})


class Bench:
    """The agent, its pod's names and the API server's kubectl."""

    def __init__(self, api: ApiServer, agent: Agent, node: str) -> None:
        self.api = api
        self.agent = agent
        self.mirror = f"kbench-{node}"

    def kubectl_argv(self, *args: str) -> list[str]:
        return [str(self.api.kubectl_path), "--kubeconfig", str(self.api.admin_kubeconfig), *args]

    def nodelet_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "nodelet", *args]

    def log_file(self) -> Path:
        for item in self.agent.get("/pods")["items"]:
            if item["metadata"]["name"] == self.mirror:
                return self.agent.log_dir(item, "logger") / "0.log"
        raise AssertionError(f"{self.mirror} is not in the agent's /pods")


def timed(argv: list[str]) -> float:
    began = time.monotonic()
    done = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, check=False)
    took = time.monotonic() - began
    assert done.returncode == 0, f"{argv[:4]}... exited {done.returncode}: {done.stderr!r}"
    return took


def read_all(sock: socket.socket) -> int:
    """Bytes read until the peer closes, into one reused buffer."""
    buffer = bytearray(READ_SIZE)
    total = 0
    while n := sock.recv_into(buffer):
        total += n
    return total


def rate(seconds: float, size: int) -> float:
    return size / MB / seconds


# -- the measurements ---------------------------------------------------------------------------


def exec_round_trips(bench: Bench) -> tuple[list[float], list[float]]:
    """Seconds per round trip, alternating kubectl and nodelet exec so load hits both alike."""
    kubectl = bench.kubectl_argv("exec", bench.mirror, "-c", "serve", "--", "true")
    run_dir = str(bench.agent.run_dir)
    local = bench.nodelet_argv("exec", bench.mirror, "-c", "serve", "--run-dir", run_dir, "--",
                               "true")  # fmt: skip
    timed(kubectl), timed(local)  # warm: page cache, the API server's kubelet connection
    through, direct = [], []
    for _ in range(RUNS):
        through.append(timed(kubectl))
        direct.append(timed(local))
    return through, direct


def logs_counted(bench: Bench) -> tuple[float, int]:
    """MB/s of ``kubectl logs`` of the whole log into a pipe, and the bytes it printed."""
    argv = bench.kubectl_argv("logs", bench.mirror, "-c", "logger")
    began = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    total = 0
    while chunk := os.read(proc.stdout.fileno(), READ_SIZE):
        total += len(chunk)
    code = proc.wait(TIMEOUT)
    took = time.monotonic() - began
    assert code == 0, f"kubectl logs exited {code}"
    return rate(took, total), total


def logs_discarded(argv: list[str]) -> tuple[float, float]:
    """MB/s of a command that writes the 100 MB log to /dev/null, and the CPU seconds it used."""
    began = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.monotonic() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, f"{argv[:4]}... exited {proc.returncode}"
    return rate(took, LOG_LINES * 100), usage.ru_utime + usage.ru_stime


def curl_logs(bench: Bench) -> list[str] | None:
    """curl reading the same log from the API server as kubectl does, with the admin's
    certificate: the server path alone (kubectl 1.20 writes every line with a write(2) of its
    own); None without curl."""
    curl = shutil.which("curl")
    if curl is None:
        return None
    pki = bench.api.pki.directory
    url = f"{bench.api.server}/api/v1/namespaces/default/pods/{bench.mirror}/log?container=logger"
    return [curl, "-sSf", "--cacert", str(bench.api.ca_path), "--cert", str(pki / "admin.crt"),
            "--key", str(pki / "admin.key"), "-o", "/dev/null", url]  # fmt: skip


@contextmanager
def port_forward(bench: Bench) -> Iterator[tuple[int, int]]:
    """kubectl port-forward running: (its local port, its pid)."""
    local = free_port()
    argv = bench.kubectl_argv("port-forward", f"pod/{bench.mirror}", f"{local}:{SERVE_PORT}")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        assert f"-> {SERVE_PORT}" in first, first
        yield local, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def forward_rate(local: int) -> float:
    with socket.create_connection(("127.0.0.1", local), timeout=TIMEOUT) as conn:
        began = time.monotonic()
        total = read_all(conn)
        took = time.monotonic() - began
    assert total == FORWARD_BYTES, f"port-forward gave {total} of {FORWARD_BYTES} bytes"
    return rate(took, total)


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far."""
    times = {name: psutil.Process(pid).cpu_times() for name, pid in pids.items()}
    return {name: t.user + t.system for name, t in times.items()}


class PathCost:
    """CPU seconds per MB that each process on a path spent, summed over runs: how fast the
    path could go with every core of the machine and nothing else running."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.megabytes = 0.0

    def add(self, spent: dict[str, float], size: int) -> None:
        for name, seconds in spent.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.megabytes += size / 1e6

    def per_mb(self, name: str) -> float:
        return self.seconds[name] / self.megabytes

    def ceiling(self, names: list[str]) -> float:
        """MB/s at which ``names`` alone would use all of this machine's cores."""
        return (os.cpu_count() or 1) / sum(self.per_mb(name) for name in names)

    def report(self, outside: list[str]) -> str:
        names = list(self.seconds)
        return ("CPU per MB: "
                + ", ".join(f"{name} {self.per_mb(name) * 1e3:.2f} ms" for name in names)
                + f"; all {os.cpu_count()} cores would carry at most {self.ceiling(names):.0f} "
                f"MB/s through them, {self.ceiling(outside):.0f} MB/s through "
                f"{' and '.join(outside)} alone")  # fmt: skip


def direct_rate(netns: str) -> float:
    with socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM) as conn:
        conn.settimeout(TIMEOUT)
        conn.connect(("127.0.0.1", SERVE_PORT))
        began = time.monotonic()
        total = read_all(conn)
        took = time.monotonic() - began
    assert total == FORWARD_BYTES, f"the direct connection gave {total} of {FORWARD_BYTES} bytes"
    return rate(took, total)


# -- setup and report ---------------------------------------------------------------------------


def pid_with(mark: str, code: str) -> int:
    """The pid of the container process started with ``code`` and ``mark`` in its argv."""

    def find() -> int | None:
        for proc in psutil.Process().children(recursive=True):
            try:
                argv = proc.cmdline()
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            if mark in argv and code in argv:
                return proc.pid
        return None

    return wait_for(find, TIMEOUT, "the pod's server process")


def log_complete(path: Path) -> bool:
    try:
        with path.open("rb") as log:
            log.seek(max(0, path.stat().st_size - 200))
            return log.read().endswith(b" logger done\n")
    except FileNotFoundError:
        return False


def load() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def spread(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}"


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(name: str, step: Callable[[], str]) -> None:
    for n in range(REPEATS):
        print(f"  {name} {n + 1}/{REPEATS}: {step()} (load {load()})", flush=True)


def start(api: ApiServer, node: str, make: Callable[[], Agent]) -> Bench:
    cert, key = api.node_serving_cert(node)
    agent = make()
    config = agent.base / "kbench-config.yaml"  # one log file holds all 100 MB (and its stamps)
    config.write_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
                      "containerLogMaxSize: 256Mi\n")  # fmt: skip
    agent.extra_args += [
        "--config", str(config),
        "--hostname-override", node,
        "--address", "127.0.0.1",
        "--port", str(free_port()),
        "--tls-cert-file", str(cert),
        "--tls-private-key-file", str(key),
        "--client-ca-file", str(api.ca_path),
        "--authorization-mode", "Webhook",
        "--authentication-token-webhook",
    ]  # fmt: skip
    agent.start()
    return Bench(api, agent, node)


def main() -> None:
    try:
        binaries = find_binaries()
    except EnvtestError as err:  # `make bench` runs every bench; this one needs `make envtest`
        print(f"skipped: {err}")
        return
    node = f"nlt-kbench-{secrets.token_hex(3)}"
    mark = f"nlt-kbench-{secrets.token_hex(4)}"
    with running_apiserver(binaries) as api:
        args = ["--kubeconfig", str(api.node_kubeconfig(node))]
        with agent_session(args, show_log=False) as make:
            bench = start(api, node, make)
            bench.agent.write_manifest("kbench.json", manifest(mark))
            core = CoreV1Api(api_client(api.admin_kubeconfig))

            def mirrored() -> bool:
                try:
                    pod = core.read_namespaced_pod(bench.mirror, "default")
                except Exception:
                    return False
                return bool(pod.status and pod.status.phase == "Running")

            wait_for(mirrored, TIMEOUT, "the mirror pod Running")
            wait_for(lambda: log_complete(bench.log_file()), TIMEOUT, "the 100 MB log written")
            netns = f"/proc/{pid_with(mark, SERVER)}/ns/net"
            print(f"nodelet against kube-apiserver {'.'.join(map(str, api.version))}, "
                  f"kubectl 1.20 (SPDY); load at start {load()}", flush=True)  # fmt: skip
            run(bench, netns)


def run(bench: Bench, netns: str) -> None:
    ratios: list[float] = []
    assert bench.agent.proc is not None
    agent_pid = bench.agent.proc.pid

    def exec_step() -> str:
        through, direct = exec_round_trips(bench)
        k50, n50 = statistics.median(through) * 1000, statistics.median(direct) * 1000
        k95, n95 = percentile(through, 0.95) * 1000, percentile(direct, 0.95) * 1000
        ratios.append(k50 / n50)
        return (f"kubectl exec p50 {k50:.0f} ms p95 {k95:.0f} ms; nodelet exec p50 {n50:.0f} ms "
                f"p95 {n95:.0f} ms; ratio {k50 / n50:.2f}x")  # fmt: skip

    measure(f"exec -- true ({RUNS} each)", exec_step)
    print(f"exec round trip, kubectl / nodelet exec p50: {min(ratios):.2f}-{max(ratios):.2f}x "
          f"(goal <= 1.5x): {verdict(statistics.median(ratios) <= 1.5)}", flush=True)  # fmt: skip

    rates: list[float] = []
    counted: list[float] = []
    curled: list[float] = []
    curl = curl_logs(bench)
    kubectl = bench.kubectl_argv("logs", bench.mirror, "-c", "logger")

    logs_cost = PathCost()
    servers = {"agent": agent_pid, "kube-apiserver": bench.api.apiserver_pid}

    def logs_step() -> str:
        mbs, size = logs_counted(bench)
        assert size == LOG_LINES * 100 + len(b"logger done\n"), f"kubectl logs printed {size} B"
        counted.append(mbs)
        before = cpu_seconds(servers)
        mbs, kubectl_cpu = logs_discarded(kubectl)
        after = cpu_seconds(servers)
        rates.append(mbs)
        spent = {name: after[name] - before[name] for name in servers} | {"kubectl": kubectl_cpu}
        logs_cost.add(spent, size)
        text = f"kubectl logs > /dev/null {rates[-1]:.0f} MB/s, into a pipe {mbs:.0f} MB/s"
        if curl is not None:
            curled.append(logs_discarded(curl)[0])
            text += f", curl of the API server's pods/log {curled[-1]:.0f} MB/s"
        return text

    measure("logs of 100 MB in 100-byte lines", logs_step)
    print(f"kubectl logs of 100 MB: {spread(rates)} MB/s to /dev/null, {spread(counted)} MB/s "
          f"into a pipe (goal >= 100 MB/s): {verdict(statistics.median(rates) >= 100)}"
          + (f"; curl through the API server {spread(curled)} MB/s" if curled else ""),
          flush=True)  # fmt: skip
    print(
        f"  kubectl logs to /dev/null, {logs_cost.report(['kube-apiserver', 'kubectl'])}; "
        f"kubectl {1 / logs_cost.per_mb('kubectl'):.0f} MB/s per core of its own",
        flush=True,
    )

    forwarded: list[float] = []
    direct: list[float] = []
    cost = PathCost()

    def forward_step() -> str:
        direct.append(direct_rate(netns))
        with port_forward(bench) as (local, kubectl_pid):
            pids = {"agent": agent_pid, "kube-apiserver": bench.api.apiserver_pid,
                    "kubectl": kubectl_pid}  # fmt: skip
            before = cpu_seconds(pids)
            forwarded.append(forward_rate(local))
            after = cpu_seconds(pids)
            cost.add({name: after[name] - before[name] for name in pids}, FORWARD_BYTES)
        return (f"port-forward {forwarded[-1]:.0f} MB/s, "
                f"direct in the pod's netns {direct[-1]:.0f} MB/s")  # fmt: skip

    measure("200 MiB from a server in the pod", forward_step)
    share = statistics.median(forwarded) / statistics.median(direct) * 100
    print(f"port-forward: {spread(forwarded)} MB/s, direct loopback {spread(direct)} MB/s, "
          f"{share:.0f} % (goal >= 50 %): {verdict(share >= 50)}", flush=True)  # fmt: skip
    print(f"  port-forward, {cost.report(['kube-apiserver', 'kubectl'])} (50 % of direct: "
          f"{statistics.median(direct) / 2:.0f} MB/s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
