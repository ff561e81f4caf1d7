"""``hostUsers: false`` through the real agent (issue 14, KEP-127): the container's root is a
private block of host ids, volumes are idmapped with the pod's mapping, the allocation outlives
an agent restart and is freed with the pod, and the API server's refusals hold."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agentharness import Agent, wait_for
from tests.system.test_wiring import manifest, marker, process_with, status_field
from tests.system.test_wiring import sleeper as wiring_sleeper

pytestmark = pytest.mark.system

IDS = 65536
CAP_DAC_OVERRIDE = 1

# Prints what the container sees, then sleeps: its uid, a host file's owner through the
# idmapped volume, what writing into the volume and into a host root-owned file does.
PROBE = """
import os, sys, time
vol, outside, name = sys.argv[1], sys.argv[2], sys.argv[3]
print("uid=%d gid=%d" % (os.getuid(), os.getgid()), flush=True)
print("hostfile_uid=%d" % os.stat(os.path.join(vol, "hostfile")).st_uid, flush=True)
with open(os.path.join(vol, name), "w") as f:
    f.write("x")
try:
    with open(outside, "a") as f:
        f.write("pwned")
    print("outside_errno=0", flush=True)
except OSError as err:
    print("outside_errno=%d" % err.errno, flush=True)
time.sleep(3600)
"""


def id_map(pid: int, name: str) -> list[int]:
    return [int(n) for n in Path(f"/proc/{pid}/{name}").read_text().split()]


def probe_container(name: str, mark: str, scratch: Path, **extra: Any) -> dict[str, Any]:
    """Mounted over its own source path (mount paths must exist on the ``host`` image)."""
    vol, outside = str(scratch / "vol"), str(scratch / "outside")
    argv = ["python3", "-c", PROBE, vol, outside, f"by-{name}", mark]
    return {"name": name, "image": "host", "command": argv,
            "volumeMounts": [{"name": "vol", "mountPath": vol}], **extra}  # fmt: skip


def sleeper(mark: str) -> list[dict[str, Any]]:
    return [wiring_sleeper("c", mark)]


def allocation(agent: Agent, pod: str) -> int:
    """The host id the agent recorded for the pod (kubelet's ``userns`` file)."""
    item = wait_for(lambda: agent.running(pod), 30, f"{pod} running")
    path = agent.root / "pods" / item["metadata"]["uid"] / "userns"
    data = json.loads(path.read_text())
    assert data["uidMappings"] == data["gidMappings"]
    assert data["uidMappings"][0]["containerId"] == 0
    assert data["uidMappings"][0]["length"] == IDS
    host_id: int = data["uidMappings"][0]["hostId"]
    return host_id


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A hostPath volume (anyone may write) with a file of uid 1000, and next to it (outside
    every volume) a root-owned file anyone may read and only root may write."""
    path = Path(tempfile.mkdtemp(prefix="nlt-userns-", dir="/var/tmp"))
    path.chmod(0o755)
    (path / "vol").mkdir()
    (path / "vol").chmod(0o777)  # uid 1000 inside writes there too
    (path / "vol" / "hostfile").write_text("1000's")
    os.chown(path / "vol" / "hostfile", 1000, 1000)
    (path / "outside").write_text("root's")
    (path / "outside").chmod(0o644)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_root_inside_is_a_private_range_and_volumes_are_idmapped(
    agent: Agent, scratch: Path
) -> None:
    root_mark, user_mark = marker("userns-root"), marker("userns-user")
    outside = scratch / "outside"
    ready_only_in_userns = ["sh", "-c", "[ \"$(id -u)\" = 0 ] && "
                            "[ \"$(awk '{print $2}' /proc/self/uid_map)\" != 0 ]"]  # fmt: skip
    containers = [
        probe_container("root", root_mark, scratch,
                        readinessProbe={"exec": {"command": ready_only_in_userns},
                                        "periodSeconds": 1}),
        probe_container("user", user_mark, scratch,
                        securityContext={"runAsUser": 1000, "runAsGroup": 1000}),
    ]  # fmt: skip
    volumes = [{"name": "vol", "hostPath": {"path": str(scratch / "vol"), "type": "Directory"}}]
    agent.write_manifest("uns.json", manifest("uns", containers, hostUsers=False,
                                              volumes=volumes))  # fmt: skip
    base = allocation(agent, "uns")
    assert base >= IDS and base % IDS == 0
    root_pid, user_pid = process_with(root_mark), process_with(user_mark)
    for pid in (root_pid, user_pid):
        assert id_map(pid, "uid_map") == [0, base, IDS]
        assert id_map(pid, "gid_map") == [0, base, IDS]
    assert status_field(root_pid, "Uid")[0] == str(base)  # the host sees an unprivileged uid
    assert status_field(user_pid, "Uid")[0] == str(base + 1000)
    assert int(status_field(root_pid, "CapEff")[0], 16) & 1 << CAP_DAC_OVERRIDE

    pod = wait_for(lambda: agent.pod("uns"), 10, "uns in /pods")
    assert agent.log_value(pod, "root", "uid") == "0 gid=0"
    assert agent.log_value(pod, "user", "uid") == "1000 gid=1000"
    # Idmapped with the pod's mapping (KEP-127): ids read and written through the volume are
    # the host's as they are, for root inside as for uid 1000 inside.
    assert agent.log_value(pod, "root", "hostfile_uid") == "1000"
    assert agent.log_value(pod, "user", "outside_errno") == str(errno.EACCES)  # written by now
    assert (os.stat(scratch / "vol" / "by-root").st_uid,
            os.stat(scratch / "vol" / "by-root").st_gid) == (0, 0)  # fmt: skip
    assert os.stat(scratch / "vol" / "by-user").st_uid == 1000
    # Outside the volumes host root's files stay host root's: DAC_OVERRIDE inside is no help.
    assert agent.log_value(pod, "root", "outside_errno") == str(errno.EACCES)
    assert outside.read_text() == "root's"

    def ready() -> bool:
        statuses = (agent.pod("uns") or {}).get("status", {}).get("containerStatuses", [])
        return any(s["name"] == "root" and s.get("ready") for s in statuses)

    wait_for(ready, 20, "the exec readiness probe to run inside the user namespace")
    exec_id = subprocess.run(
        [sys.executable, "-m", "nodelet", "exec", "--run-dir", str(agent.run_dir),
         pod["metadata"]["name"], "-c", "user", "--", "sh", "-c", "id -u; cat /proc/self/uid_map"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert exec_id.returncode == 0, exec_id.stderr
    lines = exec_id.stdout.split("\n")
    assert lines[0] == "1000"
    assert lines[1].split() == ["0", str(base), str(IDS)]


def test_two_pods_get_disjoint_blocks_kept_across_a_restart_and_freed_on_removal(
    agents: Callable[[], Agent],
) -> None:
    agent = agents()
    agent.start()
    marks = {name: marker(name) for name in ("una", "unb", "unc", "und")}
    for name in ("una", "unb"):
        agent.write_manifest(f"{name}.json", manifest(name, sleeper(marks[name]),
                                                      hostUsers=False))  # fmt: skip
    first, second = allocation(agent, "una"), allocation(agent, "unb")
    assert first != second
    assert abs(first - second) >= IDS  # disjoint blocks of 65536
    pids = {name: process_with(marks[name]) for name in ("una", "unb")}
    assert id_map(pids["una"], "uid_map") == [0, first, IDS]
    assert id_map(pids["unb"], "uid_map") == [0, second, IDS]

    agent.signal(signal.SIGKILL)
    restarted = agents()
    restarted.start()
    assert allocation(restarted, "una") == first and allocation(restarted, "unb") == second
    assert process_with(marks["una"]) == pids["una"]  # re-adopted, not restarted
    restarted.write_manifest("unc.json", manifest("unc", sleeper(marks["unc"]), hostUsers=False))
    third = allocation(restarted, "unc")
    assert third not in (first, second)

    uid = wait_for(lambda: restarted.pod("una"), 10, "una")["metadata"]["uid"]
    (restarted.manifests / "una.json").unlink()
    wait_for(lambda: not (restarted.root / "pods" / uid).exists(), 30, "una's state removed")
    restarted.write_manifest("und.json", manifest("und", sleeper(marks["und"]), hostUsers=False))
    assert allocation(restarted, "und") == min(first, second, third)  # una's block, free again


def test_host_users_false_with_host_namespaces_is_refused_as_the_api_server_does(
    agent: Agent,
) -> None:
    mark = marker("unhost")
    agent.write_manifest("unhost.json", manifest("unhost", sleeper(mark), hostUsers=False,
                                                 hostNetwork=True, hostPID=True))  # fmt: skip

    def errors() -> list[str] | None:
        items = agent.get("/rejected")["items"]
        return next((i["errors"] for i in items if i["path"].endswith("unhost.json")), None)

    found = [e.split(": ", 1)[1] for e in wait_for(errors, 20, "unhost.json rejected")]
    assert found == [
        "spec.hostNetwork: Forbidden: when `pod.Spec.HostUsers` is false",
        "spec.HostPID: Forbidden: when `pod.Spec.HostUsers` is false",
    ]
    assert agent.pod("unhost") is None


def test_without_host_users_the_container_stays_in_the_hosts_user_namespace(
    agent: Agent,
) -> None:
    mark = marker("unplain")
    agent.write_manifest("unplain.json", manifest("unplain", sleeper(mark)))
    item = wait_for(lambda: agent.running("unplain"), 30, "unplain running")
    pid = process_with(mark)
    assert os.readlink(f"/proc/{pid}/ns/user") == os.readlink("/proc/self/ns/user")
    assert not (agent.root / "pods" / item["metadata"]["uid"] / "userns").exists()
