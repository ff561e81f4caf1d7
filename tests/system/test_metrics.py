"""``/metrics`` of a real agent: it parses as Prometheus text, and kubelet's series move as pods
start, crash, fail to start, stop and come back."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agentharness import Agent, wait_for

pytestmark = pytest.mark.system

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def manifest(name: str, command: list[str], **spec: Any) -> str:
    container = {"name": "app", "image": "host", "command": command}
    body = {"containers": [container], "terminationGracePeriodSeconds": 1, **spec}
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": body})


def scrape(agent: Agent) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over the series of ``name`` carrying ``labels`` (others free)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def restarts(agent: Agent, pod: str) -> int:
    status = agent.container_status(pod, "app")
    return int(status["restartCount"]) if status else 0


def test_series_follow_the_pods(agent: Agent) -> None:
    empty = scrape(agent)
    assert value(empty, "kubelet_running_pods") == 0
    assert value(empty, "kubelet_desired_pods", static="true") == 0
    assert value(empty, "kubelet_node_name", node="nlt-node") == 1

    web = manifest("web", ["sleep", "3600"])
    agent.write_manifest("web.json", web)
    agent.write_manifest("crash.json", manifest("crash", ["sh", "-c", "exit 3"]))
    agent.write_manifest("nocmd.json", manifest("nocmd", ["/nonexistent/nlt-no-such-binary"]))
    agent.write_manifest("broken.yaml", "kind: [unclosed")
    wait_for(lambda: agent.running("web"), 20, "web running")
    wait_for(lambda: restarts(agent, "crash") >= 2, 30, "crash restarted twice")

    up = scrape(agent)
    assert value(up, "kubelet_desired_pods", static="true") == 3
    assert value(up, "kubelet_running_pods") == 3  # every holder is up, crashing or not
    assert value(up, "nodelet_holders_alive") == 3
    assert value(up, "kubelet_running_containers", container_state="running") >= 1
    assert value(up, "kubelet_running_containers", container_state="exited") >= 1
    started = value(up, "kubelet_started_containers_total", container_type="container")
    assert started >= 1 + 3 + 1  # web, crash's runs, nocmd's attempt
    errors = "kubelet_started_containers_errors_total"
    assert value(up, errors, container_type="container", code="StartError") >= 1  # nocmd's exec
    assert total(up, errors) == value(up, errors, container_type="container", code="StartError")
    assert value(up, "kubelet_pod_start_duration_seconds_count") >= 1
    assert value(up, "kubelet_pod_worker_duration_seconds_count", operation_type="create") >= 3
    assert value(up, "kubelet_pod_worker_duration_seconds_count", operation_type="sync") >= 3
    assert value(up, "kubelet_runtime_operations_total", operation_type="start_container") >= 5
    assert value(up, "nodelet_manifest_rejections", reason="unreadable") == 1
    assert value(up, "kubelet_restarted_pods_total", static="true") == 0
    assert value(up, "container_memory_working_set_bytes",
                 container="app", namespace="default", pod="web-nlt-node") > 0  # fmt: skip
    assert ("container_cpu_usage_seconds_total", (("container", "app"), ("namespace", "default"),
            ("pod", "web-nlt-node"))) in up  # fmt: skip

    def restart_counted() -> Samples | None:
        samples = scrape(agent)
        count = value(samples, "kubelet_started_containers_total", container_type="container")
        return samples if count > started else None

    wait_for(restart_counted, 30, "a crash restart counted")

    (agent.manifests / "web.json").unlink()
    wait_for(lambda: agent.pod("web") is None and value(scrape(agent), "kubelet_running_pods")
             == 2, 20, "web stopped")  # fmt: skip
    gone = scrape(agent)
    assert value(gone, "kubelet_desired_pods", static="true") == 2
    assert ("container_memory_working_set_bytes", (("container", "app"), ("namespace",
            "default"), ("pod", "web-nlt-node"))) not in gone  # fmt: skip

    agent.write_manifest("web.json", web)  # the same content: the same UID, back again
    wait_for(lambda: agent.running("web"), 20, "web running again")
    back = scrape(agent)
    assert value(back, "kubelet_restarted_pods_total", static="true") == 1
    assert value(back, "kubelet_running_pods") == 3


def test_init_containers_and_config_errors_are_labelled(agent: Agent) -> None:
    init = {"name": "setup", "image": "host", "command": ["true"]}
    no_command = {"name": "app", "image": "host"}  # the host image has no entrypoint
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "init"},
           "spec": {"initContainers": [init], "containers": [no_command]}}  # fmt: skip
    agent.write_manifest("init.json", json.dumps(pod))

    def config_error() -> Samples | None:
        samples = scrape(agent)
        code = "CreateContainerConfigError"
        failed = value(samples, "kubelet_started_containers_errors_total",
                       container_type="container", code=code)  # fmt: skip
        return samples if failed >= 1 else None

    samples = wait_for(config_error, 20, "a config error counted")
    assert value(samples, "kubelet_started_containers_total", container_type="init_container") >= 1
