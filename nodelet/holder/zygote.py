"""The zygote: a pre-warmed interpreter that forks holders.

Importing the holder code once and freezing the heap (``gc.freeze``) lets every holder share
those pages copy-on-write, which is what keeps a holder's PSS small. The zygote lives as long as
the agent (PR_SET_PDEATHSIG); holders do not: each is double-forked, so it is reparented to the
agent (a child subreaper) and survives the agent's death.

Requests arrive as JSON lines on the socket passed as fd; each answer is ``{"pid": N}`` or
``{"error": "..."}``.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import sys
from typing import Any

from nodelet.holder import holder, linux, protocol, userns


def _namespace_flags(request: protocol.SandboxRequest) -> int:
    flags = 0
    if request["net"]:
        flags |= linux.CLONE_NEWNET
    if request["ipc"]:
        flags |= linux.CLONE_NEWIPC
    if request["uts"]:
        flags |= linux.CLONE_NEWUTS
    if request["pid"]:
        flags |= linux.CLONE_NEWPID
    return flags


def _become_holder(request: protocol.SandboxRequest, report_w: int, channel: socket.socket) -> None:
    """In the intermediate child: new session and namespaces, fork the holder, report, exit."""
    channel.close()
    os.setsid()
    linux.join_cgroups(request.get("cgroup_procs") or [])
    flags = _namespace_flags(request)
    user_namespace = request.get("user_namespace")
    if user_namespace is not None:
        owned = flags & (linux.CLONE_NEWNET | linux.CLONE_NEWIPC | linux.CLONE_NEWUTS)
        if owned != linux.CLONE_NEWNET | linux.CLONE_NEWIPC | linux.CLONE_NEWUTS:
            raise userns.UsernsError("a pod user namespace needs its own net, IPC and UTS")
        userns.enter_owned_namespaces(user_namespace, owned)
        flags &= ~owned
    linux.unshare(flags)
    pid = os.fork()
    if pid == 0:
        os.close(report_w)
        log = os.open(
            os.path.join(request["pod_dir"], protocol.HOLDER_LOG_NAME),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT,
            0o600,
        )
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 65536)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            holder.run_holder(
                request["pod_dir"],
                request["pod_uid"],
                request["hostname"] if request["uts"] else None,
                request["net"],
                request["grace_seconds"],
                request.get("sysctls") or [],
            )
            code = 0
        except BaseException as err:
            print(f"holder failed: {err!r}", file=sys.stderr, flush=True)
            code = 1
        os._exit(code)
    os.write(report_w, str(pid).encode())


def _create(request: protocol.SandboxRequest, channel: socket.socket) -> dict[str, Any]:
    report_r, report_w = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:
        code = 0
        try:
            os.close(report_r)
            _become_holder(request, report_w, channel)
        except BaseException as err:
            os.write(report_w, f"error: {err}".encode())
            code = 1
        os._exit(code)
    os.close(report_w)
    chunks = []
    while chunk := os.read(report_r, 4096):
        chunks.append(chunk)
    os.close(report_r)
    os.waitpid(intermediate, 0)
    answer = b"".join(chunks).decode()
    if answer.isdigit():
        return {"pid": int(answer)}
    return {"error": answer or "the holder's parent ended without reporting"}


def main(fd: int, agent_pid: int | None = None) -> None:
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    # A Ctrl-C at `nodelet run` reaches the terminal's whole process group: the agent stops
    # on it, and the zygote goes with the agent. (Holders set their own handlers, containers
    # get the default one.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != (agent_pid or os.getppid()) or os.getppid() == 1:
        return  # the agent died before the death signal was armed: nobody will ask us anything
    channel = socket.socket(fileno=fd)
    gc.freeze()
    stream = channel.makefile("rb")
    for line in stream:
        try:
            answer = _create(json.loads(line), channel)
        except (OSError, ValueError, KeyError, userns.UsernsError) as err:
            answer = {"error": str(err)}
        channel.sendall(protocol.encode(answer))
