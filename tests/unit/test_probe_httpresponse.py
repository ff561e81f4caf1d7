"""The probe's HTTP/1.x response parser, fed as a socket would deliver: whole, in pieces, cut."""

from __future__ import annotations

import re

import pytest

from nodelet.probe.httpresponse import (
    BodyError,
    ProtocolError,
    Response,
    ResponseParser,
)

pytestmark = pytest.mark.unit


def parse(*pieces: bytes, limit: int = 10240) -> Response | None:
    parser = ResponseParser(limit)
    response = None
    for piece in pieces:
        response = parser.feed(piece)
        if response is not None:
            break
    return response


def bytewise(data: bytes, eof: bool = True) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))] + ([b""] if eof else [])


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Thing:  v \r\n\r\nhello"


def test_whole_and_bytewise_give_the_same_response() -> None:
    expected = Response(200, {"content-length": "5", "x-thing": "v"}, b"hello")
    assert parse(OK) == expected
    assert parse(*bytewise(OK, eof=False)) == expected  # complete at the last byte, no EOF


def test_bare_lf_lines_and_1xx_skipped() -> None:
    data = b"HTTP/1.1 100 Continue\n\nHTTP/1.0 302 Found\nLocation: /x\n\nmoved"
    assert parse(data, b"") == Response(302, {"location": "/x"}, b"moved")
    assert parse(*bytewise(data)) == Response(302, {"location": "/x"}, b"moved")


def test_close_delimited_body_waits_for_eof_or_the_limit() -> None:
    parser = ResponseParser(8)
    assert parser.feed(b"HTTP/1.0 200 OK\r\n\r\nabc") is None
    assert parser.reading_body
    assert parser.feed(b"") == Response(200, {}, b"abc")
    assert parse(b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 20, limit=8) == Response(200, {}, b"x" * 8)


def test_chunked_across_pieces_and_cut_at_the_limit() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    data = head + b"5;ext\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"
    assert parse(*bytewise(data, eof=False)) == Response(
        200, {"transfer-encoding": "chunked"}, b"helloabc"
    )
    cut = parse(data, limit=6)
    assert cut is not None and cut.body == b"helloa"


def test_no_body_statuses() -> None:
    assert parse(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n") == Response(
        204, {"content-length": "9"}, b""
    )


@pytest.mark.parametrize(
    ("pieces", "error", "message"),
    [
        ([b""], ProtocolError, "EOF"),
        ([b"HTTP/1.1 200 OK\r\nX: y", b""], ProtocolError, "unexpected EOF"),
        (
            [b"SSH-2.0-OpenSSH\r\n"],
            ProtocolError,
            "malformed HTTP response 'SSH-2.0-OpenSSH\\r\\n'",
        ),
        ([b"HTTP/1.1 200 OK\r\nno colon\r\n"], ProtocolError, "malformed MIME header line"),
        ([b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000], ProtocolError, "header line too long"),
        ([b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 1001], ProtocolError, "too many header lines"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", b""], BodyError, "unexpected EOF"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"], BodyError, "bad Content-Length"),
        (
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
            BodyError,
            "malformed chunk size b'zz\\r\\n'",
        ),
        (
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", b""],
            BodyError,
            "unexpected EOF",
        ),
    ],
)
def test_errors(pieces: list[bytes], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        parse(*pieces)
