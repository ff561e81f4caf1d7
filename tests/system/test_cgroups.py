"""The cgroup drivers on this machine's real cgroups (root).

v1 for real on /sys/fs/cgroup/{cpu,cpuacct,memory,pids}; v2 for real on the controller-less
cgroup2 at /sys/fs/cgroup/unified (tree, cgroup.procs, cgroup.kill, populated events), and its
limit files against a temp dir that mimics cgroupfs. Every test uses its own ``/nlt-<random>``
root, removed in a fixture's ``finally`` (only that tree, only dirs); only children these tests
start are ever killed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nodelet.cgroups import (
    CgroupError,
    CgroupLimits,
    CgroupNameError,
    CgroupStats,
    container_limits,
    container_resources,
    detect,
    pod_limits,
)
from nodelet.cgroups.v1 import V1Driver
from nodelet.cgroups.v2 import HOLDER, V2Driver

pytestmark = pytest.mark.system

MOUNT = Path("/sys/fs/cgroup")
UNIFIED = MOUNT / "unified"
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")
UID = "0f3c9a8e-5b7d-4c21-9e6f-1a2b3c4d5e6f"
MI = 2**20
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

Start = Callable[[list[str], str], "subprocess.Popen[bytes]"]


def _rmdir_tree(top: Path, killed: list[int]) -> None:
    """Remove a test's own cgroup tree, children first (cgroupfs files go with the dirs).

    Whatever still runs in it was started by the test (a grandchild a broken driver left
    behind): it is SIGKILLed by pid first, so a failing test never leaves a tree or a process."""
    if not top.is_dir() or top.is_symlink():
        return
    deadline = time.monotonic() + 5
    for path, _dirs, _files in os.walk(top, topdown=False, followlinks=False):
        while True:
            procs = Path(path, "cgroup.procs")
            for pid in procs.read_text().split() if procs.exists() else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(int(pid))
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


@pytest.fixture
def root_name() -> str:
    return f"nlt-{secrets.token_hex(4)}"


@pytest.fixture
def start() -> Iterator[Start]:
    """Start a python child that joins the given cgroup.procs files before it execs; every
    child still running at the end is SIGKILLed by its pid and reaped."""
    children: list[subprocess.Popen[bytes]] = []

    def run(procs: list[str], code: str) -> subprocess.Popen[bytes]:
        def join() -> None:
            for path in procs:
                with open(path, "w") as file:
                    file.write("0")

        child = subprocess.Popen([PYTHON, "-c", code], preexec_fn=join)  # noqa: PLW1509 (join before exec)
        children.append(child)
        return child

    try:
        yield run
    finally:
        for child in children:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)


@pytest.fixture
def v1(root_name: str) -> Iterator[V1Driver]:
    driver = detect(MOUNT, f"/{root_name}")
    assert isinstance(driver, V1Driver), "this machine mounts cgroup v1 controllers"
    try:
        yield driver
    finally:
        killed: list[int] = []
        for controller in V1_CONTROLLERS:
            _rmdir_tree(MOUNT / controller / root_name, killed)
        _reap(killed)


@pytest.fixture
def v2(root_name: str) -> Iterator[V2Driver]:
    if not (UNIFIED / "cgroup.procs").exists():
        pytest.skip("no cgroup2 mount at /sys/fs/cgroup/unified")
    try:
        yield V2Driver(UNIFIED, f"/{root_name}")
    finally:
        killed: list[int] = []
        _rmdir_tree(UNIFIED / root_name, killed)
        _reap(killed)


def _reap(pids: list[int]) -> None:
    """Reap the leftovers the cleanup killed (orphaned grandchildren are pytest's children:
    it is their subreaper as root); other processes are never waited for."""
    for pid in dict.fromkeys(pids):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def cgroup_of(pid: int) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as {controller (or "" for v2): path}."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    result = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            result[controller] = path
    return result


def read(path: Path) -> str:
    return path.read_text().strip()


BURSTABLE_POD = {
    "containers": [
        {
            "name": "app",
            "resources": {
                "requests": {"cpu": "100m", "memory": "16Mi"},
                "limits": {"cpu": "200m", "memory": "32Mi"},
            },
        },
        {"name": "side", "resources": {"requests": {"cpu": "50m"}}},
    ]
}


# -- v1 -----------------------------------------------------------------------------------------


def test_v1_layout_and_limits(v1: V1Driver, root_name: str) -> None:
    limits = pod_limits(BURSTABLE_POD, 256)
    assert limits == CgroupLimits(153, None, 100000, None, 256)
    v1.create_pod(UID, "Burstable", limits)
    app = container_limits(container_resources(BURSTABLE_POD["containers"][0]), 64)
    procs = v1.create_container(UID, "Burstable", "app", app)

    pod = f"{root_name}/kubepods/burstable/pod{UID}"
    assert procs == [str(MOUNT / c / pod / "app" / "tasks") for c in V1_CONTROLLERS]
    assert v1.holder_procs(UID, "Burstable") == [
        str(MOUNT / c / pod / "tasks") for c in V1_CONTROLLERS
    ]
    cpu, memory, pids = MOUNT / "cpu" / pod, MOUNT / "memory" / pod, MOUNT / "pids" / pod
    assert read(cpu / "cpu.shares") == "153"
    assert read(cpu / "cpu.cfs_quota_us") == "-1"
    assert int(read(memory / "memory.limit_in_bytes")) > 2**62  # unlimited
    assert read(pids / "pids.max") == "256"
    assert read(cpu / "app" / "cpu.shares") == "102"
    assert read(cpu / "app" / "cpu.cfs_period_us") == "100000"
    assert read(cpu / "app" / "cpu.cfs_quota_us") == "20000"
    assert read(memory / "app" / "memory.limit_in_bytes") == str(32 * MI)
    assert read(pids / "app" / "pids.max") == "64"
    memsw = memory / "app" / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        assert read(memsw) == str(32 * MI)
    kubepods = MOUNT / "cpu" / root_name / "kubepods"
    assert read(kubepods / "cpu.shares") == str(min(262144, (os.cpu_count() or 1) * 1024))


def test_v1_qos_placement(v1: V1Driver, root_name: str) -> None:
    limits = CgroupLimits(2, None, 100000, None, None)
    v1.create_pod("be1", "BestEffort", limits)
    v1.create_pod("g1", "Guaranteed", CgroupLimits(1024, 100000, 100000, 64 * MI, None))
    kubepods = MOUNT / "cpu" / root_name / "kubepods"
    assert read(kubepods / "besteffort" / "cpu.shares") == "2"
    assert (kubepods / "besteffort" / "podbe1").is_dir()
    assert (kubepods / "podg1").is_dir()
    assert read(kubepods / "podg1" / "cpu.cfs_quota_us") == "100000"
    memory = MOUNT / "memory" / root_name / "kubepods" / "podg1" / "memory.limit_in_bytes"
    assert read(memory) == str(64 * MI)


def test_v1_child_joins_container_and_holder_cgroups(
    v1: V1Driver, root_name: str, start: Start
) -> None:
    limits = CgroupLimits(2, None, 100000, None, None)
    v1.create_pod(UID, "BestEffort", limits)
    procs = v1.create_container(UID, "BestEffort", "app", limits)
    child = start(procs, "import time; time.sleep(60)")
    holder = start(v1.holder_procs(UID, "BestEffort"), "import time; time.sleep(60)")

    pod = f"/{root_name}/kubepods/besteffort/pod{UID}"
    seen = cgroup_of(child.pid)
    for controller in V1_CONTROLLERS:
        assert seen[controller] == f"{pod}/app"
    assert (
        str(child.pid) in (MOUNT / "memory" / pod.lstrip("/") / "app" / "cgroup.procs").read_text()
    )
    seen = cgroup_of(holder.pid)
    for controller in V1_CONTROLLERS:
        assert seen[controller] == pod


def test_v1_oom_kill_is_detected(v1: V1Driver, start: Start) -> None:
    limits = CgroupLimits(1024, None, 100000, 32 * MI, None)
    v1.create_pod(UID, "Burstable", CgroupLimits(1024, None, 100000, None, None))
    hog = start(v1.create_container(UID, "Burstable", "hog", limits), "b = b'x' * (128 << 20)")
    fine = start(v1.create_container(UID, "Burstable", "fine", limits), "b = b'x' * (4 << 20)")
    assert hog.wait(timeout=60) == -signal.SIGKILL
    assert fine.wait(timeout=60) == 0
    assert v1.oom_killed(UID, "Burstable", "hog") is True
    assert v1.oom_killed(UID, "Burstable", "fine") is False


def test_v1_stats_of_a_busy_child(v1: V1Driver, start: Start) -> None:
    limits = CgroupLimits(1024, None, 100000, None, None)
    v1.create_pod(UID, "Burstable", limits)
    procs = v1.create_container(UID, "Burstable", "busy", limits)
    busy = start(
        procs,
        "import time\nb = b'x' * (16 << 20)\nend = time.time() + 0.4\n"
        "while time.time() < end: pass\nprint('ready', flush=True)\ntime.sleep(60)",
    )
    deadline = time.monotonic() + 10
    stats = v1.stats(UID, "Burstable", "busy")
    while stats is not None and stats.cpu_usage_ns < 100_000_000 and time.monotonic() < deadline:
        time.sleep(0.05)
        stats = v1.stats(UID, "Burstable", "busy")
    assert stats is not None
    assert stats.cpu_usage_ns >= 100_000_000
    assert stats.memory_usage >= 16 * MI
    assert 16 * MI <= stats.memory_working_set <= stats.memory_usage
    assert stats.pids >= 1
    pod = v1.stats(UID, "Burstable")
    assert pod is not None
    assert pod.cpu_usage_ns >= stats.cpu_usage_ns
    assert pod.memory_usage >= stats.memory_usage
    assert v1.stats(UID, "Burstable", "nothere") is None
    assert v1.stats("nopod", "Burstable") is None
    busy.kill()


def test_v1_remove_pod_kills_leftovers_and_every_dir(
    v1: V1Driver, root_name: str, start: Start
) -> None:
    limits = CgroupLimits(1024, None, 100000, None, 100)
    v1.create_pod(UID, "Burstable", limits)
    ignoring = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)"
    forking = "import os, time\nos.fork()\ntime.sleep(60)"  # a grandchild, orphaned here
    children = [
        start(v1.create_container(UID, "Burstable", "a", limits), ignoring),
        start(v1.create_container(UID, "Burstable", "b", limits), forking),
        start(v1.holder_procs(UID, "Burstable"), ignoring),
    ]
    time.sleep(0.3)
    pod = f"{root_name}/kubepods/burstable/pod{UID}"
    grandchildren = [
        pid
        for pid in map(int, (MOUNT / "pids" / pod / "b" / "cgroup.procs").read_text().split())
        if pid != children[1].pid
    ]
    assert len(grandchildren) == 1

    v1.remove_pod(UID, "Burstable")

    for child in children:
        assert child.wait(timeout=5) == -signal.SIGKILL
    _assert_killed(grandchildren[0])
    for controller in V1_CONTROLLERS:
        assert not (MOUNT / controller / pod).exists()
        assert (MOUNT / controller / root_name / "kubepods" / "burstable").is_dir()
    v1.remove_pod(UID, "Burstable")  # idempotent


def _assert_killed(pid: int) -> None:
    """A grandchild orphaned by the test: pytest, a child subreaper as root (tests/conftest.py),
    reaps it here; without that, it must at least be dead."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        state = Path(f"/proc/{pid}/stat")
        assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    else:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_v1_sweep_removes_dead_pods_only(v1: V1Driver, root_name: str) -> None:
    limits = CgroupLimits(2, None, 100000, None, None)
    v1.create_pod("live1", "BestEffort", limits)
    v1.create_container("live1", "BestEffort", "c", limits)
    v1.create_pod("dead1", "BestEffort", limits)
    v1.create_container("dead1", "BestEffort", "c", limits)
    v1.create_pod("dead2", "Guaranteed", CgroupLimits(1024, 1000, 100000, MI * 8, None))

    removed = v1.sweep({"live1"})

    assert sorted(removed) == [
        f"/{root_name}/kubepods/besteffort/poddead1",
        f"/{root_name}/kubepods/poddead2",
    ]
    for controller in V1_CONTROLLERS:
        kubepods = MOUNT / controller / root_name / "kubepods"
        assert (kubepods / "besteffort" / "podlive1" / "c").is_dir()
        assert not (kubepods / "besteffort" / "poddead1").exists()
        assert not (kubepods / "poddead2").exists()
    assert v1.sweep({"live1"}) == []


@pytest.mark.parametrize("uid", ["../x", "a/b", "", ".", "a.b", "a b", "x" * 129, "-a"])
def test_unsafe_pod_uids_never_become_paths(v1: V1Driver, root_name: str, uid: str) -> None:
    limits = CgroupLimits(2, None, 100000, None, None)
    with pytest.raises(CgroupNameError):
        v1.create_pod(uid, "BestEffort", limits)
    with pytest.raises(CgroupNameError):
        v1.remove_pod(uid, "BestEffort")
    assert not (MOUNT / "cpu" / root_name).exists()


@pytest.mark.parametrize(
    "name", ["../../x", "A", "a_b", "a.b", "", "-a", "x" * 64, "nodelet.holder"]
)
def test_unsafe_container_names_never_become_paths(v1: V1Driver, root_name: str, name: str) -> None:
    limits = CgroupLimits(2, None, 100000, None, None)
    v1.create_pod(UID, "BestEffort", limits)
    with pytest.raises(CgroupNameError):
        v1.create_container(UID, "BestEffort", name, limits)
    pod = MOUNT / "cpu" / root_name / "kubepods" / "besteffort" / f"pod{UID}"
    assert [p.name for p in pod.iterdir() if p.is_dir()] == []


def test_bad_qos_and_cgroup_root_are_refused(root_name: str) -> None:
    with pytest.raises(CgroupNameError):
        detect(MOUNT, "nodelet")  # not absolute
    with pytest.raises(CgroupNameError):
        detect(MOUNT, "/a/../b")
    driver = detect(MOUNT, f"/{root_name}")
    with pytest.raises(CgroupNameError):
        driver.create_pod(UID, "Gold", CgroupLimits(2, None, 100000, None, None))
    assert not (MOUNT / "cpu" / root_name).exists()


# -- v2, for real on the controller-less cgroup2 mount -------------------------------------------


def test_v2_tree_procs_and_kill_on_real_cgroup2(v2: V2Driver, root_name: str, start: Start) -> None:
    limits = CgroupLimits(1024, 20000, 100000, 32 * MI, 10)
    v2.create_pod(UID, "Burstable", limits)
    procs = v2.create_container(UID, "Burstable", "app", limits)
    pod = UNIFIED / root_name / "kubepods" / "burstable" / f"pod{UID}"
    assert procs == [str(pod / "app" / "cgroup.procs")]
    assert v2.holder_procs(UID, "Burstable") == [str(pod / HOLDER / "cgroup.procs")]
    assert read(pod / "cgroup.events").startswith("populated 0")

    app = start(procs, "import time\nend = time.time() + 0.3\nwhile time.time() < end: pass\n"
                       "time.sleep(60)")  # fmt: skip
    holder = start(v2.holder_procs(UID, "Burstable"), "import time; time.sleep(60)")
    assert cgroup_of(app.pid)[""] == f"/{root_name}/kubepods/burstable/pod{UID}/app"
    assert cgroup_of(holder.pid)[""] == f"/{root_name}/kubepods/burstable/pod{UID}/{HOLDER}"
    assert "populated 1" in read(pod / "cgroup.events")
    time.sleep(0.4)
    stats = v2.stats(UID, "Burstable", "app")
    assert stats is not None and stats.cpu_usage_ns > 100_000_000  # cpu.stat needs no controller
    pod_stats = v2.stats(UID, "Burstable")
    assert pod_stats is not None and pod_stats.cpu_usage_ns >= stats.cpu_usage_ns

    v2.remove_pod(UID, "Burstable")

    assert app.wait(timeout=5) == -signal.SIGKILL
    assert holder.wait(timeout=5) == -signal.SIGKILL
    assert not pod.exists()
    assert (pod.parent).is_dir()
    v2.remove_pod(UID, "Burstable")


def test_v2_kill_uses_cgroup_kill_when_present(v2: V2Driver, root_name: str, start: Start) -> None:
    limits = CgroupLimits(2, None, 100000, None, None)
    v2.create_pod(UID, "BestEffort", limits)
    pod = UNIFIED / root_name / "kubepods" / "besteffort" / f"pod{UID}"
    if not (pod / "cgroup.kill").exists():
        pytest.skip("this kernel has no cgroup.kill (Linux < 5.14)")
    child = start(
        v2.create_container(UID, "BestEffort", "c", limits), "import time; time.sleep(60)"
    )
    # cgroup.kill kills the whole subtree; a driver that only killed the pod level would leave
    # this child running and fail on rmdir.
    v2.kill_all(v2.pod_parts(UID, "BestEffort"), time.monotonic() + 5)
    assert child.wait(timeout=5) == -signal.SIGKILL
    assert "populated 0" in read(pod / "cgroup.events")


def test_v2_sweep_on_real_cgroup2(v2: V2Driver, root_name: str) -> None:
    limits = CgroupLimits(2, None, 100000, None, None)
    for uid in ("live1", "dead1"):
        v2.create_pod(uid, "BestEffort", limits)
        v2.create_container(uid, "BestEffort", "c", limits)
    assert v2.sweep({"live1"}) == [f"/{root_name}/kubepods/besteffort/poddead1"]
    besteffort = UNIFIED / root_name / "kubepods" / "besteffort"
    assert (besteffort / "podlive1" / "c").is_dir()
    assert not (besteffort / "poddead1").exists()


# -- v2 limits, against a tree that mimics cgroupfs -----------------------------------------------


@pytest.fixture
def fake_v2(tmp_path: Path) -> V2Driver:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    (tmp_path / "cgroup.subtree_control").write_text("memory\n")
    return V2Driver(tmp_path, "/nodelet")


def test_v2_limit_files(fake_v2: V2Driver, tmp_path: Path) -> None:
    resources = {"limits": {"cpu": "200m", "memory": "32Mi"}}
    pod_spec = {"containers": [{"name": "app", "resources": resources}]}
    fake_v2.create_pod(UID, "Guaranteed", pod_limits(pod_spec, 1024))
    app = container_limits(container_resources(pod_spec["containers"][0]), None)
    fake_v2.create_container(UID, "Guaranteed", "app", app)

    kubepods = tmp_path / "nodelet" / "kubepods"
    pod = kubepods / f"pod{UID}"
    assert read(pod / "cpu.weight") == "8"  # 204 shares
    assert read(pod / "cpu.max") == "20000 100000"
    assert read(pod / "memory.max") == str(32 * MI)
    assert read(pod / "pids.max") == "1024"
    assert not (pod / "memory.oom.group").exists()
    assert (pod / HOLDER).is_dir()
    assert read(pod / "app" / "cpu.max") == "20000 100000"
    assert read(pod / "app" / "memory.max") == str(32 * MI)
    assert read(pod / "app" / "memory.oom.group") == "1"
    assert read(pod / "app" / "pids.max") == "max"
    # controllers delegated from the mount down to the pod, only those missing
    assert read(tmp_path / "cgroup.subtree_control") == "+cpu +pids"
    for path in (tmp_path / "nodelet", kubepods, pod):
        assert read(path / "cgroup.subtree_control") == "+cpu +memory +pids"
    machine = min(262144, (os.cpu_count() or 1) * 1024)
    assert read(kubepods / "cpu.weight") == str(1 + (machine - 2) * 9999 // 262142)


def test_v2_unlimited_and_besteffort(fake_v2: V2Driver, tmp_path: Path) -> None:
    fake_v2.create_pod(UID, "BestEffort", CgroupLimits(2, None, 100000, None, None))
    besteffort = tmp_path / "nodelet" / "kubepods" / "besteffort"
    assert read(besteffort / "cpu.weight") == "1"
    assert read(besteffort / f"pod{UID}" / "cpu.max") == "max 100000"
    assert read(besteffort / f"pod{UID}" / "memory.max") == "max"
    assert read(besteffort / f"pod{UID}" / "cpu.weight") == "1"


def test_v2_oom_and_stats_read_the_kernel_files(fake_v2: V2Driver, tmp_path: Path) -> None:
    limits = CgroupLimits(2, None, 100000, None, None)
    fake_v2.create_pod(UID, "BestEffort", limits)
    fake_v2.create_container(UID, "BestEffort", "c", limits)
    c = tmp_path / "nodelet" / "kubepods" / "besteffort" / f"pod{UID}" / "c"
    assert fake_v2.oom_killed(UID, "BestEffort", "c") is False  # no memory.events yet
    (c / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 0\n")
    assert fake_v2.oom_killed(UID, "BestEffort", "c") is False
    (c / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\n")
    assert fake_v2.oom_killed(UID, "BestEffort", "c") is True
    (c / "cpu.stat").write_text("usage_usec 5\nuser_usec 3\nsystem_usec 2\n")
    (c / "memory.current").write_text("1000\n")
    (c / "memory.stat").write_text("anon 500\nfile 500\ninactive_file 300\nactive_file 200\n")
    (c / "pids.current").write_text("3\n")
    assert fake_v2.stats(UID, "BestEffort", "c") == CgroupStats(5000, 1000, 700, 3)


def test_v2_refuses_symlinks(fake_v2: V2Driver, tmp_path: Path, start: Start) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "nodelet").mkdir()
    (tmp_path / "nodelet" / "kubepods").symlink_to(outside)
    with pytest.raises(CgroupError, match="not a plain directory"):
        fake_v2.create_pod(UID, "Guaranteed", CgroupLimits(2, None, 100000, None, None))
    assert list(outside.iterdir()) == []

    # A pod cgroup replaced by a symlink: removal neither follows it nor kills what it lists.
    (tmp_path / "nodelet" / "kubepods").unlink()
    (tmp_path / "nodelet" / "kubepods").mkdir()
    victim = start([], "import time; time.sleep(60)")
    (outside / "c").mkdir()
    (outside / "c" / "cgroup.procs").write_text(f"{victim.pid}\n")
    (outside / "cgroup.procs").write_text(f"{victim.pid}\n")
    (tmp_path / "nodelet" / "kubepods" / f"pod{UID}").symlink_to(outside)
    fake_v2.remove_pod(UID, "Guaranteed")
    assert fake_v2.sweep(set()) == []
    assert victim.poll() is None
    assert (outside / "c").is_dir()


# -- detection ----------------------------------------------------------------------------------


def test_detect_this_machine_is_v1_despite_the_unified_mount() -> None:
    driver = detect()
    assert driver.version == 1
    assert isinstance(driver, V1Driver)
    assert driver.root == ("nodelet",)


def test_detect_v2_when_the_mount_has_controllers(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    driver = detect(tmp_path, "/x")
    assert isinstance(driver, V2Driver) and driver.version == 2
    assert driver.controllers == ["cpu", "memory", "pids"]


def test_detect_refuses_a_tree_without_cgroups(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("\n")  # a controller-less cgroup2, no v1
    with pytest.raises(CgroupError, match="cpu, cpuacct, memory"):
        detect(tmp_path)
