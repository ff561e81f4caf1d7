"""Structural check of a manifest against the real v1 schema, taken from the ``kubernetes``
client's generated models: every unknown field and every wrong type, with its JSON path.

kubelet silently drops unknown fields, so a typo (``comand:``) runs a different pod than the
operator wrote; here it is an error that suggests the field meant.

Every check here is total: it accepts any value a YAML file can hold (nulls in lists,
non-string keys, huge numbers) and reports it, never raises. The later checks
(``fieldpolicy``, ``validation``) and the code that runs a pod rely on what this one
guarantees: no null inside a list, string keys, strings without NUL or lone surrogates, numbers
within int64 and finite.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any

ErrorSink = Callable[[str, str], None]
"""Called with (field path, reason)."""

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
QUOTE_LIMIT = 64
"""Longest piece of a manifest value quoted in an error message: a rejection is shown to
readers who may not read the file (a link in the manifest dir can point anywhere)."""

_SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
}
_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


_known: dict[str, dict[str, str]] = {}
"""Model name -> (JSON key -> type name), from the client's models or a cache of them."""


def _fields(model: str) -> dict[str, str]:
    """JSON key -> type name of a generated model, e.g. ``V1Container``."""
    fields = _known.get(model)
    if fields is None:
        from kubernetes.client import models

        cls = getattr(models, model)
        fields = {cls.attribute_map[attr]: kind for attr, kind in cls.openapi_types.items()}
        _known[model] = fields
    return fields


def _model_names(kind: str) -> list[str]:
    """The model names a type name refers to (``List[V1Container]`` -> ``V1Container``)."""
    if kind.startswith("List["):
        return _model_names(kind[5:-1])
    if kind.startswith("Dict["):
        return _model_names(kind[5:-1].split(", ", 1)[1])
    return [] if kind in _SCALARS or kind == "object" else [kind]


def pod_models() -> dict[str, dict[str, str]]:
    """Every model a V1Pod is made of, with its fields (what a cache of the schema holds)."""
    found: dict[str, dict[str, str]] = {}
    todo = ["V1Pod"]
    while todo:
        model = todo.pop()
        if model not in found:
            found[model] = _fields(model)
            todo.extend(n for kind in found[model].values() for n in _model_names(kind))
    return found


def install(models: dict[str, dict[str, str]]) -> None:
    """Use ``models`` (from ``pod_models``, possibly cached) instead of importing the client."""
    _known.update(models)


def preload() -> None:
    """Import the generated models ahead of the first manifest (they take ~0.3 s)."""
    _fields("V1Pod")


def describe(value: Any) -> str:
    """The YAML kind of ``value`` in words ("a list"), never its content."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return _KIND_NAMES.get(type(value), type(value).__name__)


def show(value: Any) -> str:
    """A short, printable quote of a manifest value for an error message.

    Strings are quoted with escapes (no newline or terminal control reaches a log) and cut to
    ``QUOTE_LIMIT`` characters; containers and huge numbers are described, not printed.
    """
    if isinstance(value, str):
        if len(value) <= QUOTE_LIMIT:
            return repr(value)
        return f"{value[:QUOTE_LIMIT]!r}... ({len(value)} characters)"
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**20 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    return describe(value)


def plain(value: Any) -> str:
    """``value`` unquoted when it is a short printable string (a path), else ``show(value)``."""
    if isinstance(value, str) and 0 < len(value) <= QUOTE_LIMIT and value.isprintable():
        return value
    return show(value)


def field_name(key: Any) -> str:
    """A mapping key as it appears in a field path: as is when short and plain, else quoted."""
    return plain(key)


def join(path: str, key: Any) -> str:
    name = field_name(key)
    return f"{path}.{name}" if path else name


def text_problem(value: str) -> str | None:
    """Why a string cannot be passed to the OS (paths, argv, env) or encoded, or None."""
    if "\0" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (it holds a lone surrogate escape)"
    return None


def check(value: Any, kind: str, path: str, error: ErrorSink) -> None:
    """Report every structural problem of ``value`` as ``kind`` (a model or type name).

    A null field counts as not set (the API server decodes it so); a null item in a list does
    not, since every list consumer expects items of its type.
    """
    if value is None:
        return
    if kind.startswith("List["):
        if not isinstance(value, list):
            error(path, f"expected a list, got {describe(value)}")
            return
        for index, item in enumerate(value):
            if item is None:
                error(f"{path}[{index}]", "null is not allowed in a list")
            else:
                check(item, kind[5:-1], f"{path}[{index}]", error)
    elif kind.startswith("Dict["):
        if not isinstance(value, dict):
            error(path, f"expected an object, got {describe(value)}")
            return
        inner = kind[5:-1].split(", ", 1)[1]
        if path.endswith((".requests", ".limits")):
            inner = "object"  # a Quantity: "500m", or a number as YAML writes `cpu: 1`
        for key, item in value.items():
            where = f"{path}[{show(key)}]"
            if not isinstance(key, str):
                error(where, f"keys must be strings, got {describe(key)}")
            elif why := text_problem(key):
                error(where, f"key {why}")
            else:
                check(item, inner, where, error)
    elif kind == "object":  # int-or-string and free-form values
        if isinstance(value, str | int | float):
            _check_scalar(value, (str, int, float, bool), path, error)
        else:
            error(path, f"expected a string or a number, got {describe(value)}")
    elif kind in _SCALARS:
        _check_scalar(value, _SCALARS[kind], path, error)
    else:
        _check_model(value, kind, path, error)


def _check_scalar(value: Any, allowed: tuple[type, ...], path: str, error: ErrorSink) -> None:
    if not isinstance(value, allowed) or (bool not in allowed and isinstance(value, bool)):
        error(path, f"expected {_KIND_NAMES[allowed[-1]]}, got {describe(value)}")
    elif isinstance(value, str):
        if why := text_problem(value):
            error(path, why)
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            error(path, "integer out of range (must fit in 64 bits)")
    elif isinstance(value, float) and not math.isfinite(value):
        error(path, f"must be a finite number, got {show(value)}")


def _check_model(value: Any, model: str, path: str, error: ErrorSink) -> None:
    if not isinstance(value, dict):
        error(path, f"expected an object, got {describe(value)}")
        return
    fields = _fields(model)
    for key, item in value.items():
        if not isinstance(key, str):
            error(join(path, key), f"field names must be strings, got {describe(key)}")
        elif key not in fields:
            close = difflib.get_close_matches(key[:QUOTE_LIMIT], list(fields), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            error(join(path, key), f"unknown field{hint}")
        else:
            check(item, fields[key], join(path, key), error)
