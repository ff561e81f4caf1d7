"""``nodelet run`` under systemd's notify protocol (a test socket stands in for systemd), the
unit file as ``systemd-analyze verify`` sees it, and ``make install``."""

from __future__ import annotations

import itertools
import json
import os
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

import pytest

from tests.agentharness import Agent, agent_session, wait_for

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "nodelet.service"
SLEEPER = {"name": "app", "image": "host", "command": ["sleep", "3600"]}


def manifest(name: str) -> str:
    spec = {"containers": [SLEEPER], "terminationGracePeriodSeconds": 1}
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


class Listener:
    """systemd's side: a datagram socket collecting (arrival time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[tuple[float, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append((time.monotonic(), data.decode()))

    def first(self, prefix: str) -> str | None:
        return next((m for _, m in self.drain() if m.startswith(prefix)), None)

    def pings_since(self, since: float) -> int:
        return sum(1 for at, m in self.drain() if at >= since and m == "WATCHDOG=1")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notified(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Callable[[], Agent], Listener]]:
    """An agent factory whose agents run with ``$NOTIFY_SOCKET`` (a 1 s watchdog) set."""
    short = Path(tempfile.mkdtemp(prefix="nlt-sd-"))  # AF_UNIX paths are short
    listener = Listener(short / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("NODELET_TEST_WEDGE_FILE", str(short / "wedge"))
    try:
        with agent_session() as make:
            yield make, listener
    finally:
        listener.close()
        shutil.rmtree(short, ignore_errors=True)


def settled(path: Path) -> None:
    """Old enough that the source reads it at once (no settle wait)."""
    past = time.time() - 60
    os.utime(path, (past, past))


def test_ready_status_watchdog_and_stopping(
    notified: tuple[Callable[[], Agent], Listener],
) -> None:
    make, listener = notified
    agent = make()
    settled(agent.write_manifest("web.json", manifest("web")))
    settled(agent.write_manifest("broken.yaml", "kind: [unclosed"))
    agent.start()
    ready = wait_for(lambda: listener.first("READY=1"), 15, "READY=1")
    # READY=1 comes after the first complete read: the pod is known by then.
    assert agent.pod("web") is not None
    assert ready.splitlines()[1].startswith("STATUS=") and "1 rejected" in ready
    wait_for(lambda: agent.running("web"), 20, "web running")
    wait_for(lambda: listener.first("STATUS=1 of 1 pods running, 1 rejected"), 10, "STATUS")

    since = time.monotonic()
    time.sleep(2.2)
    assert listener.pings_since(since) >= 3  # every half WATCHDOG_USEC

    (agent.manifests / "web.json").unlink()
    wait_for(lambda: listener.first("STATUS=0 of 0 pods running, 1 rejected"), 15, "STATUS")
    wait_for(lambda: not any((agent.run_dir / "pods").iterdir()), 15, "pod removed")
    agent.signal(signal.SIGTERM)
    stopping = wait_for(lambda: listener.first("STOPPING=1"), 5, "STOPPING=1")
    assert "STATUS=stopping" in stopping


def test_status_lines_are_rate_limited(notified: tuple[Callable[[], Agent], Listener]) -> None:
    make, listener = notified
    agent = make()
    agent.start()
    wait_for(lambda: listener.first("READY=1"), 15, "READY=1")
    for i in range(8):
        agent.write_manifest(f"p{i}.json", manifest(f"p{i}"))
        time.sleep(0.05)
    wait_for(lambda: listener.first("STATUS=8 of 8 pods running"), 30, "all running")
    status_times = [at for at, m in listener.drain() if m.startswith("STATUS=")]
    gaps = [b - a for a, b in itertools.pairwise(status_times)]
    assert all(gap >= 0.9 for gap in gaps), gaps  # 16 phase changes, one STATUS= a second


def test_wedged_loop_stops_the_pings(notified: tuple[Callable[[], Agent], Listener]) -> None:
    make, listener = notified
    agent = make()
    agent.start()
    wait_for(lambda: listener.first("READY=1"), 15, "READY=1")
    wedge = listener.path.parent / "wedge"
    wedge.touch()  # the heartbeat blocks the loop on its next tick
    time.sleep(1.0)
    since = time.monotonic()
    time.sleep(2.0)
    try:
        assert listener.pings_since(since) == 0
        assert not agent.healthy()  # the loop answers nothing either
    finally:
        wedge.unlink()
    since = time.monotonic()
    wait_for(lambda: listener.pings_since(since) >= 2, 5, "pings after the loop is free")
    assert agent.healthy()


def test_healthz_checks(agent: Agent) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/healthz", timeout=5) as r:
        assert r.read() == b"ok"
    for name in ("ping", "syncloop", "manifestsource"):
        url = f"http://127.0.0.1:{agent.port}/healthz/{name}"
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.read() == b"ok"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{agent.port}/healthz/nothing", timeout=5)
    assert missing.value.code == 404


def verify(unit: Path, nodelet: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on a copy of ``unit`` whose ExecStart is ``nodelet`` (verify
    insists that the binary exists)."""
    text = unit.read_text()
    start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    binary = start.removeprefix("ExecStart=").split()[0]
    copy = workdir / "nodelet.service"
    copy.write_text(text.replace(f"ExecStart={binary} ", f"ExecStart={nodelet} "))
    return subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unit_verifies(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: make system-deps"
    nodelet = shutil.which("nodelet") or str(Path(sys.executable).parent / "nodelet")
    result = verify(UNIT, Path(nodelet), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""  # no warnings either
    text = UNIT.read_text()
    for setting in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30s", "KillMode=process"):
        assert f"\n{setting}\n" in text


def make_install(dest: Path) -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "install", f"DESTDIR={dest}", "PREFIX=/usr"],
        cwd=REPO, check=False, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_make_install_stages_under_destdir(tmp_path: Path) -> None:
    """DESTDIR and PREFIX are honoured, the venv's scripts name their final path, the unit
    starts the PREFIX link, /etc/default/nodelet is written once and then kept (a second
    install, an upgrade, leaves the admin's settings alone)."""
    dest = tmp_path / "root"
    make_install(dest)
    defaults = dest / "etc" / "default" / "nodelet"
    assert 'NODELET_ARGS=""' in defaults.read_text()
    defaults.write_text('NODELET_ARGS="--v"\n')
    make_install(dest)
    home = dest / "opt" / "nodelet"
    link = dest / "usr" / "bin" / "nodelet"
    assert os.readlink(link) == "/opt/nodelet/bin/nodelet"
    assert (home / "bin" / "nodelet").read_text().startswith("#!/opt/nodelet/bin/python")
    assert str(dest) not in (home / "pyvenv.cfg").read_text()
    unit = dest / "etc" / "systemd" / "system" / "nodelet.service"
    assert "\nExecStart=/usr/bin/nodelet run $NODELET_ARGS\n" in unit.read_text()
    assert defaults.read_text() == 'NODELET_ARGS="--v"\n'
    staged = subprocess.run(
        [str(home / "bin" / "python"), "-m", "nodelet", "run", "--help"],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert staged.returncode == 0 and "--pod-manifest-path" in staged.stdout
    result = verify(unit, home / "bin" / "nodelet", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
