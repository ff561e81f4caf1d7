"""The agent's own log: kubelet's ``--logging-format`` ``text`` (as always) or ``json``.

JSON is one object per line, for log shippers: ``ts``, ``level``, ``logger``, ``msg``, and
the pod's identity (``pod``, ``namespace``, ``uid``) when the record carries it. Records name
their pod the one way the agent always does, ``describe(pod)``'s ``pod=<ns>/<name> uid=<uid>``
inside the message, or through ``extra={"pod": ..., "namespace": ..., "uid": ...}``; both are
found here, so no log call has to change.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
POD_FIELDS = ("pod", "namespace", "uid")

_DESCRIBED = re.compile(r"\bpod=(?P<namespace>[^\s/]+)/(?P<pod>\S+) uid=(?P<uid>[^\s,;:)]+)")
_UID_ONLY = re.compile(r"\buid=(?P<uid>[0-9a-fA-F-]{8,})")


def pod_identity(record: logging.LogRecord, message: str) -> dict[str, str]:
    """The pod fields of a record: its ``extra`` attributes first, else ``describe(pod)``'s
    text in the message, else a bare ``uid=`` (the agent's ``uid=<uid>`` for unknown pods)."""
    found = {k: str(getattr(record, k)) for k in POD_FIELDS if getattr(record, k, None)}
    if found:
        return found
    match = _DESCRIBED.search(message)
    if match is not None:
        return {k: match.group(k) for k in POD_FIELDS}
    match = _UID_ONLY.search(message)
    return {"uid": match.group("uid")} if match is not None else {}


def _rfc3339(created: float) -> str:
    seconds = int(created)
    micros = int((created - seconds) * 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback goes in ``exc``, escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "ts": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": message,
        }
        entry.update(pod_identity(record, message))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure(
    log_format: str = "text", verbose: bool = False, stream: TextIO | None = None
) -> None:
    """The root logger's one handler (stderr), in ``log_format``: what ``nodelet run`` sets up."""
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r} (known: {', '.join(FORMATS)})")
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JSONFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True
    )
