"""The HTTP/1.x response a probe reads: status, headers, and at most ``limit`` bytes of body.

The head is parsed from a buffer in one pass once it is all there (a probe's answer usually
arrives in one ``recv``), with the limits of the stream reader used before: a line may be 64 KiB,
a head 1000 lines. Lines may end in CRLF or a bare LF, as Go's ``textproto`` accepts. 1xx
answers before the final one are skipped. The body is read as kubelet's ``ReadAtMost``: a
longer body is cut, which is no error; one cut short by the server is Go's ``unexpected EOF``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

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


class ResponseReader:
    """Reads one response from ``recv`` (``b""`` at EOF) through one buffer."""

    def __init__(self, recv: Callable[[], Awaitable[bytes]]) -> None:
        self._recv = recv
        self._buf = bytearray()
        self._eof = False

    async def _fill(self) -> None:
        data = await self._recv()
        if data:
            self._buf += data
        else:
            self._eof = True

    async def head(self) -> tuple[int, dict[str, str]]:
        """The status and headers of the final response (1xx ones skipped)."""
        while True:
            parsed = parse_head(self._buf, self._eof)
            if parsed is not None:
                status, headers, end = parsed
                del self._buf[:end]
                return status, headers
            await self._fill()

    async def _line(self) -> bytes:
        while True:
            line, end = _line(self._buf, 0, self._eof)
            if line is not None:
                del self._buf[:end]
                return line
            await self._fill()

    async def _exactly(self, size: int) -> bytes:
        while len(self._buf) < size and not self._eof:
            await self._fill()
        if len(self._buf) < size:
            raise BodyError("unexpected EOF")
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    async def _at_most(self, size: int) -> bytes:
        while len(self._buf) < size and not self._eof:
            await self._fill()
        return bytes(self._buf[:size])

    async def _chunked(self, limit: int) -> bytes:
        body = bytearray()
        while len(body) < limit:
            line = await self._line()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BodyError(f"malformed chunk size {line!r}") from None
            if size == 0:
                break
            body += await self._exactly(min(size, limit - len(body)))
            if len(body) < limit:
                await self._exactly(2)  # the chunk's CRLF
        return bytes(body)

    async def body(self, status: int, headers: Mapping[str, str], limit: int) -> bytes:
        """At most ``limit`` bytes of the body. Raises BodyError."""
        if status in (204, 304) or 100 <= status < 200:
            return b""
        try:
            if "chunked" in headers.get("transfer-encoding", "").lower():
                return await self._chunked(limit)
            if "content-length" in headers:
                try:
                    length = int(headers["content-length"])
                except ValueError:
                    length = -1
                if length < 0:
                    raise BodyError(f"bad Content-Length {headers['content-length']!r}")
                return await self._exactly(min(length, limit))
            return await self._at_most(limit)
        except (ConnectionError, ProtocolError) as err:
            raise BodyError(str(err) or type(err).__name__) from err
