"""Longest-prefix match over E.164 digit strings: a digit trie."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


class _Node(Generic[V]):
    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.children: dict[str, _Node[V]] = {}
        self.value: V | None = None


class PrefixTrie(Generic[V]):
    """Maps digit prefixes to values; ``""`` is the root (matches everything)."""

    __slots__ = ("_len", "_root")

    def __init__(self) -> None:
        self._root: _Node[V] = _Node()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def insert(self, prefix: str, value: V) -> None:
        node = self._root
        for ch in prefix:
            nxt = node.children.get(ch)
            if nxt is None:
                nxt = node.children[ch] = _Node()
            node = nxt
        if node.value is None:
            self._len += 1
        node.value = value

    def get(self, prefix: str) -> V | None:
        node: _Node[V] | None = self._root
        for ch in prefix:
            node = node.children.get(ch) if node is not None else None
            if node is None:
                return None
        return node.value if node is not None else None

    def longest(self, key: str) -> tuple[str, V] | None:
        """The longest stored prefix of ``key`` with its value, or None."""
        node = self._root
        best: tuple[int, V] | None = (0, node.value) if node.value is not None else None
        depth = 0
        for ch in key:
            nxt = node.children.get(ch)
            if nxt is None:
                break
            node = nxt
            depth += 1
            if node.value is not None:
                best = (depth, node.value)
        if best is None:
            return None
        return key[: best[0]], best[1]

    def matches(self, key: str) -> Iterator[tuple[int, V]]:
        """Every stored prefix of ``key`` as (length, value), longest first."""
        found: list[tuple[int, V]] = []
        node = self._root
        if node.value is not None:
            found.append((0, node.value))
        depth = 0
        for ch in key:
            nxt = node.children.get(ch)
            if nxt is None:
                break
            node = nxt
            depth += 1
            if node.value is not None:
                found.append((depth, node.value))
        return reversed(found)
