"""kubelet's exec prober (``pkg/probe/exec``): a command run in the container; exit 0 is healthy.

With no container engine to ``exec`` through, the command enters every namespace of the
container's process (mount, UTS, IPC, network, PID) and its root and working directory with
util-linux ``nsenter``, as the container's user and group, with the container process's
environment (what a CRI runtime's exec gives it). It runs in a session of its own, so on timeout
or cancellation the whole process group is SIGKILLed by that session's id (the unreaped leader's
pid, which cannot have been reused). With ``cgroup_procs``, a shell gate holds the command until
its pid is in the container's cgroups, so nothing it forks escapes them.

As kubelet: the combined output, cut at 10 KiB, is the message; a timeout is a failure
``command "<argv joined>" timed out`` (the ExecProbeTimeout behaviour); a probe that cannot be
started is ``UNKNOWN``, a prober error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Sequence

from nodelet.probe.result import Outcome, ProbeResult

log = logging.getLogger(__name__)

MAX_OUTPUT = 10 * 1024
"""kubelet's ``maxReadLength``: output beyond it is read and dropped, so the command never
blocks on a full pipe."""
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_GATE = 'read -r _ || true; exec "$@"'
"""Run by ``sh -c`` in the new session: waits for the agent's go (after the cgroup writes)."""


def nsenter_argv(
    command: Sequence[str], target_pid: int, uid: int | None, gid: int | None
) -> list[str]:
    """``nsenter`` entering all of ``target_pid``'s namespaces, root and working directory."""
    nsenter = shutil.which("nsenter") or "nsenter"
    argv = [nsenter, f"--target={target_pid}", "--mount", "--uts", "--ipc", "--net", "--pid"]
    argv += ["--root", "--wd"]
    if gid is not None:
        argv.append(f"--setgid={gid}")
    if uid is not None:
        argv.append(f"--setuid={uid}")
    return [*argv, "--", *command]


def container_environ(target_pid: int) -> dict[str, str]:
    """The environment the container process started with; a default PATH when unreadable."""
    try:
        with open(f"/proc/{target_pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {"PATH": _DEFAULT_PATH}
    env: dict[str, str] = {}
    for entry in raw.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name:
            env[os.fsdecode(name)] = os.fsdecode(value)
    env.setdefault("PATH", _DEFAULT_PATH)
    return env


async def _read_capped(stream: asyncio.StreamReader) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(65536):
        kept += chunk[: MAX_OUTPUT - len(kept)]
    return bytes(kept)


def _join_cgroups(pid: int, cgroup_procs: Sequence[str]) -> None:
    for path in cgroup_procs:
        try:
            with open(path, "w") as f:
                f.write(f"{pid}\n")
        except OSError as err:
            log.warning("exec probe pid %d not moved into cgroup %s: %s", pid, path, err)


def _kill_session(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the probe's process group, led by ``proc`` which is not reaped yet."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


async def exec_probe(
    command: list[str],
    *,
    target_pid: int,
    uid: int | None,
    gid: int | None,
    timeout: float,
    cgroup_procs: Sequence[str] = (),
) -> ProbeResult:
    """Run ``command`` in the namespaces of ``target_pid`` (the container's process)."""
    if not os.path.exists(f"/proc/{target_pid}"):
        return ProbeResult(Outcome.UNKNOWN, f"container process {target_pid} is gone")
    argv = nsenter_argv(command, target_pid, uid, gid)
    if cgroup_procs:
        argv = ["/bin/sh", "-c", _GATE, "nodelet-exec-probe", *argv]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if cgroup_procs else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=container_environ(target_pid),
            start_new_session=True,
        )
    except OSError as err:
        return ProbeResult(Outcome.UNKNOWN, f"cannot start the exec probe {argv[0]}: {err}")
    try:
        if proc.stdin is not None:
            _join_cgroups(proc.pid, cgroup_procs)
            proc.stdin.write(b"\n")
            proc.stdin.close()
        assert proc.stdout is not None
        async with asyncio.timeout(timeout):
            output = await _read_capped(proc.stdout)
            code = await proc.wait()
    except TimeoutError:
        return ProbeResult(Outcome.FAILURE, f'command "{" ".join(command)}" timed out')
    finally:
        _kill_session(proc)
        await proc.wait()
    message = output.decode("utf-8", "replace")
    return ProbeResult(Outcome.SUCCESS if code == 0 else Outcome.FAILURE, message)
