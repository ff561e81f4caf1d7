"""A quantity as Go's ``resource.Quantity.String()`` prints it after parsing (canonical form).

kubelet's messages quote quantities this way: ``1024Mi`` reads back as ``1Gi``, ``1000M`` as
``1G``, ``0.5`` as ``500m``. The format follows the suffix the manifest used: binary (``Ki``..),
decimal SI (``k``, ``M``.., none) or a decimal exponent (``e3``).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from nodelet.cgroups.quantity import parse_quantity

_BINARY = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
_DECIMAL = {-9: "n", -6: "u", -3: "m", 0: "", 3: "k", 6: "M", 9: "G", 12: "T", 15: "P", 18: "E"}


def canonical(text: str | int | float) -> str:
    """The canonical string of a (non-negative) quantity; raises QuantityError like parsing."""
    value = parse_quantity(text)
    suffix = re.sub(r"^[+-]?[0-9.]*", "", str(text))
    if suffix in _BINARY[1:] and value >= 1024 and value.denominator == 1:
        number, exponent = int(value), 0
        while number % 1024 == 0 and exponent < len(_BINARY) - 1:
            number //= 1024
            exponent += 1
        return f"{number}{_BINARY[exponent]}"
    return _decimal(value, exponent_form=suffix[:1] in ("e", "E"))


def _decimal(value: Fraction, *, exponent_form: bool) -> str:
    """mantissa x 10^exponent with the exponent a multiple of 3 (a nano is the smallest unit,
    rounding up), as small a mantissa as stays whole."""
    if value == 0:
        return "0"
    nanos = math.ceil(value * 10**9)
    mantissa, exponent = nanos, -9
    while mantissa % 10 == 0:
        mantissa //= 10
        exponent += 1
    while exponent % 3:
        mantissa *= 10
        exponent -= 1
    if not exponent_form:
        while exponent > 18:
            mantissa *= 1000
            exponent -= 3
        return f"{mantissa}{_DECIMAL[exponent]}"
    return f"{mantissa}e{exponent}" if exponent else str(mantissa)
