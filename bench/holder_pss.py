"""Memory of the infra holders (``make bench``): PSS per holder for 1, 10 and 20 pods.

PSS charges each shared page to every process mapping it, divided by their number, so it is
the honest per-pod cost of holders forked from one pre-warmed zygote. Goal: <= 2 MB per holder.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
from pathlib import Path

from nodelet.runtime.api import SandboxConfig
from nodelet.runtime.process import ProcessRuntime


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss in smaps_rollup of {pid}")


async def measure(count: int) -> tuple[float, float]:
    base = Path(tempfile.mkdtemp(prefix="nlt-bench-"))
    runtime = ProcessRuntime(base / "run")
    await runtime.start()
    uids = [f"nlt-bench-{count}-{n}" for n in range(count)]
    try:
        pids = []
        for uid in uids:
            status = await runtime.run_sandbox(SandboxConfig(uid, "default", uid, uid), {})
            assert status.holder_pid is not None
            pids.append(status.holder_pid)
        await asyncio.sleep(0.2)
        holders = [pss_kib(pid) for pid in pids]
        zygote = runtime.zygote_pid
        return statistics.mean(holders) / 1024, (pss_kib(zygote) / 1024 if zygote else 0.0)
    finally:
        for uid in uids:
            await runtime.kill_pod(uid, 1.0)
        await runtime.close()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    for count in (1, 10, 20):
        holder, zygote = asyncio.run(measure(count))
        print(
            f"holder PSS with {count:2d} pods: {holder:.2f} MB per holder (zygote {zygote:.2f} MB)"
        )


if __name__ == "__main__":
    main()
