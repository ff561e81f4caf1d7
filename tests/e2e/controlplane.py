"""The self-hosted control plane: static-pods/control-plane/ rendered for one node, and its PKI.

`make demo-control-plane` and tests/e2e/test_control_plane.py run nodelet on these manifests,
so etcd and kube-apiserver are static pods of the very node they register. The manifests in the
repository carry fixed defaults (DEFAULT_DIR for data and certificates, etcd on 127.0.0.1:2379
and :2380, the API server on 127.0.0.1:6443, the binaries `make envtest` installs); rendering
replaces those strings as text, so a test can use free ports and a temp dir.

    python -m tests.e2e.controlplane setup --dir DIR --node NAME   # PKI, kubeconfigs, manifests
    python -m tests.e2e.controlplane wait --dir DIR --node NAME    # ready, mirror pods Running
    python -m tests.e2e.controlplane stop --dir DIR                # the demo's agent and pods

Processes are only ever signalled by pid, after checking the pid is still what was started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from nodelet.runtime.rundir import read_holder_identity
from tests.e2e.apiserver import DEFAULT_ENVTEST_BIN, Pki, write_kubeconfig

SOURCE = Path(__file__).resolve().parents[2] / "static-pods" / "control-plane"
"""The manifests as the repository holds them, with the defaults below."""
DEFAULT_DIR = Path("/var/lib/nodelet-demo")
DEFAULT_ETCD_PORT, DEFAULT_ETCD_PEER_PORT, DEFAULT_APISERVER_PORT = 2379, 2380, 6443
DEFAULT_ETCD_METRICS_PORT = 2381
DEFAULT_ETCD = Path("/usr/bin/etcd")
PODS = ("etcd", "kube-apiserver")
"""The manifests' pod names; their mirror pods are named `<pod>-<node>`."""
AGENT_PID_NAME = "nodelet.pid"
"""Written by `make demo-control-plane` in the demo dir: the agent's pid."""
STOP_TIMEOUT = 40.0


@dataclass(frozen=True)
class Layout:
    """Where one control plane keeps its files, which ports it serves, which binaries it runs."""

    directory: Path = DEFAULT_DIR
    etcd_port: int = DEFAULT_ETCD_PORT
    etcd_peer_port: int = DEFAULT_ETCD_PEER_PORT
    apiserver_port: int = DEFAULT_APISERVER_PORT
    envtest_bin: Path = DEFAULT_ENVTEST_BIN
    """kube-apiserver and kubectl, as `make envtest` installs them."""
    etcd: Path = DEFAULT_ETCD
    etcd_metrics_port: int = DEFAULT_ETCD_METRICS_PORT
    """etcd's plain-HTTP metrics listener, which its probes GET."""

    @property
    def pki(self) -> Path:
        return self.directory / "pki"

    @property
    def manifests(self) -> Path:
        return self.directory / "manifests"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.directory / "admin.kubeconfig"

    @property
    def node_kubeconfig(self) -> Path:
        return self.directory / "node.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubectl(self) -> Path:
        return self.envtest_bin / "kubectl"


def render(text: str, layout: Layout) -> str:
    """A repository manifest with the layout's paths and ports in place of the defaults."""
    replacements = {
        str(DEFAULT_ENVTEST_BIN): str(layout.envtest_bin),
        str(DEFAULT_ETCD): str(layout.etcd),
        str(DEFAULT_DIR): str(layout.directory),
        f"127.0.0.1:{DEFAULT_ETCD_PORT}": f"127.0.0.1:{layout.etcd_port}",
        f"127.0.0.1:{DEFAULT_ETCD_PEER_PORT}": f"127.0.0.1:{layout.etcd_peer_port}",
        f"127.0.0.1:{DEFAULT_APISERVER_PORT}": f"127.0.0.1:{layout.apiserver_port}",
        f"--secure-port={DEFAULT_APISERVER_PORT}": f"--secure-port={layout.apiserver_port}",
        f"127.0.0.1:{DEFAULT_ETCD_METRICS_PORT}": f"127.0.0.1:{layout.etcd_metrics_port}",
        f"port: {DEFAULT_APISERVER_PORT}\n": f"port: {layout.apiserver_port}\n",
        f"port: {DEFAULT_ETCD_METRICS_PORT}\n": f"port: {layout.etcd_metrics_port}\n",
    }
    for default, value in replacements.items():
        text = text.replace(default, value)
    return text


def rendered_manifests(layout: Layout) -> dict[str, str]:
    """File name -> rendered text, for every manifest in static-pods/control-plane/."""
    return {path.name: render(path.read_text(), layout) for path in sorted(SOURCE.glob("*.yaml"))}


def write_pki(layout: Layout, node: str) -> None:
    """A fresh CA and every certificate the two pods and their clients use, and the admin and
    node kubeconfigs (the node's is `CN=system:node:<node>`, `O=system:nodes`)."""
    pki = Pki(layout.pki)
    pki.issue("etcd-server", "etcd-server", server_names=("127.0.0.1", "localhost"))
    pki.issue("apiserver-etcd-client", "kube-apiserver-etcd-client")
    pki.issue(
        "apiserver",
        "kube-apiserver",
        server_names=(
            "127.0.0.1",
            "localhost",
            "10.96.0.1",  # the `kubernetes` service's IP in --service-cluster-ip-range
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
        ),
    )
    pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",))
    pki.key_pair("service-account")
    admin = pki.issue("admin", "nodelet-demo-admin", ("system:masters",))
    write_kubeconfig(layout.admin_kubeconfig, layout.server, pki.ca_path, *admin, "admin")
    user = f"system:node:{node}"
    node_pair = pki.issue(f"node-{node}", user, ("system:nodes",))
    write_kubeconfig(layout.node_kubeconfig, layout.server, pki.ca_path, *node_pair, user)


def write_manifest(directory: Path, name: str, text: str) -> None:
    """Temp dotfile + rename, so an agent watching the directory never reads half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, directory / name)


STATE = (
    *("etcd", "pki", "manifests", "root", "run", "logs"),
    *("nodelet.log", "admin.kubeconfig", "node.kubeconfig"),
)
"""What a previous demo left in its directory; `setup` removes it, so each demo starts empty."""


def setup(layout: Layout, node: str) -> None:
    """A fresh control plane in `layout.directory`: PKI, kubeconfigs, manifests, no etcd data
    (a previous run's mirror pods and Node would otherwise show their old status)."""
    if demo_agent(layout.directory) is not None or _holders(layout.directory):
        raise SystemExit(f"a demo still runs on {layout.directory}: stop it first")
    for name in STATE:
        path = layout.directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    layout.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_pki(layout, node)
    for name, text in rendered_manifests(layout).items():
        write_manifest(layout.manifests, name, text)


def kubectl(layout: Layout, *args: str, kubeconfig: Path | None = None) -> str | None:
    """kubectl's stdout, or None when it failed (the API server may be down: that is expected)."""
    try:
        done = subprocess.run(
            [
                str(layout.kubectl),
                f"--kubeconfig={kubeconfig or layout.admin_kubeconfig}",
                "--request-timeout=5s",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    return done.stdout if done.returncode == 0 else None


def apiserver_ready(layout: Layout) -> bool:
    return kubectl(layout, "get", "--raw", "/readyz") == "ok"


def mirror_pods(layout: Layout, node: str) -> dict[str, dict[str, Any]]:
    """The control plane's mirror pods by pod name, as the API server reports them."""
    out = kubectl(layout, "get", "pods", "-n", "kube-system", "-o", "json")
    names = {f"{pod}-{node}" for pod in PODS}
    items = json.loads(out)["items"] if out else []
    return {item["metadata"]["name"]: item for item in items if item["metadata"]["name"] in names}


def mirror_pods_running(layout: Layout, node: str) -> bool:
    pods = mirror_pods(layout, node)
    return len(pods) == len(PODS) and all(
        pod.get("status", {}).get("phase") == "Running" for pod in pods.values()
    )


def wait_until(probe: Callable[[], bool], deadline: float, what: str, agent: int | None) -> None:
    """Polls `probe` until `deadline` (monotonic); fails early when the agent `agent` ended."""
    while not probe():
        if agent is not None and not psutil.pid_exists(agent):
            raise SystemExit(f"the agent (pid {agent}) ended while waiting for {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)


def demo_agent(directory: Path) -> int | None:
    """The pid in the demo's pid file if it is still a `nodelet run` on this directory."""
    try:
        pid = int((directory / AGENT_PID_NAME).read_text())
        argv = psutil.Process(pid).cmdline()
    except (OSError, ValueError, psutil.Error):
        return None
    return pid if "run" in argv and str(directory / "manifests") in argv else None


def stop(directory: Path) -> None:
    """Stops the demo as the tests' harness does: with the agent running, remove the manifests
    and let it stop the pods; then SIGTERM the agent; then end any holder left, by its pid."""
    agent = demo_agent(directory)
    pods = directory / "run" / "pods"
    if agent is not None:
        # The API server first: without etcd it would wait out its grace.
        manifests = directory / "manifests"
        for batch in ([manifests / "kube-apiserver.yaml"], sorted(manifests.glob("*.yaml"))):
            for path in batch:
                path.unlink(missing_ok=True)
            _wait_pods_gone(pods, len(list(manifests.glob("*.yaml"))))
        with contextlib.suppress(psutil.NoSuchProcess):
            _terminate([psutil.Process(agent)])
    holders = []
    for holder in _holders(directory):
        with contextlib.suppress(psutil.NoSuchProcess):
            holders += [holder, *holder.children(recursive=True)]
    _terminate(holders)  # a holder's SIGTERM stops its containers with the pod's grace
    (directory / AGENT_PID_NAME).unlink(missing_ok=True)


def _holders(directory: Path) -> list[psutil.Process]:
    """The demo's pod holders still alive (pid and start time as each recorded them)."""
    pods = directory / "run" / "pods"
    found = []
    for pod_dir in pods.iterdir() if pods.is_dir() else []:
        identity = read_holder_identity(pod_dir)
        if identity is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                found.append(psutil.Process(identity["pid"]))
    return found


def _wait_pods_gone(pods: Path, left: int) -> None:
    """Until at most `left` pods keep a run dir (the agent removes it last), or STOP_TIMEOUT."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while pods.exists() and len(list(pods.iterdir())) > left and time.monotonic() < deadline:
        time.sleep(0.2)


def _terminate(processes: list[psutil.Process]) -> None:
    """SIGTERM, then SIGKILL whatever is left after STOP_TIMEOUT; psutil checks pid reuse."""
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=STOP_TIMEOUT)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.controlplane")
    parser.add_argument("command", choices=("setup", "wait", "stop"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--node", default="nodelet-demo")
    parser.add_argument("--envtest-bin", type=Path, default=DEFAULT_ENVTEST_BIN)
    parser.add_argument("--timeout", type=float, default=120.0, help="wait: seconds")
    args = parser.parse_args(argv)
    layout = Layout(directory=args.dir.resolve(), envtest_bin=args.envtest_bin)
    if args.command == "setup":
        setup(layout, args.node)
    elif args.command == "wait":
        deadline, agent = time.monotonic() + args.timeout, demo_agent(layout.directory)
        wait_until(lambda: apiserver_ready(layout), deadline, "the API server's /readyz", agent)
        wait_until(
            lambda: mirror_pods_running(layout, args.node), deadline, "Running mirror pods", agent
        )
    else:
        stop(layout.directory)


if __name__ == "__main__":
    main()
