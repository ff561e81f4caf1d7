"""Cost of least privilege at pod start (issue 14, ``make bench``).

The same 3-container host-network pod, manifest written (atomic rename) -> all three processes
up (the holder's CRI timestamp of each container's first output) and -> Running in the local
API (``/pods`` polled every 2 ms), three ways in rotating order on one agent:

- ``privileged``: no capability change, no seccomp, no masked paths, no mount namespace: the
  container is set up as before securityContext existed ("today's figure");
- ``default``: containerd's 14 capabilities (bounding set, capset), runc's masked and
  read-only /proc paths and a read-only /sys (a mount namespace per container);
- ``RuntimeDefault``: the same plus containerd's default seccomp profile (compiled once by the
  agent, cached; installed by the holder just before exec).

Goal: RuntimeDefault with the default capability set costs <= 2 ms per container over today's
figure. NODELET_BENCH_SECURITY_RUNS sets the runs per variant (default 30; ~40 s in all).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_probes import cri_time, first_line, percentiles, pod_json, report
from tests.agentharness import Agent, agent_session, wait_for

RUNS = int(os.environ.get("NODELET_BENCH_SECURITY_RUNS", "30"))
CONTAINERS = 3
UP = "trap 'exit 0' TERM; echo up; sleep 3600 & wait"
VARIANTS: dict[str, dict[str, Any]] = {
    "privileged": {"privileged": True},
    "default": {},
    "RuntimeDefault": {"seccompProfile": {"type": "RuntimeDefault"}},
}


def manifest(name: str, security: dict[str, Any]) -> str:
    containers = [
        {"name": f"c{i}", "image": "host", "command": ["sh", "-c", UP], "securityContext": security}
        for i in range(CONTAINERS)
    ]
    spec = {"hostNetwork": True, "terminationGracePeriodSeconds": 1, "containers": containers}
    return pod_json(name, spec)


def run_once(agent: Agent, name: str, security: dict[str, Any]) -> tuple[float, float]:
    written = time.time()
    path = agent.write_manifest(f"{name}.json", manifest(name, security))
    pod = wait_for(lambda: agent.running(name), 20, "pod running", interval=0.002)
    api = time.time() - written
    lines = [first_line(agent, pod, f"c{i}") for i in range(CONTAINERS)]
    proc = max(cri_time(line) for line in lines) - written
    path.unlink()
    wait_for(lambda: agent.pod(name) is None, 20, "pod gone", interval=0.01)
    return proc, api


def main() -> None:
    labels = list(VARIANTS)
    results: dict[str, list[tuple[float, float]]] = {label: [] for label in labels}
    with agent_session(show_log=False) as make:
        agent = make()
        agent.start()
        run_once(agent, "warmup", VARIANTS["RuntimeDefault"])  # compiles and caches the filter
        for n in range(RUNS):
            shift = n % len(labels)
            for label in labels[shift:] + labels[:shift]:
                results[label].append(run_once(agent, f"s{n}{label.lower()}", VARIANTS[label]))
    print(f"pod start, {CONTAINERS} containers, host network (manifest written -> ...):")
    for what, index in (("all processes up (CRI log)", 0), ("Running in /pods", 1)):
        print(f"  {what}:")
        for label in labels:
            report(f"  {label}", [r[index] for r in results[label]])
        base50 = percentiles([r[index] for r in results["privileged"]])[0]
        for label in labels[1:]:
            more = percentiles([r[index] for r in results[label]])[0] - base50
            per = more / CONTAINERS
            verdict = "met" if per <= 2.0 else "MISSED"
            print(
                f"    {label} vs privileged: {more:+.1f} ms at p50, {per:+.2f} ms per container "
                f"(goal <= +2 ms per container: {verdict})"
            )


if __name__ == "__main__":
    main()
