"""kubelet's streaming routes against a live agent's containers, served by the real
KubeletServer (HTTPS, self-signed pair) in the test process with a backend made from the
agent's ``/containers`` data (the agent does not serve them itself until it is wired): exec over
SPDY (hostname and exit code, 10 MB of stdin through sha256sum, a TTY with a resize) and over
WebSocket (v5 and v4), attach, and port-forward to an echo server inside the pod's network
namespace (100 parallel connections of 1 MB over one SPDY connection; WebSocket)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import ssl
import struct
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nodelet.cli import enter
from nodelet.pod.probes import ProbeTarget
from nodelet.probe.exec import start_time
from nodelet.server import kubeletstream
from nodelet.server.kubelet import KubeletServer, KubeletServerSettings
from tests.agentharness import Agent, free_port, wait_for
from tests.spdyclient import SpdyClient, UpgradeRefusedError, exec_streams, status_of
from tests.system.test_wiring import manifest

pytestmark = pytest.mark.system

ECHO_PORT = 7007
ECHO = f"""
import socket, socketserver, sys
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)
        self.request.shutdown(socket.SHUT_WR)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.request_queue_size = 256
server = socketserver.ThreadingTCPServer(("127.0.0.1", {ECHO_PORT}), Echo)
print("echo ready", flush=True)
server.serve_forever()
"""
TALKER = "import sys, time\nfor i in range(600):\n    print(f'out {i}', flush=True)\n" \
    "    print(f'err {i}', file=sys.stderr, flush=True)\n    time.sleep(0.1)\n"  # fmt: skip


class AgentBackend:
    """``StreamBackend`` from the agent's root-only ``/containers`` (what ``nodelet exec``
    reads): the container's pid, its pod's netns, its user and cgroups."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def stream_target(
        self, namespace: str, pod: str, uid: str | None, container: str | None
    ) -> kubeletstream.StreamTarget:
        try:
            items = (await asyncio.to_thread(self.agent.get, f"/containers?pod={namespace}/{pod}"))[
                "items"
            ]
        except OSError:
            raise LookupError("pod does not exist") from None
        running = [i for i in items if i["state"] == "Running" and i["pid"]]
        chosen = [i for i in running if container is None or i["container"] == container]
        if not chosen:
            raise LookupError(f'container not found ("{container}")')
        item = chosen[0]
        pid = item["pid"]
        identity = enter.identity_of(pid)
        target = ProbeTarget(
            pid, "", f"/proc/{item['holderPid']}/ns/net", identity.uid, identity.gid,
            enter.cgroup_procs_files(pid), start_time(pid),
        )  # fmt: skip
        meta = self.agent.pod(pod.removesuffix("-nlt-node"))
        assert meta is not None
        log_dir = self.agent.log_dir(meta, item["container"])
        return kubeletstream.StreamTarget(target, log_dir / f"{item['attempt']}.log")


@pytest.fixture
async def server(agent: Agent, tmp_path: Path) -> AsyncIterator[int]:
    settings = KubeletServerSettings("127.0.0.1", free_port(), None, None, None, "VersionTLS12", 0)
    backend = AgentBackend(agent)
    installers = [lambda app: kubeletstream.install(app, backend)]
    kubelet = KubeletServer(settings, tmp_path / "pki", "nlt-node", installers, [])
    await kubelet.start()
    try:
        yield kubelet.port
    finally:
        await kubelet.close()


@pytest.fixture
def pod(agent: Agent) -> str:
    agent.write_manifest("str.json", manifest("str", [
        {"name": "echo", "image": "host", "command": ["python3", "-c", ECHO]},
        {"name": "talk", "image": "host", "command": ["python3", "-c", TALKER]},
    ]))  # fmt: skip
    wait_for(lambda: agent.running("str"), 30, "pod str running")
    wait_for(lambda: "echo ready" in _log(agent, "echo"), 15, "the echo server")
    return "str-nlt-node"


def _log(agent: Agent, container: str) -> str:
    item = agent.pod("str")
    if item is None:
        return ""
    directory = agent.log_dir(item, container)
    return "".join(p.read_text() for p in directory.glob("*.log")) if directory.exists() else ""


def tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def exec_path(pod: str, container: str, command: list[str], **flags: bool) -> str:
    query = "&".join(f"command={urllib.parse.quote(c, safe='')}" for c in command)
    names = {"stdin": "input", "stdout": "output", "stderr": "error", "tty": "tty"}
    query += "".join(f"&{names[k]}=1" for k, on in flags.items() if on)
    return f"/exec/default/{pod}/{container}?{query}"


async def spdy_exec(
    port: int, pod: str, command: list[str], stdin: bytes | None = None
) -> tuple[bytes, bytes, dict[str, Any]]:
    path = exec_path(pod, "echo", command, stdin=stdin is not None, stdout=True, stderr=True)
    client = await SpdyClient.connect(port, path, ["v4.channel.k8s.io"], tls())
    try:
        assert client.headers["x-stream-protocol-version"] == "v4.channel.k8s.io"
        streams = await exec_streams(client, stdin is not None, True, True, False)
        if stdin is not None:
            await streams["stdin"].write(stdin)
            await streams["stdin"].close()
        out, err, status = await asyncio.gather(
            streams["stdout"].read_all(), streams["stderr"].read_all(),
            streams["error"].read_all(),
        )  # fmt: skip
        return out, err, status_of(status)
    finally:
        await client.close()


async def test_spdy_exec_hostname_and_exit_code(server: int, pod: str) -> None:
    out, err, status = await spdy_exec(server, pod, ["sh", "-c", "hostname; echo oops >&2; exit 3"])
    assert out.decode().strip() == pod  # the pod's UTS namespace
    assert err == b"oops\n"
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert status["status"] == "Failure" and status["metadata"] == {}
    out, _, status = await spdy_exec(server, pod, ["true"])
    assert (out, status) == (b"", {"metadata": {}, "status": "Success"})


async def test_spdy_exec_pipes_10mb_of_stdin(server: int, pod: str) -> None:
    data = os.urandom(10 << 20)
    out, err, status = await spdy_exec(server, pod, ["sha256sum"], stdin=data)
    assert status["status"] == "Success", (status, err)
    assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()


async def test_spdy_exec_failures(server: int, pod: str) -> None:
    _, _, status = await spdy_exec(server, pod, ["/nonexistent-nlt"])
    assert status["reason"] == "InternalError" and status["code"] == 500
    assert "/nonexistent-nlt" in status["message"]
    for path, protocols, code, text in [
        (exec_path("nope", "echo", ["true"], stdout=True), ["v4.channel.k8s.io"], 404,
         "pod does not exist"),
        (exec_path(pod, "nope", ["true"], stdout=True), ["v4.channel.k8s.io"], 404,
         'container not found ("nope")'),
        (exec_path(pod, "echo", [], stdout=True), ["v4.channel.k8s.io"], 400,
         "you must specify a command"),
        (exec_path(pod, "echo", ["true"]), ["v4.channel.k8s.io"], 400,
         "you must specify at least 1 of stdin, stdout, stderr"),
        (exec_path(pod, "echo", ["true"], stdout=True), ["v9.channel.k8s.io"], 403,
         "unable to negotiate protocol"),
    ]:  # fmt: skip
        with pytest.raises(UpgradeRefusedError) as refused:
            await SpdyClient.connect(server, path, protocols, tls())
        assert (refused.value.status, text in refused.value.body) == (code, True), refused.value


async def test_spdy_exec_tty_and_resize(server: int, pod: str) -> None:
    path = exec_path(pod, "echo", ["sh"], stdin=True, stdout=True, stderr=True, tty=True)
    client = await SpdyClient.connect(server, path, ["v4.channel.k8s.io"], tls())
    try:
        streams = await exec_streams(client, True, True, False, True)
        assert "stderr" not in streams
        await streams["resize"].write(json.dumps({"Width": 123, "Height": 45}).encode())
        await asyncio.sleep(0.3)
        await streams["stdin"].write(b'[ -t 0 ] && echo IS-""TTY; stty size\n')
        await streams["stdin"].write(b"trap 'echo WIN\"\"CH; stty size' WINCH\n")
        await asyncio.sleep(0.3)
        await streams["resize"].write(json.dumps({"Width": 100, "Height": 30}).encode())
        await asyncio.sleep(0.3)
        await streams["stdin"].write(b"exit 5\n")
        try:
            out = (await asyncio.wait_for(streams["stdout"].read_all(), 10)).decode()
        except TimeoutError:
            raise AssertionError(b"".join(streams["stdout"].received)) from None
        status = status_of(await streams["error"].read_all())
    finally:
        await client.close()
    assert "IS-TTY" in out and "45 123" in out, out
    assert "WINCH" in out and "30 100" in out, out  # SIGWINCH reached the shell
    assert status["details"]["causes"][0]["message"] == "5", (status, out)


async def test_websocket_exec_v5_and_v4(server: int, pod: str) -> None:
    async with aiohttp.ClientSession() as session:
        for protocol in ("v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io"):
            url = f"https://127.0.0.1:{server}" + exec_path(
                pod, "echo", ["sh", "-c", "cat; hostname; exit 4"], stdin=True, stdout=True,
                stderr=True,
            )  # fmt: skip
            async with session.ws_connect(url, protocols=[protocol], ssl=tls()) as ws:
                assert ws.protocol == protocol
                encoded = "base64" in protocol
                payload = b"from-stdin\n"
                if encoded:
                    await ws.send_str("0" + base64.b64encode(payload).decode())
                else:
                    await ws.send_bytes(b"\x00" + payload)
                if protocol.startswith("v5"):
                    await ws.send_bytes(bytes([255, 0]))  # close stdin
                got: dict[int, bytes] = {}
                closed = []
                while True:
                    message = await asyncio.wait_for(ws.receive(), 10)
                    if message.type == aiohttp.WSMsgType.BINARY:
                        data = bytes(message.data)
                    elif message.type == aiohttp.WSMsgType.TEXT:
                        data = bytes([int(message.data[0])]) + base64.b64decode(message.data[1:])
                    elif protocol.startswith("v4"):
                        break  # v4 stdin never ends: the command waits (it is killed then)
                    else:
                        break
                    if data[0] == 255:
                        closed.append(data[1])
                        continue
                    got[data[0]] = got.get(data[0], b"") + data[1:]
                    if data[0] == 3:
                        break
                    if not protocol.startswith("v5") and b"from-stdin" in got.get(1, b""):
                        break
            if protocol.startswith("v5"):
                assert got[1] == payload + pod.encode() + b"\n"
                assert json.loads(got[3])["details"]["causes"][0]["message"] == "4"
                assert 1 in closed and 2 in closed
            else:
                assert got[1].startswith(payload)


async def test_attach_follows_the_containers_output(server: int, pod: str) -> None:
    path = f"/attach/default/{pod}/talk?output=1&error=1"
    client = await SpdyClient.connect(server, path, ["v4.channel.k8s.io"], tls())
    try:
        streams = await exec_streams(client, False, True, True, False)
        out = await asyncio.wait_for(streams["stdout"].read(), 10)
        err = await asyncio.wait_for(streams["stderr"].read(), 10)
    finally:
        await client.close()
    assert out.startswith(b"out ") and err.startswith(b"err ")


async def test_spdy_port_forward_100_parallel_connections(server: int, pod: str) -> None:
    client = await SpdyClient.connect(
        server, f"/portForward/default/{pod}", ["portforward.k8s.io"], tls()
    )
    assert client.headers["x-stream-protocol-version"] == "portforward.k8s.io"

    async def one(request_id: int) -> bool:
        headers = {"port": str(ECHO_PORT), "requestID": str(request_id)}
        error = await client.open({**headers, "streamType": "error"})
        data = await client.open({**headers, "streamType": "data"})
        await data.replied.wait()
        payload = os.urandom(1 << 20)

        async def send() -> None:
            await data.write(payload)
            await data.close()

        sending = asyncio.create_task(send())
        echoed = await data.read_all()
        await sending
        assert await error.read_all() == b""
        return echoed == payload

    try:
        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(100))), 120)
        assert all(results) and len(results) == 100
        # a closed port: kubelet's message on the error stream
        headers = {"port": "1", "requestID": "1000"}
        error = await client.open({**headers, "streamType": "error"})
        data = await client.open({**headers, "streamType": "data"})
        message = (await error.read_all()).decode()
        assert message.startswith(f"error forwarding port 1 to pod {pod}_default, uid : ")
        assert "connection refused" in message
        assert await data.read_all() == b""
    finally:
        await client.close()


async def test_websocket_port_forward(server: int, pod: str) -> None:
    url = f"https://127.0.0.1:{server}/portForward/default/{pod}?port={ECHO_PORT}"
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, protocols=["v4.channel.k8s.io"], ssl=tls()) as ws,
    ):
        opening = [bytes((await ws.receive()).data) for _ in range(2)]
        assert opening == [b"\x00" + struct.pack("<H", ECHO_PORT),
                           b"\x01" + struct.pack("<H", ECHO_PORT)]  # fmt: skip
        await ws.send_bytes(b"\x00hello through websocket")
        message = await asyncio.wait_for(ws.receive(), 10)
        assert bytes(message.data) == b"\x00hello through websocket"
