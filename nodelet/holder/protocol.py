"""Agent <-> holder wire format: newline-delimited JSON over the pod's unix socket.

Versioned so an upgraded agent can keep talking to holders an older agent started: the holder
says its version in ``hello``; fields a side does not know are ignored.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

VERSION = 2
"""2: journal records carry a CRC32 and start on a fresh line; hello carries pending exits."""
SOCKET_NAME = "holder.sock"
JOURNAL_NAME = "journal.jsonl"
POD_RECORD_NAME = "pod.json"
HOLDER_LOG_NAME = "holder.log"
TERMINATING_NAME = "terminating.json"
"""Written (fsync'd) by the agent before it stops a pod: the intent to remove outlives a crash."""
HOLDER_ID_NAME = "holder.json"
"""The holder's pid and kernel start time, so it is recognised without its socket."""

OP_SPAWN = "spawn"
OP_STOP = "stop"
OP_SHUTDOWN = "shutdown"


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("a message is a JSON object")
    return message


def encode_record(entry: dict[str, Any]) -> bytes:
    """A journal record: ``\n<crc32 hex> <json>\n``.

    The leading newline keeps a record whole even after a torn or damaged line; the checksum
    lets a reader skip a damaged record instead of trusting it.
    """
    body = json.dumps(entry, separators=(",", ":"), sort_keys=True).encode()
    return b"\n%08x %s\n" % (zlib.crc32(body), body)


def decode_record(line: bytes) -> dict[str, Any] | None:
    """One journal line: the entry, None for a blank line; ValueError when damaged.

    Bare JSON lines are what version-1 holders wrote; they are still read, so an upgraded agent
    keeps the history of pods whose holders an older agent started.
    """
    line = line.strip()
    if not line:
        return None
    if line.startswith(b"{"):
        return decode(line)
    checksum, _, body = line.partition(b" ")
    if len(checksum) != 8 or not body:
        raise ValueError("not a journal record")
    if int(checksum, 16) != zlib.crc32(body):
        raise ValueError("checksum mismatch")
    return decode(body)
