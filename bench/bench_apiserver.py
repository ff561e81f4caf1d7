"""Mirror pod latency and API traffic of a real agent against a real kube-apiserver (issue 12).

etcd and kube-apiserver 1.20 from tests/e2e/apiserver.py (``make envtest`` builds them), the agent
as ``nodelet run --kubeconfig <node kubeconfig>`` with the harness of the other benches. A watch
on this node's pods with the official client (admin kubeconfig) timestamps what the cluster
sees, on this script's monotonic clock:

1. manifest written (atomic rename) -> mirror pod Running with condition Ready True;
2. a container exits 1 -> the mirror shows restartCount >= 1 (the first crash restarts at once);
3. 20 manifests written at once -> all 20 mirrors Running;
4. API requests per pod start, crash and delete, by verb and resource: the API server's own
   ``apiserver_request_total`` before and after each step, once the agent has gone quiet.
   1.20 has no client label, but nothing else on this API server touches pods, events, nodes or
   leases (no controller manager; this script's watch stays open, so it is never counted).

The agent runs without ``-v``: its debug logging (every inotify event, every request) slows the
agent enough to change the figures (watchdog's 0.5 s move-pairing wait then often delays a
manifest). kubelet figures: kubelet 1.20 measured on this machine. Without the envtest binaries
the bench prints why and skips. NODELET_BENCH_RUNS / NODELET_BENCH_BURST_RUNS set the repetitions.
"""

from __future__ import annotations

import collections
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.watch import Watch

from tests.agentharness import NODE, Agent, agent_session, wait_for
from tests.e2e.apiserver import EnvtestError, api_client, find_binaries, running_apiserver

RUNS = int(os.environ.get("NODELET_BENCH_RUNS", "20"))
BURST_RUNS = int(os.environ.get("NODELET_BENCH_BURST_RUNS", "5"))
BURST = 20
TIMEOUT = 30.0
QUIET = 0.3
"""The agent is done with a step once the request counters stay unchanged this long."""

# Blocks opening the FIFO (argv[1]) until the bench writes to it, then exits 1 (a crash); with
# no FIFO it just waits. Exits 0 on SIGTERM, also as PID 1 of its PID namespace.
CONTAINER = """\
import os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
if len(sys.argv) > 1:
    with open(sys.argv[1]) as f:
        f.read()
    sys.exit(1)
while True:
    signal.pause()
"""

Test = Callable[[str, dict[str, Any]], bool]
Counts = collections.Counter[str]


def manifest(name: str, fifo: Path | None = None) -> str:
    command = ["/usr/bin/python3", "-c", CONTAINER] + ([str(fifo)] if fifo else [])
    spec = {
        "hostNetwork": True,
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": "host", "command": command}],
    }
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


# -- what the cluster sees ---------------------------------------------------------------------


class PodEvents:
    """A watch on this node's pods on a thread; every event with its arrival time."""

    def __init__(self, core: CoreV1Api, node: str) -> None:
        self._core = core
        self._selector = f"spec.nodeName={node}"
        self._events: list[tuple[float, str, dict[str, Any]]] = []
        self._changed = threading.Condition()
        self._watch = Watch()  # type: ignore[no-untyped-call]
        self._failed: Exception | None = None
        listing = core.list_pod_for_all_namespaces(field_selector=self._selector)
        assert listing.metadata is not None
        self._version = listing.metadata.resource_version
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stream = self._watch.stream(  # type: ignore[no-untyped-call]
            self._core.list_pod_for_all_namespaces,
            field_selector=self._selector,
            resource_version=self._version,
            timeout_seconds=600,
            deserialize=False,  # raw JSON: no model building on the timestamped path
        )
        try:
            for event in stream:
                now = time.monotonic()
                with self._changed:
                    self._events.append((now, event["type"], event["object"]))
                    self._changed.notify_all()
        except Exception as err:  # the API server goes away at the end
            with self._changed:
                self._failed = err
                self._changed.notify_all()

    def mark(self) -> int:
        with self._changed:
            return len(self._events)

    def first(self, since: int, test: Test, what: str) -> float:
        """Arrival time of the first event from index ``since`` on that passes ``test``."""
        deadline = time.monotonic() + TIMEOUT
        index = since
        with self._changed:
            while True:
                while index < len(self._events):
                    at, kind, obj = self._events[index]
                    if test(kind, obj):
                        return at
                    index += 1
                left = deadline - time.monotonic()
                if self._failed is not None:
                    raise AssertionError(f"the watch failed: {self._failed!r}")
                if left <= 0:
                    raise AssertionError(f"timed out after {TIMEOUT}s waiting for {what}")
                self._changed.wait(left)

    def stop(self) -> None:
        self._watch.stop()  # type: ignore[no-untyped-call]


def mirror(name: str, test: Callable[[dict[str, Any]], bool]) -> Test:
    full = f"{name}-{NODE}"
    return lambda kind, obj: (
        kind != "DELETED" and obj["metadata"]["name"] == full and test(obj.get("status") or {})
    )


def gone(name: str) -> Test:
    full = f"{name}-{NODE}"
    return lambda kind, obj: kind == "DELETED" and obj["metadata"]["name"] == full


def running(status: dict[str, Any]) -> bool:
    return bool(status.get("phase") == "Running")


def ready(status: dict[str, Any]) -> bool:
    return running(status) and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def restarted(status: dict[str, Any]) -> bool:
    return any(c.get("restartCount", 0) >= 1 for c in status.get("containerStatuses") or [])


# -- what the agent sent -----------------------------------------------------------------------

SAMPLE = re.compile(r"^apiserver_request_total\{(.*)\} (\S+)$", re.MULTILINE)
LABEL = re.compile(r'(\w+)="([^"]*)"')
AGENT_RESOURCES = ("pods", "events", "nodes", "leases")
PERIODIC = ("nodes", "leases")
"""Node status and Lease: the node's own heartbeat, not caused by any pod."""


class RequestCounts:
    """``apiserver_request_total`` for the agent's resources, by ``VERB resource[/sub]``;
    answers other than 2xx are counted again under ``... -> <code>``."""

    def __init__(self, client: ApiClient, server: str) -> None:
        self._client = client
        self._url = f"{server}/metrics"

    def scrape(self) -> Counts:
        response = self._client.call_api("GET", self._url, {"Accept": "text/plain"})
        text = response.read().decode()  # type: ignore[no-untyped-call]
        counts: Counts = collections.Counter()
        for labels, value in SAMPLE.findall(text):
            label = dict(LABEL.findall(labels))
            if label.get("resource") not in AGENT_RESOURCES:
                continue
            sub = f"/{label['subresource']}" if label.get("subresource") else ""
            key = f"{label['verb']} {label['resource']}{sub}"
            counts[key] += int(float(value))
            if not label.get("code", "").startswith("2"):
                counts[f"{key} -> {label.get('code')}"] += int(float(value))
        return counts

    def quiet(self) -> Counts:
        """The counters once the agent sent nothing (but its heartbeat) for QUIET seconds."""
        deadline = time.monotonic() + TIMEOUT
        last = caused(self.scrape())
        while time.monotonic() < deadline:
            time.sleep(QUIET)
            now = self.scrape()
            if caused(now) == last:
                return now
            last = caused(now)
        raise AssertionError(f"the agent's requests did not settle in {TIMEOUT}s")


def caused(counts: Counts) -> Counts:
    """Requests that a pod caused, without the periodic Node and Lease ones."""
    return collections.Counter(
        {key: n for key, n in counts.items() if key.split()[1].split("/")[0] not in PERIODIC}
    )


# -- the scenarios -----------------------------------------------------------------------------


def single_run(
    agent: Agent, events: PodEvents, counts: RequestCounts, fifos: Path, n: int
) -> tuple[float, float, list[Counts]]:
    """One pod: start to Ready, crash to restartCount 1, delete. Seconds, and requests by step."""
    name = f"single{n}"
    fifo = fifos / name
    os.mkfifo(fifo)
    before = counts.quiet()
    mark = events.mark()
    written = time.monotonic()
    path = agent.write_manifest(f"{name}.yaml", manifest(name, fifo))
    ready_at = events.first(mark, mirror(name, ready), f"{name} Running and Ready")
    started = counts.quiet()
    mark = events.mark()
    fd = os.open(fifo, os.O_WRONLY)  # blocks until the container opened it for reading
    crashed = time.monotonic()
    os.close(fd)  # the container reads EOF and exits 1
    restart_at = events.first(mark, mirror(name, restarted), f"{name} restartCount >= 1")
    restarts = counts.quiet()
    mark = events.mark()
    path.unlink()
    events.first(mark, gone(name), f"{name} mirror deleted")
    wait_for(lambda: agent.pod(name) is None, TIMEOUT, f"{name} stopped")
    deleted = counts.quiet()
    fifo.unlink()
    steps = [started - before, restarts - started, deleted - restarts]
    return ready_at - written, restart_at - crashed, steps


def burst_run(
    agent: Agent, events: PodEvents, counts: RequestCounts, n: int
) -> tuple[float, Counts, Counts]:
    """20 manifests at once: seconds until the last mirror is Running; requests to start and to
    delete them."""
    names = [f"burst{n}-{i}" for i in range(BURST)]
    before = counts.quiet()
    mark = events.mark()
    written = time.monotonic()
    paths = [agent.write_manifest(f"{name}.yaml", manifest(name)) for name in names]
    last = max(events.first(mark, mirror(name, running), f"{name} Running") for name in names)
    started = counts.quiet()
    mark = events.mark()
    for path in paths:
        path.unlink()
    for name in names:
        events.first(mark, gone(name), f"{name} mirror deleted")
    wait_for(lambda: not agent.get("/pods")["items"], TIMEOUT, "burst pods stopped")
    deleted = counts.quiet()
    return last - written, started - before, deleted - started


# -- the report --------------------------------------------------------------------------------


def report(label: str, seconds: list[float], goal: str, kubelet: str) -> None:
    ms = sorted(v * 1000 for v in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    print(f"{label}: p50 {statistics.median(ms):.0f} ms, p95 {p95:.0f} ms, max {ms[-1]:.0f} ms "
          f"({len(ms)} runs; goal {goal}, kubelet 1.20 {kubelet})")  # fmt: skip


def per_pod(label: str, steps: list[Counts], pods: int) -> None:
    total: Counts = collections.Counter()
    for step in steps:
        total.update(caused(step))
    plain = {key: n for key, n in total.items() if "->" not in key and n}
    split = ", ".join(f"{key} {n / pods:.2f}" for key, n in sorted(plain.items()))
    errors = ", ".join(f"{key} {n}" for key, n in sorted(total.items()) if "->" in key and n)
    print(f"  {label}: {sum(plain.values()) / pods:.2f} per pod ({split or 'none'})"
          + (f"; not 2xx: {errors}" if errors else ""))  # fmt: skip


def main() -> None:
    try:
        binaries = find_binaries()
    except EnvtestError as err:  # `make bench` runs every bench; this one needs `make envtest`
        print(f"skipped: {err}")
        return
    fifos = Path(tempfile.mkdtemp(prefix="nlt-bench-"))
    try:
        with running_apiserver(binaries) as apiserver:
            admin = api_client(apiserver.admin_kubeconfig)
            try:
                core = CoreV1Api(admin)
                counts = RequestCounts(admin, apiserver.server)
                args = ["--kubeconfig", str(apiserver.node_kubeconfig(NODE))]
                with agent_session(args, show_log=False) as make:
                    agent = make()
                    agent.start()
                    events = PodEvents(core, NODE)
                    wait_for(lambda: core.list_node(field_selector=f"metadata.name={NODE}").items,
                             TIMEOUT, "Node registered")  # fmt: skip
                    time.sleep(1.0)  # steady state: schema import, first Node status and Lease
                    first, began = counts.quiet(), time.monotonic()
                    singles = [single_run(agent, events, counts, fifos, n) for n in range(RUNS)]
                    bursts = [burst_run(agent, events, counts, n) for n in range(BURST_RUNS)]
                    whole, seconds = counts.quiet() - first, time.monotonic() - began
                    events.stop()
            finally:
                admin.close()  # type: ignore[no-untyped-call]
    finally:
        for leftover in fifos.iterdir():
            leftover.unlink()
        fifos.rmdir()
    version = ".".join(map(str, apiserver.version))
    print(f"nodelet against kube-apiserver {version} (watch of spec.nodeName={NODE}):")
    report("manifest written -> mirror Running and Ready", [s[0] for s in singles],
           "<= 300 ms", "~1.9 s")  # fmt: skip
    report("container exit 1 -> mirror restartCount >= 1", [s[1] for s in singles],
           "<= 250 ms", "~1.5 s")  # fmt: skip
    report(f"{BURST} manifests written at once -> all {BURST} mirrors Running",
           [b[0] for b in bursts], "<= 2 s", "~16 s")  # fmt: skip
    print("API requests of the agent (apiserver_request_total), Node and Lease apart:")
    per_pod("pod start, alone", [s[2][0] for s in singles], RUNS)
    per_pod("first crash", [s[2][1] for s in singles], RUNS)
    per_pod("pod delete, alone", [s[2][2] for s in singles], RUNS)
    per_pod(f"pod start, {BURST} at once", [b[1] for b in bursts], BURST * BURST_RUNS)
    per_pod(f"pod delete, {BURST} at once", [b[2] for b in bursts], BURST * BURST_RUNS)
    periodic = {key: n for key, n in whole.items() if key.split()[1].split("/")[0] in PERIODIC}
    split = ", ".join(f"{key} {n}" for key, n in sorted(periodic.items()) if n)
    print(f"  Node and Lease over the {seconds:.0f} s of the runs: {split or 'none'}")


if __name__ == "__main__":
    main()
