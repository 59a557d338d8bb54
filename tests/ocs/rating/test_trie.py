from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from ocs.rating.trie import PrefixTrie


def test_longest_prefix() -> None:
    t: PrefixTrie[str] = PrefixTrie()
    for p in ["", "4", "41", "4179", "417"]:
        t.insert(p, p or "root")
    assert t.longest("41791234567") == ("4179", "4179")
    assert t.longest("41441234567") == ("41", "41")
    assert t.longest("49") == ("4", "4")
    assert t.longest("1") == ("", "root")
    assert [v for _, v in t.matches("4179")] == ["4179", "417", "41", "4", "root"]
    assert len(t) == 5


def test_no_root_no_match() -> None:
    t: PrefixTrie[int] = PrefixTrie()
    t.insert("44", 1)
    assert t.longest("33") is None
    assert t.get("4") is None
    assert t.get("44") == 1


@given(st.dictionaries(st.text("0123456789", max_size=8), st.integers(), max_size=50),
       st.text("0123456789", max_size=12))
def test_matches_scan_oracle(prefixes: dict[str, int], key: str) -> None:
    t: PrefixTrie[int] = PrefixTrie()
    for p, v in prefixes.items():
        t.insert(p, v)
    candidates = [p for p in prefixes if key.startswith(p)]
    best = max(candidates, key=len) if candidates else None
    got = t.longest(key)
    assert (got[0] if got else None) == best


def test_100k_prefixes_agree_with_dict_probe() -> None:
    """A large table gives the same answers as probing a dict by length (timing is
    measured by make bench, part core)."""
    rng = random.Random(7)
    prefixes = {str(rng.randrange(10**3, 10**9)) for _ in range(100_000)}
    t: PrefixTrie[str] = PrefixTrie()
    for p in prefixes:
        t.insert(p, p)
    assert len(t) == len(prefixes)
    for _ in range(5_000):
        k = str(rng.randrange(10**10, 10**12))
        want = next((k[:n] for n in range(len(k), -1, -1) if k[:n] in prefixes), None)
        got = t.longest(k)
        assert (got[0] if got else None) == want
