"""E.164 digits out of the address forms a Subscription-Id or Called-Party-Address takes."""

from __future__ import annotations

import pytest

from protocols.diameter.gy import _digits_of_address


@pytest.mark.parametrize(("text", "digits"), [
    ("41790000001", "41790000001"),
    ("+41 79 000 00 01", "41790000001"),
    ("tel:+41790000001", "41790000001"),
    ("sip:+41790000001@ims.test;user=phone", "41790000001"),
    ("tel:+41-79-000-00-01;phone-context=ch", "41790000001"),
    ("٤١٧٩", ""),  # digits of other scripts are not E.164 digits
    ("", ""),
])
def test_digits_of_an_address(text: str, digits: str) -> None:
    assert _digits_of_address(text) == digits
