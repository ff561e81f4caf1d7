"""Pod sysctls through the real path: the agent's runtime asks the zygote for a holder with
``sysctls``, the holder writes them inside the pod's new namespaces, and the node keeps its own
values. A sysctl that cannot be set fails the sandbox with the holder's reason."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nodelet.runtime.api import ContainerConfig, SandboxConfig, SandboxStatus
from nodelet.runtime.process import ProcessRuntime
from tests.agentharness import CRI_LINE, process_gone

pytestmark = pytest.mark.system

PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
SHM_RMID = Path("/proc/sys/kernel/shm_rmid_forced")


@dataclass
class Pods:
    base: Path
    runtime: ProcessRuntime
    uids: list[str] = field(default_factory=list)

    async def sandbox(self, uid: str, sysctls: tuple[tuple[str, str], ...]) -> SandboxStatus:
        self.uids.append(uid)
        config = SandboxConfig(uid, "default", uid, uid, sysctls=sysctls)
        return await self.runtime.run_sandbox(config, {"uid": uid})

    async def output(self, uid: str, script: str, lines: int) -> list[str]:
        log = self.base / f"{uid}.log"
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
        await self.runtime.start_container(
            uid, ContainerConfig("c", 0, ["sh", "-c", script], env, str(log))
        )
        for _ in range(250):
            text = log.read_text() if log.exists() else ""
            found = [CRI_LINE.match(line) for line in text.splitlines()]
            if len(found) >= lines:
                return [m.group(4) for m in found if m]
            await asyncio.sleep(0.02)
        raise AssertionError(f"{log}: fewer than {lines} lines")


@pytest.fixture
async def pods() -> AsyncIterator[Pods]:
    base = Path(tempfile.mkdtemp(prefix="nlt-sysctl-"))
    runtime = ProcessRuntime(base / "run")
    await runtime.start()
    state = Pods(base, runtime)
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


async def test_sysctls_are_set_in_the_pods_namespaces_only(pods: Pods) -> None:
    host_range, host_shm = PORT_RANGE.read_text(), SHM_RMID.read_text()
    wanted = "40123\t50321" if host_range.split() != ["40123", "50321"] else "40124\t50322"
    shm = "0" if host_shm.strip() == "1" else "1"
    await pods.sandbox(
        "nlt-sysctl-set",
        (
            ("net.ipv4.ip_local_port_range", wanted.replace("\t", " ")),
            ("kernel.shm_rmid_forced", shm),
        ),
    )
    seen = await pods.output("nlt-sysctl-set", f"cat {PORT_RANGE} {SHM_RMID}", 2)
    assert seen == [wanted, shm]
    assert PORT_RANGE.read_text() == host_range
    assert SHM_RMID.read_text() == host_shm


async def test_a_sysctl_the_kernel_refuses_fails_the_sandbox_with_its_reason(pods: Pods) -> None:
    host_range = PORT_RANGE.read_text()
    with pytest.raises(OSError) as failed:
        await pods.sandbox("nlt-sysctl-bad", (("net.ipv4.ip_local_port_range", "not a range"),))
    message = str(failed.value)
    assert "did not become ready" in message
    assert "cannot set sysctl net.ipv4.ip_local_port_range='not a range'" in message
    assert "/proc/sys/net/ipv4/ip_local_port_range" in message
    assert PORT_RANGE.read_text() == host_range
