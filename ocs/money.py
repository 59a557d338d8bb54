"""Money as integer micro-units (10^-6 of the currency unit).

No float ever holds money. Decimal strings are parsed and formatted here, at the edges;
everything inside works on ``int``.
"""

from __future__ import annotations

import re

MICRO = 1_000_000
"""Micro-units per currency unit."""

_AMOUNT_RE = re.compile(r"([+-]?)([0-9]+)(?:\.([0-9]*))?|([+-]?)\.([0-9]+)")


class MoneyError(ValueError):
    """An amount string that is not an exact decimal we accept."""


def parse_amount(text: str, *, allow_negative: bool = False, field: str = "amount") -> int:
    """Parse a decimal string ("9.5", "0.000001", "12") into micro-units.

    Rejects more than 6 decimals, exponents, NaN/Infinity, empty strings, and negatives
    unless ``allow_negative``.
    """
    if not isinstance(text, str):
        raise MoneyError(f"{field}: expected a decimal string, got {type(text).__name__}")
    m = _AMOUNT_RE.fullmatch(text.strip())
    if m is None:
        raise MoneyError(f"{field}: {text!r} is not a decimal amount")
    if m.group(2) is not None:
        sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
    else:
        sign, whole, frac = m.group(4), "0", m.group(5)
    if len(frac) > 6:
        raise MoneyError(f"{field}: {text!r} has more than 6 decimals")
    value = int(whole) * MICRO + int(frac.ljust(6, "0") or "0")
    if sign == "-":
        value = -value
    if value < 0 and not allow_negative:
        raise MoneyError(f"{field}: {text!r} must not be negative")
    return value


def format_amount(micros: int, decimals: int = 4) -> str:
    """Format micro-units as a decimal string with at least ``decimals`` places.

    More places are shown when needed so the value is never rounded: 1 micro-unit
    formats as ``"0.000001"``.
    """
    if not isinstance(micros, int) or isinstance(micros, bool):
        raise TypeError("money must be int micro-units")
    if not 0 <= decimals <= 6:
        raise ValueError("decimals must be between 0 and 6")
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICRO)
    digits = f"{frac:06d}".rstrip("0")
    if len(digits) < decimals:
        digits = digits.ljust(decimals, "0")
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer ceiling division for non-negative numerator, positive denominator."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    return -((-numerator) // denominator)
