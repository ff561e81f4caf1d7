"""The self-hosted control plane: nodelet runs etcd and kube-apiserver (static-pods/control-plane/)
as static pods and, with `--kubeconfig`, registers with the API server it runs itself.

Root: the agent makes real pods. Rendered with free ports into an `nlt-` temp dir; the agent
harness stops the agent and every process the test started, by pid, even when a test fails.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from nodelet.runtime import journal
from tests.agentharness import NODE, Agent, agent_session, free_port, wait_for
from tests.e2e.apiserver import EnvtestError, find_binaries
from tests.e2e.controlplane import (
    Layout,
    apiserver_ready,
    kubectl,
    mirror_pods,
    mirror_pods_running,
    rendered_manifests,
    write_pki,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 60.0
BACKOFF = ["--crashloop-backoff-initial", "1s", "--crashloop-backoff-max", "8s"]
"""The API server may start before etcd answers and exit; a short back-off retries it soon."""


@contextlib.contextmanager
def control_plane(with_kubeconfig: bool) -> Iterator[tuple[Agent, Layout]]:
    """An agent running the rendered control plane; with `with_kubeconfig`, the node's
    kubeconfig for that same API server is passed as `--kubeconfig`."""
    try:
        binaries = find_binaries()
    except EnvtestError as error:
        pytest.fail(str(error), pytrace=False)
    ports: set[int] = set()
    while len(ports) < 4:
        ports.add(free_port())
    etcd_port, peer_port, apiserver_port, metrics_port = sorted(ports)
    work = Path(tempfile.mkdtemp(prefix="nlt-"))
    try:
        layout = Layout(
            work, etcd_port, peer_port, apiserver_port, binaries.kubectl.parent,
            etcd_metrics_port=metrics_port,
        )  # fmt: skip
        write_pki(layout, NODE)
        args = BACKOFF + (["--kubeconfig", str(layout.node_kubeconfig)] if with_kubeconfig else [])
        args += ["--host-image-root", "Overlay"]  # the agent's default: kubeadm's pods run on it
        with agent_session(args) as make:
            agent = make()
            for name, text in rendered_manifests(layout).items():
                agent.write_manifest(name, text)
            agent.start()
            try:
                yield agent, layout
            finally:
                _stop_apiserver_first(agent)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stop_apiserver_first(agent: Agent) -> None:
    """With etcd still up the API server stops within a second; without, it takes its grace."""
    if not agent.alive():
        return
    (agent.manifests / "kube-apiserver.yaml").unlink(missing_ok=True)
    with contextlib.suppress(AssertionError, OSError):
        wait_for(lambda: agent.pod("kube-apiserver") is None, 20, "kube-apiserver removed")


def restarts(agent: Agent, pod: str) -> int | None:
    status = agent.container_status(pod, pod)
    return None if status is None else int(status["restartCount"])


def running_pids(agent: Agent, name: str) -> list[int]:
    """The running container's pid, as the pod's holder journals it (tests print nothing)."""
    pod = agent.pod(name)
    assert pod is not None
    records = journal.read_journals(agent.run_dir / "pods" / pod["metadata"]["uid"])
    return [r.pid for r in records if r.name == name and r.running]


def etcd_pids(agent: Agent) -> list[int]:
    return running_pids(agent, "etcd")


def container_ready(agent: Agent, name: str) -> bool:
    """The pod's one container (named as the pod) is ready."""
    return (agent.container_status(name, name) or {}).get("ready") is True


def kubeadm_security(pid: int) -> bool:
    """kubeadm's manifests ask for seccomp RuntimeDefault: filtered, containerd's 14 caps."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return fields["Seccomp"].strip() == "2" and int(fields["CapEff"], 16) == 0xA80425FB


def kill_etcd(agent: Agent, layout: Layout) -> int:
    """SIGKILL to etcd's process; returns its pid."""
    (pid,) = etcd_pids(agent)
    assert psutil.Process(pid).cmdline()[0] == str(layout.etcd)
    os.kill(pid, signal.SIGKILL)
    return pid


def both_running(agent: Agent) -> bool:
    return bool(agent.running("etcd") and agent.running("kube-apiserver"))


def test_control_plane_runs_as_static_pods_and_etcd_restarts() -> None:
    """No API connection needed: the pods run, serve, and etcd comes back with its data."""
    with control_plane(with_kubeconfig=False) as (agent, layout):
        wait_for(lambda: both_running(agent), TIMEOUT, "etcd and kube-apiserver running")
        wait_for(lambda: apiserver_ready(layout), TIMEOUT, "/readyz ok through kubectl")
        for name in ("etcd", "kube-apiserver"):
            (pid,) = running_pids(agent, name)
            assert kubeadm_security(pid), f"{name} runs without kubeadm's securityContext"
            # Its startup and readiness probes (HTTPS /livez, /readyz for the API server) pass.
            wait_for(functools.partial(container_ready, agent, name), TIMEOUT,
                     f"{name} ready by its probes")  # fmt: skip
            assert (agent.container_status(name, name) or {}).get("started") is True
        wait_for(lambda: kubectl(layout, "create", "namespace", "before-kill"), TIMEOUT,
                 "a namespace created")  # fmt: skip
        killed = kill_etcd(agent, layout)
        wait_for(lambda: restarts(agent, "etcd") == 1 and both_running(agent), TIMEOUT,
                 "etcd restarted by nodelet")  # fmt: skip
        assert killed not in etcd_pids(agent)
        wait_for(lambda: apiserver_ready(layout), TIMEOUT, "/readyz ok again")
        assert kubectl(layout, "get", "namespace", "before-kill") is not None, (
            "etcd's data lives on its hostPath volume across the restart"
        )


# Needs `nodelet run --kubeconfig` (Node registration and mirror pods): fails until it exists.
def test_control_plane_registers_with_its_own_apiserver() -> None:
    with control_plane(with_kubeconfig=True) as (agent, layout):
        wait_for(lambda: apiserver_ready(layout), TIMEOUT, "/readyz ok through kubectl")
        node = wait_for(lambda: kubectl(layout, "get", "node", NODE, "-o", "json"), TIMEOUT,
                        f"Node {NODE} registered")  # fmt: skip
        assert json.loads(node)["metadata"]["name"] == NODE
        wait_for(lambda: mirror_pods_running(layout, NODE), TIMEOUT, "mirror pods Running")
        listing = kubectl(layout, "get", "pods", "-A")
        assert listing is not None
        for pod in ("etcd", "kube-apiserver"):
            assert f"{pod}-{NODE}" in listing
            mirror = mirror_pods(layout, NODE)[f"{pod}-{NODE}"]
            assert "kubernetes.io/config.mirror" in mirror["metadata"]["annotations"]

        kill_etcd(agent, layout)
        wait_for(lambda: restarts(agent, "etcd") == 1 and both_running(agent), TIMEOUT,
                 "etcd restarted by nodelet")  # fmt: skip
        wait_for(lambda: apiserver_ready(layout), TIMEOUT, "/readyz ok again")

        def mirror_restarts() -> int:
            mirror: dict[str, Any] = mirror_pods(layout, NODE).get(f"etcd-{NODE}", {})
            statuses = mirror.get("status", {}).get("containerStatuses", [])
            return max((int(s.get("restartCount", 0)) for s in statuses), default=0)

        wait_for(mirror_restarts, TIMEOUT, "the etcd mirror pod's restartCount >= 1")
