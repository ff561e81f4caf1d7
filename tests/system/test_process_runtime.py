"""The process runtime on its own: real holders, namespaces, signals and journals."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from nodelet.runtime.api import (
    ContainerConfig,
    ContainerStartError,
    Mount,
    SandboxConfig,
    SandboxStatus,
)
from nodelet.runtime.process import ProcessRuntime
from tests.agentharness import CRI_LINE, process_gone

pytestmark = pytest.mark.system

PATH = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


class Box:
    """A started runtime in a private run dir; every pod it made is killed on exit."""

    def __init__(self, base: Path, runtime: ProcessRuntime) -> None:
        self.base = base
        self.runtime = runtime
        self.uids: list[str] = []

    async def sandbox(self, uid: str, **flags: bool) -> SandboxStatus:
        self.uids.append(uid)
        config = SandboxConfig(
            uid,
            "default",
            uid,
            f"host-{uid}",
            host_network=flags.get("host_network", False),
            host_pid=flags.get("host_pid", False),
            host_ipc=flags.get("host_ipc", False),
            share_process_namespace=flags.get("share_process_namespace", False),
        )
        return await self.runtime.run_sandbox(config, {"uid": uid})

    async def run(self, uid: str, name: str, script: str, **extra: object) -> int:
        config = ContainerConfig(
            name, 0, ["sh", "-c", script], dict(PATH), str(self.base / f"{uid}-{name}.log"),
            **extra,  # type: ignore[arg-type]
        )  # fmt: skip
        return (await self.runtime.start_container(uid, config)).pid

    async def output(self, uid: str, name: str, lines: int = 1) -> list[str]:
        path = self.base / f"{uid}-{name}.log"
        for _ in range(200):
            text = path.read_text() if path.exists() else ""
            found = [CRI_LINE.match(line) for line in text.splitlines()]
            if len(found) >= lines:
                assert all(found), text
                return [m.group(4) for m in found if m]
            await asyncio.sleep(0.02)
        raise AssertionError(f"{path}: fewer than {lines} lines")


@pytest.fixture
async def box() -> AsyncIterator[Box]:
    base = Path(tempfile.mkdtemp(prefix="nlt-rt-"))
    runtime = ProcessRuntime(base / "run")
    await runtime.start()
    state = Box(base, runtime)
    try:
        yield state
    finally:
        for uid in state.uids:
            status = await runtime.pod_status(uid)
            await runtime.kill_pod(uid, 0.5)
            if status is not None and status.holder_pid is not None:
                assert process_gone(status.holder_pid)
        await runtime.close()
        shutil.rmtree(base, ignore_errors=True)


def ns(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


async def test_shared_process_namespace_makes_the_holder_pid_1(box: Box) -> None:
    status = await box.sandbox("nlt-pidns", share_process_namespace=True)
    assert status.holder_pid is not None
    status_text = Path(f"/proc/{status.holder_pid}/status").read_text()
    nspid = next(line for line in status_text.splitlines() if line.startswith("NSpid:")).split()[1:]
    assert nspid[-1] == "1" and len(nspid) == 2
    await box.run("nlt-pidns", "a", "echo pid=$$; exec sleep 60")
    inner = (await box.output("nlt-pidns", "a"))[0].split("=")[1]
    assert inner == "2"  # the first process after the holder in a fresh PID namespace
    # b can signal a by its pid inside the pod's namespace: they share it.
    await box.run("nlt-pidns", "b", f"kill -0 {inner} && echo sees-a; exec sleep 60")
    assert (await box.output("nlt-pidns", "b"))[0] == "sees-a"


async def test_host_network_and_ipc_share_the_hosts(box: Box) -> None:
    status = await box.sandbox("nlt-hostnet", host_network=True, host_ipc=True)
    assert status.holder_pid is not None
    for kind in ("net", "ipc", "uts"):
        assert ns(status.holder_pid, kind) == ns("self", kind)
    own = await box.sandbox("nlt-ownnet")
    assert own.holder_pid is not None
    for kind in ("net", "ipc", "uts"):
        assert ns(own.holder_pid, kind) != ns("self", kind)
    await box.run("nlt-ownnet", "c", "hostname; cat /sys/class/net/lo/operstate")
    assert await box.output("nlt-ownnet", "c", 2) == ["host-nlt-ownnet", "unknown"]


async def test_grace_period_ends_with_sigkill_of_the_whole_group(box: Box) -> None:
    await box.sandbox("nlt-grace")
    pid = await box.run("nlt-grace", "stubborn", "trap '' TERM; sleep 300 & echo child=$!; wait")
    child = int((await box.output("nlt-grace", "stubborn"))[0].split("=")[1])
    started = asyncio.get_running_loop().time()
    await box.runtime.stop_container("nlt-grace", "stubborn", 0.5)
    assert asyncio.get_running_loop().time() - started >= 0.5
    assert process_gone(pid) and process_gone(child)
    status = await box.runtime.pod_status("nlt-grace")
    assert status is not None
    last = status.latest("stubborn")
    assert last is not None and last.exit_code == 137 and last.signal == 9


async def test_exec_failure_is_a_run_that_ended_with_start_error(box: Box) -> None:
    await box.sandbox("nlt-exec")
    config = ContainerConfig("x", 0, ["nlt-no-such-binary"], dict(PATH), str(box.base / "x.log"))
    with pytest.raises(ContainerStartError) as failure:
        await box.runtime.start_container("nlt-exec", config)
    assert failure.value.reason == "StartError"
    message = 'exec: "nlt-no-such-binary": executable file not found in $PATH'
    assert message in failure.value.message
    status = await box.runtime.pod_status("nlt-exec")
    assert status is not None
    [run] = status.containers
    assert (run.exit_code, run.reason, run.message) == (128, "StartError", message)


async def test_setup_failure_is_not_a_run(box: Box) -> None:
    await box.sandbox("nlt-setup")
    with pytest.raises(ContainerStartError) as failure:
        await box.run("nlt-setup", "bad", "true", working_dir="/nlt-nowhere/work")
    assert failure.value.reason == "CreateContainerError"
    assert "outside every volume" in failure.value.message
    assert not Path("/nlt-nowhere").exists()
    status = await box.runtime.pod_status("nlt-setup")
    assert status is not None and status.containers == ()


async def test_mounts_are_private_and_read_only_when_asked(box: Box) -> None:
    await box.sandbox("nlt-mnt")
    volume = box.base / "vol"
    volume.mkdir()
    (volume / "marker").write_text("inside\n")
    host_before = sorted(os.listdir("/mnt"))
    await box.run("nlt-mnt", "ro", "cat /mnt/marker; touch /mnt/x 2>/dev/null || echo read-only",
                  mounts=[Mount(str(volume), "/mnt", read_only=True)])  # fmt: skip
    assert await box.output("nlt-mnt", "ro", 2) == ["inside", "read-only"]
    assert sorted(os.listdir("/mnt")) == host_before  # the host's /mnt never changed
    with pytest.raises(ContainerStartError, match="does not exist on the host"):
        await box.run("nlt-mnt", "bad", "true", mounts=[Mount(str(volume), "/nlt-nowhere")])
    assert not Path("/nlt-nowhere").exists()


async def test_journal_survives_a_new_runtime(box: Box) -> None:
    await box.sandbox("nlt-journal")
    await box.run("nlt-journal", "stay", "exec sleep 60")
    await box.run("nlt-journal", "quit", "sleep 0.3; exit 7")
    await box.runtime.close()  # the agent goes away; the pod does not
    await asyncio.sleep(0.6)  # "quit" exits while nobody listens
    box.runtime = ProcessRuntime(box.base / "run")
    await box.runtime.start()
    status = await box.runtime.pod_status("nlt-journal")
    assert status is not None and status.ready
    quit_run = status.latest("quit")
    assert quit_run is not None and quit_run.exit_code == 7
    stay = status.latest("stay")
    assert stay is not None and stay.running and psutil.pid_exists(stay.pid)


async def test_a_dead_zygote_is_replaced(box: Box) -> None:
    zygote = box.runtime.zygote_pid
    assert zygote is not None
    os.kill(zygote, 9)
    await asyncio.sleep(0.1)
    status = await box.sandbox("nlt-zygote")
    assert status.ready and box.runtime.zygote_pid not in (None, zygote)


async def test_daemons_that_escaped_their_group_die_with_the_pod(box: Box) -> None:
    await box.sandbox("nlt-daemon")
    await box.run("nlt-daemon", "forker", "setsid sleep 300 & echo daemon=$!; exec sleep 300")
    daemon = int((await box.output("nlt-daemon", "forker"))[0].split("=")[1])
    assert not process_gone(daemon)
    await box.runtime.kill_pod("nlt-daemon", 0.5)
    box.uids.remove("nlt-daemon")
    assert process_gone(daemon)
