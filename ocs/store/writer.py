"""Group commit: one write transaction per batch of operations, committed with sync.

Operations are plain functions ``fn(tx) -> result``. Each runs in a nested transaction
inside the batch's transaction, so one that raises leaves nothing in the batch. The
batch commits when it holds ``commit_max_ops`` operations or ``commit_max_delay_ms`` has
passed since it began; only after the commit returns are the callers told (invariant 1).
A full map is grown and the whole (unacknowledged) batch re-run.

:class:`Batch` is that logic; :class:`Writer` runs it in a thread of this process (CLI
tools, tests, the simulator's in-process mode), :mod:`ocs.store.procwriter` in a
process of its own (the server: LMDB calls release the GIL, so a writer thread would
wait for the event loop on every call).
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

from ocs.errors import ChargingBusy, register
from ocs.store.env import Store, StoreError
from ocs.store.tx import Tx

T = TypeVar("T")
log = structlog.get_logger(__name__)

Op = Callable[[Tx], Any]


@register
class Overloaded(ChargingBusy):
    """The write queue is full: answer the peer with its protocol's busy code."""


@register
class WriterStopped(ChargingBusy):
    """The writer is shutting down and takes no more operations (a retry reaches the
    next one, or another node)."""


BatchHook = Callable[[int, float, float], None]
"""Called after each commit with (ops in batch, seconds to commit, seconds the batch took)."""


class Batch:
    """One write transaction collecting operations until :meth:`commit`."""

    __slots__ = ("_map_full", "_number", "_store", "_txn", "ops", "results", "started")

    def __init__(self, store: Store, number: int):
        self._store = store
        self._number = number
        self._txn = store.begin_write()
        self._map_full = False
        self.ops: list[Op] = []
        self.results: list[tuple[bool, Any]] = []
        self.started = time.perf_counter()

    def __len__(self) -> int:
        return len(self.ops)

    def add(self, fn: Op) -> None:
        self.ops.append(fn)
        if self._map_full:
            self.results.append((False, None))  # re-run at commit, after growing the map
            return
        try:
            self.results.append(self._apply(self._txn, fn))
        except lmdb.MapFullError:
            self._map_full = True
            self.results.append((False, None))

    def _apply(self, txn: Any, fn: Op) -> tuple[bool, Any]:
        """Run one operation in a child transaction; keep its writes only if it succeeds."""
        child = self._store.env.begin(write=True, parent=txn)
        try:
            result = fn(Tx(child, self._store.dbs, self._number))
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

    def commit(self) -> float:
        """Commit durably; returns the seconds the commit took. Results are then final."""
        for _attempt in range(32):
            if not self._map_full:
                try:
                    t0 = time.perf_counter()
                    self._txn.commit()
                    return time.perf_counter() - t0
                except lmdb.MapFullError:
                    pass  # grow the map and re-run the batch, below
                except lmdb.Error as exc:
                    self._fail(StoreError(f"commit failed: {exc}"))
                    return 0.0
            self._txn.abort()
            self._store.grow()
            log.info("store_map_grown", map_size=self._store.env.info()["map_size"])
            self._txn = self._store.begin_write()
            self._map_full = False
            try:
                self.results = [self._apply(self._txn, fn) for fn in self.ops]
            except lmdb.MapFullError:
                self._map_full = True
        self._txn.abort()
        self._fail(StoreError("batch could not be committed: the map cannot grow"))
        return 0.0

    def _fail(self, err: Exception) -> None:
        log.error("store_commit_failed", error=str(err), ops=len(self.ops))
        self.results = [(False, err)] * len(self.ops)


class Writer:
    """The group-commit writer as a thread of this process."""

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
        self._dq: collections.deque[tuple[Op, Any, Any]] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.ops = 0

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
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queued(self) -> int:
        return len(self._dq)

    # -- submission ---------------------------------------------------------------------

    def _enqueue(self, fn: Op, fut: Any, loop: Any) -> None:
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
            batch = Batch(self._store, self.batches + 1)
            deadline = batch.started + self._max_delay
            waiters: list[tuple[Any, Any]] = []
            while True:
                while dq and len(batch) < self._max_ops:
                    fn, fut, loop = dq.popleft()
                    waiters.append((fut, loop))
                    batch.add(fn)
                if len(batch) >= self._max_ops or self._stopping:
                    break
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                wake.clear()
                if not dq:
                    wake.wait(remaining)
            commit_s = batch.commit()
            self.batches += 1
            self.ops += len(batch)
            _deliver(waiters, batch.results)
            if self._on_batch is not None:
                self._on_batch(len(batch), commit_s, time.perf_counter() - batch.started)


def _deliver(waiters: list[tuple[Any, Any]], results: list[tuple[bool, Any]]) -> None:
    by_loop: dict[Any, list[tuple[Any, bool, Any]]] = {}
    for (fut, loop), (ok, value) in zip(waiters, results, strict=True):
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
