"""The infra holder: one per pod. Owns the pod's namespaces, parents and reaps its containers,
writes their output to CRI logs, and journals every start and exit before telling the agent.

The agent may come and go; the holder keeps serving whoever connects next, and the journal
(fsync'd) lets a new agent learn every exit it missed. SIGTERM or ``shutdown`` ends the pod.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nodelet.holder import hooks, linux, procfs, protocol, spawn, sysctl
from nodelet.holder.crilog import LogFile, StreamLog
from nodelet.holder.journal import JournalWriter

DEFAULT_SHUTDOWN_GRACE = 2.0
LOG_DROP_REPORT_SECONDS = 1.0
"""At most one dropped-log-lines report per container per this many seconds."""
CLIENT_SEND_TIMEOUT = 2.0
EXIT_DRAIN_READS = 16
"""Reads of up to 64 KiB per stream taken at a container's exit, before it is journaled."""


@dataclass
class Container:
    name: str
    attempt: int
    pid: int
    started_at: float
    log: LogFile
    """Its ``fd`` is None when the file could not be opened: every line is dropped, counted."""
    host_pid: int = 0
    """The pid in the host's PID namespace: what the agent and the journal know it by (``pid``
    is the holder's own view, which differs when the pod has its own PID namespace)."""
    streams: dict[int, StreamLog] = field(default_factory=dict)
    stopping: bool = False
    exited: bool = False
    pre_stop: protocol.HookSpec | None = None
    stop_signal: int = signal.SIGTERM
    spec: protocol.ContainerSpec | None = None
    """What it was started with: an exec handler gets its process spec (``enter``)."""


class Holder:
    def __init__(self, pod_dir: str, pod_uid: str, grace_seconds: float | None = None) -> None:
        self.pod_dir = pod_dir
        self.pod_uid = pod_uid
        self.grace_seconds = grace_seconds
        """The pod's termination grace period, for an agent that can no longer read the pod."""
        self.created_at = time.time()
        self.log_reports: dict[str, float] = {}
        self.containers: dict[str, Container] = {}
        self.by_pid: dict[int, Container] = {}
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self.hooks: dict[int, Callable[[int], None]] = {}
        """preStop handler children: pid -> what to do with their exit status."""
        self.client: socket.socket | None = None
        self.client_buffer = b""
        self.exiting = False
        self.sel = selectors.DefaultSelector()
        self.pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        """Our own PID namespace, to return to after giving a container a new one."""
        self.host_view = os.getpid() == int(os.readlink("/proc/self"))
        """Whether our pids are the host's (not in a pod PID namespace)."""
        self.journal = JournalWriter(
            os.path.join(pod_dir, protocol.JOURNAL_NAME),
            lambda delay, action: self.timers.append((time.monotonic() + delay, action)),
        )
        self._write_identity()

    def _write_identity(self) -> None:
        """``holder.json``: who we are in the host's PID namespace, so an agent recognises this
        process (and never starts a second holder) even when the socket does not answer."""
        path = os.path.join(self.pod_dir, protocol.HOLDER_ID_NAME)
        procfs.write_identity(path, {"pod_uid": self.pod_uid, "grace_seconds": self.grace_seconds})

    # -- set-up -----------------------------------------------------------------------------

    def listen(self) -> socket.socket:
        """Bind under a temporary name and rename: a socket that exists is ready."""
        final = os.path.join(self.pod_dir, protocol.SOCKET_NAME)
        temporary = final + ".new"
        for path in (temporary, final):
            if os.path.lexists(path):
                os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(temporary)
        os.chmod(temporary, 0o600)
        listener.listen(4)
        os.rename(temporary, final)
        return listener

    def serve(self) -> None:
        sig_r, sig_w = os.pipe()
        os.set_blocking(sig_w, False)
        os.set_blocking(sig_r, False)
        signal.set_wakeup_fd(sig_w)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        listener = self.listen()
        self.sel.register(listener, selectors.EVENT_READ, lambda: self._accept(listener))
        self.sel.register(sig_r, selectors.EVENT_READ, lambda: self._signals(sig_r))
        while not (self.exiting and not self.containers):
            timeout = None
            if self.timers:
                timeout = max(0.0, min(t for t, _ in self.timers) - time.monotonic())
            for key, _ in self.sel.select(timeout):
                self._guarded(key.data)
            self._run_timers()
        self._kill_stragglers()
        os.unlink(os.path.join(self.pod_dir, protocol.SOCKET_NAME))

    def _guarded(self, action: Callable[[], None]) -> None:
        """The pod dies with its holder, so no single event may end the holder: a failure is
        logged (to holder.log) and the loop goes on."""
        try:
            action()
        except Exception as err:
            procfs.say(f"holder: {action!r} failed: {err!r}")

    def _kill_stragglers(self) -> None:
        """When the pod ends, nothing it started may outlive it: daemons that left their
        container's process group were reparented here (we are the subreaper); kill them."""
        if self.host_view:  # in our own PID namespace the kernel ends all of it with us
            procfs.kill_children(str(os.getpid()))

    # -- events -----------------------------------------------------------------------------

    def _signals(self, sig_r: int) -> None:
        try:
            received = os.read(sig_r, 512)
        except BlockingIOError:
            return
        if any(s in (signal.SIGTERM, signal.SIGINT) for s in received):
            self._shutdown(DEFAULT_SHUTDOWN_GRACE)
        self._reap()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            container = self.by_pid.pop(pid, None)
            if container is not None:
                self._exited(container, os.waitstatus_to_exitcode(status))
            hook_done = self.hooks.pop(pid, None)
            if hook_done is not None:
                hook_done(os.waitstatus_to_exitcode(status))

    def _exited(self, container: Container, code: int) -> None:
        """A container's main process ended: the rest of its process group goes with it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(container.pid, signal.SIGKILL)
        del self.containers[container.name]
        # What it wrote before it ended goes to its log before its exit is journaled: whoever
        # reads the exit (a termination message from the logs, `nodelet logs`) finds it all.
        # Bounded: a daemon that left the group may still hold the pipe and keep writing.
        for fd in list(container.streams):
            for _ in range(EXIT_DRAIN_READS):
                if not self._read_stream(container, fd):
                    break
        container.exited = True
        self._record({
            "type": "exit",
            "name": container.name,
            "attempt": container.attempt,
            "pid": container.host_pid,
            "started_at": container.started_at,
            "finished_at": time.time(),
            "exit_code": code if code >= 0 else 128 - code,
            "signal": -code if code < 0 else None,
        })  # fmt: skip
        if not container.streams:
            container.log.close()

    def _record(self, entry: protocol.StartEntry | protocol.ExitEntry) -> None:
        """Journal first (durable, or kept and retried), then tell the agent if one listens."""
        self.journal.append(entry)
        self._send(entry)

    def _accept(self, listener: socket.socket) -> None:
        client, _ = listener.accept()
        if self.client is not None:
            self._drop_client()
        client.settimeout(CLIENT_SEND_TIMEOUT)
        self.client, self.client_buffer = client, b""
        self.sel.register(client, selectors.EVENT_READ, self._client_readable)
        self._send({
            "type": "hello", "version": protocol.VERSION, "pod_uid": self.pod_uid,
            "created_at": self.created_at, "grace_seconds": self.grace_seconds,
        })  # fmt: skip
        for entry in self.journal.unwritten:  # not on disk yet: the new agent learns them here
            self._send(entry)

    def _drop_client(self) -> None:
        if self.client is not None:
            self.sel.unregister(self.client)
            self.client.close()
            self.client = None

    def _send(self, message: Mapping[str, Any]) -> None:
        if self.client is None:
            return
        try:
            self.client.sendall(protocol.encode(message))
        except OSError:
            self._drop_client()  # a stuck or gone agent reconnects and reads the journal

    def _client_readable(self) -> None:
        assert self.client is not None
        try:
            data = self.client.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop_client()
            return
        self.client_buffer += data
        while b"\n" in self.client_buffer:
            line, self.client_buffer = self.client_buffer.split(b"\n", 1)
            self._handle(line)

    def _handle(self, line: bytes) -> None:
        try:
            request = protocol.decode(line)
        except ValueError:
            return
        reply: dict[str, Any] = {"id": request.get("id")}
        op = request.get("op")
        try:
            if op == protocol.OP_SPAWN:
                reply.update(self._spawn(request["container"]))
            elif op == protocol.OP_STOP:
                self._stop(request["name"], float(request.get("grace_seconds", 0)))
                reply["ok"] = True
            elif op == protocol.OP_SHUTDOWN:
                self._shutdown(float(request.get("grace_seconds", DEFAULT_SHUTDOWN_GRACE)))
                reply["ok"] = True
            else:
                reply.update(ok=False, reason="UnknownOp", message=f"unknown op {op!r}")
        except (KeyError, TypeError, ValueError) as err:
            reply.update(ok=False, reason="BadRequest", message=f"{op}: {err!r}")
        except OSError as err:  # pipe/fork/open failed (EMFILE, EAGAIN, ENOSPC): retried later
            reply.update(ok=False, reason=protocol.SETUP_ERROR, message=f"{op}: {err}")
        self._send(reply)

    # -- containers -------------------------------------------------------------------------

    def _spawn(self, spec: protocol.ContainerSpec) -> dict[str, Any]:
        name = spec["name"]
        if self.exiting:
            return {"ok": False, "reason": "PodTerminating", "message": "the pod is stopping"}
        if name in self.containers:
            return {"ok": False, "reason": "AlreadyRunning", "message": f"{name} is running"}
        log_fd, log_error = procfs.open_log(spec["log_path"])
        pipes: list[int] = []
        try:
            for _ in range(3):
                pipes.extend(os.pipe())
            out_r, out_w, err_r, err_w, status_r, status_w = pipes
            new_pid_namespace = spec["own_pid_namespace"]
            pid = linux.fork(self.pid_namespace if new_pid_namespace else None)
        except OSError:
            for fd in [*pipes, log_fd]:
                procfs.close(fd)
            raise
        if pid == 0:
            spawn.run(spec, out_w, err_w, status_w)
        host_pid = self._host_pid(pid)
        for fd in (out_w, err_w, status_w):
            os.close(fd)
        failure = procfs.read_all(status_r)
        if failure:
            os.waitpid(pid, 0)
            for fd in (out_r, err_r, log_fd):
                procfs.close(fd)
            details = json.loads(failure)
            if details["reason"] == protocol.START_ERROR:
                self._record_failed_start(spec, host_pid, details["message"])
            return {"ok": False, "reason": details["reason"], "message": details["message"]}
        log = LogFile(log_fd, spec["log_path"], spec.get("log_max_bytes"))
        container = Container(name, spec["attempt"], pid, time.time(), log, host_pid,
                              pre_stop=spec.get("pre_stop"),
                              stop_signal=int(spec.get("stop_signal", signal.SIGTERM)),
                              spec=spec)  # fmt: skip
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            container.streams[fd] = StreamLog(log, stream, log_error)
            self.sel.register(fd, selectors.EVENT_READ, self._reader(container, fd))
        self.containers[name] = container
        self.by_pid[pid] = container
        self._record({
            "type": "start", "name": name, "attempt": container.attempt, "pid": host_pid,
            "started_at": container.started_at,
        })  # fmt: skip
        return {"ok": True, "pid": host_pid, "started_at": container.started_at}

    def _host_pid(self, pid: int) -> int:
        """Our child ``pid`` as the host numbers it (the agent kills and checks by host pids)."""
        return pid if self.host_view else procfs.host_pid_of_child(pid)

    def _record_failed_start(self, spec: protocol.ContainerSpec, pid: int, message: str) -> None:
        """exec failed: journal a run that ended at once with 128, as kubelet shows StartError."""
        now, name, attempt = time.time(), spec["name"], spec["attempt"]
        self._record({"type": "start", "name": name, "attempt": attempt, "pid": pid,
                      "started_at": now})  # fmt: skip
        self._record({
            "type": "exit", "name": name, "attempt": attempt, "pid": pid, "started_at": now,
            "finished_at": now, "exit_code": protocol.START_ERROR_EXIT_CODE, "signal": None,
            "reason": protocol.START_ERROR, "message": message,
        })  # fmt: skip

    def _reader(self, container: Container, fd: int) -> Callable[[], None]:
        def readable() -> None:
            self._read_stream(container, fd)

        return readable

    def _read_stream(self, container: Container, fd: int) -> bool:
        """One read of a container's stdout or stderr into its log; False once nothing more
        is there for now (the pipe is empty, or closed and done with)."""
        if fd not in container.streams:
            return False
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        if data:
            container.streams[fd].feed(data)
            self._report_dropped(container)
            if container.log.error:  # not rotated, nothing lost: the file grows on
                procfs.say(f"holder: {container.name}: {container.log.error}")
                container.log.error = ""
            return True
        container.streams.pop(fd).close()
        self._report_dropped(container, final=True)
        self.sel.unregister(fd)
        os.close(fd)
        if not container.streams and container.exited:
            container.log.close()
        return False

    def _report_dropped(self, container: Container, final: bool = False) -> None:
        """Tell the agent (and holder.log) how many log lines could not be written, at most
        once a second per container: the container keeps running, its output is lost."""
        dropped = sum(s.dropped for s in container.streams.values())
        if not dropped:
            return
        now = time.monotonic()
        if not final and now - self.log_reports.get(container.name, 0.0) < LOG_DROP_REPORT_SECONDS:
            return
        self.log_reports[container.name] = now
        error = next((s.error for s in container.streams.values() if s.error), "")
        procfs.say(f"holder: {container.name}: {dropped} log lines dropped: {error}")
        self._send({
            "type": "log_dropped", "name": container.name, "attempt": container.attempt,
            "lines": dropped, "error": error,
        })  # fmt: skip

    def _stop(self, name: str, grace: float) -> None:
        """The preStop handler (if any), then the stop signal, then SIGKILL to the whole group
        when the grace period is over; the holder owns every step and every timer."""
        container = self.containers.get(name)
        if container is None or container.stopping:
            return
        container.stopping = True
        deadline = time.monotonic() + grace
        if container.pre_stop is not None and grace > 0:
            self._pre_stop(container, container.pre_stop, deadline)
        else:
            self._signal_stop(container, deadline)

    def _alive(self, container: Container) -> bool:
        return self.by_pid.get(container.pid) is container

    def _signal_stop(self, container: Container, deadline: float) -> None:
        if not self._alive(container):
            return
        try:
            os.kill(container.pid, container.stop_signal)
        except ProcessLookupError:
            return

        def force() -> None:
            if self._alive(container):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(container.pid, signal.SIGKILL)

        self.timers.append((deadline, force))

    def _pre_stop(self, container: Container, hook: protocol.HookSpec, deadline: float) -> None:
        """kubelet's order: the handler within the grace period, then the stop signal with what
        is left of it, but never less than 2 s."""
        done = False

        def after(code: int | None = None) -> None:
            nonlocal done
            if done:
                return
            done = True
            if code:
                procfs.say(f"holder: {container.name}: preStop handler exited {code}")
            left = max(deadline - time.monotonic(), hooks.MIN_GRACE_AFTER_HOOK)
            self._signal_stop(container, time.monotonic() + left)

        if hook["kind"] == "sleep":
            ends = min(time.monotonic() + float(hook.get("seconds", 0)), deadline)
            self.timers.append((ends, after))
            return
        pid = os.fork()
        if pid == 0:
            hooks.run_child(
                hook, container.pid, max(0.1, deadline - time.monotonic()), container.spec
            )
        self.hooks[pid] = after

        def out_of_time() -> None:
            if self.hooks.get(pid) is after:  # still running when the grace period ended
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)

        self.timers.append((deadline, out_of_time))

    def _shutdown(self, grace: float) -> None:
        self.exiting = True
        for name in list(self.containers):
            self._stop(name, grace)

    def _run_timers(self) -> None:
        now = time.monotonic()
        due = [t for t in self.timers if t[0] <= now]
        self.timers = [t for t in self.timers if t[0] > now]
        for _, action in due:
            self._guarded(action)


def run_holder(
    pod_dir: str,
    pod_uid: str,
    hostname: str | None,
    own_net: bool,
    grace_seconds: float | None = None,
    sysctls: list[list[str]] | None = None,
) -> None:
    """Entry point in the freshly forked holder (already inside its namespaces). A sysctl that
    cannot be set ends the holder before it serves: the pod does not start without it."""
    linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
    if hostname is not None:
        socket.sethostname(hostname)
    if own_net:
        linux.loopback_up()
    sysctl.write_sysctls(sysctls or [])
    Holder(pod_dir, pod_uid, grace_seconds).serve()
