"""Who reads what through the real agent's local API: any local user gets the redacted TCP
port, root gets everything through the 0600 unix socket (issue 21, item 9)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from nodelet.config import SOCKET_NAME
from tests.agentharness import NODE, Agent, wait_for

pytestmark = pytest.mark.system

NOBODY = 65534
REPO = Path(__file__).resolve().parents[2]
SECRET_POD = textwrap.dedent(
    """\
    apiVersion: v1
    kind: Pod
    metadata:
      name: secret
      annotations: {note: annotation-secret}
    spec:
      initContainers:
      - name: init
        image: host
        command: [/bin/true]
        env: [{name: INIT_TOKEN, value: init-hunter3}]
      containers:
      - name: app
        image: host
        command: [/bin/sleep, "3600"]
        env: [{name: SECRET, value: hunter2}]
    """
)
AS_NOBODY = textwrap.dedent(
    """\
    import json, socket, sys, urllib.request
    sock_path, port = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sock_path)
        socket_result = "connected"
    except OSError as err:
        socket_result = err.errno
    views = {}
    for path in ("/pods", "/rejected"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            views[path] = r.read().decode()
    print(json.dumps({"socket": socket_result, **views}))
    """
)


def system_python() -> str:
    """An interpreter user 65534 may run (the venv's lives under /root)."""
    found = shutil.which("python3", path="/usr/bin:/bin")
    if found is None:
        pytest.skip("no system python3 for the unprivileged user")
    return found


def run_as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [system_python(), *args],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def nodelet_pods(
    agent: Agent, *extra: str, as_nobody: bool = False
) -> subprocess.CompletedProcess[str]:
    args = ["-m", "nodelet", "pods", "--run-dir", str(agent.run_dir)]
    args += ["--healthz-port", str(agent.port), *extra]
    if as_nobody:
        return run_as_nobody(*args)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, check=False
    )


def started(agent: Agent) -> dict[str, Any]:
    return wait_for(lambda: agent.running("secret"), 20, "secret pod running")


def test_tcp_port_redacts_env_values_the_socket_does_not(agent: Agent, tmp_path: Path) -> None:
    agent.write_manifest("secret.yaml", SECRET_POD)
    started(agent)
    tcp_text = json.dumps(agent.get_tcp("/pods"))
    socket_text = json.dumps(agent.get("/pods"))
    for secret in ("hunter2", "init-hunter3", "annotation-secret"):
        assert secret not in tcp_text
        assert secret in socket_text
    public = agent.get_tcp("/pods")
    assert public["kind"] == "PodList"
    item = public["items"][0]
    assert item["metadata"]["name"] == f"secret-{NODE}"
    assert item["status"]["phase"] == "Running"
    assert "running" in item["status"]["containerStatuses"][0]["state"]
    assert item["spec"]["containers"][0]["env"] == [{"name": "SECRET", "value": "<redacted>"}]

    sock = agent.run_dir / SOCKET_NAME
    info = sock.lstat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 0
    for directory in (agent.run_dir, agent.root, agent.logs):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory

    secret_file = tmp_path / "shadow"
    secret_file.write_text("root:secret-line-xyz:19000:0:99999:7:::\nsecret-line-xyz: 1\n")
    (agent.manifests / "shadow.yaml").symlink_to(secret_file)
    link = str(agent.manifests / "shadow.yaml")

    def rejected_reasons() -> list[str] | None:
        for item in agent.get("/rejected")["items"]:
            if item["path"] == link:
                errors: list[str] = item["errors"]
                return errors
        return None

    assert "secret-line-xyz" in " ".join(wait_for(rejected_reasons, 10, "shadow.yaml rejected"))
    public_rejected = agent.get_tcp("/rejected")
    assert "secret-line-xyz" not in json.dumps(public_rejected)
    assert [i["path"] for i in public_rejected["items"]] == [link]

    full = nodelet_pods(agent, "-o", "json")
    assert full.returncode == 0, full.stderr
    assert full.stderr == ""
    assert "hunter2" in full.stdout and "secret-line-xyz" in full.stdout
    table = nodelet_pods(agent)
    assert table.returncode == 0 and table.stderr == "", table.stderr
    assert f"secret-{NODE}" in table.stdout and "secret-line-xyz" in table.stdout


def test_an_unprivileged_user_gets_only_the_redacted_tcp_port(agent: Agent, tmp_path: Path) -> None:
    agent.write_manifest("secret.yaml", SECRET_POD)
    secret_file = tmp_path / "shadow"
    secret_file.write_text("root:secret-line-xyz:19000:0:99999:7:::\n")
    (agent.manifests / "shadow.yaml").symlink_to(secret_file)
    started(agent)
    wait_for(lambda: agent.get("/rejected")["items"], 10, "shadow.yaml rejected")

    probe = run_as_nobody("-c", AS_NOBODY, str(agent.run_dir / SOCKET_NAME), str(agent.port))
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert seen["socket"] == 13  # EACCES: the 0700 run dir and the 0600 socket
    assert "hunter2" not in seen["/pods"] and "init-hunter3" not in seen["/pods"]
    assert "secret-line-xyz" not in seen["/rejected"]
    pods = json.loads(seen["/pods"])
    assert pods["kind"] == "PodList"
    status = pods["items"][0]["status"]
    assert status["phase"] == "Running"
    assert "running" in status["containerStatuses"][0]["state"]
    assert "terminated" in status["initContainerStatuses"][0]["state"]

    as_nobody = nodelet_pods(agent, "-o", "json", as_nobody=True)
    if "ModuleNotFoundError" in as_nobody.stderr:
        pytest.skip(f"the system python cannot import nodelet: {as_nobody.stderr[-300:]}")
    assert as_nobody.returncode == 0, as_nobody.stderr
    assert "hunter2" not in as_nobody.stdout and "secret-line-xyz" not in as_nobody.stdout
    assert json.loads(as_nobody.stdout)["pods"]["items"][0]["status"]["phase"] == "Running"
    note = as_nobody.stderr.strip().splitlines()
    assert len(note) == 1 and "redacted" in note[0] and "Permission denied" in note[0], note


def test_socket_is_removed_when_the_agent_stops(agent: Agent) -> None:
    sock = agent.run_dir / SOCKET_NAME
    assert sock.exists()
    agent.signal(signal.SIGTERM)
    assert not os.path.lexists(sock)
