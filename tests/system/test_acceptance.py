"""The foundation's acceptance points, each against a real ``nodelet run`` daemon as root.

Containers report what they see (namespaces, hostname, pids) on stdout; the test reads it back
from the CRI logs and compares it with the host, so every assertion is about real processes.
"""

from __future__ import annotations

import calendar
import itertools
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.agentharness import NODE, Agent, free_port, process_gone, wait_for

pytestmark = pytest.mark.system

REPORT = (
    "import os, socket, sys, time\n"
    "print('pid=%s' % os.readlink('/proc/self'))\n"
    "for ns in ('net', 'ipc', 'uts'):\n"
    "    print('%s=%s' % (ns, os.readlink('/proc/self/ns/' + ns)))\n"
    "print('hostname=' + socket.gethostname())\n"
    "sys.stdout.flush()\n"
)
SERVE = REPORT + (
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
    "print('listening=yes', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(b'hello-from-server'); c.close()\n"
)
CLIENT = REPORT + (
    "print('init-marker=' + open('/mnt/init-done').read(), flush=True)\n"
    "while True:\n"
    "    try:\n"
    "        c = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=1)\n"
    "        print('reached=' + c.recv(100).decode(), flush=True); break\n"
    "    except OSError:\n"
    "        time.sleep(0.1)\n"
    "time.sleep(3600)\n"
)
SLEEPER = REPORT + "time.sleep(3600)\n"


def py(name: str, script: str, *args: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "host", "command": ["python3", "-c", script, *args], **extra}


def manifest(name: str, containers: list[dict[str, Any]], **spec: Any) -> str:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        # A short grace unless a test sets one: containers are PID 1 of their own PID
        # namespace, so SIGTERM without a handler is ignored and a stop waits out the grace.
        "spec": {"containers": containers, "terminationGracePeriodSeconds": 2, **spec},
    }
    return json.dumps(pod, indent=1)


def host_ns(kind: str) -> str:
    return os.readlink(f"/proc/self/ns/{kind}")


def test_three_container_pod_shares_namespaces(agent: Agent) -> None:
    port = str(free_port())
    init = {
        "name": "init",
        "image": "host",
        "command": ["sh", "-c", "date +%s.%N > /mnt/init-done"],
        "volumeMounts": [{"name": "scratch", "mountPath": "/mnt"}],
    }
    mounts = {"volumeMounts": [{"name": "scratch", "mountPath": "/mnt"}]}
    agent.write_manifest(
        "trio.yaml",
        manifest(
            "trio",
            [py("server", SERVE, port), py("client", CLIENT, port, **mounts)],
            initContainers=[init],
            volumes=[{"name": "scratch", "emptyDir": {}}],
        ),
    )
    pod = wait_for(lambda: agent.running("trio"), 20, "trio running")
    init_status = pod["status"]["initContainerStatuses"][0]
    assert init_status["state"]["terminated"]["exitCode"] == 0
    assert agent.log_value(pod, "client", "reached") == "hello-from-server"
    assert agent.log_value(pod, "client", "init-marker")  # init ran before, in the shared volume
    seen = {c: {k: agent.log_value(pod, c, k) for k in ("net", "ipc", "uts", "hostname")}
            for c in ("server", "client")}  # fmt: skip
    assert seen["server"] == seen["client"]
    for kind in ("net", "ipc", "uts"):
        assert seen["server"][kind] != host_ns(kind)
    assert seen["server"]["hostname"] == f"trio-{NODE}"
    started = [
        calendar.timegm(time.strptime(c["state"]["running"]["startedAt"], "%Y-%m-%dT%H:%M:%SZ"))
        for c in pod["status"]["containerStatuses"]
    ]
    finished = init_status["state"]["terminated"]["finishedAt"]
    init_end = calendar.timegm(time.strptime(finished, "%Y-%m-%dT%H:%M:%SZ"))
    assert all(s >= init_end for s in started)


def test_killed_container_is_restarted(agent: Agent) -> None:
    agent.write_manifest("victim.yaml", manifest("victim", [py("app", SLEEPER)]))
    pod = wait_for(lambda: agent.running("victim"), 20, "victim running")
    pid = int(agent.log_value(pod, "app", "pid"))
    os.kill(pid, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        cs = agent.container_status("victim", "app")
        return cs if cs and cs["restartCount"] == 1 and "running" in cs["state"] else None

    status = wait_for(restarted, 15, "restartCount 1")
    assert status["lastState"]["terminated"]["exitCode"] == 137
    assert int(agent.log_value(pod, "app", "pid", attempt=1)) != pid


def test_crash_loop_backs_off_doubling(agent: Agent) -> None:
    crash = "import time; print('start=%f' % time.time(), flush=True); raise SystemExit(3)"
    agent.write_manifest("crashy.yaml", manifest("crashy", [py("app", crash)]))
    pod = wait_for(lambda: agent.pod("crashy"), 10, "crashy listed")

    def waiting_reason() -> str | None:
        cs = agent.container_status("crashy", "app")
        reason: str | None = (cs or {}).get("state", {}).get("waiting", {}).get("reason")
        return reason

    assert wait_for(lambda: waiting_reason() == "CrashLoopBackOff", 10, "CrashLoopBackOff")
    starts = [float(agent.log_value(pod, "app", "start", attempt=n)) for n in range(5)]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # kubelet: restart at once, then the window (1 s base here) doubles: 0, 1, 2, 4 s.
    for gap, window in zip(gaps, [0.0, 1.0, 2.0, 4.0], strict=True):
        assert window - 0.05 <= gap <= window + 1.0, f"gaps {gaps}"
    cs = agent.container_status("crashy", "app")
    assert cs is not None and cs["restartCount"] >= 4
    assert cs["lastState"]["terminated"]["exitCode"] == 3


def test_missing_binary_is_a_start_error_that_backs_off(agent: Agent) -> None:
    missing = {"name": "app", "image": "host", "command": ["nlt-no-such-binary"]}
    agent.write_manifest("typo.yaml", manifest("typo", [missing]))

    def looping() -> dict[str, Any] | None:
        cs = agent.container_status("typo", "app")
        waiting = (cs or {}).get("state", {}).get("waiting", {})
        return (
            cs
            if cs and cs["restartCount"] >= 2 and waiting.get("reason") == "CrashLoopBackOff"
            else None
        )

    status = wait_for(looping, 15, "restarts counted, then CrashLoopBackOff")
    last = status["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (128, "StartError")
    assert 'exec: "nlt-no-such-binary": executable file not found in $PATH' in last["message"]


def test_finished_pod_frees_its_holder_and_stays_finished(agents: Callable[[], Agent]) -> None:
    first = agents()
    first.start()
    once = REPORT + "raise SystemExit(0)\n"
    first.write_manifest("once.yaml", manifest("once", [py("app", once)], restartPolicy="Never"))

    def succeeded() -> dict[str, Any] | None:
        item = first.pod("once")
        return item if item and item["status"]["phase"] == "Succeeded" else None

    pod = wait_for(succeeded, 15, "Succeeded")
    net = first.log_value(pod, "app", "net")
    wait_for(lambda: not _processes_in_netns(net), 10, "the holder gone with its netns")
    first.signal(signal.SIGKILL)
    second = agents()
    second.start()
    again = wait_for(lambda: second.pod("once"), 10, "pod listed again")
    assert again["status"]["phase"] == "Succeeded"
    assert again["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    time.sleep(1.0)
    assert not second.log_dir(pod, "app").joinpath("1.log").exists()  # never run again


def test_agent_sigkill_loses_no_exit(agents: Callable[[], Agent], tmp_path: Path) -> None:
    trigger = tmp_path / "quit-now"
    quitter = REPORT + (
        "import pathlib\n"
        f"t = pathlib.Path({str(trigger)!r})\n"
        "while not t.exists(): time.sleep(0.05)\n"
        "t.unlink(); raise SystemExit(42)\n"
    )
    first = agents()
    first.start()
    first.write_manifest(
        "steady.yaml", manifest("steady", [py("stay", SLEEPER), py("quit", quitter)])
    )
    pod = wait_for(lambda: first.running("steady"), 20, "steady running")
    stay_pid = int(first.log_value(pod, "stay", "pid"))
    quit_pid = int(first.log_value(pod, "quit", "pid"))
    holder_pid = psutil.Process(stay_pid).ppid()

    first.signal(signal.SIGKILL)
    trigger.touch()
    wait_for(lambda: process_gone(quit_pid), 10, "quit container exit while the agent is down")
    second = agents()
    second.start()

    def reported() -> dict[str, Any] | None:
        cs = second.container_status("steady", "quit")
        return cs if cs and cs["restartCount"] == 1 else None

    status = wait_for(reported, 15, "the exit learned from the journal")
    assert status["lastState"]["terminated"]["exitCode"] == 42
    stay = second.container_status("steady", "stay")
    assert stay is not None and stay["restartCount"] == 0 and "running" in stay["state"]
    assert not process_gone(stay_pid) and not process_gone(holder_pid)
    assert psutil.Process(stay_pid).ppid() == holder_pid  # the pod was never restarted


def test_edit_replaces_pod_after_old_one_is_gone(agent: Agent) -> None:
    port = str(free_port())
    slow_stop = SERVE.replace(
        "print('listening=yes', flush=True)\n",
        "print('listening=yes', flush=True)\n"
        "import signal\n"
        "def bye(*_):\n"
        "    time.sleep(1); print('bye=%f' % time.time(), flush=True); os._exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n",
    ).replace(
        "print('pid=%s' % os.readlink('/proc/self'))\n",
        "print('pid=%s' % os.readlink('/proc/self'))\nprint('start=%f' % time.time())\n",
    )

    def version(n: int) -> str:
        container = py("web", slow_stop, port, env=[{"name": "VERSION", "value": str(n)}])
        return manifest("edited", [container], hostNetwork=True, terminationGracePeriodSeconds=5)

    agent.write_manifest("edited.yaml", version(1))
    old = wait_for(lambda: agent.running("edited"), 20, "v1 running")
    old_pid = int(agent.log_value(old, "web", "pid"))
    agent.write_manifest("edited.yaml", version(2))

    def replaced() -> dict[str, Any] | None:
        item = agent.running("edited")
        return item if item and item["metadata"]["uid"] != old["metadata"]["uid"] else None

    new = wait_for(replaced, 20, "v2 running")
    assert process_gone(old_pid)
    assert agent.log_value(new, "web", "listening") == "yes"  # the port was free
    assert float(agent.log_value(new, "web", "start")) >= float(agent.log_value(old, "web", "bye"))
    assert new["status"]["containerStatuses"][0]["restartCount"] == 0


def test_delete_removes_every_trace(agent: Agent) -> None:
    path = agent.write_manifest(
        "doomed.yaml",
        manifest(
            "doomed",
            [py("a", SLEEPER, volumeMounts=[{"name": "v", "mountPath": "/mnt"}]), py("b", SLEEPER)],
            volumes=[{"name": "v", "emptyDir": {}}],
        ),
    )
    pod = wait_for(lambda: agent.running("doomed"), 20, "doomed running")
    uid = pod["metadata"]["uid"]
    pids = [int(agent.log_value(pod, c, "pid")) for c in ("a", "b")]
    holder = psutil.Process(pids[0]).ppid()
    net_ns = agent.log_value(pod, "a", "net")
    run_dir = agent.run_dir / "pods" / uid
    volume_dir = agent.root / "pods" / uid
    assert run_dir.is_dir() and volume_dir.is_dir()
    path.unlink()
    wait_for(lambda: agent.pod("doomed") is None and not run_dir.exists(), 40, "pod removed")
    assert all(process_gone(p) for p in [*pids, holder])
    assert not volume_dir.exists()
    assert agent.log_dir(pod, "a").joinpath("0.log").exists()  # logs stay
    assert _processes_in_netns(net_ns) == []  # nothing keeps the pod's netns alive


def _processes_in_netns(net_ns: str) -> list[int]:
    return [
        p.pid for p in psutil.process_iter() if not process_gone(p.pid) and _ns_of(p.pid) == net_ns
    ]


def _ns_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None
