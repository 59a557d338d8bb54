"""A write view over an LMDB write transaction that buffers one operation's writes.

An operation's puts and deletes stay in the buffer until :meth:`Tx.flush`; if the
operation raises, its buffer is discarded and the batch it belonged to keeps no partial
writes (nested transactions do not combine with every LMDB mode, so we do it here).
Reads see the operation's own buffered writes first, then the transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

_DELETED = object()


class Tx:
    __slots__ = ("_dbs", "_txn", "_writes")

    def __init__(self, txn: Any, dbs: dict[bytes, Any]):
        self._txn = txn
        self._dbs = dbs
        self._writes: dict[tuple[bytes, bytes], Any] = {}

    def get(self, db: bytes, key: bytes) -> bytes | None:
        w = self._writes.get((db, key))
        if w is not None:
            return None if w is _DELETED else w
        value: bytes | None = self._txn.get(key, db=self._dbs[db])
        return value

    def put(self, db: bytes, key: bytes, value: bytes) -> None:
        self._writes[(db, key)] = value

    def delete(self, db: bytes, key: bytes) -> None:
        self._writes[(db, key)] = _DELETED

    def scan(self, db: bytes, start: bytes = b"", stop: bytes | None = None) -> Iterator[
        tuple[bytes, bytes]
    ]:
        """Committed-and-flushed entries in key order from ``start`` (buffer not merged)."""
        with self._txn.cursor(db=self._dbs[db]) as cur:
            if not cur.set_range(start):
                return
            for k, v in cur:
                if stop is not None and k >= stop:
                    return
                yield bytes(k), bytes(v)

    def flush(self) -> None:
        """Apply the buffered writes to the transaction (may raise lmdb.MapFullError)."""
        txn, dbs = self._txn, self._dbs
        for (db, key), value in self._writes.items():
            if value is _DELETED:
                txn.delete(key, db=dbs[db])
            else:
                txn.put(key, value, db=dbs[db])
        self._writes.clear()

    def discard(self) -> None:
        self._writes.clear()
