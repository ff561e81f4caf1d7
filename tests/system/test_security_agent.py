"""securityContext and the volume API through the real agent (issue 14): each honoured field is
checked on the container process itself (``/proc/<pid>/status``) or by what the container can
and cannot do, so a field the agent stops passing on fails a test.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nodelet.pod import mounts
from tests.agentharness import Agent, wait_for
from tests.system.test_wiring import manifest, marker, process_with, status_field

pytestmark = pytest.mark.system

DEFAULT_CAPS = 0x00000000A80425FB
"""containerd's 14: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP."""
SLEEP = "import time; print('ready', flush=True); time.sleep(3600)"
RUNTIME_DEFAULT = {"seccompProfile": {"type": "RuntimeDefault"}}

# A python program that tries what RuntimeDefault forbids and what it allows, printing results.
SYSCALLS = """
import ctypes, errno, os, time
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(result):
    return 0 if result == 0 else ctypes.get_errno()
print("unshare_user=%d" % errno_of(libc.unshare(0x10000000)), flush=True)
keyctl = libc.syscall(250, 0, 0, 0, 0, 0)  # x86_64 keyctl(KEYCTL_GET_KEYRING_ID, 0, 0)
print("keyctl=%d" % (0 if keyctl >= 0 else ctypes.get_errno()), flush=True)
print("getpid_ok=%d" % int(os.getpid() > 0), flush=True)
time.sleep(3600)
"""


def caps(pid: int, key: str) -> int:
    return int(status_field(pid, key)[0], 16)


def container(
    name: str, mark: str, command: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    argv = command or ["python3", "-c", SLEEP]
    return {"name": name, "image": "host", "command": [*argv, mark], **extra}


def start(agent: Agent, name: str, containers: list[dict[str, Any]], **spec: Any) -> None:
    agent.write_manifest(f"{name}.json", manifest(name, containers, **spec))


def waiting_message(agent: Agent, pod: str, name: str) -> tuple[str, str]:
    def find() -> tuple[str, str] | None:
        status = agent.container_status(pod, name) or {}
        waiting = status.get("state", {}).get("waiting") or {}
        if waiting.get("message"):
            return waiting.get("reason", ""), waiting["message"]
        return None

    return wait_for(find, 20, f"{pod}/{name} waiting with a message")


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nlt-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_least_privilege_user_caps_no_new_privs_and_seccomp(agent: Agent) -> None:
    mark = marker("least")
    sc = {
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "capabilities": {"drop": ["ALL"]},
        "allowPrivilegeEscalation": False,
        **RUNTIME_DEFAULT,
    }
    start(agent, "least", [container("c", mark, securityContext=sc)])
    pid = process_with(mark)
    assert status_field(pid, "Uid")[:2] == ["1000", "1000"]
    assert status_field(pid, "Gid")[:2] == ["1000", "1000"]
    for key in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
        assert caps(pid, key) == 0, key
    assert status_field(pid, "NoNewPrivs") == ["1"]
    assert status_field(pid, "Seccomp") == ["2"]


def test_the_default_container_has_exactly_the_runtime_default_capabilities(agent: Agent) -> None:
    mark = marker("default")
    start(agent, "defaults", [container("c", mark)])
    pid = process_with(mark)
    assert status_field(pid, "Uid")[0] == "0"
    assert caps(pid, "CapEff") == DEFAULT_CAPS
    assert caps(pid, "CapBnd") == DEFAULT_CAPS
    assert caps(pid, "CapInh") == 0
    assert status_field(pid, "NoNewPrivs") == ["0"]
    assert status_field(pid, "Seccomp") == ["0"]  # kubelet's default: Unconfined


def test_added_and_dropped_capabilities(agent: Agent) -> None:
    mark = marker("adddrop")
    sc = {"capabilities": {"add": ["SYS_ADMIN", "CAP_NET_ADMIN"], "drop": ["NET_RAW", "KILL"]}}
    start(agent, "adddrop", [container("c", mark, securityContext=sc)])
    pid = process_with(mark)
    sys_admin, net_admin, net_raw, kill = 1 << 21, 1 << 12, 1 << 13, 1 << 5
    assert caps(pid, "CapEff") == (DEFAULT_CAPS | sys_admin | net_admin) & ~(net_raw | kill)


def test_privileged_has_every_capability_of_the_node(agent: Agent) -> None:
    mark = marker("priv")
    start(agent, "priv", [container("c", mark, securityContext={"privileged": True})])
    pid = process_with(mark)
    assert caps(pid, "CapEff") == caps(os.getpid(), "CapEff")
    assert status_field(pid, "Seccomp") == ["0"]


def test_run_as_non_root_with_uid_0_is_refused_and_says_why(agent: Agent) -> None:
    sc = {"runAsNonRoot": True, "runAsUser": 0}
    start(agent, "nonroot", [container("c", marker("nonroot"), securityContext=sc)])
    reason, message = waiting_message(agent, "nonroot", "c")
    assert reason == "CreateContainerConfigError"
    assert "runAsUser breaks non-root policy" in message


def test_runtime_default_seccomp_forbids_what_containerd_forbids(agent: Agent) -> None:
    mark = marker("seccomp")
    start(agent, "seccomp", [container("c", mark, ["python3", "-c", SYSCALLS],
                                       securityContext=RUNTIME_DEFAULT)])  # fmt: skip
    pod = wait_for(lambda: agent.running("seccomp"), 20, "seccomp pod running")
    assert agent.log_value(pod, "c", "unshare_user") == str(1)  # EPERM
    assert agent.log_value(pod, "c", "keyctl") == str(1)
    assert agent.log_value(pod, "c", "getpid_ok") == "1"


def test_a_localhost_profile_denying_mkdir_makes_mkdir_fail(agent: Agent, scratch: Path) -> None:
    profiles = agent.root / "seccomp" / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }
    (profiles / "no-mkdir.json").write_text(json.dumps(profile))
    target = scratch / "made-by-the-container"
    script = (
        f"import os, time\ntry:\n    os.mkdir({str(target)!r}); print('mkdir=ok', flush=True)\n"
        "except OSError as e:\n    print('mkdir=%d' % e.errno, flush=True)\ntime.sleep(3600)\n"
    )
    sc = {"seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/no-mkdir.json"}}
    start(agent, "localhost", [container("c", marker("lh"), ["python3", "-c", script],
                                         securityContext=sc)])  # fmt: skip
    pod = wait_for(lambda: agent.running("localhost"), 20, "localhost-profile pod running")
    assert agent.log_value(pod, "c", "mkdir") == "1"
    assert not target.exists()


def test_read_only_root_with_a_writable_volume_and_masked_proc(agent: Agent, scratch: Path) -> None:
    outside = scratch / "root-write"
    script = f"""
import os, time
def attempt(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return "ok"
    except OSError as e:
        return str(e.errno)
print("root=" + attempt({str(outside)!r}), flush=True)
print("volume=" + attempt("/nlt-data/file"), flush=True)
print("devnull=" + attempt("/dev/null"), flush=True)
print("timer_list=%d" % len(open("/proc/timer_list", "rb").read(16)), flush=True)
print("sysctl=" + attempt("/proc/sys/kernel/domainname"), flush=True)
time.sleep(3600)
"""
    Path("/nlt-data").mkdir(exist_ok=True)
    try:
        c = container(
            "c", marker("ro"), ["python3", "-c", script],
            securityContext={"readOnlyRootFilesystem": True},
            volumeMounts=[{"name": "data", "mountPath": "/nlt-data"}],
        )  # fmt: skip
        start(agent, "readonly", [c], volumes=[{"name": "data", "emptyDir": {}}])
        pod = wait_for(lambda: agent.running("readonly"), 20, "read-only pod running")
        assert agent.log_value(pod, "c", "root") == "30"  # EROFS
        assert agent.log_value(pod, "c", "volume") == "ok"
        assert agent.log_value(pod, "c", "devnull") == "ok"
        assert Path("/proc/timer_list").read_bytes()[:16]  # the node's has content
        assert agent.log_value(pod, "c", "timer_list") == "0"  # /dev/null over it
        assert agent.log_value(pod, "c", "sysctl") == "30"  # /proc/sys is read-only
        assert not outside.exists()
    finally:
        (agent.manifests / "readonly.json").unlink(missing_ok=True)
        wait_for(lambda: agent.pod("readonly") is None, 20, "read-only pod removed")
        Path("/nlt-data").rmdir()


def test_a_subpath_that_is_a_symlink_to_etc_is_refused(agent: Agent, scratch: Path) -> None:
    volume = scratch / "vol"
    volume.mkdir()
    (volume / "escape").symlink_to("/etc")
    c = container(
        "c", marker("subpath"),
        volumeMounts=[{"name": "v", "mountPath": str(scratch), "subPath": "escape"}],
    )  # fmt: skip
    start(agent, "subpath", [c], volumes=[{"name": "v", "hostPath": {"path": str(volume)}}])
    _, message = waiting_message(agent, "subpath", "c")
    assert "escape" in message
    assert agent.running("subpath") is None


def test_a_hostpath_of_the_wrong_type_fails_with_kubelets_text(agent: Agent, scratch: Path) -> None:
    c = container("c", marker("hp"), volumeMounts=[{"name": "v", "mountPath": str(scratch)}])
    volume = {"name": "v", "hostPath": {"path": str(scratch), "type": "File"}}
    start(agent, "hostpathtype", [c], volumes=[volume])
    _, message = waiting_message(agent, "hostpathtype", "c")
    assert f"hostPath type check failed: {scratch} is not a file" in message


def test_safe_sysctls_are_set_in_the_pod_and_unsafe_ones_refused(agent: Agent) -> None:
    script = (
        "import time\nprint('range=' + open('/proc/sys/net/ipv4/ip_local_port_range').read()"
        ".split()[0], flush=True)\ntime.sleep(3600)\n"
    )
    host_range = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
    sysctls = [{"name": "net.ipv4.ip_local_port_range", "value": "20000 20999"}]
    start(agent, "sysctl", [container("c", marker("sysctl"), ["python3", "-c", script])],
          securityContext={"sysctls": sysctls})  # fmt: skip
    pod = wait_for(lambda: agent.running("sysctl"), 20, "sysctl pod running")
    assert agent.log_value(pod, "c", "range") == "20000"
    assert Path("/proc/sys/net/ipv4/ip_local_port_range").read_text() == host_range

    unsafe = [{"name": "kernel.msgmax", "value": "65536"}]
    start(agent, "unsafe", [container("c", marker("unsafe"))], securityContext={"sysctls": unsafe})

    def failed() -> dict[str, Any] | None:
        status = (agent.pod("unsafe") or {}).get("status", {})
        return status if status.get("phase") == "Failed" else None

    status = wait_for(failed, 20, "the unsafe-sysctl pod Failed")
    assert status["reason"] == "SysctlForbidden"
    assert "kernel.msgmax" in status["message"]


def test_memory_empty_dir_downward_api_and_fs_group(agent: Agent) -> None:
    script = """
import os, time
print("fstype=" + [l.split()[2] for l in open("/proc/mounts") if l.split()[1] == "/nlt-mem"][0],
      flush=True)
print("labels=" + open("/nlt-info/labels").read().replace("\\n", ";"), flush=True)
print("gid=%d" % os.stat("/nlt-disk").st_gid, flush=True)
print("groups=" + ",".join(map(str, sorted(os.getgroups()))), flush=True)
time.sleep(3600)
"""
    for path in ("/nlt-mem", "/nlt-info", "/nlt-disk"):
        Path(path).mkdir(exist_ok=True)
    try:
        c = container(
            "c", marker("vols"), ["python3", "-c", script],
            securityContext={"runAsUser": 1000},
            volumeMounts=[
                {"name": "mem", "mountPath": "/nlt-mem"},
                {"name": "info", "mountPath": "/nlt-info"},
                {"name": "disk", "mountPath": "/nlt-disk"},
            ],
        )  # fmt: skip
        volumes = [
            {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}},
            {"name": "disk", "emptyDir": {}},
            {"name": "info", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
        ]  # fmt: skip
        pod = json.loads(manifest("vols", [c], volumes=volumes,
                                  securityContext={"fsGroup": 2345}))  # fmt: skip
        pod["metadata"]["labels"] = {"app": "nlt", "tier": "x"}
        agent.write_manifest("vols.json", json.dumps(pod))
        item = wait_for(lambda: agent.running("vols"), 20, "volumes pod running")
        assert agent.log_value(item, "c", "fstype") == "tmpfs"
        assert agent.log_value(item, "c", "labels") == 'app="nlt";tier="x"'
        assert agent.log_value(item, "c", "gid") == "2345"
        assert "2345" in agent.log_value(item, "c", "groups").split(",")
    finally:
        (agent.manifests / "vols.json").unlink(missing_ok=True)
        wait_for(lambda: agent.pod("vols") is None, 20, "volumes pod removed")
        for path in ("/nlt-mem", "/nlt-info", "/nlt-disk"):
            Path(path).rmdir()


def test_nothing_of_a_memory_volume_is_left_mounted(agent: Agent) -> None:
    name = f"nlt-{uuid.uuid4().hex[:6]}"
    c = container("c", marker("mem"))
    start(agent, name, [c], volumes=[{"name": "m", "emptyDir": {"medium": "Memory"}}])
    wait_for(lambda: agent.running(name), 20, "memory-volume pod running")
    root = str(agent.root)
    assert any(root in line for line in Path("/proc/self/mountinfo").read_text().splitlines())
    (agent.manifests / f"{name}.json").unlink()
    wait_for(lambda: agent.pod(name) is None, 20, "memory-volume pod removed")

    def unmounted() -> bool:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
        return not any(root in line for line in lines)

    wait_for(unmounted, 10, "the pod's tmpfs unmounted")
    assert not (agent.root / "pods").exists() or not any((agent.root / "pods").iterdir())


def test_a_disk_empty_dir_past_its_size_limit_evicts_the_pod(agent: Agent) -> None:
    script = (
        "import time\nwith open('/nlt-cache/fill', 'wb') as f:\n"
        "    f.write(b'x' * (4 << 20))\n    f.flush()\nprint('written', flush=True)\n"
        "time.sleep(3600)\n"
    )
    Path("/nlt-cache").mkdir(exist_ok=True)
    try:
        c = container("c", marker("evict"), ["python3", "-c", script],
                      volumeMounts=[{"name": "cache", "mountPath": "/nlt-cache"}])  # fmt: skip
        volumes = [{"name": "cache", "emptyDir": {"sizeLimit": "1Mi"}}]
        start(agent, "evict", [c], volumes=volumes)

        def failed() -> dict[str, Any] | None:
            status = (agent.pod("evict") or {}).get("status", {})
            return status if status.get("phase") == "Failed" else None

        # The usage is measured every 10 s (kubelet's eviction interval), on the pod's sync.
        status = wait_for(failed, 35, "the pod evicted")
        assert status["reason"] == "Evicted"
        assert 'Usage of EmptyDir volume "cache" exceeds the limit "1Mi"' in status["message"]
        assert all("terminated" in c["state"] for c in status["containerStatuses"])
    finally:
        (agent.manifests / "evict.json").unlink(missing_ok=True)
        wait_for(lambda: agent.pod("evict") is None, 20, "evicted pod removed")
        Path("/nlt-cache").rmdir()


def test_a_started_agent_sweeps_the_volumes_of_pods_that_are_gone(
    agents: Callable[[], Agent],
) -> None:
    """A pod removed while the agent was down (or after a reboot) left its state dir and a tmpfs
    volume: once every source was read, the agent unmounts and removes it, and keeps a
    desired pod's."""
    agent = agents()
    orphan = agent.root / "pods" / "nlt-orphan-uid" / "volumes" / "kubernetes.io~empty-dir" / "m"
    orphan.mkdir(parents=True)
    mounts.mount_tmpfs(str(orphan), ["size=1048576"])
    try:
        kept_pod = manifest(
            "kept", [container("c", marker("kept"))], volumes=[{"name": "d", "emptyDir": {}}]
        )
        agent.write_manifest("kept.json", kept_pod)
        agent.start()
        wait_for(lambda: agent.running("kept"), 20, "the desired pod running")
        kept = agent.root / "pods" / (agent.pod("kept") or {})["metadata"]["uid"]

        def swept() -> bool:
            return not (agent.root / "pods" / "nlt-orphan-uid").exists()

        wait_for(swept, 10, "the orphan's state dir removed")
        assert not [m for m in mounts.mounts_below(str(agent.root / "pods"))
                    if "nlt-orphan-uid" in m]  # fmt: skip
        assert kept.is_dir()
    finally:
        for mount_point in mounts.mounts_below(str(orphan.parent)):
            mounts.unmount(mount_point)
