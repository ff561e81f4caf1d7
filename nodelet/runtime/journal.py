"""A pod's exit journal folded into its container history.

The holder appends a record for every start and exit (fsync'd before the agent hears of it);
a previous holder's journal is archived as ``journal-<n>.jsonl``. Records read from disk are
checked: a damaged line or an entry of the wrong shape is skipped with a warning, never
trusted and never allowed to hide the records after it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from nodelet.holder import protocol
from nodelet.runtime.api import ContainerRecord

log = logging.getLogger(__name__)

ARCHIVED_JOURNAL = "journal-{}.jsonl"
_ARCHIVED = re.compile(r"^journal-(\d+)\.jsonl$")
_CHECKSUMMED = re.compile(rb"(?m)^[0-9a-f]{8} \{")


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _optional(value: Any, kind: type) -> bool:
    return value is None or (isinstance(value, kind) and not isinstance(value, bool))


def to_record(entry: dict[str, Any]) -> ContainerRecord | None:
    """The run a ``start`` or ``exit`` entry describes; None when the entry is malformed."""
    kind, name = entry.get("type"), entry.get("name")
    attempt, pid = _integer(entry.get("attempt")), _integer(entry.get("pid"))
    started = _number(entry.get("started_at"))
    if kind not in ("start", "exit") or not isinstance(name, str) or not name:
        return None
    if attempt is None or attempt < 0 or pid is None or pid <= 0 or started is None:
        return None
    if kind == "start":
        return ContainerRecord(name, attempt, pid, started)
    finished, code = _number(entry.get("finished_at")), _integer(entry.get("exit_code"))
    signal, reason, message = entry.get("signal"), entry.get("reason"), entry.get("message")
    if finished is None or code is None:
        return None
    if not (_optional(signal, int) and _optional(reason, str) and _optional(message, str)):
        return None
    return ContainerRecord(name, attempt, pid, started, finished, code, signal, reason, message)


def apply(records: list[ContainerRecord], entry: dict[str, Any]) -> bool:
    """Fold one entry into ``records`` (idempotent); False when the entry was malformed."""
    record = to_record(entry)
    if record is None:
        return False
    key = (record.name, record.attempt, record.pid)
    index = next((i for i, r in enumerate(records) if (r.name, r.attempt, r.pid) == key), None)
    if index is None:
        records.append(record)
    elif not record.running:
        records[index] = record
    return True


def journal_paths(directory: Path) -> list[Path]:
    """Archived journals oldest first, then the current one."""
    archived: list[tuple[int, Path]] = []
    try:
        for path in directory.iterdir():
            match = _ARCHIVED.match(path.name)
            if match:
                archived.append((int(match.group(1)), path))
    except OSError:
        pass
    return [path for _, path in sorted(archived)] + [directory / protocol.JOURNAL_NAME]


def next_archive(directory: Path) -> Path:
    """Where the current journal goes when a new holder takes over the pod."""
    numbers = [int(m.group(1)) for p in directory.iterdir() if (m := _ARCHIVED.match(p.name))]
    return directory / ARCHIVED_JOURNAL.format(max(numbers, default=-1) + 1)


def read_journals(directory: Path) -> list[ContainerRecord]:
    """Every run of every container of the pod, across holders, damaged records skipped."""
    records: list[ContainerRecord] = []
    for path in journal_paths(directory):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as err:
            log.warning("cannot read journal %s: %s", path, err)
            continue
        # A file a version-2 holder wrote has checksums: there a bare line is damage, not a
        # version-1 record (which would otherwise let stray JSON pass as a real exit).
        checked = _CHECKSUMMED.search(data) is not None
        for number, line in enumerate(data.split(b"\n"), 1):
            try:
                if checked and line.strip().startswith(b"{"):
                    raise ValueError("a record without its checksum")
                entry = protocol.decode_record(line)
            except (ValueError, UnicodeDecodeError) as err:
                log.warning("skipping damaged journal record %s:%d: %s", path, number, err)
                continue
            if entry is not None and not apply(records, entry):
                log.warning("skipping malformed journal record %s:%d", path, number)
    return records
