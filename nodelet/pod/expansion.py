"""``$(VAR)`` expansion exactly as Kubernetes does it (third_party/forked/golang/expansion).

``$(NAME)`` becomes the value when NAME is defined, and stays as written when it is not;
``$$`` is an escaped ``$``; any other ``$x`` is kept verbatim.
"""

from __future__ import annotations

from collections.abc import Mapping

_OPERATOR = "$"
_REF_OPEN = "("
_REF_CLOSE = ")"


def expand(text: str, mapping: Mapping[str, str]) -> str:
    """Expand every reference in ``text`` from ``mapping``."""
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == _OPERATOR and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            read, is_var, advance = _try_read_variable_name(text[cursor + 1 :])
            if is_var:
                out.append(mapping.get(read, f"$({read})"))
            else:
                out.append(read)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def _try_read_variable_name(rest: str) -> tuple[str, bool, int]:
    """Return (text, is_variable, characters consumed after the ``$``)."""
    first = rest[0]
    if first == _OPERATOR:
        return _OPERATOR, False, 1
    if first == _REF_OPEN:
        close = rest.find(_REF_CLOSE, 1)
        if close == -1:
            return _OPERATOR + _REF_OPEN, False, 1
        return rest[1:close], True, close + 1
    return _OPERATOR + first, False, 1
