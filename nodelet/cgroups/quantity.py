"""Kubernetes resource quantities (``200m``, ``0.5``, ``32Mi``, ``1e3``) as exact fractions.

The grammar and the rounding are apimachinery's ``resource.Quantity``: a decimal number with an
optional sign, then one suffix -- binary SI (``Ki`` .. ``Ei``), decimal SI (``n u m k M G T P
E``) or a decimal exponent (``e3``, ``E-2``). ``MilliValue`` and ``Value`` round *up*, so
``0.1m`` of CPU is 1 millicore and ``0.5`` bytes is 1 byte.

Where nodelet is stricter than ``ParseQuantity``, it is because kubelet would refuse the pod
anyway or the input is nonsense:

- a negative quantity parses in Go, but API validation refuses it for every container resource
  ("must be greater than or equal to 0"), so it is refused here;
- Go accepts a number without digits (``"m"``, ``"+"``, ``"."`` all read as 0); nodelet wants at
  least one digit;
- YAML booleans, NaN and infinities are refused; an exponent beyond +-64 is refused so that a
  hostile ``1e999999999`` cannot make the agent compute a billion-digit number;
- a quantity whose rounded value does not fit Go's int64 (what kubelet writes to the cgroup) is
  refused by :func:`milli_cpu` and :func:`bytes_of`.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_NUMBER = re.compile(
    r"(?P<sign>[+-]?)(?P<num>[0-9]+\.?[0-9]*|\.[0-9]+)"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?"
)
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_MAX_EXPONENT = 64
_INT64_MAX = 2**63 - 1


class QuantityError(ValueError):
    """A resource quantity kubelet would not accept; the message quotes it and says why."""


def parse_quantity(value: str | int | float) -> Fraction:
    """The exact value of a quantity as a manifest gives it (a string, or a YAML int/float)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise QuantityError(f"{value!r} is not a quantity: expected a string or a number")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(f"{value!r} is not a quantity: must be a finite number")
        text = repr(value)
    else:
        text = str(value)
    match = _NUMBER.fullmatch(text)
    if match is None:
        raise QuantityError(
            f"{text!r} is not a quantity: expected a number with an optional suffix "
            "(Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E or an exponent like e3), "
            "such as '200m', '0.5', '32Mi' or '1e3'"
        )
    number = Fraction(match["num"] if not match["num"].endswith(".") else match["num"][:-1])
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        number *= 2 ** _BINARY[suffix]
    else:
        exponent = _DECIMAL[suffix] if suffix in _DECIMAL else int(suffix[1:])
        if abs(exponent) > _MAX_EXPONENT:
            raise QuantityError(
                f"{text!r} is not a usable quantity: exponent {exponent} is out of range"
            )
        number *= Fraction(10) ** exponent
    if match["sign"] == "-" and number != 0:
        raise QuantityError(
            f"{text!r} is negative: kubelet's validation refuses negative resource quantities "
            "(must be greater than or equal to 0)"
        )
    return number


def milli_cpu(value: str | int | float | Fraction) -> int:
    """``Quantity.MilliValue()``: the value in thousandths, rounded up (a ``Fraction`` is taken
    as an already parsed quantity)."""
    return _int64(math.ceil(_exact(value) * 1000), value)


def bytes_of(value: str | int | float | Fraction) -> int:
    """``Quantity.Value()``: the value as an integer, rounded up."""
    return _int64(math.ceil(_exact(value)), value)


def _exact(value: str | int | float | Fraction) -> Fraction:
    if isinstance(value, Fraction):
        if value < 0:
            raise QuantityError(f"{value} is negative: resource quantities must be >= 0")
        return value
    return parse_quantity(value)


def _int64(result: int, value: object) -> int:
    if result > _INT64_MAX:
        raise QuantityError(f"{value!r} is too large: it does not fit a 64-bit cgroup value")
    return result
