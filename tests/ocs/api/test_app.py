"""The API's pure helpers: how deep a JSON body nests (checked before it is decoded)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from ocs.api.app import MAX_DEPTH, nesting

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=30)


def depth(v: object) -> int:
    if isinstance(v, list):
        return 1 + max((depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((depth(x) for x in v.values()), default=0)
    return 0


@given(JSON)
def test_nesting_is_the_depth_of_the_document(v: object) -> None:
    """Exactly the depth whenever the body has brackets enough to be too deep; else the
    limit itself without a scan (no deeper than that can be)."""
    body = json.dumps(v).encode()
    got = nesting(body)
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH:
        assert got == depth(v)
    else:
        assert got == MAX_DEPTH >= depth(v)


def test_brackets_in_strings_do_not_count() -> None:
    body = json.dumps({"reference": "[" * 100 + '\\"{' * 50}).encode()
    assert nesting(body) == 1
    assert nesting(b"[" * 30_000) == 30_000
    assert nesting(b'{"a": ' * 9 + b"1" + b"}" * 9) == 9
