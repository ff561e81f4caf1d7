"""Read one manifest file into a ``StaticPod``, or a ``Rejection`` that says exactly why not.

Never raises: a binary file, a FIFO, a symlink loop, a 20 MB file, a YAML bomb, nesting
1000 levels deep, a 5000-digit number, a file name that is not UTF-8 or a pod nodelet cannot
run all become clear errors naming the file and the field; and should a check still fail on
some input nobody thought of, the file is rejected with ``internal error while checking: ...``
(traceback in the log) instead of the exception reaching the caller. One file can never stop
the agent from handling the others.

Messages never echo the file's text: a manifest dir may hold a link to any file, and
rejections are shown to readers who may not read it. They quote at most a short piece
(``schema.QUOTE_LIMIT`` characters) of a value, escaped.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import math
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

import yaml

from nodelet.manifest import defaults, fieldpolicy, schema, validation
from nodelet.manifest.schema import describe, show
from nodelet.model import ManifestError, Rejection, StaticPod

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 64
"""Deepest nesting of lists and objects; a pod needs about 12. Checked while composing, before
any recursion deep enough to overflow the stack."""
MAX_INT_CHARS = 100
"""Longer integer literals are refused before conversion (Python refuses 4300+ digits)."""
MAX_ERRORS = 50
"""Errors listed per file; a 10 MiB file of mistakes must not make a 100 MB rejection."""
IGNORED_PATTERNS = ("*~", "*.swp", "*.swx", "*.swo", "*.bak", "*.tmp", "#*#", "4913", ".*")
"""Dotfiles (kubelet skips those too) and what editors leave beside the file they edit."""


def is_ignored(filename: str) -> bool:
    return any(fnmatch.fnmatchcase(filename, pattern) for pattern in IGNORED_PATTERNS)


def display_path(path: str) -> str:
    """``path`` as it may be shown anywhere (JSON, logs, terminals): bytes that are not UTF-8
    as ``\\xNN`` and control or invisible characters escaped, so it always encodes."""
    try:
        text = os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that did not come from the file system
        text = path.encode("utf-8", "backslashreplace").decode("utf-8")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _path_problem(path: str) -> str | None:
    try:
        os.fsencode(path).decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return "file name is not valid UTF-8; rename the file"
    if not path.isprintable():
        return "file name holds control or invisible characters; rename the file"
    return None


class _InvalidError(Exception):
    def __init__(self, reason: str, field: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def _line(node: Any) -> str:
    return f"line {node.start_mark.line + 1}"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader for JSON's data model only: no aliases (no YAML bombs), no duplicate or
    non-scalar keys, no tags beyond null/bool/int/float/str/list/object (no timestamps, sets or
    binary), integers within 64 bits, finite floats, nesting at most ``MAX_DEPTH`` deep."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise _InvalidError(f"YAML aliases are not allowed (line {event.start_mark.line + 1})")
        if self._depth >= MAX_DEPTH:
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise _InvalidError(
                f"nested deeper than {MAX_DEPTH} levels (line {event.start_mark.line + 1})"
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                raise _InvalidError(
                    f"a key must be a string, got {describe(key)} ({_line(key_node)})"
                )
            if key in seen:
                raise _InvalidError(f"duplicate key {show(key)} ({_line(key_node)})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        if len(self.construct_scalar(node)) > MAX_INT_CHARS:
            raise _InvalidError(f"integer out of range: must fit in 64 bits ({_line(node)})")
        value = super().construct_yaml_int(node)
        if not schema.INT64_MIN <= value <= schema.INT64_MAX:
            raise _InvalidError(f"integer out of range: must fit in 64 bits ({_line(node)})")
        return value

    def construct_yaml_float(self, node: Any) -> float:
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise _InvalidError(f"numbers must be finite, got {value} ({_line(node)})")
        return value

    def construct_yaml_str(self, node: Any) -> str:
        value = self.construct_scalar(node)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # JSON-style "\ud83d\ude00": join the pairs, refuse the rest
            try:
                value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
            except UnicodeDecodeError as err:
                raise _InvalidError(f"lone surrogate escape in a string ({_line(node)})") from err
        return value

    def construct_undefined(self, node: Any) -> Any:
        raise _InvalidError(
            f"YAML tag {show(node.tag)} is not allowed: a manifest holds JSON types only "
            f"({_line(node)})"
        )


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.yaml_constructors = {
    "tag:yaml.org,2002:null": yaml.SafeLoader.construct_yaml_null,
    "tag:yaml.org,2002:bool": yaml.SafeLoader.construct_yaml_bool,
    "tag:yaml.org,2002:int": _StrictLoader.construct_yaml_int,
    "tag:yaml.org,2002:float": _StrictLoader.construct_yaml_float,
    "tag:yaml.org,2002:str": _StrictLoader.construct_yaml_str,
    "tag:yaml.org,2002:seq": yaml.SafeLoader.construct_yaml_seq,
    "tag:yaml.org,2002:map": yaml.SafeLoader.construct_yaml_map,
    None: _StrictLoader.construct_undefined,
}


def _read(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _InvalidError("symlink loop") from err
        if err.errno == errno.ENOENT and os.path.islink(path):
            raise _InvalidError(f"dangling symlink to {show(os.readlink(path))}") from err
        raise _InvalidError(f"cannot open: {err.strerror}") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _InvalidError("not a regular file")
        if info.st_size > MAX_MANIFEST_BYTES:
            raise _InvalidError(f"file is {info.st_size} bytes, larger than the 10 MiB limit")
        data = os.read(fd, MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise _InvalidError("file grew beyond the 10 MiB limit while being read")
        return data
    finally:
        os.close(fd)


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _library_text(text: str, limit: int = 120) -> str:
    """A library message on one line and short: some quote a tag or handle from the file, so
    each quoted part is cut to ``schema.QUOTE_LIMIT`` characters too."""
    flat = " ".join(text.split())
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in flat)
    flat = _QUOTED.sub(lambda m: _cut(m.group()), flat)
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _cut(quoted: str) -> str:
    inner = quoted[1:-1]
    if len(inner) <= schema.QUOTE_LIMIT:
        return quoted
    return f"{quoted[0]}{inner[: schema.QUOTE_LIMIT]}{quoted[0]}... ({len(inner)} characters)"


def parse_documents(data: bytes) -> list[Any]:
    """The non-null YAML (or JSON) documents in ``data``, held to JSON's data model and the
    limits above; ``ManifestParseError`` (with a reason fit to show) when it cannot be read."""
    if b"\0" in data:
        raise _InvalidError("binary file: contains NUL bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _InvalidError(f"not UTF-8 text (byte {err.start})") from err
    documents = []
    loader: _StrictLoader | None = None
    try:
        loader = _StrictLoader(text)  # its reader already refuses control characters
        while loader.check_data():  # type: ignore[no-untyped-call]
            documents.append(loader.get_data())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise _InvalidError(f"invalid YAML{where}: {_library_text(str(err.problem))}") from err
    except yaml.YAMLError as err:
        raise _InvalidError(f"invalid YAML: {_library_text(str(err))}") from err
    finally:
        if loader is not None:
            loader.dispose()
    return [d for d in documents if d is not None]


ManifestParseError = _InvalidError


def _parse(data: bytes) -> dict[str, Any]:
    documents = parse_documents(data)
    if not documents:
        raise _InvalidError("file is empty")
    if len(documents) > 1:
        raise _InvalidError(f"holds {len(documents)} documents; a manifest holds exactly one Pod")
    document = documents[0]
    kind = document.get("kind") if isinstance(document, dict) else None
    if isinstance(document, list) or (isinstance(kind, str) and kind.endswith("List")):
        raise _InvalidError("holds a list; a manifest holds exactly one Pod")
    if not isinstance(document, dict):
        raise _InvalidError(f"expected a Pod object, got {describe(document)}")
    return document


def _covers(malformed: tuple[str, ...], field: str) -> bool:
    return any(field == m or field.startswith((f"{m}.", f"{m}[")) for m in malformed)


def check_pod(obj: dict[str, Any], node_name: str) -> list[tuple[str, str]]:
    """Every (field, reason) wrong with a parsed Pod object: structure, policy, semantics.

    Each check is total (it accepts any shape), so the later ones run even after a structural
    error; only their errors inside an already malformed field are dropped (one per field)."""
    problems: list[tuple[str, str]] = []

    def sink(field: str, reason: str) -> None:
        problems.append((field, reason))

    schema.check(obj, "V1Pod", "", sink)
    malformed = tuple(field for field, _ in problems)

    def later_sink(field: str, reason: str) -> None:
        if not _covers(malformed, field):
            problems.append((field, reason))

    fieldpolicy.check(obj, later_sink)
    validation.validate(obj, node_name, later_sink)
    return problems


def _rejection(path: str, problems: list[tuple[str, str]], name: Any = None) -> Rejection:
    if len(problems) > MAX_ERRORS:
        extra = len(problems) - MAX_ERRORS
        problems = [*problems[:MAX_ERRORS], ("", f"... and {extra} more errors")]
    errors = tuple(ManifestError(path, field, reason) for field, reason in problems)
    return Rejection(path, errors, name if validation.dns_subdomain(name) is None else None)


def _exception_text(err: BaseException) -> str:
    try:
        detail = _library_text(str(err))
    except Exception:  # an exception whose message cannot even be made
        detail = "(no message)"
    return f"{type(err).__name__}: {detail}" if detail else type(err).__name__


def internal_error(path: str, err: BaseException) -> Rejection:
    """The rejection for a file whose checking raised: a bug, reported as that file's error."""
    reason = f"internal error while checking: {_exception_text(err)}"
    return Rejection(path, (ManifestError(path, "", reason),))


STRICT, WARN = "Strict", "Warn"
"""``manifestValidation`` modes: Strict refuses a manifest with an unknown field; Warn drops
such fields and runs the pod, as kubelet (which decodes leniently) does, with a warning each."""

DROPPED = "dropped (manifestValidation: Warn)"
"""Ends the reason of every warning for a field dropped in Warn mode."""


@dataclass(frozen=True)
class ManifestWarnings(Rejection):
    """Not a rejection: a manifest that runs, with the fields dropped from it (Warn mode).
    A ``Rejection`` in shape, so it travels with the rejections, and each consumer that
    tells them apart does so with ``isinstance``."""


def load_manifest(path: str, node_name: str, seen: float | None = None) -> StaticPod | Rejection:
    """The pod in the file at ``path``, or why not. Never raises (see the module docstring)."""
    return load_with_warnings(path, node_name, seen)[0]


def load_with_warnings(
    path: str, node_name: str, seen: float | None = None, validation: str = STRICT
) -> tuple[StaticPod | Rejection, ManifestWarnings | None]:
    """``load_manifest`` under a ``manifestValidation`` mode: in Warn mode a pod may come with
    the fields dropped from it. Never raises."""
    shown = display_path(path)
    try:
        return _load(path, shown, node_name, seen, validation)
    except Exception as err:
        log.error("internal error while checking %s", shown, exc_info=True)
        return internal_error(shown, err), None


def _load(
    path: str, shown: str, node_name: str, seen: float | None, validation: str
) -> tuple[StaticPod | Rejection, ManifestWarnings | None]:
    if why := _path_problem(path):
        return _rejection(shown, [("", why)]), None
    try:
        raw = _parse(_read(path))
    except _InvalidError as err:
        return _rejection(shown, [(err.field, err.reason)]), None
    return check_and_default(raw, shown, node_name, validation, path, seen)


def check_and_default(
    raw: dict[str, Any],
    shown: str,
    node_name: str,
    validation: str,
    path: str,
    seen: float | None = None,
) -> tuple[StaticPod | Rejection, ManifestWarnings | None]:
    """A parsed Pod object checked (Warn mode dropping unknown fields) and defaulted as a
    static pod from the file ``path``."""
    checked = check_lenient(raw, shown, node_name, validation)
    if isinstance(checked, Rejection):
        return checked, None
    raw, warnings = checked
    pod = defaults.apply_defaults(raw, node_name, path, seen)
    meta = pod["metadata"]
    return StaticPod(meta["uid"], meta["namespace"], meta["name"], path, pod), warnings


def check_lenient(
    raw: dict[str, Any], shown: str, node_name: str, validation: str
) -> Rejection | tuple[dict[str, Any], ManifestWarnings | None]:
    """The object to run (``raw``, or in Warn mode ``raw`` without its unknown fields, when
    those were its only problems) and the warnings for what was dropped; else the rejection."""
    obj = defaults.drop_nulls(raw)
    name = obj["metadata"].get("name") if isinstance(obj.get("metadata"), dict) else None
    problems = check_pod(obj, node_name)
    if not problems:
        return raw, None
    unknown = [(f, r) for f, r in problems if r.startswith(UNKNOWN_FIELD)]
    if validation != WARN or not unknown:
        return _rejection(shown, problems, name)
    pruned = _prune(raw, "V1Pod", schema.pod_models())
    if check_pod(defaults.drop_nulls(pruned), node_name):
        return _rejection(shown, problems, name)  # other problems: every one is shown
    errors = tuple(ManifestError(shown, f, f"{r}; {DROPPED}") for f, r in unknown)
    return pruned, ManifestWarnings(shown, errors, name)


UNKNOWN_FIELD = "unknown field"
"""How ``schema.check`` starts the reason for a key its model does not have."""


def _prune(value: Any, kind: str, models: dict[str, dict[str, str]]) -> Any:
    """A copy of ``value`` without the keys that ``schema.check`` reports as unknown fields
    (the same walk: it does not look inside a field it does not know)."""
    if isinstance(value, list) and kind.startswith("List["):
        return [_prune(item, kind[5:-1], models) for item in value]
    if isinstance(value, dict) and kind.startswith("Dict["):
        inner = kind[5:-1].split(", ", 1)[1]
        return {key: _prune(item, inner, models) for key, item in value.items()}
    fields = models.get(kind)
    if fields is None or not isinstance(value, dict):
        return value
    return {
        key: _prune(item, fields[key], models) if key in fields else item
        for key, item in value.items()
        if not isinstance(key, str) or key in fields
    }
