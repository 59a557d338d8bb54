"""The view an operation gets of the store: one LMDB write transaction.

In the server's writer each operation runs in its own *nested* transaction inside the
batch's transaction (possible because the store does not use ``writemap``): if the
operation raises, its child transaction is aborted and the batch keeps none of its
writes. In the CLI an operation runs in a top-level transaction of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class Tx:
    __slots__ = ("_dbs", "_txn", "batch")

    def __init__(self, txn: Any, dbs: dict[bytes, Any], batch: int = 0):
        self._txn = txn
        self._dbs = dbs
        self.batch = batch
        """Writer batch number (0 outside the writer). Nothing outside this process can
        write while a batch's transaction is open, so per-batch caches are safe."""

    def get(self, db: bytes, key: bytes) -> bytes | None:
        value: bytes | None = self._txn.get(key, db=self._dbs[db])
        return value

    def put(self, db: bytes, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._dbs[db])

    def delete(self, db: bytes, key: bytes) -> None:
        self._txn.delete(key, db=self._dbs[db])

    def scan(self, db: bytes, start: bytes = b"", stop: bytes | None = None, *,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Entries in key order from ``start`` up to ``stop`` (exclusive), at most ``limit``.

        Materialised first, so the caller may write to the same database while iterating.
        """
        out: list[tuple[bytes, bytes]] = []
        with self._txn.cursor(db=self._dbs[db]) as cur:
            if cur.set_range(start):
                for k, v in cur:
                    if (stop is not None and k >= stop) or (limit is not None
                                                            and len(out) >= limit):
                        break
                    out.append((bytes(k), bytes(v)))
        return iter(out)
