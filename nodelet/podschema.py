"""Structural check of a manifest against the real v1 schema, taken from the ``kubernetes``
client's generated models: every unknown field and every wrong type, with its JSON path.

kubelet silently drops unknown fields, so a typo (``comand:``) runs a different pod than the
operator wrote; here it is an error that suggests the field meant.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from typing import Any

ErrorSink = Callable[[str, str], None]
"""Called with (field path, reason)."""

_SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
}
_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


@functools.cache
def _fields(model: str) -> dict[str, str]:
    """JSON key -> type name of a generated model, e.g. ``V1Container``."""
    from kubernetes.client import models

    cls = getattr(models, model)
    return {cls.attribute_map[attr]: kind for attr, kind in cls.openapi_types.items()}


def preload() -> None:
    """Import the generated models ahead of the first manifest (they take ~0.3 s)."""
    _fields("V1Pod")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return _KIND_NAMES.get(type(value), type(value).__name__)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check(value: Any, kind: str, path: str, error: ErrorSink) -> None:
    """Report every structural problem of ``value`` as ``kind`` (a model or type name)."""
    if value is None:
        return
    if kind.startswith("List["):
        if not isinstance(value, list):
            error(path, f"expected a list, got {_describe(value)}")
            return
        for index, item in enumerate(value):
            check(item, kind[5:-1], f"{path}[{index}]", error)
    elif kind.startswith("Dict["):
        if not isinstance(value, dict):
            error(path, f"expected an object, got {_describe(value)}")
            return
        inner = kind[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            check(item, inner, f"{path}[{key!r}]", error)
    elif kind == "object":
        if isinstance(value, dict | list):
            error(path, f"expected a string or a number, got {_describe(value)}")
    elif kind in _SCALARS:
        allowed = _SCALARS[kind]
        if not isinstance(value, allowed) or (bool not in allowed and isinstance(value, bool)):
            error(path, f"expected {_KIND_NAMES[allowed[-1]]}, got {_describe(value)}")
    else:
        _check_model(value, kind, path, error)


def _check_model(value: Any, model: str, path: str, error: ErrorSink) -> None:
    if not isinstance(value, dict):
        error(path, f"expected an object, got {_describe(value)}")
        return
    fields = _fields(model)
    for key, item in value.items():
        if not isinstance(key, str):
            error(_join(path, str(key)), "field names must be strings")
        elif key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            error(_join(path, key), f"unknown field{hint}")
        else:
            check(item, fields[key], _join(path, key), error)
