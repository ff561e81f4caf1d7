"""Cost of image roots and of pulls (issue 15, ``make bench``).

1. Pod start on a stored image: the same 3-container host-network pod as ``pod_start.py``, on
   ``image: host`` (the node's own root, no overlay) and on a busybox image (Debian's
   busybox-static, 2 layers) imported into the agent's store beforehand (an overlay root, fresh
   /proc, /sys and minimal /dev per container). Manifest written (atomic rename) -> all three
   processes up (the holder's CRI timestamp of each container's first output) and -> Running in
   the local API (``/pods`` polled every 2 ms). The variants alternate on one agent.
   Goal: image p50 <= 60 ms.
   Then the host image's two roots: the node's own ``/`` (``--host-image-root Node``, the
   default) against an overlay of it (``Overlay``: the node's other mounts overlaid too), one
   agent each, pods alternating between them.
2. Pull and unpack of a 100 MB image (5 layers of 20 MB of random, incompressible data, gzip)
   from Debian's docker-registry on loopback (pushed there with skopeo): ``nodelet image pull``
   into a fresh root dir vs ``skopeo copy docker://... oci:DIR`` into a fresh dir, alternating,
   3 runs each after one untimed warm-up run of each; nodelet runs with its bytecode cached
   (as installed), in a cache dir under the bench's temp dir. Goal: nodelet's median <= 1.5x
   skopeo's.

Figures are printed with the load average (the machine is shared); goals are printed, not
asserted. NODELET_BENCH_IMAGE_RUNS (default 20) and NODELET_BENCH_PULL_RUNS (default 3) set the
runs; NODELET_BENCH_IMAGES=start, =hostroot or =pull runs one part only.
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_probes import cri_time, first_line, percentiles, pod_json, report
from tests.agentharness import Agent, agent_session, wait_for
from tests.imagebuild import (
    BuiltImage,
    app_layer,
    busybox_layer,
    docker_archive,
    entry,
    nodelet_image,
    require_binary,
    tar_bytes,
)
from tests.system.test_image_pull import push, run_registry

START_RUNS = int(os.environ.get("NODELET_BENCH_IMAGE_RUNS", "20"))
PULL_RUNS = int(os.environ.get("NODELET_BENCH_PULL_RUNS", "3"))
PARTS = os.environ.get("NODELET_BENCH_IMAGES", "start,hostroot,pull").split(",")
CONTAINERS = 3
START_GOAL_MS = 60.0
PULL_GOAL_RATIO = 1.5
LAYERS, LAYER_MB = 5, 20
IMAGE = "nlt.bench.local/busybox:1"
# sh as PID 1 of its PID namespace ignores SIGTERM unless it traps it (see bench_probes.py).
UP = "trap 'exit 0' TERM; echo up; sleep 3600 & wait"


def load() -> str:
    """The 1-minute load average, printed beside each figure."""
    return f"load {os.getloadavg()[0]:.2f}"


def manifest(name: str, image: str) -> str:
    containers = [
        {"name": f"c{i}", "image": image, "imagePullPolicy": "Never", "command": ["sh", "-c", UP]}
        for i in range(CONTAINERS)
    ]
    if image == "host":
        for container in containers:
            del container["imagePullPolicy"]
    spec = {"hostNetwork": True, "terminationGracePeriodSeconds": 1, "containers": containers}
    return pod_json(name, spec)


def start_once(agent: Agent, name: str, image: str) -> tuple[float, float]:
    written = time.time()
    path = agent.write_manifest(f"{name}.json", manifest(name, image))
    pod = wait_for(lambda: agent.running(name), 20, "pod running", interval=0.002)
    api = time.time() - written
    lines = [first_line(agent, pod, f"c{i}") for i in range(CONTAINERS)]
    proc = max(cri_time(line) for line in lines) - written
    path.unlink()
    wait_for(lambda: agent.pod(name) is None, 20, "pod gone", interval=0.01)
    return proc, api


def spread(seconds: list[float]) -> str:
    ms = [v * 1000 for v in seconds]
    return f"min {min(ms):.1f} ms, max {max(ms):.1f} ms"


def bench_start() -> None:
    variants = {"host": "host", "image": IMAGE}
    results: dict[str, list[tuple[float, float]]] = {label: [] for label in variants}
    with agent_session(show_log=False) as make:
        agent = make()
        image = BuiltImage([busybox_layer(), app_layer()], entrypoint=[], cmd=["sh"])
        nodelet_image(agent.root, "import", "-", stdin=docker_archive([(image, [IMAGE])]))
        agent.start()
        time.sleep(1.0)  # steady state, as pod_start.py
        for label, ref in variants.items():
            start_once(agent, f"warm{label}", ref)
        before = load()
        for n in range(START_RUNS):
            order = list(variants) if n % 2 == 0 else list(reversed(variants))
            for label in order:
                results[label].append(start_once(agent, f"n{n}{label}", variants[label]))
        after = load()
    print(f"pod start, {CONTAINERS} containers, host network ({before} -> {after}):")
    for what, index in (("all processes up (CRI log)", 0), ("Running in /pods", 1)):
        print(f"  file written -> {what}:")
        for label, runs in results.items():
            report(f"  {label}", [r[index] for r in runs])
        host = percentiles([r[index] for r in results["host"]])[0]
        with_image = percentiles([r[index] for r in results["image"]])[0]
        print(f"    the image root's share at p50: {with_image - host:+.1f} ms")
    for label, runs in results.items():
        print(f"  spread, {label}, processes up: {spread([r[0] for r in runs])}")
    p50 = percentiles([r[0] for r in results["image"]])[0]
    verdict = "met" if p50 <= START_GOAL_MS else "MISSED"
    print(f"  image p50 {p50:.1f} ms, all processes up (goal <= {START_GOAL_MS:.0f} ms: {verdict})")


def bench_host_root() -> None:
    runs: dict[str, list[tuple[float, float]]] = {"Node": [], "Overlay": []}
    with (
        agent_session(show_log=False) as make_node,
        agent_session(["--host-image-root", "Overlay"], show_log=False) as make_overlay,
    ):
        agents = {"Node": make_node(), "Overlay": make_overlay()}
        for agent in agents.values():
            agent.start()
        time.sleep(1.0)
        for label, agent in agents.items():
            start_once(agent, f"warm{label.lower()}", "host")
        before = load()
        for n in range(START_RUNS):
            order = list(agents) if n % 2 == 0 else list(reversed(agents))
            for label in order:
                runs[label].append(start_once(agents[label], f"r{n}{label.lower()}", "host"))
        after = load()
    print(f"pod start on image: host, {CONTAINERS} containers, by --host-image-root "
          f"({before} -> {after}):")  # fmt: skip
    print("  file written -> all processes up (CRI log):")
    for label, results in runs.items():
        report(f"  {label}", [r[0] for r in results])
    node, overlay = (percentiles([r[0] for r in runs[k]])[0] for k in ("Node", "Overlay"))
    print(f"    the overlay's share at p50: {overlay - node:+.1f} ms")


def big_image() -> BuiltImage:
    """5 layers, each one file of 20 MB from os.urandom: gzip cannot shrink them."""
    layers = []
    for n in range(LAYERS):
        data = os.urandom(LAYER_MB * 2**20)
        info = entry(f"data/layer{n}.bin")
        info.size = len(data)
        layers.append(tar_bytes([(entry("data", tarfile.DIRTYPE), None), (info, data)]))
    return CachedImage(layers, entrypoint=["/bin/true"], cmd=[])


class CachedImage(BuiltImage):
    """Compresses each layer once (``BuiltImage.blobs`` does it on every call)."""

    _cache: list[bytes] | None = None

    def blobs(self) -> list[bytes]:
        if self._cache is None:
            self._cache = super().blobs()
        return self._cache


def timed(args: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, check=False, timeout=600, env=env)
    took = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{args[:3]} exited {proc.returncode}: {proc.stderr.decode()}")
    return took


def bench_pull() -> None:
    skopeo = require_binary("skopeo", "skopeo")
    work = Path(tempfile.mkdtemp(prefix="nlt-bench-pull-"))
    times: dict[str, list[float]] = {"nodelet": [], "skopeo": []}
    loads: list[str] = []
    try:
        image = big_image()
        image.write_oci(work / "oci", "1")
        total = sum(len(blob) for blob in image.blobs())
        with run_registry(work) as registry:
            ref = f"{registry.host}/nlt/big:1"
            push(work / "oci", "1", ref)
            commands = {
                "nodelet": lambda d: [sys.executable, "-m", "nodelet", "image", "pull", ref,
                                      "--root-dir", str(d)],
                "skopeo": lambda d: [skopeo, "--insecure-policy", "copy", "-q",
                                     "--src-tls-verify=false", f"docker://{ref}", f"oci:{d}:1"],
            }  # fmt: skip
            # nodelet as installed: with its bytecode cached (this environment may say
            # PYTHONDONTWRITEBYTECODE, which would compile every module on every run), in a
            # cache dir of the bench's own, not the source tree.
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
            for n in range(-1, PULL_RUNS):  # run -1 warms both (bytecode, page cache), untimed
                order = list(commands) if n % 2 == 0 else list(reversed(commands))
                for label in order:
                    dest = work / f"dest-{label}-{n}-{secrets.token_hex(2)}"
                    loads.append(load())
                    took = timed(commands[label](dest), env)
                    if n >= 0:
                        times[label].append(took)
                    shutil.rmtree(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"pull, {LAYERS} layers x {LAYER_MB} MB random (gzip, {total / 2**20:.0f} MB of blobs), "
          f"loopback docker-registry ({loads[0]} ... {loads[-1]}):")  # fmt: skip
    for label, runs in times.items():
        runs_text = ", ".join(f"{t:.2f}" for t in runs)
        print(f"  {label}: median {statistics.median(runs):.2f} s ({runs_text} s)")
    ratio = statistics.median(times["nodelet"]) / statistics.median(times["skopeo"])
    verdict = "met" if ratio <= PULL_GOAL_RATIO else "MISSED"
    print(f"  nodelet / skopeo: {ratio:.2f}x (goal <= {PULL_GOAL_RATIO}x: {verdict})")


def main() -> None:
    if "start" in PARTS:
        bench_start()
    if "hostroot" in PARTS:
        bench_host_root()
    if "pull" in PARTS:
        bench_pull()


if __name__ == "__main__":
    main()
