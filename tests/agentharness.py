"""Run the real ``nodelet run`` daemon in a private set of directories, and observe it.

Everything lives under one ``nlt-`` temp dir; teardown kills only processes this test started
(descendants of the test process that appeared during the test), by pid, and reaps them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil

from nodelet.cli.client import fetch_unix
from nodelet.config import SOCKET_NAME

NODE = "nlt-node"
T = TypeVar("T")
CRI_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (stdout|stderr) (F|P) (.*)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(
    probe: Callable[[], T | None],
    timeout: float = 15.0,
    what: str = "condition",
    interval: float = 0.05,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def process_gone(pid: int) -> bool:
    """Ended: no such process, or a zombie nobody reaped yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Agent:
    """One ``nodelet run`` subprocess and its directories."""

    def __init__(self, base: Path, extra_args: list[str], prefix: list[str] | None = None) -> None:
        self.base = base
        self.prefix = list(prefix or [])
        """Runs the agent under this command (``ip netns exec <ns>``: a node of its own)."""
        self.manifests = base / "manifests"
        self.root = base / "root"
        self.run_dir = base / "run"
        self.logs = base / "logs"
        self.manifests.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.own_group = False
        """Start the agent as the leader of a process group of its own (as a shell's job)."""
        self.output = base / "agent.log"

    def start(self, omit: tuple[str, ...] = ()) -> None:
        """Start ``nodelet run``; ``omit`` names flags (``--healthz-port``) left out, for a
        test whose ``--config`` file sets them instead."""
        base = {
            "--pod-manifest-path": str(self.manifests),
            "--hostname-override": NODE,
            "--node-ip": "127.0.0.1",
            "--root-dir": str(self.root),
            "--run-dir": str(self.run_dir),
            "--pod-logs-dir": str(self.logs),
            "--healthz-port": str(self.port),
        }
        flags = [part for flag, value in base.items() if flag not in omit for part in (flag, value)]
        cmd = [*self.prefix, sys.executable, "-m", "nodelet", "run", *flags, *self.extra_args]
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=self.own_group
            )
        wait_for(self.healthy, 20, "agent /healthz")

    def healthy(self) -> bool:
        if self.prefix:  # its 127.0.0.1 may be another netns's: ask over the unix socket
            try:
                return bool(self.alive() and self.get("/pods") is not None)
            except OSError:
                return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=20)

    def get(self, path: str) -> Any:
        """The full local API, as root sees it: the agent's root-only unix socket."""
        return fetch_unix(self.run_dir / SOCKET_NAME, path)

    def get_tcp(self, path: str) -> Any:
        """The TCP port any local user reads: env values and rejection reasons redacted."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return json.load(r)

    def pod(self, name: str) -> dict[str, Any] | None:
        """The pod from /pods by its manifest name (the node suffix is added here)."""
        for item in self.get("/pods")["items"]:
            if item["metadata"]["name"] == f"{name}-{NODE}":
                found: dict[str, Any] = item
                return found
        return None

    def write_manifest(self, filename: str, text: str) -> Path:
        """Write atomically (temp dotfile + rename), as config management tools do."""
        target = self.manifests / filename
        tmp = self.manifests / f".{filename}.tmp"
        tmp.write_text(text)
        os.replace(tmp, target)
        return target

    def container_status(self, pod: str, container: str) -> dict[str, Any] | None:
        item = self.pod(pod)
        if item is None:
            return None
        status = item.get("status", {})
        for cs in status.get("containerStatuses", []) + status.get("initContainerStatuses", []):
            if cs["name"] == container:
                found: dict[str, Any] = cs
                return found
        return None

    def running(self, pod: str, *containers: str) -> dict[str, Any] | None:
        """The pod once the named containers (all, if none named) are running."""
        item = self.pod(pod)
        if item is None:
            return None
        statuses = item.get("status", {}).get("containerStatuses", [])
        wanted = set(containers) or {c["name"] for c in statuses}
        ok = [c for c in statuses if c["name"] in wanted and "running" in c["state"]]
        return item if statuses and len(ok) == len(wanted) else None

    def log_dir(self, pod: dict[str, Any], container: str) -> Path:
        meta = pod["metadata"]
        return self.logs / f"{meta['namespace']}_{meta['name']}_{meta['uid']}" / container

    def log_lines(self, pod: dict[str, Any], container: str, attempt: int = 0) -> list[str]:
        """Message text of one container run's CRI log (asserting the CRI format)."""
        path = self.log_dir(pod, container) / f"{attempt}.log"
        if not path.exists():
            return []
        lines = []
        for raw in path.read_text().splitlines():
            match = CRI_LINE.match(raw)
            assert match, f"not a CRI log line in {path}: {raw!r}"
            lines.append(match.group(4))
        return lines

    def log_value(self, pod: dict[str, Any], container: str, key: str, attempt: int = 0) -> str:
        """Wait for a ``key=value`` line printed by the container and return the value."""

        def find() -> str | None:
            for line in self.log_lines(pod, container, attempt):
                if line.startswith(f"{key}="):
                    return line.split("=", 1)[1]
            return None

        return wait_for(find, 15, f"{key}= in {container}/{attempt}.log")


@contextlib.contextmanager
def agent_session(
    extra_args: list[str] | None = None, show_log: bool = True, prefix: list[str] | None = None
) -> Iterator[Callable[[], Agent]]:
    """Yields a factory of agents sharing one set of dirs (a restarted agent is a new Agent);
    ``prefix`` wraps each agent's command (see :attr:`Agent.prefix`)."""
    base = Path(tempfile.mkdtemp(prefix="nlt-"))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    agents: list[Agent] = []
    # A cgroup root of this session's own: an agent sweeps the pod cgroups of pods it does not
    # know, so two sessions sharing one root would kill each other's pods. A later
    # --cgroup-root in extra_args wins (argparse keeps the last).
    cgroup_root = f"/nlt-{base.name.removeprefix('nlt-')}"
    # No pod network unless a test asks for one (with names of its own): the built-in one
    # would make the node's `nodelet0` bridge and `nodelet` nft table.
    # No kubelet API either (every agent would bind :10250); a test's own --port wins.
    # The host image on the node's own / (--host-image-root Node): most tests watch their
    # containers through host paths and host pids; the overlay (the agent's default) is
    # tested by the tests that pass --host-image-root Overlay (a later flag wins).
    args = [
        "--cgroup-root", cgroup_root, "--network-plugin", "none", "--port", "0",
        "--host-image-root", "Node", *(extra_args or []),
    ]  # fmt: skip

    def make() -> Agent:
        agent = Agent(base, args, prefix)
        agents.append(agent)
        return agent

    try:
        yield make
    finally:
        _teardown(agents, before, base, show_log)
        remove_cgroup_root(cgroup_root)


CGROUP_MOUNTS = Path("/sys/fs/cgroup")


def remove_cgroup_root(root: str) -> None:
    """Remove the (empty, once every pod is gone) cgroup dirs under ``root`` in every
    hierarchy; only this session's root, never anything else."""
    name = root.strip("/")
    if not name.startswith("nlt-") or "/" in name:
        raise ValueError(f"not a test cgroup root: {root!r}")
    for top in [CGROUP_MOUNTS / name, *CGROUP_MOUNTS.glob(f"*/{name}")]:
        if not top.is_dir() or top.is_symlink():
            continue
        for path in sorted(top.rglob("*"), key=lambda p: -len(p.parts)):
            if path.is_dir() and not path.is_symlink():
                with contextlib.suppress(OSError):
                    path.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _teardown(agents: list[Agent], before: set[int], base: Path, show_log: bool) -> None:
    if show_log and agents and agents[0].output.exists():  # shown by pytest when the test failed
        print("--- agent log (tail) ---\n" + agents[0].output.read_text()[-6000:])
    live = [a for a in agents if a.alive()]
    try:  # the graceful path first: remove every manifest and let the agent clean up
        if live:
            for path in live[-1].manifests.iterdir():
                path.unlink()
            wait_for(lambda: not live[-1].get("/pods")["items"] and _no_holders(base), 40)
    except Exception as err:  # an unresponsive agent must not stop the by-pid clean-up below
        print(f"graceful clean-up failed: {err!r}")
    for agent in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.signal(signal.SIGTERM)
    for proc in psutil.Process().children(recursive=True):
        if proc.pid not in before:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
    for proc in psutil.Process().children():
        if proc.pid not in before:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, 0)
    shutil.rmtree(base, ignore_errors=True)


def _no_holders(base: Path) -> bool:
    pods = base / "run" / "pods"
    return not pods.exists() or not any(pods.iterdir())
