"""preStop handlers run by the holder: a stop that the agent asked for keeps its order (hook,
then the stop signal, then SIGKILL) even when the agent dies in the middle of it.

exec and httpGet handlers run in a forked child of the holder, so the holder's loop never
blocks: exec goes through ``enter`` in that child (``runc exec``: the container's cgroups,
namespaces and process spec); httpGet needs nothing, the holder already lives in the pod's
network namespace. sleep is a timer.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import ssl
from typing import NoReturn

from nodelet.holder import enter, procfs, protocol, spawn

MIN_GRACE_AFTER_HOOK = 2.0
"""kubelet's minimumGracePeriodInSeconds: the stop signal always gets this long after the
preStop handler, even when the handler used up the grace period."""


def exec_request(
    hook: protocol.HookSpec, spec: protocol.ContainerSpec | None
) -> tuple[list[str], dict[str, str], str, spawn.ProcessSecurity, list[str]]:
    """argv, env, cwd, security and cgroups of an exec handler: the container's own (its
    spec), as containerd's exec takes them; without the spec (a holder that was not given
    it), only the handler's user and group, the holder's environment and no cgroups."""
    argv = list(hook.get("argv", []))
    if spec is not None:
        return (argv, dict(spec["env"]), spec["working_dir"] or "/", spec,
                list(spec.get("cgroup_procs") or []))  # fmt: skip
    security: spawn.ProcessSecurity = {
        "run_as_user": hook.get("run_as_user"), "run_as_group": hook.get("run_as_group"),
        "supplemental_groups": [], "no_new_privileges": False,
    }  # fmt: skip
    return argv, dict(os.environ), "/", security, []


def run_exec(hook: protocol.HookSpec, target_pid: int, spec: protocol.ContainerSpec | None) -> int:
    """In the holder's forked child: the handler in the container (our sibling ``target_pid``);
    its exit code. Its output goes to a pipe, copied to holder.log when it failed: the
    container's user may be given its stdio (runc's fixStdioPermissions), never the log."""
    argv, env, cwd, security, cgroups = exec_request(hook, spec)
    output_r, output_w = os.pipe()
    devnull = os.open(os.devnull, os.O_RDWR)
    log = os.dup(2)
    os.dup2(devnull, 0)
    os.dup2(output_w, 1)
    os.dup2(output_w, 2)
    for fd in (devnull, output_w):
        os.close(fd)
    # start_time is for main's open_target; a sibling is held by open_sibling's pidfd.
    request: enter.Request = {
        "pid": target_pid, "start_time": 0, "argv": argv, "env": env, "cwd": cwd,
        "security": security, "cgroup_procs": cgroups,
    }  # fmt: skip
    try:
        code = enter.enter(request, enter.open_sibling(target_pid))
    except enter.EnterError as err:
        os.write(log, f"holder: preStop handler not started: {err}\n".encode())
        return enter.exit_code_of(err)
    finally:
        os.dup2(log, 2)
    if code:
        os.set_blocking(output_r, False)
        with contextlib.suppress(BlockingIOError):
            output = os.read(output_r, 10 * 1024).decode(errors="replace").rstrip()
            os.write(log, f"holder: preStop handler output: {output}\n".encode())
    return code


def run_child(
    hook: protocol.HookSpec,
    target_pid: int,
    timeout: float,
    spec: protocol.ContainerSpec | None = None,
) -> NoReturn:
    """In the forked child: run an exec or httpGet handler; the exit status is the verdict.
    ``target_pid`` is the container's pid as the holder numbers it, ``spec`` its spec."""
    code = 1
    try:
        spawn.detach_child()
        signal.set_wakeup_fd(-1)  # the holder's: a signal here must not wake the holder
        if hook["kind"] == "exec":
            code = run_exec(hook, target_pid, spec)
        else:
            code = 0 if http_get(hook, timeout) else 1
    except BaseException as err:
        procfs.say(f"holder: preStop handler failed: {err!r}")
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
