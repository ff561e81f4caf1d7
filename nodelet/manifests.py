"""Read one manifest file into a ``StaticPod``, or a ``Rejection`` that says exactly why not.

Never raises for bad input: a binary file, a FIFO, a symlink loop, a 20 MB file, a YAML bomb or
a pod nodelet cannot run all become clear errors naming the file and the field.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from typing import Any

import yaml

from nodelet import defaults, fieldpolicy, podschema, validation
from nodelet.model import ManifestError, Rejection, StaticPod

MAX_MANIFEST_BYTES = 10 * 1024 * 1024
IGNORED_PATTERNS = ("*~", "*.swp", "*.swx", "*.swo", "*.bak", "*.tmp", "#*#", "4913", ".*")
"""Dotfiles (kubelet skips those too) and what editors leave beside the file they edit."""


def is_ignored(filename: str) -> bool:
    return any(fnmatch.fnmatchcase(filename, pattern) for pattern in IGNORED_PATTERNS)


class _InvalidError(Exception):
    def __init__(self, reason: str, field: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases (no YAML bombs), duplicate keys or timestamp magic."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise _InvalidError(f"YAML aliases are not allowed (line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _InvalidError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _read(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _InvalidError("symlink loop") from err
        if err.errno == errno.ENOENT and os.path.islink(path):
            raise _InvalidError(f"dangling symlink to {os.readlink(path)}") from err
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


def _parse(data: bytes) -> Any:
    if b"\0" in data:
        raise _InvalidError("binary file: contains NUL bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _InvalidError(f"not UTF-8 text (byte {err.start})") from err
    loader = _StrictLoader(text)
    try:
        documents = []
        while loader.check_data():  # type: ignore[no-untyped-call]
            documents.append(loader.get_data())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise _InvalidError(f"invalid YAML{where}: {err.problem}") from err
    except yaml.YAMLError as err:
        raise _InvalidError(f"invalid YAML: {err}") from err
    finally:
        loader.dispose()
    documents = [d for d in documents if d is not None]
    if not documents:
        raise _InvalidError("file is empty")
    if len(documents) > 1:
        raise _InvalidError(f"holds {len(documents)} documents; a manifest holds exactly one Pod")
    document = documents[0]
    if isinstance(document, list) or (
        isinstance(document, dict) and str(document.get("kind", "")).endswith("List")
    ):
        raise _InvalidError("holds a list; a manifest holds exactly one Pod")
    if not isinstance(document, dict):
        raise _InvalidError(f"expected a Pod object, got {type(document).__name__}")
    return document


def check_pod(obj: dict[str, Any], node_name: str) -> list[tuple[str, str]]:
    """Every (field, reason) wrong with a parsed Pod object: structure, policy, semantics."""
    problems: list[tuple[str, str]] = []

    def sink(field: str, reason: str) -> None:
        problems.append((field, reason))

    podschema.check(obj, "V1Pod", "", sink)
    malformed = tuple(field for field, _ in problems)

    def later_sink(field: str, reason: str) -> None:
        if not field.startswith(malformed):  # one error per field: the structural one
            problems.append((field, reason))

    for later_check in (fieldpolicy.check, lambda o, s: validation.validate(o, node_name, s)):
        try:
            later_check(obj, later_sink)
        except (AttributeError, TypeError, KeyError):
            # Only reachable when a value has the wrong shape, which is already reported.
            if not malformed:
                raise
    return problems


def load_manifest(path: str, node_name: str, seen: float | None = None) -> StaticPod | Rejection:
    try:
        obj = _parse(_read(path))
    except _InvalidError as err:
        return Rejection(path, (ManifestError(path, err.field, err.reason),))
    name = (
        (obj.get("metadata") or {}).get("name") if isinstance(obj.get("metadata"), dict) else None
    )
    problems = check_pod(obj, node_name)
    if problems:
        errors = tuple(ManifestError(path, field, reason) for field, reason in problems)
        return Rejection(path, errors, name if isinstance(name, str) else None)
    pod = defaults.apply_defaults(obj, node_name, path, seen)
    meta = pod["metadata"]
    return StaticPod(meta["uid"], meta["namespace"], meta["name"], path, pod)
