"""The cluster sees nodelet: its Node, Lease, mirror pods, their status and Events, read back
through kubectl and the official client from a real kube-apiserver that holds the agent to the
Node authorizer and NodeRestriction (the agent has nothing but the node's own certificate).

Each test runs its own node name, so mirrors and Events of one never meet another's.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from tests.agentharness import Agent, agent_session, free_port, wait_for
from tests.e2e.apiserver import ApiServer, api_client, find_binaries, running_apiserver

pytestmark = pytest.mark.e2e

Json = dict[str, Any]

SLEEPER = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "print('pid=' + os.readlink('/proc/self'), flush=True)\n"
    "time.sleep(3600)\n"
)
CRASH_ONCE = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "print('pid=' + os.readlink('/proc/self'), flush=True)\n"
    "trigger, done = sys.argv[1], sys.argv[1] + '.done'\n"
    "while not os.path.exists(done):\n"
    "    if os.path.exists(trigger):\n"
    "        open(done, 'w').close()\n"
    "        sys.exit(3)\n"
    "    time.sleep(0.02)\n"
    "time.sleep(3600)\n"
)


def manifest(name: str, *containers: str, host_network: bool = False, env: str = "") -> str:
    """A pod of python3 containers on the host image, each running ``containers[i]`` code
    (a trailing ``|arg`` is passed as argv[1])."""
    lines = [
        "apiVersion: v1",
        "kind: Pod",
        f"metadata: {{name: {name}, namespace: default}}",
        "spec:",
        "  terminationGracePeriodSeconds: 1",
        f"  hostNetwork: {'true' if host_network else 'false'}",
        "  containers:",
    ]
    for index, spec in enumerate(containers):
        code, _, arg = spec.partition("|")
        command = ["/usr/bin/python3", "-c", code, *([arg] if arg else [])]
        lines.append(f"  - name: c{index}")
        lines.append("    image: host")
        lines.append(f"    command: {json.dumps(command)}")
        if env:
            lines.append(f"    env: [{{name: VERSION, value: {json.dumps(env)}}}]")
    return "\n".join(lines) + "\n"


class Cluster:
    """One node's view: the agent, its node name and the API server, read as an admin."""

    def __init__(self, api: ApiServer, agent: Agent, node: str) -> None:
        self.api = api
        self.agent = agent
        self.node = node
        self.core = CoreV1Api(api_client(api.admin_kubeconfig))

    def mirror(self, name: str) -> Any | None:
        """The mirror pod of manifest pod ``name`` (a typed V1Pod), None when absent."""
        try:
            return self.core.read_namespaced_pod(f"{name}-{self.node}", "default")
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def mirror_json(self, name: str) -> Json | None:
        done = self.api.kubectl("get", "pod", f"{name}-{self.node}", "-o", "json", check=False)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def local(self, name: str) -> Json | None:
        for item in self.agent.get("/pods")["items"]:
            if item["metadata"]["name"] == f"{name}-{self.node}":
                found: Json = item
                return found
        return None

    def running_mirror(self, name: str, ready: int) -> Any | None:
        pod = self.mirror(name)
        if pod is None or pod.status is None or pod.status.phase != "Running":
            return None
        statuses = pod.status.container_statuses or []
        return pod if sum(1 for s in statuses if s.ready) == ready else None

    def pid(self, name: str, container: str, attempt: int = 0) -> int:
        """The host pid the container's ``attempt`` printed to its log."""
        pod = wait_for(lambda: self.local(name), 10, f"{name} in the local API")
        return int(self.agent.log_value(pod, container, "pid", attempt))

    def node_json(self) -> Json | None:
        done = self.api.kubectl("get", "node", self.node, "-o", "json", check=False)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def events(self, **selector: str) -> list[Json]:
        fields = ",".join(f"{key}={value}" for key, value in selector.items())
        done = self.api.kubectl("get", "events", "-A", "--field-selector", fields, "-o", "json")
        items: list[Json] = json.loads(done.stdout)["items"]
        return items

    def agent_log(self) -> str:
        return self.agent.output.read_text(errors="replace")


def new_node() -> str:
    return f"nlt-e2e-{secrets.token_hex(3)}"


def agent_args(api: ApiServer, node: str, *extra: str) -> list[str]:
    return [
        "--hostname-override", node,
        "--kubeconfig", str(api.node_kubeconfig(node)),
        *extra,
    ]  # fmt: skip


@pytest.fixture
def cluster(apiserver: ApiServer) -> Iterator[Cluster]:
    node = new_node()
    # The kubelet API on a port of its own (the harness turns it off): the Node advertises it.
    serving = ["--port", str(free_port()), "--address", "127.0.0.1"]
    args = agent_args(apiserver, node, "--node-status-update-frequency", "1s", *serving)
    with agent_session(args) as make:
        agent = make()
        agent.start()
        yield Cluster(apiserver, agent, node)


def kubelet_port(agent: Agent) -> int:
    """The agent's ``--port`` (the last one given wins, as argparse takes it)."""
    args = agent.extra_args
    return int(args[len(args) - 1 - args[::-1].index("--port") + 1])


def assert_no_refusals(cluster: Cluster) -> None:
    """NodeRestriction and the Node authorizer accepted every write the agent made."""
    log = cluster.agent_log()
    assert "API server refused" not in log, log[-3000:]


def test_node_registered_ready_and_lease_renewed(cluster: Cluster) -> None:
    def ready() -> Json | None:
        node = cluster.node_json()
        conditions = {
            c["type"]: c for c in ((node or {}).get("status") or {}).get("conditions", [])
        }
        return node if conditions.get("Ready", {}).get("status") == "True" else None

    node = wait_for(ready, 15, "the Node Ready")
    labels = node["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == cluster.node
    assert labels["kubernetes.io/os"] == "linux"
    assert labels["kubernetes.io/arch"] in ("amd64", "arm64")
    status = node["status"]
    assert status["addresses"][0] == {"type": "InternalIP", "address": "127.0.0.1"}
    assert status["addresses"][1]["type"] == "Hostname"
    assert status["capacity"]["pods"] == "110"
    assert int(status["capacity"]["cpu"]) == os.cpu_count()
    assert "nodelet" in status["nodeInfo"]["kubeletVersion"]
    assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] == kubelet_port(cluster.agent)
    conditions = [c["type"] for c in status["conditions"]]
    assert conditions == ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
    assert all(c["status"] == "False" for c in status["conditions"][:3])
    table = cluster.api.kubectl("get", "nodes", cluster.node).stdout
    assert " Ready " in table and "nodelet" in table
    # Heartbeats: the status every second (--node-status-update-frequency 1s).
    beat = next(c for c in status["conditions"] if c["type"] == "Ready")["lastHeartbeatTime"]
    wait_for(
        lambda: (
            next(
                c
                for c in (cluster.node_json() or {})["status"]["conditions"]
                if c["type"] == "Ready"
            )["lastHeartbeatTime"]
            != beat
        ),
        5,
        "a newer Node heartbeat",
        interval=0.3,
    )

    def lease() -> Json | None:
        done = cluster.api.kubectl(
            "get", "lease", cluster.node, "-n", "kube-node-lease", "-o", "json", check=False
        )
        return json.loads(done.stdout) if done.returncode == 0 else None

    first = wait_for(lease, 10, "the node's Lease")
    assert first["spec"]["holderIdentity"] == cluster.node
    assert first["spec"]["leaseDurationSeconds"] == 40
    owner = first["metadata"]["ownerReferences"]
    assert owner == [
        {"apiVersion": "v1", "kind": "Node", "name": cluster.node, "uid": node["metadata"]["uid"]}
    ]
    renewed = wait_for(
        lambda: (lease() or {}).get("spec", {}).get("renewTime") != first["spec"]["renewTime"],
        14,
        "the Lease renewed (every 10 s)",
        interval=0.5,
    )
    assert renewed
    assert_no_refusals(cluster)


def test_mirror_pod_of_a_two_container_pod(cluster: Cluster) -> None:
    cluster.agent.write_manifest("web.yaml", manifest("web", SLEEPER, SLEEPER, host_network=True))
    wait_for(lambda: cluster.running_mirror("web", 2), 15, "the mirror Running 2/2")
    row = cluster.api.kubectl("get", "pods", "-o", "wide", "--no-headers").stdout
    line = next(ln for ln in row.splitlines() if ln.startswith(f"web-{cluster.node} "))
    cells = line.split()
    assert cells[1:3] == ["2/2", "Running"], line
    assert "127.0.0.1" in cells and cluster.node in cells, line

    mirror = cluster.mirror_json("web")
    assert mirror is not None
    local = cluster.local("web")
    assert local is not None
    uid = local["metadata"]["uid"]
    annotations = mirror["metadata"]["annotations"]
    assert annotations["kubernetes.io/config.mirror"] == uid
    assert annotations["kubernetes.io/config.hash"] == uid
    assert annotations["kubernetes.io/config.source"] == "file"
    assert annotations["kubernetes.io/config.seen"]
    node = cluster.node_json()
    assert node is not None
    assert mirror["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "name": cluster.node,
            "uid": node["metadata"]["uid"],
            "controller": True,
        }
    ]
    assert mirror["spec"]["nodeName"] == cluster.node
    status = mirror["status"]
    assert status["podIP"] == "127.0.0.1" and status["hostIP"] == "127.0.0.1"
    assert status["qosClass"] == "BestEffort" and status["startTime"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready"):
        assert conditions[kind] == "True", conditions
    for st in status["containerStatuses"]:
        assert st["started"] is True and st["ready"] is True
        assert st["containerID"].startswith("nodelet://") and st["image"] == "host"
        assert "running" in st["state"]
    # What happened, as `kubectl describe pod` tells it.
    reasons = wait_for(
        lambda: (
            found
            if {"Created", "Started"}
            <= (
                found := {
                    e["reason"]
                    for e in cluster.events(**{"involvedObject.name": f"web-{cluster.node}"})
                }
            )
            else None
        ),
        10,
        "Created and Started events",
        interval=0.3,
    )
    assert reasons
    described = cluster.api.kubectl("describe", "pod", f"web-{cluster.node}").stdout
    assert "Started container c0" in described and "Started container c1" in described
    wait_for(lambda: (cluster.local("web") or {}).get("mirror") == "Synced", 5, "MIRROR Synced")
    table = subprocess.run(
        [sys.executable, "-m", "nodelet", "pods", "--run-dir", str(cluster.agent.run_dir)],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert table.splitlines()[0].split()[-1] == "MIRROR"
    row = next(ln for ln in table.splitlines() if f"web-{cluster.node}" in ln)
    assert row.split()[-1] == "Synced", table
    assert_no_refusals(cluster)


def test_deleted_mirror_is_recreated_within_a_second_and_the_containers_keep_running(
    cluster: Cluster,
) -> None:
    cluster.agent.write_manifest("keep.yaml", manifest("keep", SLEEPER, SLEEPER))
    first = wait_for(lambda: cluster.running_mirror("keep", 2), 15, "the mirror Running")
    pids = [cluster.pid("keep", "c0"), cluster.pid("keep", "c1")]
    started = time.monotonic()
    cluster.api.kubectl("delete", "pod", f"keep-{cluster.node}", "--wait=false")

    def replaced() -> Any | None:
        pod = cluster.mirror("keep")
        return pod if pod is not None and pod.metadata.uid != first.metadata.uid else None

    wait_for(replaced, 5, "a new mirror", interval=0.02)
    elapsed = time.monotonic() - started
    assert elapsed <= 1.0, f"mirror re-created after {elapsed:.2f}s"
    wait_for(lambda: cluster.running_mirror("keep", 2), 5, "the new mirror Running")
    for pid in pids:
        os.kill(pid, 0)  # still the same processes
    local = cluster.local("keep")
    assert local is not None
    assert [s["restartCount"] for s in local["status"]["containerStatuses"]] == [0, 0]
    assert [cluster.pid("keep", "c0"), cluster.pid("keep", "c1")] == pids
    assert_no_refusals(cluster)


def test_a_crash_shows_in_restart_count_and_last_state(cluster: Cluster) -> None:
    trigger = cluster.agent.base / "crash-trigger"
    cluster.agent.write_manifest("crashy.yaml", manifest("crashy", f"{CRASH_ONCE}|{trigger}"))
    wait_for(lambda: cluster.running_mirror("crashy", 1), 15, "the mirror Running")
    trigger.touch()

    def restarted() -> Any | None:
        pod = cluster.mirror("crashy")
        statuses = (pod.status.container_statuses or []) if pod and pod.status else []
        return statuses[0] if statuses and statuses[0].restart_count == 1 else None

    status = wait_for(restarted, 5, "restartCount 1 in the API", interval=0.02)
    terminated = status.last_state.terminated
    assert terminated is not None and terminated.exit_code == 3
    assert terminated.reason == "Error"
    wait_for(lambda: cluster.running_mirror("crashy", 1), 5, "Running again")
    assert_no_refusals(cluster)


def test_edit_replaces_the_mirror_and_removal_deletes_it(cluster: Cluster) -> None:
    path = cluster.agent.write_manifest("edit.yaml", manifest("edit", SLEEPER, env="1"))
    old = wait_for(lambda: cluster.running_mirror("edit", 1), 15, "the mirror Running")
    old_hash = old.metadata.annotations["kubernetes.io/config.mirror"]
    cluster.agent.write_manifest("edit.yaml", manifest("edit", SLEEPER, env="2"))

    def replaced() -> Any | None:
        pod = cluster.running_mirror("edit", 1)
        if pod is None or pod.metadata.annotations["kubernetes.io/config.mirror"] == old_hash:
            return None
        return pod

    new = wait_for(replaced, 15, "a mirror with the new hash")
    local = cluster.local("edit")
    assert local is not None
    assert new.metadata.annotations["kubernetes.io/config.mirror"] == local["metadata"]["uid"]
    assert new.metadata.uid != old.metadata.uid
    assert new.spec.containers[0].env[0].value == "2"
    path.unlink()
    wait_for(lambda: cluster.mirror("edit") is None, 10, "the mirror deleted")
    assert_no_refusals(cluster)


def test_manifest_is_the_truth_over_api_edits(cluster: Cluster) -> None:
    """A mirror edited through the API does not change the pod, and a status someone else
    wrote is put right by the next resync (10 s)."""
    cluster.agent.write_manifest("truth.yaml", manifest("truth", SLEEPER))
    wait_for(lambda: cluster.running_mirror("truth", 1), 15, "the mirror Running")
    pid = cluster.pid("truth", "c0")
    name = f"truth-{cluster.node}"
    cluster.api.kubectl("label", "pod", name, "edited=yes")
    # kubectl 1.20 cannot write a status (no --subresource): the client can.
    cluster.core.patch_namespaced_pod_status(
        name, "default", {"status": {"phase": "Failed"}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    wait_for(lambda: cluster.running_mirror("truth", 1), 15, "the drift repaired (resync 10 s)")
    local = cluster.local("truth")
    assert local is not None and local["status"]["phase"] == "Running"
    assert "edited" not in (local["metadata"].get("labels") or {})
    assert cluster.pid("truth", "c0") == pid


def test_stale_mirror_from_before_is_deleted_and_the_node_taken_over(apiserver: ApiServer) -> None:
    node = new_node()
    node_api = CoreV1Api(api_client(apiserver.node_kubeconfig(node)))
    # As an earlier agent left them: the Node, and a mirror of a manifest that is gone.
    created = node_api.create_node(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}  # type: ignore[arg-type]
    )
    assert created.metadata is not None
    node_uid = created.metadata.uid
    ghost = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"ghost-{node}",
            "namespace": "default",
            "annotations": {"kubernetes.io/config.mirror": "0" * 32},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid,
                 "controller": True}
            ],
        },
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "host"}]},
    }  # fmt: skip
    node_api.create_namespaced_pod("default", ghost)  # type: ignore[arg-type]
    with agent_session(agent_args(apiserver, node)) as make:
        agent = make()
        agent.write_manifest("live.yaml", manifest("live", SLEEPER))
        agent.start()
        cluster = Cluster(apiserver, agent, node)
        wait_for(lambda: cluster.running_mirror("live", 1), 15, "the live pod's mirror")
        wait_for(lambda: cluster.mirror("ghost") is None, 10, "the stale mirror deleted")
        found = cluster.node_json()
        assert found is not None and found["metadata"]["uid"] == node_uid
        nodes = json.loads(apiserver.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        assert [n["metadata"]["name"] for n in nodes].count(node) == 1
        assert found["metadata"]["labels"]["kubernetes.io/hostname"] == node
        assert_no_refusals(cluster)


def test_deleted_node_is_registered_again_with_its_mirrors(cluster: Cluster) -> None:
    cluster.agent.write_manifest("stay.yaml", manifest("stay", SLEEPER))
    before = wait_for(lambda: cluster.running_mirror("stay", 1), 15, "the mirror Running")
    old_node = cluster.node_json()
    assert old_node is not None
    pid = cluster.pid("stay", "c0")
    cluster.api.kubectl("delete", "node", cluster.node)

    def reregistered() -> Json | None:
        node = cluster.node_json()
        return node if node and node["metadata"]["uid"] != old_node["metadata"]["uid"] else None

    node = wait_for(reregistered, 10, "the Node registered again")

    def owned_by_new_node() -> Any | None:
        pod = cluster.running_mirror("stay", 1)
        if pod is None or pod.metadata.owner_references[0].uid != node["metadata"]["uid"]:
            return None
        return pod

    after = wait_for(owned_by_new_node, 10, "the mirror owned by the new Node")
    assert after.metadata.uid != before.metadata.uid
    assert cluster.pid("stay", "c0") == pid
    os.kill(pid, 0)


def test_rejected_manifest_is_a_warning_event_on_the_node(cluster: Cluster) -> None:
    cluster.agent.write_manifest(
        "typo.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: typo}\nspec:\n"
        "  containers: [{name: c, image: host, comand: [/bin/true]}]\n",
    )

    def warning() -> Json | None:
        for event in cluster.events(**{"involvedObject.kind": "Node"}):
            if (
                event["involvedObject"]["name"] == cluster.node
                and event["reason"] == "ManifestRejected"
            ):
                return event
        return None

    event = wait_for(warning, 15, "a ManifestRejected event on the Node", interval=0.5)
    assert event["type"] == "Warning"
    assert "typo.yaml" in event["message"] and "comand" in event["message"]
    described = cluster.api.kubectl("describe", "node", cluster.node).stdout
    assert "ManifestRejected" in described


def test_agent_starts_while_the_api_server_is_unreachable(apiserver: ApiServer) -> None:
    """Pods never wait for the API server: with a kubeconfig pointing nowhere, the agent starts
    and runs its pods."""
    node = new_node()
    kubeconfig = Path(str(apiserver.node_kubeconfig(node)))
    text = kubeconfig.read_text()
    dead = text.replace(apiserver.server, "https://127.0.0.1:9")  # discard port: refused
    with agent_session(["--hostname-override", node]) as make:
        agent = make()
        unreachable = agent.base / "unreachable.kubeconfig"
        unreachable.write_text(dead)
        unreachable.chmod(0o600)
        agent.extra_args.extend(["--kubeconfig", str(unreachable)])
        agent.write_manifest("alone.yaml", manifest("alone", SLEEPER))
        agent.start()
        cluster = Cluster(apiserver, agent, node)
        pid = cluster.pid("alone", "c0")
        os.kill(pid, 0)
        local = cluster.local("alone")
        assert local is not None and local["status"]["phase"] == "Running"
        assert local["mirror"] == "Pending"


OUTAGE_SECONDS = 60.0
"""The issue's outage: long enough for every back-off in the agent to reach its cap."""


def test_api_server_outage_pods_keep_running_and_everything_converges() -> None:
    with running_apiserver(find_binaries()) as api:
        node = new_node()
        args = agent_args(api, node, "--node-status-update-frequency", "2s")
        with agent_session(args) as make:
            agent = make()
            trigger = agent.base / "crash-trigger"
            agent.write_manifest("crashy.yaml", manifest("crashy", f"{CRASH_ONCE}|{trigger}"))
            agent.write_manifest("doomed.yaml", manifest("doomed", SLEEPER))
            agent.start()
            cluster = Cluster(api, agent, node)
            wait_for(lambda: cluster.running_mirror("crashy", 1), 15, "crashy's mirror")
            wait_for(lambda: cluster.running_mirror("doomed", 1), 15, "doomed's mirror")
            crashy_pid = cluster.pid("crashy", "c0")
            with api.outage():
                started = time.monotonic()
                trigger.touch()
                agent.write_manifest("newcomer.yaml", manifest("newcomer", SLEEPER))
                (agent.manifests / "doomed.yaml").unlink()
                restarted = wait_for(
                    lambda: _restart_count(cluster.local("crashy")) == 1, 10, "crashy restarted"
                )
                assert restarted
                wait_for(lambda: cluster.local("doomed") is None, 15, "doomed stopped")
                newcomer = wait_for(
                    lambda: _phase(cluster.local("newcomer")) == "Running", 10, "newcomer runs"
                )
                assert newcomer
                newcomer_pid = cluster.pid("newcomer", "c0")
                time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - started)))
                assert agent.alive()
                assert (cluster.local("newcomer") or {}).get("mirror") == "Pending"
            back = time.monotonic()

            missing: list[str] = []

            def converged() -> bool:
                crashy = cluster.mirror("crashy")
                statuses = (crashy.status.container_statuses or []) if crashy else []
                missing[:] = [
                    what
                    for what, ok in (
                        ("crashy's restartCount 1", statuses and statuses[0].restart_count == 1),
                        ("newcomer's mirror Running", cluster.running_mirror("newcomer", 1)),
                        ("doomed's mirror gone", cluster.mirror("doomed") is None),
                    )
                    if not ok
                ]
                return not missing

            try:
                wait_for(converged, 15, "the API server to show it all", interval=0.2)
            except AssertionError as err:
                raise AssertionError(f"{err}; still missing: {missing}") from None
            took = time.monotonic() - back
            node_status = cluster.node_json()
            assert node_status is not None
            # No pod restarted because of the outage.
            assert cluster.pid("newcomer", "c0") == newcomer_pid
            assert _restart_count(cluster.local("newcomer")) == 0
            restarted_pid = cluster.pid("crashy", "c0", attempt=1)  # the crash restarted it
            assert restarted_pid != crashy_pid
            os.kill(restarted_pid, 0)
            assert_no_refusals(cluster)
            print(f"converged {took:.1f}s after the API server returned")


def _restart_count(pod: Json | None) -> int | None:
    if pod is None:
        return None
    statuses = pod["status"].get("containerStatuses") or []
    return int(statuses[0]["restartCount"]) if statuses else None


def _phase(pod: Json | None) -> str | None:
    return None if pod is None else str(pod["status"].get("phase"))
