"""Resource quantities parse and round as apimachinery's resource.Quantity."""

from __future__ import annotations

from fractions import Fraction

import pytest

from nodelet.cgroups.quantity import QuantityError, bytes_of, milli_cpu, parse_quantity

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", Fraction(0)),
        ("1", Fraction(1)),
        ("200m", Fraction(1, 5)),
        ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("1.", Fraction(1)),
        ("+2", Fraction(2)),
        ("007", Fraction(7)),
        ("1e3", Fraction(1000)),
        ("1E3", Fraction(1000)),
        ("1e-3", Fraction(1, 1000)),
        ("2.5e+2", Fraction(250)),
        ("100n", Fraction(1, 10**7)),
        ("5u", Fraction(5, 10**6)),
        ("1k", Fraction(1000)),
        ("1M", Fraction(10**6)),
        ("1G", Fraction(10**9)),
        ("1T", Fraction(10**12)),
        ("1P", Fraction(10**15)),
        ("1E", Fraction(10**18)),
        ("1Ki", Fraction(1024)),
        ("32Mi", Fraction(32 * 2**20)),
        ("1.5Gi", Fraction(3 * 2**29)),
        ("1Ti", Fraction(2**40)),
        ("1Pi", Fraction(2**50)),
        ("1Ei", Fraction(2**60)),
        ("-0", Fraction(0)),
    ],
)
def test_parses_every_form(text: str, value: Fraction) -> None:
    assert parse_quantity(text) == value


def test_yaml_numbers() -> None:
    assert parse_quantity(2) == 2
    assert parse_quantity(0.5) == Fraction(1, 2)
    assert parse_quantity(0.1) == Fraction(1, 10)  # the decimal, not the binary float
    assert parse_quantity(1e-07) == Fraction(1, 10**7)
    assert parse_quantity(1e16) == 10**16


@pytest.mark.parametrize(
    "bad",
    ["", " 1", "1 ", "1\n", "abc", "1x", "1mi", "1KI", "1e", "1e3.5", "m", "+", ".", "1..2",
     "1Ki1", "0x10", "1_000", "\uff11"],
)  # fmt: skip
def test_refuses_garbage(bad: str) -> None:
    with pytest.raises(QuantityError, match="not a quantity"):
        parse_quantity(bad)


@pytest.mark.parametrize("bad", [True, False, None, [1], float("nan"), float("inf")])
def test_refuses_non_quantities(bad: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["-1", "-100m", "-0.5Gi", -1, -0.5])
def test_refuses_negatives_as_kubelet_validation_does(bad: str | int | float) -> None:
    with pytest.raises(QuantityError, match=r"negative.*greater than or equal to 0"):
        parse_quantity(bad)


def test_refuses_absurd_exponents() -> None:
    with pytest.raises(QuantityError, match="out of range"):
        parse_quantity("1e999999999")
    assert parse_quantity("1e64") == 10**64


@pytest.mark.parametrize(
    ("text", "milli"),
    [
        ("0", 0),
        ("1", 1000),
        ("200m", 200),
        ("0.1m", 1),  # MilliValue rounds up
        ("1n", 1),
        ("1.0001", 1001),
        ("0.0005", 1),
        ("2.5", 2500),
        (1, 1000),
        (0.25, 250),
    ],
)
def test_milli_cpu_rounds_up(text: str | int | float, milli: int) -> None:
    assert milli_cpu(text) == milli


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("0.5", 1),  # Value rounds up
        ("1m", 1),
        ("1001m", 2),
        ("32Mi", 33554432),
        ("1G", 10**9),
        ("1.5Ki", 1536),
        ("128974848", 128974848),
        ("129e6", 129000000),
        ("123Mi", 128974848),
    ],
)
def test_bytes_of_rounds_up(text: str, value: int) -> None:
    assert bytes_of(text) == value


def test_int64_overflow_is_refused() -> None:
    # 8Ei is exactly 2**63, one past what an int64 (the cgroup value kubelet writes) holds.
    with pytest.raises(QuantityError, match="too large"):
        bytes_of("8Ei")
    assert bytes_of("7Ei") == 7 * 2**60
    with pytest.raises(QuantityError, match="too large"):
        milli_cpu("1e17")


def test_fraction_input() -> None:
    assert milli_cpu(Fraction(1, 3)) == 334
    assert bytes_of(Fraction(5, 2)) == 3
    with pytest.raises(QuantityError):
        bytes_of(Fraction(-1))
