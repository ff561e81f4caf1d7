"""The agent's local API as this user may see it: the root-only unix socket (the full view), or
the TCP port any local user may read (redacted). The CLI reaches the agent only through here."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

from nodelet.config import SOCKET_NAME


def fetch(port: int, path: str) -> Any:
    """GET from the TCP port: open to any local user, so redacted."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.load(response)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._socket_path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def fetch_unix(socket_path: Path, path: str, timeout: float = 5.0) -> Any:
    """GET from the agent's root-only unix socket: the full view, env values included."""
    connection = _UnixHTTPConnection(socket_path, timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status == 403:
        raise PermissionError(f"{socket_path}: the agent refused this user")
    if response.status != 200:
        raise OSError(f"{socket_path}{path}: HTTP {response.status}")
    return json.loads(body)


class LocalAPIClient:
    """The agent's local API as this user may see it: the unix socket (root: the full view),
    else the TCP port (anyone: env values, annotations and rejection reasons redacted)."""

    def __init__(self, run_dir: Path, port: int) -> None:
        self.socket_path = run_dir / SOCKET_NAME
        self.port = port
        self.redacted: bool | None = None
        """None until the first answer; then whether it came from the redacted TCP port."""
        self.socket_error: str | None = None

    def get(self, path: str) -> Any:
        if not self.redacted:
            try:
                result = fetch_unix(self.socket_path, path)
            except (OSError, http.client.HTTPException, ValueError) as err:
                if self.redacted is False:  # the socket answered before: don't mix views
                    raise
                self.socket_error = getattr(err, "strerror", None) or str(err)
            else:
                self.redacted = False
                return result
        result = fetch(self.port, path)
        self.redacted = True
        return result

    def where(self) -> str:
        return f"{self.socket_path} or 127.0.0.1:{self.port}"
