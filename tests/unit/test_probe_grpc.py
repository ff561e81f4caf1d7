"""The gRPC probe's wire pieces: HPACK literals, the request, the health response."""

from __future__ import annotations

import pytest

from nodelet.probe.grpc import PREFACE, _integer, _literal, health_status, request_bytes

pytestmark = pytest.mark.unit


def test_hpack_integers_and_literals() -> None:
    assert _integer(10, 7) == b"\x0a"
    assert _integer(127, 7) == b"\x7f\x00"
    assert _integer(1337, 5) == b"\x1f\x9a\x0a"  # RFC 7541 C.1.2
    assert _literal("te", "trailers") == b"\x00\x02te\x08trailers"


def test_the_request_is_preface_settings_headers_and_one_message() -> None:
    raw = request_bytes("127.0.0.1:2379", "etcd")
    assert raw.startswith(PREFACE)
    rest = raw[len(PREFACE) :]
    assert rest[:9] == b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty SETTINGS
    rest = rest[9:]
    length = int.from_bytes(rest[:3], "big")
    assert rest[3:5] == b"\x01\x04"  # HEADERS, END_HEADERS
    assert b"/grpc.health.v1.Health/Check" in rest[9 : 9 + length]
    data = rest[9 + length :]
    assert data[3:5] == b"\x00\x01"  # DATA, END_STREAM
    # The gRPC message: uncompressed, 6 bytes: HealthCheckRequest{service: "etcd"}.
    assert data[9:] == b"\x00\x00\x00\x00\x06\x0a\x04etcd"


@pytest.mark.parametrize(
    ("message", "status"),
    [(b"\x08\x01", 1), (b"\x08\x02", 2), (b"", 0), (b"\x12\x02hi\x08\x03", 3)],
)
def test_health_status_is_field_one(message: bytes, status: int) -> None:
    assert health_status(message) == status
