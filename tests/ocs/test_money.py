from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocs.money import MICRO, MoneyError, ceil_div, format_amount, parse_amount


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("0", 0),
        ("9.5", 9_500_000),
        ("9.5000", 9_500_000),
        ("0.000001", 1),
        ("12", 12 * MICRO),
        (".5", 500_000),
        ("1.", 1 * MICRO),
        ("  3.25 ", 3_250_000),
        ("+2.00", 2 * MICRO),
        ("123456789.123456", 123456789_123456),
    ],
)
def test_parse(text: str, micros: int) -> None:
    assert parse_amount(text) == micros


@pytest.mark.parametrize(
    "text",
    ["", "abc", "1.0000001", "NaN", "nan", "inf", "Infinity", "1e3", "1,5", "--1", "1.2.3",
     "0x10", "1_000", "١٢"],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(MoneyError):
        parse_amount(text)


def test_negative_only_when_allowed() -> None:
    with pytest.raises(MoneyError, match="negative"):
        parse_amount("-1.00")
    assert parse_amount("-1.25", allow_negative=True) == -1_250_000


def test_rejects_non_strings() -> None:
    with pytest.raises(MoneyError):
        parse_amount(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("micros", "text"),
    [(0, "0.0000"), (9_500_000, "9.5000"), (1, "0.000001"), (-1_250_000, "-1.2500"),
     (123_456_789, "123.456789"), (10**12, "1000000.0000")],
)
def test_format(micros: int, text: str) -> None:
    assert format_amount(micros) == text


def test_format_refuses_float() -> None:
    with pytest.raises(TypeError):
        format_amount(1.5)  # type: ignore[arg-type]


@given(st.integers(min_value=-(10**15), max_value=10**15), st.integers(0, 6))
def test_round_trip(micros: int, decimals: int) -> None:
    assert parse_amount(format_amount(micros, decimals), allow_negative=True) == micros


@given(st.text(max_size=30))
def test_parse_any_text_is_exact_or_error(text: str) -> None:
    try:
        value = parse_amount(text, allow_negative=True)
    except MoneyError:
        return
    assert isinstance(value, int)


@given(st.integers(0, 10**12), st.integers(1, 10**9))
def test_ceil_div(n: int, d: int) -> None:
    q = ceil_div(n, d)
    assert q * d >= n > (q - 1) * d or (n == 0 and q == 0)
