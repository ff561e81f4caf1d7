"""Lifecycle hooks on a real agent: preStop runs before the stop signal, inside the grace
period, owned by the holder (an agent killed in the middle does not stop it), and
``lifecycle.stopSignal`` replaces SIGTERM. Every time is measured, with both bounds."""

from __future__ import annotations

import json
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from nodelet.runtime.api import CapabilitySets, ContainerConfig, Mount, SandboxConfig
from nodelet.runtime.process import ProcessRuntime
from tests.agentharness import Agent, agent_session, process_gone, wait_for
from tests.system.test_lifecycle import marker, process_with

pytestmark = pytest.mark.system

# Appends "<what> <time>" to /mnt/log (the events volume) for each signal; up until SIGKILL.
RECORDER = (
    "import signal, sys, time\n"
    "def note(what):\n"
    "    with open('/mnt/log', 'a') as f:\n"
    "        f.write(f'{what} {time.time()}\\n')\n"
    "for name in ('SIGTERM', 'SIGUSR1', 'SIGQUIT'):\n"
    "    signal.signal(getattr(signal, name), lambda n, _f: note(signal.Signals(n).name))\n"
    "note('ready')\n"
    "while True:\n"
    "    time.sleep(1)\n"
)
NOTE = "import time; open('/mnt/log', 'a').write(f'prestop {time.time()}\\n')"
HTTP_RECORDER = (
    "import http.server, time\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        with open('/mnt/log', 'a') as f:\n"
    "            f.write(f'http{self.path} {time.time()}\\n')\n"
    "        self.send_response(200); self.end_headers()\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', 8089), H).serve_forever()\n"
)


def pod(name: str, events: Path, lifecycle: dict[str, Any], grace: int, mark: str,
        extra: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
    container = {
        "name": "app",
        "image": "host",
        "command": ["python3", "-c", RECORDER, mark],
        "volumeMounts": [{"name": "events", "mountPath": "/mnt"}],
        "lifecycle": lifecycle,
    }
    spec = {
        "terminationGracePeriodSeconds": grace,
        "containers": [container, *(extra or [])],
        "volumes": [{"name": "events", "hostPath": {"path": str(events)}}],
    }
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                       "spec": spec})  # fmt: skip


def events_of(events: Path) -> list[tuple[str, float]]:
    log = events / "log"
    if not log.exists():
        return []
    return [(w, float(t)) for w, t in (line.split() for line in log.read_text().splitlines())]


def first(events: Path, what: str) -> float:
    return next(t for w, t in events_of(events) if w == what)


def start(agent: Agent, name: str, text: str, events: Path, mark: str) -> int:
    agent.write_manifest(f"{name}.json", text)
    wait_for(lambda: any(w == "ready" for w, _ in events_of(events)), 20, "the container ready")
    return process_with(mark)


@pytest.fixture
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nlt-events")


def test_prestop_exec_runs_in_the_container_before_the_stop_signal(events: Path) -> None:
    mark = marker("exec")
    lifecycle = {"preStop": {"exec": {"command": ["python3", "-c", NOTE]}}}
    with agent_session() as factory:
        agent = factory()
        agent.start()
        pid = start(agent, "hooked", pod("hooked", events, lifecycle, 5, mark), events, mark)
        removed = time.time()
        (agent.manifests / "hooked.json").unlink()
        wait_for(lambda: process_gone(pid), 15, "the container stopped", interval=0.02)
        ended = time.time() - removed
    prestop, term = first(events, "prestop"), first(events, "SIGTERM")
    assert removed <= prestop < term, events_of(events)
    assert term - removed < 1.5, "SIGTERM did not follow the handler at once"
    # SIGTERM is handled (no exit): SIGKILL ends it when the 5 s grace period is over.
    assert 4.5 <= ended <= 6.5, ended


def test_prestop_sleep_delays_the_stop_signal_within_the_grace_period(events: Path) -> None:
    mark = marker("sleep")
    lifecycle = {"preStop": {"sleep": {"seconds": 2}}}
    with agent_session() as factory:
        agent = factory()
        agent.start()
        pid = start(agent, "sleepy", pod("sleepy", events, lifecycle, 6, mark), events, mark)
        removed = time.time()
        (agent.manifests / "sleepy.json").unlink()
        wait_for(lambda: process_gone(pid), 15, "the container stopped", interval=0.02)
        ended = time.time() - removed
    term = first(events, "SIGTERM") - removed
    assert 1.9 <= term <= 3.0, term
    assert 5.5 <= ended <= 7.5, ended


def test_prestop_http_reaches_the_pod_loopback(events: Path) -> None:
    mark = marker("http")
    lifecycle = {"preStop": {"httpGet": {"path": "/drain", "port": "admin"}}}
    server = {
        "name": "server",
        "image": "host",
        "command": ["python3", "-c", HTTP_RECORDER],
        "ports": [{"name": "admin", "containerPort": 8089}],
        "volumeMounts": [{"name": "events", "mountPath": "/mnt"}],
    }
    text = pod("web", events, lifecycle, 3, mark, extra=[server])
    # The named port belongs to the container with the hook: declare it there too.
    manifest = json.loads(text)
    manifest["spec"]["containers"][0]["ports"] = [{"name": "admin", "containerPort": 8089}]
    manifest["spec"]["containers"][1]["ports"] = []
    with agent_session() as factory:
        agent = factory()
        agent.start()
        pid = start(agent, "web", json.dumps(manifest), events, mark)
        time.sleep(0.5)  # the server is listening by now
        (agent.manifests / "web.json").unlink()
        wait_for(lambda: process_gone(pid), 15, "the container stopped", interval=0.02)
    assert first(events, "http/drain") < first(events, "SIGTERM"), events_of(events)


def test_a_custom_stop_signal_replaces_sigterm(events: Path) -> None:
    mark = marker("usr1")
    lifecycle = {"stopSignal": "SIGUSR1"}
    with agent_session() as factory:
        agent = factory()
        agent.start()
        pid = start(agent, "usr1", pod("usr1", events, lifecycle, 2, mark), events, mark)
        (agent.manifests / "usr1.json").unlink()
        wait_for(lambda: process_gone(pid), 15, "the container stopped", interval=0.02)
    kinds = [w for w, _ in events_of(events)]
    assert "SIGUSR1" in kinds and "SIGTERM" not in kinds, kinds


def test_an_agent_killed_during_prestop_still_gets_the_pod_stopped_in_time(events: Path) -> None:
    """The holder owns the hook, the stop signal and the SIGKILL timer: the agent's death in
    the middle of the hook changes nothing."""
    mark = marker("orphan")
    lifecycle = {"preStop": {"sleep": {"seconds": 2}}}
    with agent_session() as factory:
        agent = factory()
        agent.start()
        pid = start(agent, "orphan", pod("orphan", events, lifecycle, 4, mark), events, mark)
        removed = time.time()
        (agent.manifests / "orphan.json").unlink()
        time.sleep(0.5)  # the agent has asked the holder to stop the pod by now
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(10)
        wait_for(lambda: process_gone(pid), 15, "the container stopped", interval=0.02)
        ended = time.time() - removed
    term = first(events, "SIGTERM") - removed
    assert 1.9 <= term <= 3.0, term
    assert 3.5 <= ended <= 5.5, ended


SLOW_NOTE = (
    "import time; time.sleep(1.5); open('/mnt/log', 'a').write(f'poststart {time.time()}\\n')"
)


def test_poststart_runs_in_the_container_before_it_is_running(events: Path) -> None:
    mark = marker("poststart")
    lifecycle = {"postStart": {"exec": {"command": ["python3", "-c", SLOW_NOTE]}}}
    with agent_session() as factory:
        agent = factory()
        agent.start()
        agent.write_manifest("late.json", pod("late", events, lifecycle, 1, mark))
        wait_for(lambda: any(w == "ready" for w, _ in events_of(events)), 20, "the process")
        running = wait_for(
            lambda: time.time() if agent.running("late") else None, 10, "Running", interval=0.01
        )
    handler_done = first(events, "poststart")
    started = first(events, "ready")
    assert handler_done - started >= 1.4  # the handler ran its 1.5 s in the live container
    assert running >= handler_done, "reported Running before postStart returned"


def test_a_failed_poststart_kills_the_container(events: Path) -> None:
    mark = marker("failing")
    lifecycle = {"postStart": {"exec": {"command": ["false"]}}}
    with agent_session() as factory:
        agent = factory()
        agent.start()
        agent.write_manifest("bad.json", pod("bad", events, lifecycle, 1, mark))

        def killed() -> dict[str, Any] | None:
            status = agent.container_status("bad", "app") or {}
            for key in ("state", "lastState"):
                terminated = (status.get(key) or {}).get("terminated") or {}
                if terminated.get("reason") == "FailedPostStartHook":
                    return status
            return None

        status = wait_for(killed, 20, "FailedPostStartHook")
        assert "running" not in status["state"] or status["restartCount"] >= 1


async def test_a_prestop_exec_hook_of_a_drop_all_container_has_no_capabilities(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Through a real holder (the process runtime): the handler runs with the container's
    process spec, as containerd's exec gives it, not with the holder's root capabilities."""
    base = tmp_path_factory.mktemp("nlt-hookcaps")
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    runtime = ProcessRuntime(base / "run")
    await runtime.start()
    uid = f"nlt-hookcaps-{secrets.token_hex(3)}"
    try:
        await runtime.run_sandbox(SandboxConfig(uid, "default", uid, "nlt-hookcaps"), {"uid": uid})
        hook = {"kind": "exec", "argv": ["sh", "-c", "cat /proc/self/status > /mnt/status"]}
        config = ContainerConfig(
            "app", 0, ["sleep", "300"], {"PATH": "/usr/bin:/bin"}, str(base / "app.log"),
            mounts=[Mount(str(shared), "/mnt")], run_as_user=1000, run_as_group=1000,
            no_new_privileges=True, own_pid_namespace=True, pre_stop=hook,
            capabilities=CapabilitySets((), (), (), (), ()),
        )  # fmt: skip
        await runtime.start_container(uid, config)
        await runtime.stop_container(uid, "app", 3.0)
        status = dict(
            (k, v.strip())
            for k, _, v in (
                ln.partition(":") for ln in (shared / "status").read_text().splitlines()
            )
        )
        assert status["Uid"].split() == ["1000"] * 4
        assert (status["CapEff"], status["CapBnd"]) == ("0" * 16, "0" * 16)
        assert status["NoNewPrivs"] == "1"
    finally:
        await runtime.kill_pod(uid, 0.5)
        await runtime.close()
