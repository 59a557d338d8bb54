"""One writer thread with a bounded queue and group commit.

Operations are plain functions ``fn(tx) -> result`` run inside the batch's write
transaction. The writer keeps taking operations until ``commit_max_ops`` are in the
batch or ``commit_max_delay_ms`` has passed since the batch began, then commits with
sync; only after the commit returns are the callers told (invariant 1). Each operation
runs in a nested transaction, so one that raises leaves nothing in the batch. A full map
is grown and the whole (unacknowledged) batch re-run.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import lmdb
import structlog

from ocs.store.env import Store, StoreError
from ocs.store.tx import Tx

T = TypeVar("T")
log = structlog.get_logger(__name__)


class Overloaded(RuntimeError):
    """The write queue is full: answer the peer with its protocol's busy code."""


class WriterStopped(RuntimeError):
    """The writer is shutting down and takes no more operations."""


BatchHook = Callable[[int, float, float], None]
"""Called after each commit with (ops in batch, seconds to commit, seconds the batch took)."""


class Writer:
    def __init__(
        self,
        store: Store,
        *,
        max_ops: int = 256,
        max_delay_ms: float = 1.0,
        queue_size: int = 65536,
        on_batch: BatchHook | None = None,
    ):
        self._store = store
        self._max_ops = max_ops
        self._max_delay = max_delay_ms / 1000.0
        self._queue_size = queue_size
        self._on_batch = on_batch
        self._dq: collections.deque[tuple[Callable[[Tx], Any], Any, Any]] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.ops = 0
        self.failed_commits = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="ocs-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking operations, commit everything already queued, then end the thread."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def queued(self) -> int:
        return len(self._dq)

    # -- submission ---------------------------------------------------------------------

    def _enqueue(self, fn: Callable[[Tx], Any], fut: Any, loop: Any) -> None:
        if self._stopping:
            raise WriterStopped("writer is stopping")
        if len(self._dq) >= self._queue_size:
            raise Overloaded(f"write queue full ({self._queue_size} operations)")
        self._dq.append((fn, fut, loop))
        if not self._wake.is_set():
            self._wake.set()

    def submit(self, fn: Callable[[Tx], T]) -> asyncio.Future[T]:
        """From the event loop: a future resolved after the durable commit."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._enqueue(fn, fut, loop)
        return fut

    def submit_sync(self, fn: Callable[[Tx], T]) -> concurrent.futures.Future[T]:
        """From any thread: a concurrent future resolved after the durable commit."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._enqueue(fn, fut, None)
        return fut

    def run(self, fn: Callable[[Tx], T], timeout: float | None = None) -> T:
        return self.submit_sync(fn).result(timeout)

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        dq = self._dq
        wake = self._wake
        while True:
            if not dq:
                if self._stopping:
                    return
                wake.wait(0.05)
                wake.clear()
                continue
            started = time.perf_counter()
            deadline = started + self._max_delay
            items: list[tuple[Callable[[Tx], Any], Any, Any]] = []
            max_ops = self._max_ops
            txn = self._store.begin_write()
            results: list[tuple[bool, Any]] = []
            try:
                while True:
                    while dq and len(items) < max_ops:
                        item = dq.popleft()
                        items.append(item)
                        results.append(self._apply(txn, item[0]))
                    if len(items) >= max_ops or self._stopping:
                        break
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    wake.clear()
                    if not dq:
                        wake.wait(remaining)
                t0 = time.perf_counter()
                txn.commit()
                t1 = time.perf_counter()
            except lmdb.MapFullError:
                txn.abort()
                results, t0, t1 = self._redo(items)
            except lmdb.Error as exc:
                txn.abort()
                self.failed_commits += 1
                log.error("store_commit_failed", error=str(exc), ops=len(items))
                err = StoreError(f"commit failed: {exc}")
                results = [(False, err)] * len(items)
                t0 = t1 = time.perf_counter()
            self.batches += 1
            self.ops += len(items)
            self._deliver(items, results)
            if self._on_batch is not None:
                self._on_batch(len(items), t1 - t0, t1 - started)

    def _apply(self, txn: Any, fn: Callable[[Tx], Any]) -> tuple[bool, Any]:
        """Run one operation in a child transaction; keep its writes only if it succeeds."""
        child = self._store.env.begin(write=True, parent=txn)
        try:
            result = fn(Tx(child, self._store.dbs, self.batches + 1))
        except lmdb.MapFullError:
            child.abort()
            raise
        except Exception as exc:  # the operation refused or failed: nothing of it is kept
            child.abort()
            if isinstance(exc, lmdb.Error):
                exc = StoreError(f"write rejected: {exc}")
            return (False, exc)
        child.commit()
        return (True, result)

    def _redo(
        self, items: list[tuple[Callable[[Tx], Any], Any, Any]]
    ) -> tuple[list[tuple[bool, Any]], float, float]:
        """Re-run an unacknowledged batch after growing a full map."""
        for _attempt in range(32):
            self._store.grow()
            log.info("store_map_grown", map_size=self._store.env.info()["map_size"])
            txn = self._store.begin_write()
            try:
                results = [self._apply(txn, fn) for fn, _fut, _loop in items]
                t0 = time.perf_counter()
                txn.commit()
                return results, t0, time.perf_counter()
            except lmdb.MapFullError:
                txn.abort()
            except lmdb.Error as err:
                txn.abort()
                se = StoreError(f"commit failed: {err}")
                return [(False, se)] * len(items), 0.0, 0.0
        se = StoreError("batch could not be committed: map cannot grow")
        return [(False, se)] * len(items), 0.0, 0.0

    @staticmethod
    def _deliver(
        items: list[tuple[Callable[[Tx], Any], Any, Any]], results: list[tuple[bool, Any]]
    ) -> None:
        by_loop: dict[Any, list[tuple[Any, bool, Any]]] = {}
        for (_fn, fut, loop), (ok, value) in zip(items, results, strict=True):
            if loop is None:
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            else:
                by_loop.setdefault(loop, []).append((fut, ok, value))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, batch)
            except RuntimeError:  # loop closed: nobody is waiting any more
                pass


def _resolve(batch: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in batch:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
