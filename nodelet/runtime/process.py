"""The process runtime: pods are holder processes, containers are their children.

Holders come from a zygote (see ``nodelet.holder.zygote``) and outlive the agent; this module
finds them again after a restart (run dir, socket, journal), watches them with pidfds, and turns
their journals into ``ContainerRecord`` histories.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from nodelet import reasons
from nodelet.holder import linux, protocol
from nodelet.runtime import journal, leftovers, rundir, wire
from nodelet.runtime.api import (
    ChangeCallback,
    ContainerConfig,
    ContainerRecord,
    ContainerStartError,
    KnownPod,
    SandboxConfig,
    SandboxStatus,
)
from nodelet.runtime.holderclient import HolderClient, HolderGoneError
from nodelet.runtime.sandbox import Sandbox
from nodelet.runtime.zygote import ZygoteClient
from nodelet.util import safepath

log = logging.getLogger(__name__)

HOLDER_READY_TIMEOUT = 10.0
ADOPT_CONNECT_TIMEOUT = 2.0
"""At start-up a holder that has not said hello by then is left for later: start-up never
waits on one stalled holder, and a stalled holder is never replaced while it exists."""
EXTRA_KILL_WAIT = 10.0
DEFAULT_GRACE_SECONDS = 30.0


class ProcessRuntime:
    """Implements ``nodelet.runtime.api.Runtime`` with holder processes."""

    def __init__(self, run_dir: Path, *, python: str = sys.executable) -> None:
        self.run_dir = run_dir
        self.pods_dir = run_dir / "pods"
        self._pods: dict[str, Sandbox] = {}
        self._callbacks: list[ChangeCallback] = []
        self._zygote = ZygoteClient(python)

    @property
    def zygote_pid(self) -> int | None:
        return self._zygote.pid

    def subscribe(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    def _notify(self, uid: str) -> None:
        for callback in self._callbacks:
            callback(uid)

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)  # holders are reparented to us
        rundir.make_private_dir(self.run_dir)
        rundir.make_private_dir(self.pods_dir)
        self._zygote.start()
        found = []
        for directory in sorted(self.pods_dir.iterdir()):
            if directory.is_symlink() or not directory.is_dir():
                log.warning("ignoring %s in the run dir: not a pod directory", directory)
                continue
            found.append(self._adopt(directory))
        # Every holder is asked at once and none is waited for long: one stalled holder must
        # not hold up the others (it is kept, not replaced, and asked again when needed).
        await asyncio.gather(*(self._first_connect(pod) for pod in found))

    async def close(self) -> None:
        """Disconnect from every holder and stop the zygote; the pods keep running."""
        loop = asyncio.get_running_loop()
        for pod in self._pods.values():
            if pod.pidfd is not None:
                loop.remove_reader(pod.pidfd)
                os.close(pod.pidfd)
                pod.pidfd = None
            if pod.client is not None:
                client, pod.client = pod.client, None
                await client.close()
        self._zygote.stop()

    # -- adoption and liveness --------------------------------------------------------------

    def _adopt(self, directory: Path) -> Sandbox:
        record = rundir.read_pod_record(directory)
        pod = Sandbox(uid=directory.name, directory=directory, record=record)
        pod.records = journal.read_journals(directory)
        pod.terminating = rundir.read_terminating(directory)
        identity = rundir.read_holder_identity(directory)
        if identity is not None:
            pod.identity = identity
            self._watch(pod, int(identity["pid"]))
        if not pod.alive:
            pod.finished_at = time.time()
        self._pods[pod.uid] = pod
        return pod

    async def _first_connect(self, pod: Sandbox) -> None:
        sock = pod.directory / protocol.SOCKET_NAME
        if pod.alive or sock.exists():
            try:
                await self._connect(pod, ADOPT_CONNECT_TIMEOUT)
            except (OSError, HolderGoneError) as err:
                if pod.alive:
                    log.warning(
                        "holder of pod uid=%s (pid %s) does not answer: %s; it is kept and "
                        "asked again when needed", pod.uid, pod.holder_pid, err,
                    )  # fmt: skip
        if not pod.alive:
            self._end_leftovers(pod, seen_dying=False)
        log.info(
            "found pod uid=%s holder=%s alive=%s containers=%d%s",
            pod.uid, pod.holder_pid, pod.alive, len(pod.records),
            " (being removed)" if pod.terminating else "",
        )  # fmt: skip

    async def _connect(self, pod: Sandbox, timeout: float = HOLDER_READY_TIMEOUT) -> None:
        def recognise(pid: int) -> None:
            if pod.pidfd is None:
                self._watch(pod, pid)

        client = await HolderClient.connect(
            str(pod.directory / protocol.SOCKET_NAME), recognise, timeout
        )
        pod.client = client
        pod.created_at = float(client.hello.get("created_at", time.time()))
        if not pod.identity:
            pod.identity = {"grace_seconds": client.hello.get("grace_seconds")}
        # Whatever happened while nobody listened is in the journal (or replayed after hello).
        pod.records = journal.read_journals(pod.directory)
        client.start(
            lambda event: self._on_event(pod, event),
            lambda: self._on_disconnect(pod, client),
        )

    def _watch(self, pod: Sandbox, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pod.alive = False
            return
        pod.pidfd, pod.alive, pod.holder_pid = pidfd, True, pid
        pod.finished_at = None
        pod.died.clear()
        asyncio.get_running_loop().add_reader(pidfd, self._on_holder_exit, pod, pid)

    def _on_holder_exit(self, pod: Sandbox, pid: int) -> None:
        loop = asyncio.get_running_loop()
        if pod.pidfd is not None:
            loop.remove_reader(pod.pidfd)
            os.close(pod.pidfd)
            pod.pidfd = None
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        pod.alive = False
        pod.finished_at = time.time()
        self._end_leftovers(pod, seen_dying=True)
        pod.died.set()
        for waiters in pod.exit_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        pod.exit_waiters.clear()
        log.info("holder of pod uid=%s (pid %d) ended", pod.uid, pid)
        self._notify(pod.uid)

    def _end_leftovers(self, pod: Sandbox, *, seen_dying: bool) -> None:
        """Nothing a pod started may outlive its holder: kill what is left of the sessions of
        containers whose exit was never journaled, then reap what was reparented to us.

        Candidates must share the pod's own namespaces. A pod with none of its own is cleaned
        up only when we saw its holder die just now (a session number is not reused while the
        session has members, so right after the death the match is exact)."""
        sessions = [r.pid for r in pod.records if r.running]
        private = leftovers.private_namespaces(pod.identity.get("namespaces"))
        if sessions and (private or seen_dying):
            leftovers.kill_sessions(pod.uid, sessions, private)
        self._reap_orphans()
        loop = asyncio.get_running_loop()
        for delay in (0.05, 0.5):  # killed processes take a moment to become zombies
            loop.call_later(delay, self._reap_orphans)

    def _reap_orphans(self) -> None:
        """Reap every child that ended, except the zygote (its own client reaps it)."""
        zygote = self._zygote.pid
        for child in _zombie_children():
            if child != zygote:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child, os.WNOHANG)

    def _on_disconnect(self, pod: Sandbox, client: HolderClient) -> None:
        if pod.client is client:
            pod.client = None

    def _on_event(self, pod: Sandbox, event: dict[str, Any]) -> None:
        if pod.apply_event(event):
            self._notify(pod.uid)

    async def _client(self, pod: Sandbox) -> HolderClient:
        if pod.client is None:
            if not pod.alive:
                raise HolderGoneError(f"holder of pod {pod.uid} is not running")
            await self._connect(pod)
        assert pod.client is not None
        return pod.client

    # -- Runtime protocol -------------------------------------------------------------------

    async def list_pods(self) -> list[KnownPod]:
        return [
            KnownPod(uid, pod.record, pod.terminating is not None, pod.grace_seconds)
            for uid, pod in self._pods.items()
        ]

    async def pod_status(self, pod_uid: str) -> SandboxStatus | None:
        pod = self._pods.get(pod_uid)
        return None if pod is None else pod.status()

    async def run_sandbox(self, config: SandboxConfig, pod: dict[str, Any]) -> SandboxStatus:
        existing = self._pods.get(config.pod_uid)
        if existing is not None and existing.alive:
            return existing.status()  # never a second holder while the first exists
        directory = safepath.child(self.pods_dir, config.pod_uid)
        rundir.make_private_dir(directory)
        rundir.write_pod_record(directory, pod)
        current = directory / protocol.JOURNAL_NAME
        if current.exists():  # a previous holder died: keep its history for restart counts
            current.rename(journal.next_archive(directory))
        for stale in (protocol.SOCKET_NAME, protocol.HOLDER_ID_NAME):
            (directory / stale).unlink(missing_ok=True)
        state = existing or Sandbox(uid=config.pod_uid, directory=directory, record=pod)
        state.record = pod
        state.log_drops.clear()
        self._pods[config.pod_uid] = state
        answer = await self._zygote.ask(wire.sandbox_request(config, directory))
        if "pid" not in answer:
            raise OSError(f"cannot create the holder of pod {config.pod_uid}: {answer}")
        self._watch(state, int(answer["pid"]))
        await self._wait_ready(state)
        return state.status()

    async def _wait_ready(self, pod: Sandbox) -> None:
        deadline = time.monotonic() + HOLDER_READY_TIMEOUT
        sock = pod.directory / protocol.SOCKET_NAME
        while time.monotonic() < deadline and pod.alive:
            if sock.exists():
                await self._connect(pod)
                pod.identity = rundir.read_holder_identity(pod.directory) or pod.identity
                return
            await asyncio.sleep(0.002)
        log_file = pod.directory / protocol.HOLDER_LOG_NAME
        detail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
        raise OSError(f"holder of pod {pod.uid} did not become ready: {detail.strip()}")

    async def start_container(self, pod_uid: str, config: ContainerConfig) -> ContainerRecord:
        pod = self._pods.get(pod_uid)
        if pod is None:
            raise ContainerStartError(
                reasons.POD_SANDBOX_NOT_FOUND, f"no sandbox for pod {pod_uid}"
            )
        spec = wire.container_spec(config)
        try:
            client = await self._client(pod)
            holder_version = int(client.hello.get("version") or 1)
            if holder_version < protocol.required_version(spec):
                # Fail closed: an older holder would start it without its securityContext.
                raise ContainerStartError(
                    protocol.SETUP_ERROR,
                    f"the pod's holder speaks protocol {holder_version}, from an older nodelet, "
                    "and cannot apply this container's securityContext; re-create the pod "
                    "(move its manifest out of the manifest dir and back) to give it a new holder",
                )
            reply = await client.request(protocol.OP_SPAWN, container=spec)
        except (HolderGoneError, OSError) as err:
            raise ContainerStartError(reasons.POD_SANDBOX_NOT_READY, str(err)) from err
        if not reply.get("ok"):
            raise ContainerStartError(
                reply.get("reason", reasons.RUN_CONTAINER_ERROR), reply.get("message", "")
            )
        return ContainerRecord(
            config.name, config.attempt, int(reply["pid"]), float(reply["started_at"])
        )

    async def stop_container(self, pod_uid: str, name: str, grace_seconds: float) -> None:
        pod = self._pods.get(pod_uid)
        if pod is None or not pod.alive:
            return
        running = [r for r in pod.records if r.name == name and r.running]
        if not running:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pod.exit_waiters.setdefault(name, []).append(waiter)
        client = await self._client(pod)
        await client.request(protocol.OP_STOP, name=name, grace_seconds=grace_seconds)
        await asyncio.wait_for(waiter, grace_seconds + EXTRA_KILL_WAIT)

    async def stop_sandbox(self, pod_uid: str, grace_seconds: float) -> None:
        pod = self._pods.get(pod_uid)
        if pod is not None:
            await self._end_holder(pod, grace_seconds)

    async def _end_holder(self, pod: Sandbox, grace_seconds: float) -> None:
        """Ask the holder to stop its containers and exit; SIGKILL it if it does not. A holder
        that cannot be asked (stalled) gets its containers stopped by us within the grace."""
        if pod.alive:
            try:
                client = await self._client(pod)
                await client.request(protocol.OP_SHUTDOWN, grace_seconds=grace_seconds)
                asked = True
            except (HolderGoneError, OSError) as err:
                log.warning("holder of pod uid=%s cannot be asked to stop: %s", pod.uid, err)
                asked = False
            if not asked:
                running = [r.pid for r in pod.records if r.running]
                await leftovers.stop_children(running, pod.holder_pid, grace_seconds)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace_seconds + EXTRA_KILL_WAIT):
                        await pod.died.wait()
            if pod.alive and pod.holder_pid is not None:
                log.warning("holder of pod uid=%s did not end; killing it", pod.uid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pod.holder_pid, signal.SIGKILL)
                async with asyncio.timeout(EXTRA_KILL_WAIT):
                    await pod.died.wait()
        if pod.client is not None:
            client, pod.client = pod.client, None
            await client.close()

    async def kill_pod(self, pod_uid: str, grace_seconds: float) -> None:
        directory = safepath.child(self.pods_dir, pod_uid)
        pod = self._pods.get(pod_uid)
        if pod is None:
            await asyncio.to_thread(safepath.remove_tree, self.pods_dir, directory)
            return
        if pod.terminating is None:
            pod.terminating = await asyncio.to_thread(
                rundir.mark_terminating, directory, grace_seconds
            )
        grace = rundir.remaining_grace(pod.terminating, grace_seconds, time.time())
        await self._end_holder(pod, grace)
        del self._pods[pod_uid]
        await asyncio.to_thread(safepath.remove_tree, self.pods_dir, directory)


def _zombie_children() -> list[int]:
    import psutil

    found = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
    return found
