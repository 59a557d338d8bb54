"""The Redis Cluster backend's charging operations on the event loop: no threads.

An operation (the engine's unchanged ``fn(tx)``) runs on a :class:`ClusterTx` in
event-loop mode: a read it does not have yet stops it with :class:`Miss`; the driver
fetches those reads (one pipelined exchange) and runs it again, answering the reads it
has from what it fetched. A CCR-U on the node that opened its session stops once (its
account, in one exchange), then runs to its writes. Reads of an account are fetched
after taking that account's turn in this process (an ``asyncio.Lock`` per stripe, held
until the apply), so operations of one account here never conflict with each other.

Each primary has two connections per loop: one for reads, one for writes. Writes are
**group-committed**: the ``ocs_apply`` calls (and hint writes) that queue while one
batch waits for its ``WAIT`` go out together, followed by one ``WAIT``, which covers
every write before it on that connection. Too few acknowledgements fail every
operation of the batch (none is answered as a success).

Replies are parsed by ``hiredis.Reader`` and commands packed by ``hiredis.pack_command``
(what redis-py uses with hiredis); redis-py is the oracle the connection is tested
against.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import hiredis
from redis.exceptions import ClusterDownError, ConnectionError, ResponseError

from ocs.store.cluster import ClusterStore, ClusterTx, Miss, pre_ok, slot_of
from ocs.store.env import StoreError
from ocs.store.tx import Tx
from ocs.store.writer import Overloaded

T = TypeVar("T")

MAX_MISSES = 64
"""Fetches one run of an operation may need (a few: its account, a hint, plans)."""


class RespConnection(asyncio.Protocol):
    """One connection to one Redis server: requests pipelined, replies in order."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._pending: collections.deque[tuple[int, list[Any], asyncio.Future[list[Any]]]] \
            = collections.deque()
        self._transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's: no subclass)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while True:
                reply = self._reader.gets()
                if reply is False:
                    return
                if not self._pending:
                    raise hiredis.ProtocolError("a reply nobody asked for")
                n, out, fut = self._pending[0]
                out.append(reply)
                if len(out) == n:
                    self._pending.popleft()
                    if not fut.done():
                        fut.set_result(out)
        except hiredis.ProtocolError as exc:
            self._fail(ConnectionError(f"redis: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"redis connection lost: {exc}"))

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()
        while self._pending:
            fut = self._pending.popleft()[2]
            if not fut.done():
                fut.set_exception(exc)

    def request(self, cmds: list[tuple[Any, ...]] | tuple[tuple[Any, ...], ...]
                ) -> asyncio.Future[list[Any]]:
        """Send ``cmds`` in one write; a future of their replies (an error reply is a
        :class:`ResponseError` in the list)."""
        if self.closed or self._transport is None:
            raise ConnectionError("redis connection closed")
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((len(cmds), [], fut))
        self._transport.write(b"".join([hiredis.pack_command(c) for c in cmds]))
        return fut

    def close(self) -> None:
        self._fail(ConnectionError("redis connection closed"))


class _GroupWriter:
    """The write connection of one primary: batches of writes, one WAIT each."""

    def __init__(self, driver: LoopDriver, node: Any):
        self._driver = driver
        self._node = node
        self._queue: list[tuple[tuple[tuple[Any, ...], ...], asyncio.Future[Any]]] = []
        self._busy = False

    def submit(self, cmds: tuple[tuple[Any, ...], ...]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((cmds, fut))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._flush())
        return fut

    async def _flush(self) -> None:
        store = self._driver.store
        wait = ("WAIT", store.wait_replicas, store.wait_timeout_ms)
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                cmds = [c for part, _ in batch for c in part]
                if store.wait_replicas:
                    cmds.append(wait)
                self._driver.batches += 1
                try:
                    conn = await self._driver.connection(self._node, "w")
                    async with asyncio.timeout(store.io_timeout_s):
                        replies = await conn.request(cmds)
                except Exception as exc:  # every operation of the batch learns it
                    self._driver.drop(self._node, "w")
                    err = exc if isinstance(exc, StoreError) else ConnectionError(
                        str(exc) or type(exc).__name__)
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(err)
                    continue
                acks = replies[-1] if store.wait_replicas else None
                i = 0
                for part, fut in batch:
                    if not fut.done():
                        fut.set_result((replies[i:i + len(part)], acks))
                    i += len(part)
        finally:
            self._busy = False


class LoopDriver:
    """Runs operations on ``store`` (a :class:`ClusterStore`) from one event loop."""

    def __init__(self, store: ClusterStore):
        self.store = store
        self._conns: dict[tuple[str, str], RespConnection] = {}
        self._connecting: dict[tuple[str, str], asyncio.Future[RespConnection]] = {}
        self._writers: dict[str, _GroupWriter] = {}
        self._turns = [asyncio.Lock() for _ in range(1024)]
        self._refreshing: asyncio.Task[None] | None = None
        self.batches = 0
        """Batches of writes sent (each with one WAIT)."""

    # -- connections -----------------------------------------------------------------

    def _node(self, slot_key: bytes) -> Any:
        nodes = self.store.rc.nodes_manager.slots_cache.get(slot_of(slot_key))
        if not nodes:
            raise ClusterDownError(f"no node serves the slot of {slot_key!r}")
        return nodes[0]

    async def connection(self, node: Any, kind: str) -> RespConnection:
        """This loop's ``kind`` (r: reads, w: writes) connection to ``node``."""
        key = (node.name, kind)
        conn = self._conns.get(key)
        if conn is not None and not conn.closed:
            return conn
        pending = self._connecting.get(key)
        if pending is None:
            pending = self._connecting[key] = asyncio.ensure_future(self._open(node))
        try:
            conn = await asyncio.shield(pending)
        finally:
            if pending.done():
                self._connecting.pop(key, None)
        self._conns[key] = conn
        return conn

    async def _open(self, node: Any) -> RespConnection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                RespConnection, node.host, node.port), 1.0)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"redis {node.name}: {exc}") from exc
        user, password = self.store.auth
        if password:
            auth = ("AUTH", user, password) if user else ("AUTH", password)
            reply = (await asyncio.wait_for(conn.request([auth]), 1.0))[0]
            if isinstance(reply, ResponseError):
                conn.close()
                raise StoreError(f"redis {node.name}: {reply}")
        return conn

    def drop(self, node: Any, kind: str) -> None:
        conn = self._conns.pop((node.name, kind), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    # -- reads and durable writes, retried over failovers ----------------------------

    async def _check(self, replies: list[Any]) -> None:
        for r in replies:
            if isinstance(r, ResponseError):
                if "Function not found" in str(r):  # a new primary without the library
                    await asyncio.to_thread(self.store.load_functions)
                    raise ClusterDownError(str(r))
                self.store._raise(r)

    async def _retrying(self, fn: Callable[[], Awaitable[T]], deadline: float) -> T:
        loop = asyncio.get_running_loop()
        delay = 0.01
        while True:
            try:
                return await fn()
            except (ConnectionError, TimeoutError, ClusterDownError) as exc:
                if loop.time() + delay > deadline:
                    raise StoreError(f"redis cluster unavailable: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
            await self._refresh()

    async def _refresh(self) -> None:
        """The slot map read again (once for every operation waiting on it)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(asyncio.to_thread(self.store._refresh))
        await asyncio.shield(self._refreshing)

    async def read(self, slot_key: bytes, cmds: tuple[tuple[Any, ...], ...],
                   deadline: float) -> list[Any]:
        """Read commands of ``slot_key``'s slot, pipelined; their replies."""
        async def once() -> list[Any]:
            node = self._node(slot_key)
            conn = await self.connection(node, "r")
            self.store.round_trips += 1
            try:
                async with asyncio.timeout(self.store.io_timeout_s):
                    replies = await conn.request(cmds)
            except TimeoutError:
                self.drop(node, "r")
                raise
            await self._check(replies)
            return replies

        return await self._retrying(once, deadline)

    async def durable(self, slot_key: bytes, cmds: tuple[tuple[Any, ...], ...],
                      deadline: float) -> Any:
        """Write commands of ``slot_key``'s slot (safe to repeat), acknowledged by the
        replicas (with the other writes of their batch); the first one's reply."""
        store = self.store

        async def once() -> Any:
            node = self._node(slot_key)
            writer = self._writers.get(node.name)
            if writer is None:
                writer = self._writers[node.name] = _GroupWriter(self, node)
            store.round_trips += 1
            replies, acks = await writer.submit(cmds)
            await self._check(replies)
            if store.wait_replicas and (isinstance(acks, ResponseError)
                                        or int(acks) < store.wait_replicas):
                raise StoreError(f"redis: {acks} of {store.wait_replicas} replicas "
                                 f"acknowledged within {store.wait_timeout_ms} ms")
            return replies[0]

        return await self._retrying(once, deadline)

    # -- operations ------------------------------------------------------------------

    async def run_write(self, fn: Callable[[Tx], T]) -> T:
        """:meth:`ClusterStore.run_write` on the event loop (see the module's text)."""
        store = self.store
        loop = asyncio.get_running_loop()
        deadline = loop.time() + store.deadline_s
        held: asyncio.Lock | None = None
        try:
            for attempt in range(store.attempts):
                replies: dict[tuple[bytes, tuple[tuple[Any, ...], ...]], list[Any]] = {}
                for _ in range(MAX_MISSES):
                    tx = ClusterTx(store, replies=replies)
                    try:
                        result = fn(tx)
                        break
                    except Miss as miss:
                        if miss.tag is not None:
                            held = await self._turn(miss.tag, held)
                        replies[(miss.slot_key, miss.cmds)] = await self.read(
                            miss.slot_key, miss.cmds, deadline)
                else:
                    raise StoreError(f"redis: an operation read more than {MAX_MISSES} "
                                     "times")
                applied = 1
                for rkey, cmd in tx._pre:
                    if not pre_ok(cmd, await self.durable(rkey, (cmd,), deadline)):
                        applied = 0  # another node took the index entry meanwhile
                        break
                apply = tx.apply_command() if applied else None
                # Re-sent after a lost connection, it finds its own writes: refused.
                if apply is not None:
                    applied = int(await self.durable(apply[3], (apply,), deadline))
                if held is not None:
                    held.release()
                    held = None
                if not applied:
                    store.conflicts += 1
                    await asyncio.sleep(store.backoff_s(attempt))
                    continue
                for rkey, cmd in store.after_apply(tx, apply is not None):
                    await self.durable(rkey, (cmd,), deadline)
                store.applied(tx)
                return result
        finally:
            if held is not None:
                held.release()
        raise StoreError(f"redis: gave up after {store.attempts} conflicting attempts")

    async def _turn(self, tag: bytes, held: asyncio.Lock | None) -> asyncio.Lock:
        """Account ``tag``'s turn in this process (giving up the one held, if another)."""
        lock = self._turns[slot_of(tag) % len(self._turns)]
        if lock is held:
            return lock
        if held is not None:
            held.release()
        await lock.acquire()
        return lock


class ClusterBackend:
    """Runs the engine's named operations on the cluster for the event loop (each a
    task; its future resolves once the write is acknowledged)."""

    def __init__(self, store: ClusterStore, engine: Any, *,
                 on_result: Callable[[str, Any], None] | None = None,
                 max_running: int = 65536):
        self.store = store
        self.max_running = max_running
        """Operations under way at most; beyond, Overloaded (a busy answer: the peer
        retries) rather than a queue that grows without bound."""
        self._engine = engine
        self._driver: LoopDriver | None = None
        self._on_result = on_result
        self._running: set[asyncio.Future[Any]] = set()

    @property
    def batches(self) -> int:
        """Batches of writes sent (each with one WAIT)."""
        return self._driver.batches if self._driver is not None else 0

    def submit(self, name: str, req: Any) -> asyncio.Future[Any]:
        if name == "trim_answers":  # answers expire by their own TTL here
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            fut.set_result(0)
            return fut
        if len(self._running) >= self.max_running:
            raise Overloaded(f"{len(self._running)} operations under way on the cluster")
        if self._driver is None:
            self._driver = LoopDriver(self.store)
        task = asyncio.ensure_future(self._run(self._driver, name,
                                               getattr(self._engine, "op_" + name), req))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def _run(self, driver: LoopDriver, name: str, op: Callable[[Tx, Any], Any],
                   req: Any) -> Any:
        try:
            result = await driver.run_write(lambda tx: op(tx, req))
        except Exception as exc:  # an error answer for this request, not a crash
            if self._on_result is not None:
                self._on_result(name, exc)
            raise
        if self._on_result is not None:
            self._on_result(name, result)
        return result

    async def close(self) -> None:
        """The operations under way finish (and get their answers), then the
        connections close."""
        if self._running:
            await asyncio.wait(list(self._running))
        if self._driver is not None:
            self._driver.close()
