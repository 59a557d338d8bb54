"""The Redis Cluster backend's operations on the event loop (no threads), on a real
cluster: exact money under concurrency on one node and across nodes, two exchanges per
CCR-U, group commit, WAIT failures, a killed primary; and the connection against
redis-py (the oracle) and against broken servers."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis import Redis
from redis.connection import Connection
from redis.exceptions import ConnectionError, ResponseError
from tests_support import CONFIG_DIR, WEDNESDAY_NOON, add, require_tool

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import (
    CommitRequest,
    Debit,
    DebitRequest,
    IdKind,
    ReserveRequest,
    Settlement,
)
from ocs.provisioning import op_load_plans
from ocs.rating.plans import Service, load_plans_file
from ocs.store.cluster import ClusterStore
from ocs.store.cluster_loop import ClusterBackend, LoopDriver, RespConnection
from ocs.store.env import StoreError
from ocs.store.records import dec_cdr
from ocs.store.writer import Overloaded
from sim.rediscluster import RedisCluster, redis_cluster

T = TypeVar("T")
T0 = WEDNESDAY_NOON
ALICE = "41790000001"
MB = 1_000_000


class OnLoop:
    """Engines' operations through a :class:`LoopDriver` on an event loop of its own
    (a thread), called from the test's thread."""

    def __init__(self, store: ClusterStore, node: str = "n1"):
        self.store = store
        self.engine = ChargingEngine(store, None, EngineSettings(
            node=node, home_networks=frozenset({"22801"})))
        self.driver = LoopDriver(store)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    async def debit(self, key: str, msisdn: str = ALICE) -> Debit:
        req = DebitRequest(request_key=key.encode(), subscriber=((IdKind.MSISDN, msisdn),),
                           service=Service.SMS, destination="4915112345", now=T0)
        return await self.driver.run_write(lambda tx: self.engine.op_debit(tx, req))

    async def commit(self, req: CommitRequest) -> Settlement:
        return await self.driver.run_write(lambda tx: self.engine.op_commit(tx, req))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.driver.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def balance(store: ClusterStore, msisdn: str = ALICE) -> tuple[int, int]:
    e = ChargingEngine(store, None, EngineSettings(node="check"))
    v = e.check_balance(((IdKind.MSISDN, msisdn),), now=T0)
    assert v is not None
    return v.balance, v.reserved


@pytest.fixture
def store(cluster_store: ClusterStore) -> ClusterStore:
    cluster_store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    return cluster_store


def test_one_wallet_many_operations_at_once(store: ClusterStore) -> None:
    """Sixty debits of one wallet at once on one loop take turns: none conflicts, every
    one charged exactly once, one CDR each; a second round of the same keys replays."""
    add(store, ALICE, balance="100.00")
    on = OnLoop(store)
    try:
        async def all_at_once() -> list[Debit]:
            return list(await asyncio.gather(*(on.debit(f"m{i}") for i in range(60))))

        first = on.run(all_at_once())
        assert all(d.ok and not d.replayed and d.charged == 150_000 for d in first)
        assert store.conflicts == 0
        assert all(d.replayed for d in on.run(all_at_once()))
        assert balance(store) == (100_000_000 - 60 * 150_000, 0)
        rows = [dec_cdr.decode(r) for r in store.outbox()]
        assert sorted(r.session_id for r in rows) == sorted(f"m{i}" for i in range(60))
        assert store.verify(undrained=True) == []
    finally:
        on.close()


def test_two_nodes_on_loops_never_overspend(store: ClusterStore,
                                            redis_nodes: RedisCluster) -> None:
    """Two nodes (two stores, two loops) debit one prepaid wallet at once: exactly as
    many SMS as the money pays for succeed, never below zero."""
    add(store, ALICE, balance="3.00")  # 20 SMS at 0.15
    other = ClusterStore(redis_nodes.nodes, wait_timeout_ms=2000)
    a, b = OnLoop(store, "n1"), OnLoop(other, "n2")
    try:
        async def burst(on: OnLoop, tag: str) -> list[Debit]:
            return list(await asyncio.gather(*(on.debit(f"{tag}{i}") for i in range(20))))

        fa = asyncio.run_coroutine_threadsafe(burst(a, "a"), a.loop)
        fb = asyncio.run_coroutine_threadsafe(burst(b, "b"), b.loop)
        results = fa.result(60) + fb.result(60)
        assert sum(d.ok for d in results) == 20
        assert balance(store) == (0, 0)
        rows = [dec_cdr.decode(r) for r in store.outbox()]
        assert len(rows) == 20 and sum(r.charge for r in rows) == 3_000_000
        assert store.verify(undrained=True) == []
    finally:
        a.close()
        b.close()
        other.close()


def test_a_session_update_takes_two_exchanges(store: ClusterStore) -> None:
    """On the loop too: a CCR-U of a session this node opened reads its account once
    and writes once."""
    add(store, ALICE, balance="1.00")
    on = OnLoop(store)
    try:
        async def go() -> None:
            req = ReserveRequest(request_key=b"r1", session_id="s1",
                                 subscriber=((IdKind.MSISDN, ALICE),), service=Service.DATA,
                                 units=5 * MB, rating_group=10, now=T0)
            g = await on.driver.run_write(lambda tx: on.engine.op_reserve(tx, req))
            assert g.ok and g.money_reserved == 50_000
            store.shared_ttl_s = 3600.0  # plans as read once
            for n in (1, 2):
                before = store.round_trips
                s = await on.commit(CommitRequest(
                    request_key=b"c%d" % n, session_id="s1", service=Service.DATA,
                    rating_group=10, used_units=MB, next_units=5 * MB, now=T0 + n))
                assert s.ok and s.charged == 10_000
                assert store.round_trips - before == 2

        on.run(go())
        assert balance(store)[0] == 1_000_000 - 20_000
    finally:
        on.close()


def test_writes_at_once_share_a_wait(store: ClusterStore) -> None:
    """Forty debits of forty wallets at once: their writes go out in batches, one WAIT
    each (fewer WAITs than operations), and every one is charged."""
    subs = [f"4179100{i:04d}" for i in range(40)]
    for m in subs:
        add(store, m, balance="1.00")
    on = OnLoop(store)
    try:
        before = on.driver.batches

        async def go() -> list[Debit]:
            return list(await asyncio.gather(*(on.debit("x", m) for m in subs)))

        assert all(d.ok and d.charged == 150_000 for d in on.run(go()))
        assert on.driver.batches - before < 40
        assert all(balance(store, m) == (850_000, 0) for m in subs)
    finally:
        on.close()


def test_too_few_acks_fail_the_batch_then_a_retry_replays(
        store: ClusterStore, redis_nodes: RedisCluster) -> None:
    """WAIT for more replicas than there are: every update of the batch is an error
    (none answered as a success); re-sent through a normal node, each is charged once
    (its writes were applied: the retry replays them)."""
    add(store, ALICE, balance="1.00")
    on = OnLoop(store)

    def update(n: int) -> CommitRequest:
        return CommitRequest(request_key=b"c%d" % n, session_id=f"s{n}",
                             service=Service.DATA, rating_group=10, used_units=MB,
                             next_units=MB, now=T0 + 60)

    strict = ClusterStore(redis_nodes.nodes, wait_replicas=2, wait_timeout_ms=50,
                          deadline_s=2)
    late = OnLoop(strict)
    try:
        async def open_sessions() -> None:
            for n in range(3):
                req = ReserveRequest(request_key=b"r%d" % n, session_id=f"s{n}",
                                     subscriber=((IdKind.MSISDN, ALICE),),
                                     service=Service.DATA, units=5 * MB, rating_group=10,
                                     now=T0)
                assert (await on.driver.run_write(
                    lambda tx, req=req: on.engine.op_reserve(tx, req))).ok

        on.run(open_sessions())

        async def go(via: OnLoop) -> list[Any]:
            return list(await asyncio.gather(*(via.commit(update(n)) for n in range(3)),
                                             return_exceptions=True))

        out = late.run(go(late))
        assert all(isinstance(r, StoreError) and "acknowledged" in str(r) for r in out)
        again = on.run(go(on))
        assert all(isinstance(s, Settlement) and s.ok and s.replayed
                   and s.charged == 10_000 for s in again)
        assert balance(store)[0] == 1_000_000 - 3 * 10_000
    finally:
        late.close()
        strict.close()
        on.close()


def test_too_many_operations_under_way_get_a_busy_answer(store: ClusterStore) -> None:
    """A flood does not queue without bound: past ``max_running`` operations under way
    the backend refuses at once (Overloaded: Diameter 3004, no RADIUS answer), and
    nothing of the refused one is charged."""
    add(store, ALICE, balance="1.00")
    on = OnLoop(store)
    backend = ClusterBackend(store, on.engine, max_running=2)
    try:
        def debit(key: bytes) -> DebitRequest:
            return DebitRequest(request_key=key, subscriber=((IdKind.MSISDN, ALICE),),
                                service=Service.SMS, destination="4915112345", now=T0)

        async def flood() -> list[Debit]:
            first = [backend.submit("debit", debit(b"d%d" % i)) for i in range(2)]
            with pytest.raises(Overloaded):
                backend.submit("debit", debit(b"d2"))
            done = list(await asyncio.gather(*first))
            backend.submit("debit", debit(b"d3"))  # room again
            await backend.close()
            return done

        assert all(d.ok for d in on.run(flood()))
        assert balance(store) == (1_000_000 - 3 * 150_000, 0)
    finally:
        on.close()


def test_a_killed_primary_on_the_loop_loses_no_answered_charge(tmp_path: Path) -> None:
    """SIGKILL of the subscriber's primary while the loop charges: what was answered as
    a success is in the wallet with its CDR; what got an error, re-sent, is charged
    once."""
    with redis_cluster(tmp_path / "redis", require_tool("redis-server"),
                       require_tool("redis-cli")) as cluster:
        store = ClusterStore(cluster.nodes, wait_timeout_ms=2000, deadline_s=20)
        on = OnLoop(store)
        try:
            store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
            add(store, ALICE, balance="100.00")
            port = int(store.rc.get_node_from_key(b"{" + ALICE.encode() + b"}:bal").port)

            async def load() -> tuple[list[str], list[str]]:
                answered: list[str] = []
                failed: list[str] = []
                for i in range(0, 60, 4):
                    if i == 20:
                        await asyncio.to_thread(cluster.kill, port)
                    if i == 28:
                        await asyncio.to_thread(cluster.start_node, port)
                        await asyncio.to_thread(cluster.wait_ok, 60)
                        await asyncio.to_thread(cluster.wait_replicas, 60)
                    keys = [f"m{j}" for j in range(i, i + 4)]
                    out = await asyncio.gather(*(on.debit(k) for k in keys),
                                               return_exceptions=True)
                    for k, r in zip(keys, out, strict=True):
                        if isinstance(r, StoreError):
                            failed.append(k)
                        else:
                            assert isinstance(r, Debit) and r.ok and not r.replayed, r
                            answered.append(k)
                return answered, failed

            answered, failed = on.run(load())
            assert failed and len(answered) >= 30
            for key in failed:  # the network element re-sends what got no answer
                assert on.run(on.debit(key)).ok
            assert balance(store) == (100_000_000 - 60 * 150_000, 0)
            rows = [dec_cdr.decode(r) for r in store.outbox()]
            assert sorted(r.session_id for r in rows) == sorted(answered + failed)
            assert store.verify(undrained=True) == []
        finally:
            on.close()
            store.close()


# -- the connection ----------------------------------------------------------------------

COMMANDS: list[tuple[Any, ...]] = [
    ("SET", b"{t}:a", b"\x00\r\n binary \xff"),
    ("SET", "{t}:b", 12345),
    ("MGET", b"{t}:a", b"{t}:b", b"{t}:missing"),
    ("HSET", b"{t}:h", b"f\x00", b"v" * 70_000),
    ("HGET", b"{t}:h", b"f\x00"),
    ("HGETALL", b"{t}:h"),
    ("INCR", b"{t}:a"),  # an error reply, in its place
    ("RPUSH", b"{t}:l", b"x", b"", b"z"),
    ("LRANGE", b"{t}:l", 0, -1),
    ("ZADD", b"{t}:z", 17, b"m"),
    ("ZRANGE", b"{t}:z", 0, 0, "WITHSCORES"),
    ("GET", b"{t}:missing"),
]


def _primary_of_t(redis_nodes: RedisCluster) -> tuple[str, int]:
    rc = Redis(port=redis_nodes.primaries()[0])
    try:
        slot = rc.execute_command("CLUSTER", "KEYSLOT", "{t}")
        for lo, hi, main, *_ in rc.execute_command("CLUSTER", "SLOTS"):
            if lo <= slot <= hi:
                return main[0].decode(), int(main[1])
    finally:
        rc.close()
    raise AssertionError("no primary serves {t}")


async def _connect(host: str, port: int) -> RespConnection:
    _, conn = await asyncio.get_running_loop().create_connection(RespConnection, host, port)
    return conn


def test_the_connection_answers_as_redis_py(redis_nodes: RedisCluster) -> None:
    """Byte-exact values (binary, CRLF inside, 70 kB), nils, errors in their place,
    arrays: the same replies as redis-py's (RESP2) connection gives."""
    redis_nodes.flush()
    host, port = _primary_of_t(redis_nodes)

    async def mine() -> list[Any]:
        conn = await _connect(host, port)
        first = conn.request(COMMANDS[:3])  # two requests in flight at once
        rest = conn.request(COMMANDS[3:])
        out = await first + await rest
        conn.close()
        return out

    got = asyncio.run(mine())
    redis_nodes.flush()
    oracle = Connection(host=host, port=port, protocol=2)
    want: list[Any] = []
    for cmd in COMMANDS:
        oracle.send_command(*cmd)
        try:
            want.append(oracle.read_response())
        except ResponseError as exc:
            want.append(exc)
    oracle.disconnect()  # type: ignore[no-untyped-call]
    # (redis-py drops an error's "ERR " prefix; the connection keeps it whole)
    assert [str(r).removeprefix("ERR ") if isinstance(r, ResponseError) else r
            for r in got] == \
        [str(r) if isinstance(r, ResponseError) else r for r in want]
    assert got[4] == b"v" * 70_000 and isinstance(got[6], ResponseError)


@pytest.mark.parametrize("reply", [
    b"",  # closes without answering
    b"$5\r\nab",  # half a reply, then closes
    b"%%%garbage\r\n",  # not RESP
])
def test_a_broken_server_fails_the_requests(reply: bytes) -> None:
    """Whatever a broken server sends, the requests in flight fail with ConnectionError
    (never a hang, never a reply given to the wrong request), and the connection is not
    used again."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(1 << 16)
            conn.sendall(reply)

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    async def go() -> None:
        conn = await _connect("127.0.0.1", srv.getsockname()[1])
        first, second = conn.request([("GET", b"k")]), conn.request([("GET", b"j")])
        for fut in (first, second):
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(fut, 5)
        assert conn.closed
        with pytest.raises(ConnectionError):
            conn.request([("GET", b"k")])

    try:
        asyncio.run(go())
    finally:
        srv.close()
        t.join(5)


def test_a_reply_nobody_asked_for_closes_the_connection() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(1 << 16)
            conn.sendall(b"+OK\r\n+SURPRISE\r\n")
            done.wait(5)  # open: the client closes because of what it got

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    async def go() -> None:
        conn = await _connect("127.0.0.1", srv.getsockname()[1])
        assert await asyncio.wait_for(conn.request([("GET", b"k")]), 5) == [b"OK"]
        for _ in range(50):
            if conn.closed:
                break
            await asyncio.sleep(0.02)
        assert conn.closed

    try:
        asyncio.run(go())
    finally:
        done.set()
        srv.close()
        t.join(5)
