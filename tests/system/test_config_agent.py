"""A real agent configured by kubeadm's KubeletConfiguration (``--config``), ``--print-config``,
and ``manifestValidation``: Warn runs a pod without its unknown fields and says so; Strict
refuses it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from nodelet.server.local import REDACTED
from tests.agentharness import NODE, Agent, agent_session, wait_for

pytestmark = pytest.mark.system

KUBEADM = Path(__file__).parent.parent / "data" / "kubeadm-kubelet-config.yaml"

SLEEPER = """\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  containers:
  - name: main
    image: host
    command: [sleep, "3600"]
"""

MISSPELT = """\
apiVersion: v1
kind: Pod
metadata:
  name: typo
spec:
  containers:
  - name: main
    image: host
    command: [sleep, "3600"]
    comand: [sh, -c, "exit 3"]
"""


def kubeadm_config(agent: Agent) -> Path:
    """kubeadm's file with this test's manifest dir and healthz port (kubeadm writes the
    node's real ones) and this node's resolver file, and nothing else changed."""
    document = yaml.safe_load(KUBEADM.read_text())
    document["staticPodPath"] = str(agent.manifests)
    document["healthzPort"] = agent.port
    document["resolvConf"] = "/etc/resolv.conf"  # kubeadm's systemd-resolved file is absent here
    path = agent.base / "kubelet-config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def nodelet_pods(agent: Agent) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "nodelet", "pods", "--run-dir", str(agent.run_dir),
         "--healthz-port", str(agent.port)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return done.stdout


def test_agent_runs_a_pod_from_kubeadms_config_file() -> None:
    with agent_session() as make:
        agent = make()
        config = kubeadm_config(agent)
        agent.extra_args.extend(["--config", str(config)])
        # The manifest dir and the healthz port come from the file only.
        agent.start(omit=("--pod-manifest-path", "--healthz-port"))
        agent.write_manifest("sleeper.yaml", SLEEPER.format(name="sleeper"))
        wait_for(lambda: agent.running("sleeper"), 30, "sleeper running")
        log = agent.output.read_text()
        for key in ("cgroupDriver", "rotateCertificates"):
            assert log.count(f"{config}: {key}: kubelet setting not implemented") == 1, key
        for key in ("staticPodPath", "clusterDNS", "clusterDomain", "resolvConf"):
            assert f"{key}: kubelet setting not implemented" not in log, key


def test_print_config_shows_the_effective_settings_and_exits(tmp_path: Path) -> None:
    config = tmp_path / "kubelet-config.yaml"
    document = yaml.safe_load(KUBEADM.read_text())
    document["staticPodPath"] = str(tmp_path / "manifests")
    document["podPidsLimit"] = 64
    config.write_text(yaml.safe_dump(document))
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "nodelet", "run", "--config", str(config), "--print-config",
         "--hostname-override", NODE, "--node-ip", "127.0.0.1", "--run-dir", str(run_dir),
         "--file-check-frequency", "3s", "--manifest-validation", "Warn"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    kubelet, nodelet = yaml.safe_load_all(done.stdout)
    assert kubelet["kind"] == "KubeletConfiguration"
    assert kubelet["staticPodPath"] == str(tmp_path / "manifests")  # from the file
    assert kubelet["podPidsLimit"] == 64  # from the file
    assert kubelet["fileCheckFrequency"] == "3s"  # the flag wins over the file's 0s
    assert kubelet["nodeStatusReportFrequency"] == "5m0s"  # kubelet's default for 0s
    assert nodelet == {
        "apiVersion": "nodelet.io/v1alpha1",
        "kind": "NodeletConfiguration",
        "manifestValidation": "Warn",
        "hostImageRoot": "Overlay",
    }
    assert "cgroupDriver: kubelet setting not implemented" in done.stderr
    assert not run_dir.exists()  # it printed; it did not start


def test_bad_config_file_stops_the_agent_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "kubelet-config.yaml"
    config.write_text(
        KUBEADM.read_text().replace("fileCheckFrequency: 0s", "fileCheckFrequency: 20x")
    )
    done = subprocess.run(
        [sys.executable, "-m", "nodelet", "run", "--config", str(config),
         "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"{config}: fileCheckFrequency: invalid duration '20x'" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture
def warn_agent() -> Iterator[Agent]:
    with agent_session(["--manifest-validation", "Warn"]) as make:
        agent = make()
        agent.start()
        yield agent


def test_warn_mode_runs_the_pod_without_the_unknown_field(warn_agent: Agent) -> None:
    agent = warn_agent
    agent.write_manifest("typo.yaml", MISSPELT)
    pod = wait_for(lambda: agent.running("typo"), 30, "typo running without comand")
    assert "comand" not in pod["spec"]["containers"][0]
    assert pod["spec"]["containers"][0]["command"] == ["sleep", "3600"]
    warnings = wait_for(lambda: agent.get("/warnings")["items"], 10, "the warning")
    [item] = warnings
    assert item["path"] == str(agent.manifests / "typo.yaml")
    assert item["podName"] == "typo"
    [error] = item["errors"]
    assert "spec.containers[0].comand: unknown field" in error
    assert "dropped (manifestValidation: Warn)" in error
    assert agent.get("/rejected")["items"] == []
    # Any local user sees that there is a warning, not its text.
    [public] = agent.get_tcp("/warnings")["items"]
    assert public["errors"] == [f"{item['path']}: spec.containers[0].*: {REDACTED}"]
    shown = nodelet_pods(agent)
    assert f"typo-{NODE}" in shown
    assert f"WARNING {item['path']} (pod typo)" in shown
    assert "comand: unknown field" in shown
    assert "REJECTED" not in shown
    assert "manifest warning: " in agent.output.read_text()


def test_warn_mode_still_refuses_fields_nodelet_does_not_implement(warn_agent: Agent) -> None:
    agent = warn_agent
    unsupported = MISSPELT.replace("name: typo", "name: stdin").replace(
        "    comand:", "    stdin: true\n    comand:"
    )
    agent.write_manifest("stdin.yaml", unsupported)
    rejected = wait_for(lambda: agent.get("/rejected")["items"], 15, "the rejection")
    errors = " ".join(rejected[0]["errors"])
    assert "spec.containers[0].stdin: unsupported" in errors
    assert "spec.containers[0].comand: unknown field" in errors
    assert agent.pod("stdin") is None
    assert agent.get("/warnings")["items"] == []


def test_strict_mode_refuses_the_unknown_field(agent: Agent) -> None:
    agent.write_manifest("typo.yaml", MISSPELT)
    rejected = wait_for(lambda: agent.get("/rejected")["items"], 15, "the rejection")
    assert 'spec.containers[0].comand: unknown field (did you mean "command"?)' in " ".join(
        rejected[0]["errors"]
    )
    assert agent.pod("typo") is None
    assert agent.get("/warnings")["items"] == []
    assert f"REJECTED {agent.manifests / 'typo.yaml'}" in nodelet_pods(agent)


def test_an_unsafe_sysctl_pattern_kubelet_refuses_stops_the_agent(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nodelet", "run", "--allowed-unsafe-sysctls",
         "kernel.msgmax,vm.swappiness", "--print-config", "--hostname-override", NODE,
         "--node-ip", "127.0.0.1", "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert 'the sysctl "vm.swappiness" are not known to be namespaced' in done.stderr
    assert "kernel.msgmax" not in done.stderr  # an IPC-namespaced one is a valid pattern
