"""Agent <-> holder wire format: newline-delimited JSON over the pod's unix socket.

Versioned so an upgraded agent can keep talking to holders an older agent started: the holder
says its version in ``hello``; fields a side does not know are ignored.
"""

from __future__ import annotations

import json
from typing import Any

VERSION = 1
SOCKET_NAME = "holder.sock"
JOURNAL_NAME = "journal.jsonl"
POD_RECORD_NAME = "pod.json"
HOLDER_LOG_NAME = "holder.log"

OP_SPAWN = "spawn"
OP_STOP = "stop"
OP_STATE = "state"
OP_SHUTDOWN = "shutdown"


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("a message is a JSON object")
    return message
