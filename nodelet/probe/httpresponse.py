"""The HTTP/1.x response a probe reads: status, headers, and at most ``limit`` bytes of body.

The head is parsed from a buffer in one pass once it is all there (a probe's answer usually
arrives in one ``recv``), with the limits of the stream reader used before: a line may be 64 KiB,
a head 1000 lines. Lines may end in CRLF or a bare LF, as Go's ``textproto`` accepts. 1xx
answers before the final one are skipped. The body is read as kubelet's ``ReadAtMost``: a
longer body is cut, which is no error; one cut short by the server is Go's ``unexpected EOF``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MAX_LINE = 64 * 1024
MAX_HEADER_LINES = 1000


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.x; ``str()`` is the reason."""


class BodyError(Exception):
    """The body could not be read: kubelet treats this as a prober error, not a verdict."""


def _line(data: bytearray, pos: int, at_eof: bool) -> tuple[bytes | None, int]:
    """The line at ``pos`` with its LF and the position after it; at EOF what is left (``b""``
    when nothing is); None while the line is not complete."""
    end = data.find(b"\n", pos)
    if end < 0:
        if len(data) - pos > MAX_LINE:
            raise ProtocolError("header line too long")
        if not at_eof:
            return None, pos
        return bytes(data[pos:]), len(data)
    if end - pos > MAX_LINE:
        raise ProtocolError("header line too long")
    return bytes(data[pos : end + 1]), end + 1


def _status(line: bytes) -> int:
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    code = parts[1] if len(parts) > 1 else ""
    if not parts[0].startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ProtocolError(f"malformed HTTP response {line.decode('latin-1')!r}")
    return int(code)


def parse_head(data: bytearray, at_eof: bool) -> tuple[int, dict[str, str], int] | None:
    """The final status, its headers (lowercase names) and where the body starts; None while
    more data is needed. Raises ProtocolError."""
    pos = 0
    while True:
        line, pos = _line(data, pos, at_eof)
        if line is None:
            return None
        if not line:
            raise ProtocolError("EOF")
        status = _status(line)
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADER_LINES):
            line, pos = _line(data, pos, at_eof)
            if line is None:
                return None
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise ProtocolError("unexpected EOF")
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise ProtocolError(f"malformed MIME header line: {line.decode('latin-1')!r}")
            headers[name.strip().lower()] = value.strip()
        else:
            raise ProtocolError("too many header lines")
        if 100 <= status < 200 and status != 101:
            continue
        return status, headers, pos


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class ResponseParser:
    """One response, fed as it arrives (:meth:`feed`); sans I/O, so whoever drives the socket
    (selector callbacks, plain or TLS) shares it."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buf = bytearray()
        self._eof = False
        self._head: tuple[int, dict[str, str]] | None = None

    @property
    def reading_body(self) -> bool:
        """The head is in: a failure from now on is a body error (kubelet: a prober error)."""
        return self._head is not None

    def feed(self, data: bytes) -> Response | None:
        """Take what arrived (``b""`` is EOF); the response once complete, else None. Raises
        ProtocolError (the head) or BodyError."""
        if data:
            self._buf += data
        else:
            self._eof = True
        if self._head is None:
            parsed = parse_head(self._buf, self._eof)
            if parsed is None:
                return None
            status, headers, end = parsed
            del self._buf[:end]
            self._head = status, headers
        status, headers = self._head
        body = self._body(status, headers)
        return None if body is None else Response(status, headers, body)

    def _body(self, status: int, headers: Mapping[str, str]) -> bytes | None:
        if status in (204, 304) or 100 <= status < 200:
            return b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._chunked()
        if "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                length = -1
            if length < 0:
                raise BodyError(f"bad Content-Length {headers['content-length']!r}")
            return self._exactly(0, min(length, self._limit))
        if len(self._buf) < self._limit and not self._eof:
            return None
        return bytes(self._buf[: self._limit])

    def _exactly(self, pos: int, size: int) -> bytes | None:
        if len(self._buf) - pos >= size:
            return bytes(self._buf[pos : pos + size])
        if self._eof:
            raise BodyError("unexpected EOF")
        return None

    def _chunked(self) -> bytes | None:
        """The chunks from the start of the body (walked again as more arrives: at most
        ``limit`` bytes, so cheap)."""
        body, pos = bytearray(), 0
        while len(body) < self._limit:
            try:
                line, pos = _line(self._buf, pos, self._eof)
            except ProtocolError as err:
                raise BodyError(str(err)) from err
            if line is None:
                return None
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                size = -1
            if size < 0:
                raise BodyError(f"malformed chunk size {line!r}")
            if size == 0:
                break
            take = min(size, self._limit - len(body))
            chunk = self._exactly(pos, take)
            if chunk is None:
                return None
            body += chunk
            pos += take
            if len(body) < self._limit:
                if self._exactly(pos, 2) is None:  # the chunk's CRLF
                    return None
                pos += 2
        return bytes(body)
