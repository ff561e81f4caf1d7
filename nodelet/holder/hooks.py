"""preStop handlers run by the holder: a stop that the agent asked for keeps its order (hook,
then the stop signal, then SIGKILL) even when the agent dies in the middle of it.

exec and httpGet handlers run in a forked child of the holder, so the holder's loop never
blocks: exec enters the container's namespaces with util-linux ``nsenter``; httpGet needs
nothing, the holder already lives in the pod's network namespace. sleep is a timer.
"""

from __future__ import annotations

import http.client
import os
import ssl
import sys
from typing import NoReturn

from nodelet.holder import protocol, spawn

NSENTER = "/usr/bin/nsenter"
MIN_GRACE_AFTER_HOOK = 2.0
"""kubelet's minimumGracePeriodInSeconds: the stop signal always gets this long after the
preStop handler, even when the handler used up the grace period."""


def exec_argv(hook: protocol.HookSpec, target_pid: int) -> list[str]:
    """The handler's command inside the container: its mount, UTS, IPC, network and PID
    namespaces, its root and working directory, its user."""
    argv = [NSENTER, f"--target={target_pid}", "--mount", "--uts", "--ipc", "--net", "--pid",
            "--root", "--wd"]  # fmt: skip
    uid, gid = hook.get("run_as_user"), hook.get("run_as_group")
    if gid is not None:
        argv.append(f"--setgid={gid}")
    if uid is not None:
        argv.append(f"--setuid={uid}")
        if gid is None:
            argv.append("--setgid=0")  # nsenter needs both; kubelet runs as the image's group
    return [*argv, "--", *hook.get("argv", [])]


def run_child(hook: protocol.HookSpec, target_pid: int, timeout: float) -> NoReturn:
    """In the forked child: run an exec or httpGet handler; the exit status is the verdict."""
    code = 1
    try:
        spawn.detach_child()
        if hook["kind"] == "exec":
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1):
                os.dup2(devnull, fd)
            os.closerange(3, 65536)
            argv = exec_argv(hook, target_pid)
            os.execv(argv[0], argv)
        code = 0 if http_get(hook, timeout) else 1
    except BaseException as err:
        print(f"holder: preStop handler failed: {err!r}", file=sys.stderr, flush=True)
    os._exit(code)


def http_get(hook: protocol.HookSpec, timeout: float) -> bool:
    """kubelet's httpGet handler: any answer below 400 is success (certificates unchecked)."""
    host, port = hook.get("host", "127.0.0.1"), int(hook.get("port", 80))
    connection: http.client.HTTPConnection
    if hook.get("scheme", "HTTP").upper() == "HTTPS":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"User-Agent": "kube-lifecycle/1.20"}
    for name, value in hook.get("headers", []):
        headers[name] = value
    connection.request("GET", hook.get("path", "/") or "/", headers=headers)
    status = connection.getresponse().status
    connection.close()
    return status < 400
