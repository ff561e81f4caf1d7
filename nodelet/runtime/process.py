"""The process runtime: pods are holder processes, containers are their children.

Holders come from a zygote (see ``nodelet.holder.zygote``) and outlive the agent; this module
finds them again after a restart (run dir, socket, journal), watches them with pidfds, and turns
their journals into ``ContainerRecord`` histories.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nodelet
from nodelet.holder import protocol
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

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
HOLDER_READY_TIMEOUT = 10.0
EXTRA_KILL_WAIT = 10.0
ARCHIVED_JOURNAL = "journal-{}.jsonl"


@dataclass
class _Pod:
    uid: str
    directory: Path
    record: dict[str, Any]
    holder_pid: int | None = None
    created_at: float = 0.0
    client: HolderClient | None = None
    pidfd: int | None = None
    alive: bool = False
    records: list[ContainerRecord] = field(default_factory=list)
    exit_waiters: dict[str, list[asyncio.Future[None]]] = field(default_factory=dict)
    died: asyncio.Event = field(default_factory=asyncio.Event)


def _apply(records: list[ContainerRecord], entry: dict[str, Any]) -> None:
    """Fold one journal entry into the container history (idempotent)."""
    key = (entry.get("name"), entry.get("attempt"), entry.get("pid"))
    index = next((i for i, r in enumerate(records) if (r.name, r.attempt, r.pid) == key), None)
    if entry.get("type") == "start" and index is None:
        records.append(
            ContainerRecord(entry["name"], entry["attempt"], entry["pid"], entry["started_at"])
        )
    elif entry.get("type") == "exit":
        finished = ContainerRecord(
            entry["name"], entry["attempt"], entry["pid"], entry["started_at"],
            entry["finished_at"], entry["exit_code"], entry.get("signal"),
            entry.get("reason"), entry.get("message"),
        )  # fmt: skip
        if index is None:
            records.append(finished)
        else:
            records[index] = finished


def _read_journals(directory: Path) -> list[ContainerRecord]:
    records: list[ContainerRecord] = []
    archived = sorted(
        directory.glob(ARCHIVED_JOURNAL.format("*")),
        key=lambda p: int(p.stem.split("-", 1)[1]) if p.stem.split("-", 1)[1].isdigit() else 0,
    )
    for path in [*archived, directory / protocol.JOURNAL_NAME]:
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_bytes().splitlines():
                with contextlib.suppress(ValueError, KeyError):
                    _apply(records, protocol.decode(line))
    return records


class ProcessRuntime:
    """Implements ``nodelet.runtime.api.Runtime`` with holder processes."""

    def __init__(self, run_dir: Path, *, python: str = sys.executable) -> None:
        self.run_dir = run_dir
        self.pods_dir = run_dir / "pods"
        self._python = python
        self._pods: dict[str, _Pod] = {}
        self._callbacks: list[ChangeCallback] = []
        self._zygote: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self._zygote_lock = asyncio.Lock()

    @property
    def zygote_pid(self) -> int | None:
        return self._zygote.pid if self._zygote else None

    def subscribe(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    def _notify(self, uid: str) -> None:
        for callback in self._callbacks:
            callback(uid)

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self._start_zygote()
        for directory in sorted(p for p in self.pods_dir.iterdir() if p.is_dir()):
            await self._adopt(directory)

    def _start_zygote(self) -> None:
        ours, theirs = socket.socketpair()
        package_parent = str(Path(nodelet.__file__).resolve().parent.parent)
        bootstrap = (
            f"import sys; sys.path.insert(0, {package_parent!r}); "
            f"from nodelet.holder import zygote; zygote.main({theirs.fileno()})"
        )
        self._zygote = subprocess.Popen(
            [self._python, "-I", "-S", "-c", bootstrap],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        ours.setblocking(False)
        self._channel = ours

    async def _ask_zygote(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request to the zygote; a zygote that died (OOM kill, say) is replaced once."""
        async with self._zygote_lock:
            try:
                return await self._zygote_exchange(request)
            except (OSError, TimeoutError) as err:
                log.warning("zygote failed (%s); starting a new one", err)
                self._stop_zygote()
                self._start_zygote()
                return await self._zygote_exchange(request)

    async def _zygote_exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if self._channel is None:
            raise OSError("no zygote")
        await loop.sock_sendall(self._channel, protocol.encode(request))
        data = b""
        while not data.endswith(b"\n"):
            async with asyncio.timeout(HOLDER_READY_TIMEOUT):
                chunk = await loop.sock_recv(self._channel, 65536)
            if not chunk:
                raise OSError("the zygote exited")
            data += chunk
        return protocol.decode(data)

    def _stop_zygote(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._zygote is not None:
            self._zygote.kill()
            self._zygote.wait()
            self._zygote = None

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
        self._stop_zygote()

    # -- adoption and liveness --------------------------------------------------------------

    async def _adopt(self, directory: Path) -> None:
        uid = directory.name
        try:
            record = json.loads((directory / protocol.POD_RECORD_NAME).read_text())
        except (OSError, ValueError):
            record = {}
        pod = _Pod(uid=uid, directory=directory, record=record)
        pod.records = _read_journals(directory)
        self._pods[uid] = pod
        with contextlib.suppress(OSError, HolderGoneError):
            await self._connect(pod)
        log.info(
            "found pod uid=%s holder=%s alive=%s containers=%d",
            uid, pod.holder_pid, pod.alive, len(pod.records),
        )  # fmt: skip

    async def _connect(self, pod: _Pod) -> None:
        client = await HolderClient.connect(str(pod.directory / protocol.SOCKET_NAME))
        pod.client = client
        pod.holder_pid = client.peer_pid
        pod.created_at = float(client.hello.get("created_at", time.time()))
        # Whatever happened while nobody listened is in the journal.
        pod.records = _read_journals(pod.directory)
        if pod.pidfd is None:
            self._watch(pod, client.peer_pid)
        client.start(
            lambda event: self._on_event(pod, event),
            lambda: self._on_disconnect(pod, client),
        )

    def _watch(self, pod: _Pod, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pod.alive = False
            return
        pod.pidfd, pod.alive = pidfd, True
        pod.died.clear()
        asyncio.get_running_loop().add_reader(pidfd, self._on_holder_exit, pod, pid)

    def _on_holder_exit(self, pod: _Pod, pid: int) -> None:
        loop = asyncio.get_running_loop()
        if pod.pidfd is not None:
            loop.remove_reader(pod.pidfd)
            os.close(pod.pidfd)
            pod.pidfd = None
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        self._reap_orphans()
        pod.alive = False
        pod.died.set()
        for waiters in pod.exit_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        pod.exit_waiters.clear()
        log.info("holder of pod uid=%s (pid %d) ended", pod.uid, pid)
        self._notify(pod.uid)

    def _reap_orphans(self) -> None:
        """Container processes reparented here when their holder died: reap the zombies."""
        zygote = self._zygote.pid if self._zygote else None
        for child in _zombie_children():
            if child != zygote:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(child, os.WNOHANG)

    def _on_disconnect(self, pod: _Pod, client: HolderClient) -> None:
        if pod.client is client:
            pod.client = None

    def _on_event(self, pod: _Pod, event: dict[str, Any]) -> None:
        _apply(pod.records, event)
        if event.get("type") == "exit":
            for waiter in pod.exit_waiters.pop(event.get("name", ""), []):
                if not waiter.done():
                    waiter.set_result(None)
        self._notify(pod.uid)

    async def _client(self, pod: _Pod) -> HolderClient:
        if pod.client is None:
            if not pod.alive:
                raise HolderGoneError(f"holder of pod {pod.uid} is not running")
            await self._connect(pod)
        assert pod.client is not None
        return pod.client

    # -- Runtime protocol -------------------------------------------------------------------

    async def list_pods(self) -> list[KnownPod]:
        return [KnownPod(uid, pod.record) for uid, pod in self._pods.items()]

    def _status(self, pod: _Pod) -> SandboxStatus:
        return SandboxStatus(
            pod_uid=pod.uid,
            ready=pod.alive,
            holder_pid=pod.holder_pid if pod.alive else None,
            created_at=pod.created_at,
            containers=tuple(pod.records),
        )

    async def pod_status(self, pod_uid: str) -> SandboxStatus | None:
        pod = self._pods.get(pod_uid)
        return None if pod is None else self._status(pod)

    async def run_sandbox(self, config: SandboxConfig, pod: dict[str, Any]) -> SandboxStatus:
        existing = self._pods.get(config.pod_uid)
        if existing is not None and existing.alive:
            return self._status(existing)
        directory = self.pods_dir / config.pod_uid
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomically(directory / protocol.POD_RECORD_NAME, json.dumps(pod))
        journal = directory / protocol.JOURNAL_NAME
        if journal.exists():  # a previous holder died: keep its history for restart counts
            count = len(list(directory.glob(ARCHIVED_JOURNAL.format("*"))))
            journal.rename(directory / ARCHIVED_JOURNAL.format(count))
        (directory / protocol.SOCKET_NAME).unlink(missing_ok=True)
        state = existing or _Pod(uid=config.pod_uid, directory=directory, record=pod)
        state.record = pod
        self._pods[config.pod_uid] = state
        answer = await self._ask_zygote({
            "pod_dir": str(directory),
            "pod_uid": config.pod_uid,
            "hostname": config.hostname,
            "net": not config.host_network,
            "ipc": not config.host_ipc,
            "uts": not config.host_network,
            "pid": config.share_process_namespace and not config.host_pid,
        })  # fmt: skip
        if "pid" not in answer:
            raise OSError(f"cannot create the holder of pod {config.pod_uid}: {answer}")
        self._watch(state, int(answer["pid"]))
        await self._wait_ready(state)
        return self._status(state)

    async def _wait_ready(self, pod: _Pod) -> None:
        deadline = time.monotonic() + HOLDER_READY_TIMEOUT
        sock = pod.directory / protocol.SOCKET_NAME
        while time.monotonic() < deadline and pod.alive:
            if sock.exists():
                await self._connect(pod)
                return
            await asyncio.sleep(0.002)
        log_file = pod.directory / protocol.HOLDER_LOG_NAME
        detail = log_file.read_text()[-2000:] if log_file.exists() else ""
        raise OSError(f"holder of pod {pod.uid} did not become ready: {detail.strip()}")

    async def start_container(self, pod_uid: str, config: ContainerConfig) -> ContainerRecord:
        pod = self._pods.get(pod_uid)
        if pod is None:
            raise ContainerStartError("PodSandboxNotFound", f"no sandbox for pod {pod_uid}")
        try:
            client = await self._client(pod)
            reply = await client.request(protocol.OP_SPAWN, container=dataclasses.asdict(config))
        except HolderGoneError as err:
            raise ContainerStartError("PodSandboxNotReady", str(err)) from err
        if not reply.get("ok"):
            raise ContainerStartError(
                reply.get("reason", "RunContainerError"), reply.get("message", "")
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

    async def _end_holder(self, pod: _Pod, grace_seconds: float) -> None:
        """Ask the holder to stop its containers and exit; SIGKILL it if it does not."""
        if pod.alive:
            with contextlib.suppress(HolderGoneError, OSError):
                client = await self._client(pod)
                await client.request(protocol.OP_SHUTDOWN, grace_seconds=grace_seconds)
            try:
                await asyncio.wait_for(pod.died.wait(), grace_seconds + EXTRA_KILL_WAIT)
            except TimeoutError:
                if pod.holder_pid is not None:
                    log.warning("holder of pod uid=%s ignored shutdown; killing it", pod.uid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pod.holder_pid, signal.SIGKILL)
                    await asyncio.wait_for(pod.died.wait(), EXTRA_KILL_WAIT)
        if pod.client is not None:
            client, pod.client = pod.client, None
            await client.close()

    async def kill_pod(self, pod_uid: str, grace_seconds: float) -> None:
        pod = self._pods.get(pod_uid)
        if pod is None:
            shutil.rmtree(self.pods_dir / pod_uid, ignore_errors=True)
            return
        await self._end_holder(pod, grace_seconds)
        del self._pods[pod_uid]
        await asyncio.to_thread(shutil.rmtree, pod.directory, True)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def _zombie_children() -> list[int]:
    import psutil

    found = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.status() == psutil.STATUS_ZOMBIE:
                found.append(child.pid)
    return found
