"""kubelet's gRPC probe (``pkg/probe/grpc``): one ``grpc.health.v1.Health/Check`` call.

kubelet's gRPC probes are plaintext HTTP/2 ("h2c" with prior knowledge), so a small client
suffices and no gRPC library is needed: the connection preface, a SETTINGS frame, the request
as HEADERS (HPACK literals, no compression) and DATA, then frames are read until the stream
ends. The answer is read from the response message (``HealthCheckResponse.status``), so the
response headers never need HPACK decoding; a call that ends without a message failed, and
the gRPC status in the trailers is reported as far as it can be read without a decoder.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping
from typing import Any

from nodelet.probe.result import Outcome, ProbeResult
from nodelet.probe.tcp import DialError, dial, join_host_port

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
STREAM = 1
MAX_FRAME = 1 << 20
"""Larger frames than this are not read (the server's default limit is 16 KiB)."""
STATUSES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
PATH = "/grpc.health.v1.Health/Check"


class _ProtocolError(Exception):
    pass


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _literal(name: str, value: str) -> bytes:
    """HPACK "literal header field without indexing, new name", no Huffman coding."""
    return b"\x00" + _string(name.encode()) + _string(value.encode())


def _string(data: bytes) -> bytes:
    return _integer(len(data), 7) + data


def _integer(value: int, prefix: int) -> bytes:
    """HPACK integer with a ``prefix``-bit prefix (the H bit left 0)."""
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([value])
    out = bytearray([limit])
    value -= limit
    while value >= 128:
        out.append((value % 128) + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data):
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    raise _ProtocolError("truncated varint")


def health_status(message: bytes) -> int:
    """``HealthCheckResponse.status`` (field 1, an enum) from the protobuf message; 0 when
    absent (proto3's default, UNKNOWN)."""
    at, status = 0, 0
    while at < len(message):
        key, at = _varint(message, at)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(message, at)
            if field == 1:
                status = value
        elif wire == 2:
            length, at = _varint(message, at)
            at += length
        elif wire == 5:
            at += 4
        elif wire == 1:
            at += 8
        else:
            raise _ProtocolError(f"unexpected protobuf wire type {wire}")
    return status


def request_bytes(authority: str, service: str) -> bytes:
    """Preface, SETTINGS, and the Check call on stream 1."""
    headers = b"".join(
        _literal(name, value)
        for name, value in (
            (":method", "POST"), (":scheme", "http"), (":path", PATH),
            (":authority", authority), ("content-type", "application/grpc"),
            ("te", "trailers"), ("user-agent", "kube-probe/1.20"),
        )
    )  # fmt: skip
    body = b""
    if service:
        encoded = service.encode()
        body = b"\x0a" + _integer_varint(len(encoded)) + encoded
    message = b"\x00" + struct.pack(">I", len(body)) + body
    return (
        PREFACE
        + _frame(SETTINGS, 0, 0)
        + _frame(HEADERS, END_HEADERS, STREAM, headers)
        + _frame(DATA, END_STREAM, STREAM, message)
    )


def _integer_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
    head = await reader.readexactly(9)
    length = int.from_bytes(head[:3], "big")
    if length > MAX_FRAME:
        raise _ProtocolError(f"frame of {length} bytes")
    stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
    return head[3], head[4], stream, await reader.readexactly(length)


async def _call(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str, service: str
) -> tuple[bytes | None, bool]:
    """The response message (None when the call ended without one) and whether the stream
    ended cleanly."""
    writer.write(request_bytes(authority, service))
    await writer.drain()
    data = b""
    while True:
        kind, flags, stream, payload = await _read_frame(reader)
        if kind == SETTINGS and not flags & ACK:
            writer.write(_frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            writer.write(_frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            raise _ProtocolError("the server closed the connection (GOAWAY)")
        elif kind == RST_STREAM and stream == STREAM:
            raise _ProtocolError("the server reset the stream")
        elif kind == DATA and stream == STREAM:
            padded = payload[1 : len(payload) - payload[0]] if flags & 0x8 else payload
            data += padded
            if padded:
                writer.write(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", len(padded))))
        if stream == STREAM and kind in (DATA, HEADERS) and flags & END_STREAM:
            break
        await writer.drain()
    if len(data) < 5:
        return None, True
    length = int.from_bytes(data[1:5], "big")
    return data[5 : 5 + length], True


async def grpc_probe(
    grpc: Mapping[str, Any], *, pod_ip: str, port: int, netns: str | None, timeout: float
) -> ProbeResult:
    """kubelet's ``DoGRPCProbe`` with its messages; the host is the pod IP (its own loopback
    when the pod has none yet), as a gRPC probe names no host."""
    host = pod_ip or "127.0.0.1"
    service = str(grpc.get("service") or "")
    authority = join_host_port(host, port)
    try:
        sock = await dial(host, port, netns=netns, timeout=timeout)
    except DialError as err:
        return ProbeResult(
            Outcome.FAILURE,
            f'timeout: failed to connect service "{authority}" within {timeout:g}s: {err}',
        )
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        async with asyncio.timeout(timeout):
            message, _ = await _call(reader, writer, authority, service)
    except TimeoutError:
        return ProbeResult(
            Outcome.FAILURE, f"timeout: health rpc did not complete within {timeout:g}s"
        )
    except (_ProtocolError, asyncio.IncompleteReadError, OSError) as err:
        return ProbeResult(Outcome.FAILURE, f"rpc error: {err}")
    finally:
        writer.close()
    if message is None:
        return ProbeResult(
            Outcome.FAILURE,
            "rpc error: the call ended without a health response (is grpc.health.v1.Health "
            f"served, and service {service!r} known?)",
        )
    try:
        status = health_status(message)
    except _ProtocolError as err:
        return ProbeResult(Outcome.FAILURE, f"rpc error: {err}")
    if status != 1:
        name = STATUSES.get(status, str(status))
        return ProbeResult(Outcome.FAILURE, f'service unhealthy (responded with "{name}")')
    return ProbeResult(Outcome.SUCCESS)
