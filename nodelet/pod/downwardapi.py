"""The files of a downwardAPI volume, as kubelet's ``CollectData`` (``downwardapi.go``) and
``fieldpath`` produce them.

``fieldRef`` reads the pod's metadata (labels and annotations as sorted ``key="value"`` lines,
Go-quoted); ``resourceFieldRef`` reads a named container's limits or requests of cpu and memory,
divided by ``divisor`` and rounded up, an unset limit being the node's allocatable amount.
Every item's error is collected, so one message names them all.
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

from nodelet.cgroups.quantity import QuantityError, bytes_of, milli_cpu, parse_quantity
from nodelet.cluster.nodeobject import EVICTION_MEMORY_AVAILABLE_BYTES
from nodelet.pod.atomicwriter import FileProjection, validate_path

DEFAULT_MODE = 0o644
"""The API server's default for ``defaultMode`` (420)."""

Allocatable = Mapping[str, str | int]
"""Node allocatable quantities by resource name (``cpu``, ``memory``), as the Node reports."""

_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\v": "\\v", "\\": "\\\\", '"': '\\"'}  # fmt: skip


class DownwardAPIError(ValueError):
    """An item cannot be resolved; the message is kubelet's (an aggregate joins several)."""


def go_quote(text: str) -> str:
    """Go's ``strconv.Quote`` (``%q``): printable characters as they are, the rest escaped."""
    out = ['"']
    for char in text:
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif 0xDC80 <= ord(char) <= 0xDCFF:  # an undecodable byte (surrogateescape)
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


def format_map(values: Mapping[str, str]) -> str:
    """``fieldpath.FormatMap``: ``key="value"`` lines in key order, no trailing newline."""
    return "\n".join(f"{key}={go_quote(values[key])}" for key in sorted(values))


def _split_subscript(path: str) -> tuple[str, str] | None:
    if not path.endswith("']"):
        return None
    head, sep, subscript = path[:-2].partition("['")
    return (head, subscript) if sep and head else None


def field_value(metadata: Mapping[str, Any], path: str) -> str:
    """``fieldpath.ExtractFieldPathAsString`` on a pod's metadata."""
    labels: Mapping[str, str] = metadata.get("labels") or {}
    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    subscripted = _split_subscript(path)
    if subscripted is not None:
        head, key = subscripted
        if head == "metadata.annotations":
            return annotations.get(key, "")
        if head == "metadata.labels":
            return labels.get(key, "")
        raise DownwardAPIError(f'fieldPath "{path}" does not support subscript')
    simple = {"metadata.name": "name", "metadata.namespace": "namespace", "metadata.uid": "uid"}
    if path in simple:
        return str(metadata.get(simple[path]) or "")
    if path == "metadata.labels":
        return format_map(labels)
    if path == "metadata.annotations":
        return format_map(annotations)
    raise DownwardAPIError(f"unsupported fieldPath: {path}")


def machine_allocatable() -> dict[str, str | int]:
    """This machine's allocatable cpu and memory as kubelet computes them with no reservations:
    every CPU, and memory less the 100Mi ``memory.available`` hard eviction threshold."""
    total = 0
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    return {"cpu": os.cpu_count() or 1, "memory": max(0, total - EVICTION_MEMORY_AVAILABLE_BYTES)}


def _find_container(spec: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            if container.get("name") == name:
                return container  # type: ignore[no-any-return]
    raise DownwardAPIError(f"container {name} not found")


def resource_value(
    ref: Mapping[str, Any], spec: Mapping[str, Any], allocatable: Callable[[], Allocatable]
) -> str:
    """``ExtractResourceValueByContainerNameAndNodeAllocatable``: cpu in ceil(millicores /
    divisor's millicores), memory in ceil(bytes / divisor's bytes); a missing limit is the
    node's allocatable amount, a missing request is its limit (API defaulting) or 0."""
    resource = ref.get("resource", "")
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or name not in ("cpu", "memory"):
        raise DownwardAPIError(
            f"unsupported container resource : {resource} (nodelet projects limits and "
            "requests of cpu and memory)"
        )
    container = _find_container(spec, ref.get("containerName", ""))
    resources = container.get("resources") or {}
    limit = (resources.get("limits") or {}).get(name)
    raw = limit if kind == "limits" else (resources.get("requests") or {}).get(name, limit)
    if raw is None and kind == "limits":
        raw = allocatable().get(name)
    try:
        value = parse_quantity(raw if raw is not None else 0)
        divisor = parse_quantity(ref.get("divisor") or 0)
    except QuantityError as err:
        raise DownwardAPIError(str(err)) from None
    if divisor == 0:
        divisor = Fraction(1)
    if name == "cpu":
        return str(math.ceil(Fraction(milli_cpu(value), milli_cpu(divisor))))
    return str(math.ceil(Fraction(bytes_of(value), bytes_of(divisor))))


def _sort_lines(value: str) -> str:
    return "\n".join(sorted(value.split("\n")))


def collect_data(
    source: Mapping[str, Any],
    metadata: Mapping[str, Any],
    spec: Mapping[str, Any],
    allocatable: Callable[[], Allocatable] = machine_allocatable,
) -> dict[str, FileProjection]:
    """The payload of a ``downwardAPI`` volume source: each item's path (cleaned) with its
    content and mode (its own ``mode``, else ``defaultMode``, else 0644)."""
    default_mode = source.get("defaultMode")
    if default_mode is None:
        default_mode = DEFAULT_MODE
    errors: list[str] = []
    data: dict[str, FileProjection] = {}
    for item in source.get("items") or []:
        mode = item.get("mode")
        value = ""
        try:
            validate_path(item.get("path", ""))
        except ValueError as err:
            errors.append(str(err))
            continue
        try:
            if item.get("fieldRef") is not None:
                value = field_value(metadata, item["fieldRef"].get("fieldPath", ""))
            elif item.get("resourceFieldRef") is not None:
                value = resource_value(item["resourceFieldRef"], spec, allocatable)
        except DownwardAPIError as err:
            errors.append(str(err))
        path = posixpath.normpath(item.get("path", ""))
        data[path] = FileProjection(
            _sort_lines(value).encode(), default_mode if mode is None else mode
        )
    if len(errors) == 1:
        raise DownwardAPIError(errors[0])
    if errors:
        raise DownwardAPIError(f"[{', '.join(errors)}]")
    return data
