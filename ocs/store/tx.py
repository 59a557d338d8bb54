"""The view an operation gets of the store: one LMDB write transaction.

In the server's writer each operation runs in its own *nested* transaction inside the
batch's transaction (possible because the store does not use ``writemap``): if the
operation raises, its child transaction is aborted and the batch keeps none of its
writes. In the CLI an operation runs in a top-level transaction of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Tx:
    __slots__ = ("_dbs", "_txn", "batch")

    def __init__(self, txn: Any, dbs: dict[bytes, Any], batch: int = 0):
        self._txn = txn
        self._dbs = dbs
        self.batch = batch
        """Writer batch number (0 outside the writer). Nothing outside this process can
        write while a batch's transaction is open, so per-batch caches are safe."""

    def bind(self, msisdn: str) -> None:
        """The operation works on ``msisdn``'s account. Nothing to do on LMDB (one
        transaction holds every record); the Redis Cluster adapter keeps an operation to
        that account's hash slot."""

    def expect(self, db: bytes, key: bytes) -> None:
        """The operation will read record ``key`` of ``db`` (a stored answer, keyed
        relative to the account it binds). Nothing to do on LMDB; the Redis Cluster
        adapter reads it with the account's first read (one round trip, not two)."""

    def history(self, db: bytes, key: bytes) -> None:
        """Record ``key`` of ``db``, just written, is history now (a settled SMS). Kept
        on LMDB; the Redis Cluster adapter keeps it as long as answers (memory)."""

    def index_answer(self, key: bytes, msisdn: bytes) -> None:
        """Answer ``key`` (a debit's, which a refund names by its key alone) is kept in
        ``msisdn``'s account. Nothing to do on LMDB, where answers are keyed by the
        request key alone."""

    def record_id(self, node: str, seq: int) -> str:
        """The record id of the CDR journalled under ``seq`` (numbered per node here)."""
        return f"{node}-{seq}"

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


class StorePort(Protocol):
    """What charging needs of a store, whichever adapter holds it (LMDB or Redis)."""

    def run_write(self, fn: Callable[[Tx], T]) -> T:
        """Run one write operation durably (committed before it returns)."""
        ...

    def view(self) -> AbstractContextManager[Tx]:
        """A read-only view (writes through it fail)."""
        ...

    def expiries(self, now: int, limit: int = 10_000) -> list[tuple[bytes, int]]:
        """(reservation key, expires_at) of reservations due at ``now``, oldest first."""
        ...

    def open_reservations(self, start: bytes) -> list[bytes]:
        """Encoded open reservations of the units starting with ``start``."""
        ...

    def subscribers(self) -> list[bytes]:
        """Every subscriber record (encoded), in MSISDN order (a batch job's read)."""
        ...

    def fraud_cases(self) -> list[bytes]:
        """Every fraud case (encoded)."""
        ...
