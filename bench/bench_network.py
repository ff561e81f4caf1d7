"""Cost of the pod network at pod start (issue 16, ``make bench``).

The same 3-container pod with a network namespace of its own, manifest written (atomic rename)
-> all three processes up (the holder's CRI timestamp of each container's first output) and
-> Running in the local API (``/pods`` polled every 2 ms), on two agents in alternating order:

- ``builtin``: a veth whose peer is made in the pod's netns, an address from host-local IPAM,
  a default route, the managed /etc/hosts (a bridge ``nlt-br<hex>``, a 10.197.x.0/24 and an nft
  table of the bench's own, removed afterwards);
- ``none``: the same pod whose netns has only loopback (``--network-plugin none``).

Goal: builtin p50 <= 60 ms (the kernel's share is about 15-20 ms here). Printed, not asserted.
NODELET_BENCH_NETWORK_RUNS sets the runs per variant (default 20).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_probes import cri_time, first_line, percentiles, pod_json, report
from nodelet.network.builtin import BuiltinNetwork
from tests.agentharness import Agent, agent_session, wait_for

RUNS = int(os.environ.get("NODELET_BENCH_NETWORK_RUNS", "20"))
CONTAINERS = 3
GOAL_MS = 60.0
UP = "trap 'exit 0' TERM; echo up; sleep 3600 & wait"


def manifest(name: str) -> str:
    containers = [
        {"name": f"c{i}", "image": "host", "command": ["sh", "-c", UP]} for i in range(CONTAINERS)
    ]
    return pod_json(name, {"terminationGracePeriodSeconds": 1, "containers": containers})


def run_once(agent: Agent, name: str, wants_ip: bool) -> tuple[float, float]:
    written = time.time()
    path = agent.write_manifest(f"{name}.json", manifest(name))
    pod = wait_for(lambda: agent.running(name), 20, "pod running", interval=0.002)
    api = time.time() - written
    lines = [first_line(agent, pod, f"c{i}") for i in range(CONTAINERS)]
    proc = max(cri_time(line) for line in lines) - written
    assert bool(pod["status"].get("podIP")) == wants_ip, pod["status"]
    path.unlink()
    wait_for(lambda: agent.pod(name) is None, 20, "pod gone", interval=0.01)
    return proc, api


@contextlib.contextmanager
def builtin_agent() -> Iterator[Agent]:
    """An agent on a pod network of the bench's own, destroyed afterwards."""
    tag = secrets.token_hex(3)
    bridge, table = f"nlt-br{tag}", f"nlt-{tag}"
    cidr = f"10.197.{secrets.randbelow(250) + 1}.0/24"
    args = ["--network-plugin", "builtin", "--pod-cidr", cidr, "--pod-bridge", bridge,
            "--network-table", table]  # fmt: skip
    scratch = Path(tempfile.mkdtemp(prefix="nlt-bench-"))
    try:
        with agent_session(args, show_log=False) as make:
            agent = make()
            agent.start()
            yield agent
    finally:
        network = BuiltinNetwork(cidr=cidr, state_dir=scratch, bridge=bridge, nft_table=table)
        asyncio.run(network.destroy())
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    results: dict[str, list[tuple[float, float]]] = {"builtin": [], "none": []}
    with builtin_agent() as net, agent_session(show_log=False) as make:
        plain = make()
        plain.start()
        agents = {"builtin": (net, True), "none": (plain, False)}
        for label, (agent, wants_ip) in agents.items():
            run_once(agent, f"warm{label}", wants_ip)
        for n in range(RUNS):
            order = list(agents) if n % 2 == 0 else list(reversed(agents))
            for label in order:
                agent, wants_ip = agents[label]
                results[label].append(run_once(agent, f"n{n}{label}", wants_ip))
    print(f"pod start, {CONTAINERS} containers, own netns (manifest written -> ...):")
    for what, index in (("all processes up (CRI log)", 0), ("Running in /pods", 1)):
        print(f"  {what}:")
        for label, runs in results.items():
            report(f"  {label}", [r[index] for r in runs])
        with_net = percentiles([r[index] for r in results["builtin"]])[0]
        without = percentiles([r[index] for r in results["none"]])[0]
        print(f"    the network's share at p50: {with_net - without:+.1f} ms")
    p50 = percentiles([r[0] for r in results["builtin"]])[0]
    verdict = "met" if p50 <= GOAL_MS else "MISSED"
    print(f"  builtin p50 {p50:.1f} ms, all processes up (goal <= {GOAL_MS:.0f} ms: {verdict})")


if __name__ == "__main__":
    main()
