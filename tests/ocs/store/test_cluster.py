"""The Redis Cluster adapter on a real cluster (3 primaries, 3 replicas on loopback):
atomic checked transactions across nodes, WAIT, hints, hostile keys, exact money."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
from redis.crc import key_slot
from redis.exceptions import ResponseError
from tests_support import CONFIG_DIR, WEDNESDAY_NOON, add, require_tool

from ocs.billing.kpis import compute
from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import (
    AdjustRequest,
    CommitRequest,
    Debit,
    DebitRequest,
    IdKind,
    Refusal,
    ReserveRequest,
    Settlement,
)
from ocs.config import FraudConfig
from ocs.fraud.cases import META_FRAUD_SEQ, decode_case, resolve
from ocs.provisioning import (
    Conflict,
    NewSubscriber,
    ProvisioningError,
    SubscriberChange,
    import_subscribers_each,
    op_add_subscriber,
    op_load_plans,
    op_set_status,
    op_set_subscriber,
    op_topup,
)
from ocs.rating.plans import Service, load_plans_file
from ocs.store import Store
from ocs.store.cluster import (
    _FRAUD_SEQ,
    CASE_SPAN,
    ClusterStore,
    expiry_key,
    outbox_key,
    owner_keys,
    slot_tags,
)
from ocs.store.env import StoreError
from ocs.store.records import dec_cdr
from ocs.store.tx import Tx
from sim.rediscluster import RedisCluster, redis_cluster

T0 = WEDNESDAY_NOON
ALICE = "41790000001"
MB = 1_000_000


def engine_on(store: ClusterStore, node: str = "n1") -> ChargingEngine:
    return ChargingEngine(store, None, EngineSettings(node=node,
                                                      home_networks=frozenset({"22801"})))


def ids(msisdn: str = ALICE) -> tuple[tuple[IdKind, str], ...]:
    return ((IdKind.MSISDN, msisdn),)


def sms(engine: ChargingEngine, key: str, msisdn: str = ALICE):  # type: ignore[no-untyped-def]
    return engine.debit_sync(DebitRequest(request_key=key.encode(), subscriber=ids(msisdn),
                                          service=Service.SMS, destination="4915112345",
                                          now=T0))


@pytest.fixture
def store(cluster_store: ClusterStore) -> ClusterStore:
    cluster_store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    return cluster_store


def test_the_fraud_counter_is_the_engines() -> None:
    assert _FRAUD_SEQ == META_FRAUD_SEQ


def test_slot_tags_cover_every_slot() -> None:
    tags = slot_tags()
    assert len(tags) == 16384
    assert all(key_slot(b"{" + t + b"}:x") == s for s, t in enumerate(tags))
    assert key_slot(expiry_key(77)) == key_slot(outbox_key(77)) == 77


def test_two_nodes_never_overspend_one_wallet(store: ClusterStore,
                                              redis_nodes: RedisCluster) -> None:
    """Two OCS nodes (two connections, two engines) debit one prepaid wallet at once:
    exactly as many SMS as the money pays for succeed, the balance ends at zero, never
    below, each success has one CDR, and the records agree."""
    add(store, ALICE, balance="3.00")  # 20 international SMS at 0.15
    other = ClusterStore(redis_nodes.nodes, wait_timeout_ms=2000)
    try:
        engines = [engine_on(store, "n1"), engine_on(other, "n2")]
        results: list[bool] = []
        lock = threading.Lock()

        def run(e: ChargingEngine, tag: str) -> None:
            for i in range(20):
                d = sms(e, f"{tag}-{i}")
                with lock:
                    results.append(d.ok)

        threads = [threading.Thread(target=run, args=(e, f"n{i}"))
                   for i, e in enumerate(engines)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results.count(True) == 20 and results.count(False) == 20
        v = engines[1].check_balance(ids(), now=T0)
        assert v is not None and (v.balance, v.reserved) == (0, 0)
        rows = [dec_cdr.decode(r) for r in store.outbox()]
        assert len(rows) == 20 and sum(r.charge for r in rows) == 3_000_000
        assert len({r.record_id for r in rows}) == 20
        assert store.verify(undrained=True) == []
    finally:
        other.close()


def test_a_write_between_read_and_apply_runs_the_operation_again(
        store: ClusterStore, redis_nodes: RedisCluster) -> None:
    """Another node tops the wallet up after this operation read it: the apply sees the
    balance changed, writes nothing, and the operation runs again on the new balance."""
    add(store, ALICE, balance="1.00")
    other = ClusterStore(redis_nodes.nodes, wait_timeout_ms=2000)
    e = engine_on(store)
    req = DebitRequest(request_key=b"m1", subscriber=ids(), service=Service.SMS,
                       destination="4915112345", now=T0)
    runs: list[int] = []

    def op(tx: Tx) -> Debit:
        runs.append(1)
        result = e.op_debit(tx, req)
        if len(runs) == 1:
            other.run_write(op_topup(ALICE, "2.00"))
        return result

    try:
        d = store.run_write(op)
    finally:
        other.close()
    assert len(runs) == 2 and store.conflicts == 1
    assert d.ok and d.charged == 150_000
    v = e.check_balance(ids(), now=T0)
    assert v is not None and v.balance == 3_000_000 - 150_000
    assert store.verify(undrained=True) == []


def test_a_session_moves_to_another_node(store: ClusterStore,
                                         redis_nodes: RedisCluster) -> None:
    """A gateway fails over: the session opened on one node is updated and closed on
    another, which finds it through the owner index and charges it exactly once."""
    add(store, ALICE, balance="1.00")
    other = ClusterStore(redis_nodes.nodes, wait_timeout_ms=2000)
    try:
        a, b = engine_on(store, "n1"), engine_on(other, "n2")
        g = a.reserve_sync(ReserveRequest(
            request_key=b"r1", session_id="gw;1;x", subscriber=ids(), service=Service.DATA,
            units=5 * MB, rating_group=10, now=T0))
        assert g.ok and g.money_reserved == 50_000
        assert [r.msisdn for r in b.session_reservations("gw;1;x")] == [ALICE]
        c = CommitRequest(request_key=b"c1", session_id="gw;1;x", service=Service.DATA,
                          rating_group=10, used_units=2 * MB, final=True, now=T0 + 60)
        s = b.commit_sync(c)
        assert s.ok and s.charged == 20_000
        assert a.commit_sync(c).replayed  # the retransmission to the first node
        v = a.check_balance(ids(), now=T0)
        assert v is not None and (v.balance, v.reserved) == (980_000, 0)
        assert store.verify(undrained=True) == []
    finally:
        other.close()


def test_a_session_update_takes_two_round_trips_on_its_node(
        store: ClusterStore, redis_nodes: RedisCluster) -> None:
    """A CCR-U on the node that opened the session: its account (subscriber, balance,
    the reservation, the answer's absence) in one round trip, then the apply with its
    WAIT. On a node that never saw the session: one more, for the session's owner."""
    add(store, ALICE, balance="1.00")
    other = ClusterStore(redis_nodes.nodes, wait_timeout_ms=2000)
    try:
        a, b = engine_on(store, "n1"), engine_on(other, "n2")
        for sid in ("s1", "s2"):
            assert a.reserve_sync(ReserveRequest(
                request_key=sid.encode(), session_id=sid, subscriber=ids(),
                service=Service.DATA, units=5 * MB, rating_group=10, now=T0)).ok
        store.shared_ttl_s = other.shared_ttl_s = 3600.0  # plans as read once

        def update(e: ChargingEngine, sid: str, n: int) -> None:
            s = e.commit_sync(CommitRequest(
                request_key=b"c%d" % n, session_id=sid, service=Service.DATA,
                rating_group=10, used_units=MB, next_units=5 * MB, now=T0 + n))
            assert s.ok and s.charged == 10_000 and s.next_grant is not None \
                and s.next_grant.ok

        update(b, "s1", 1)  # (the other node reads the plans once)

        def trips(e: ChargingEngine, on: ClusterStore, sid: str, n: int) -> int:
            before = on.round_trips
            update(e, sid, n)
            return on.round_trips - before

        assert trips(a, store, "s2", 2) == 2
        assert trips(b, other, "s2", 3) == 3
        assert trips(b, other, "s2", 4) == 2  # now it knows the session too
        v = a.check_balance(ids(), now=T0)
        assert v is not None and v.balance == 1_000_000 - 40_000
    finally:
        other.close()


def test_a_stale_owner_hint_is_nobodys(store: ClusterStore,
                                       redis_nodes: RedisCluster) -> None:
    """A node remembers whose a session is; meanwhile the session ended on another node
    and its id was opened again for another subscriber: the next report on the first
    node charges the new owner's reservation, never the old owner."""
    bob = "41790000002"
    add(store, ALICE, balance="1.00")
    add(store, bob, balance="1.00")
    other = ClusterStore(redis_nodes.nodes, wait_timeout_ms=2000)
    try:
        a, b = engine_on(store, "n1"), engine_on(other, "n2")
        assert a.reserve_sync(ReserveRequest(
            request_key=b"r1", session_id="s1", subscriber=ids(), service=Service.DATA,
            units=5 * MB, rating_group=10, now=T0)).ok
        end = b.commit_sync(CommitRequest(
            request_key=b"c1", session_id="s1", service=Service.DATA, rating_group=10,
            used_units=MB, final=True, now=T0 + 10))
        assert end.ok and end.charged == 10_000
        assert b.reserve_sync(ReserveRequest(
            request_key=b"r2", session_id="s1", subscriber=ids(bob), service=Service.DATA,
            units=5 * MB, rating_group=10, now=T0 + 20)).ok
        s = a.commit_sync(CommitRequest(
            request_key=b"c2", session_id="s1", service=Service.DATA, rating_group=10,
            used_units=2 * MB, final=True, now=T0 + 30))
        assert s.ok and s.charged == 20_000 and s.msisdn == bob
        va, vb = a.check_balance(ids(), now=T0), a.check_balance(ids(bob), now=T0)
        assert va is not None and (va.balance, va.reserved) == (990_000, 0)
        assert vb is not None and (vb.balance, vb.reserved) == (980_000, 0)
        assert store.verify(undrained=True) == []
    finally:
        other.close()


def test_too_few_replica_acks_is_an_error_then_a_retry_replays(
        store: ClusterStore, redis_nodes: RedisCluster) -> None:
    """WAIT asks for 2 replicas where there is one: the usage report is applied on the
    primary but not answered as a success. The gateway retries (here through a node whose
    WAIT is met): it gets the stored answer, and the usage is charged once."""
    add(store, ALICE, balance="1.00")
    e = engine_on(store)
    assert e.reserve_sync(ReserveRequest(
        request_key=b"r1", session_id="s1", subscriber=ids(), service=Service.DATA,
        units=5 * MB, rating_group=10, now=T0)).ok
    update = CommitRequest(request_key=b"c1", session_id="s1", service=Service.DATA,
                           rating_group=10, used_units=3 * MB, next_units=MB, now=T0 + 60)
    strict = ClusterStore(redis_nodes.nodes, wait_replicas=2, wait_timeout_ms=50)
    try:
        with pytest.raises(StoreError, match="1 of 2 replicas"):
            engine_on(strict).commit_sync(update)
    finally:
        strict.close()
    s = e.commit_sync(update)
    assert s.ok and s.replayed and s.charged == 30_000
    v = e.check_balance(ids(), now=T0)
    assert v is not None and (v.balance, v.reserved) == (970_000, 10_000)
    assert [dec_cdr.decode(r).charge for r in store.outbox()] == [30_000]


def test_hostile_session_ids_stay_in_their_subscribers_slot(store: ClusterStore) -> None:
    """Peers choose session ids: braces (Redis hash tags), NULs, glob characters, 2 KB.
    Each is charged exactly, and found again by id and by prefix."""
    add(store, ALICE, balance="10.00")
    e = engine_on(store)
    weird = ["{x}", "}{", "a{b}c", "sess\x00ion", "*?[]\\", "{", "}", "x" * 2000, "é{}"]
    for i, sid in enumerate(weird):
        g = e.reserve_sync(ReserveRequest(
            request_key=f"r{i}".encode(), session_id=sid, subscriber=ids(),
            service=Service.DATA, units=MB, rating_group=10, now=T0))
        assert g.ok and g.money_reserved == 10_000, sid
        assert [r.session_id for r in e.session_reservations(sid)] == [sid]
    assert {r.session_id for r in e.reservations_with_prefix("*?[")} == {"*?[]\\"}
    assert {r.session_id for r in e.reservations_with_prefix("{")} == {"{x}", "{"}
    for i, sid in enumerate(weird):
        s = e.commit_sync(CommitRequest(
            request_key=f"c{i}".encode(), session_id=sid, service=Service.DATA,
            rating_group=10, used_units=MB // 2, final=True, now=T0 + 60))
        assert s.ok and s.charged == 5_000, sid
    v = e.check_balance(ids(), now=T0)
    assert v is not None and (v.balance, v.reserved) == (10_000_000 - 9 * 5_000, 0)
    assert store.verify(undrained=True) == []


def test_stale_hints_are_nobodys(store: ClusterStore) -> None:
    """Index entries are hints: one naming an account that no longer agrees (a crash
    between the index write and the account's) finds nobody, and a session id whose
    reservation ended is free for another subscriber."""
    add(store, ALICE, balance="1.00", imsi="228010000000001")
    add(store, "41790000002", balance="1.00")
    e = engine_on(store)
    store.run_write(op_set_subscriber(ALICE, SubscriberChange(imsi="228010000000009")))
    # a crash before the old IMSI's entry was withdrawn: it is still there
    store.rc.set(b"idx:imsi:228010000000001", ALICE.encode())
    assert e.find_subscriber_now(((IdKind.IMSI, "228010000000001"),)) is None
    sub = e.find_subscriber_now(((IdKind.IMSI, "228010000000009"),))
    assert sub is not None and sub.msisdn == ALICE
    # an owner entry left by an opening that never happened
    own, tail, _ = owner_keys(b"s9\x0010")
    store.rc.hset(own, tail, ALICE.encode())
    g = e.reserve_sync(ReserveRequest(request_key=b"r9", session_id="s9",
                                      subscriber=ids("41790000002"), service=Service.DATA,
                                      units=MB, rating_group=10, now=T0))
    assert g.ok and g.msisdn == "41790000002"
    assert store.verify(undrained=True) == []


def test_answers_expire_with_the_retention(store: ClusterStore) -> None:
    add(store, ALICE, balance="1.00")
    assert sms(engine_on(store), "m1").ok
    ttl = store.rc.pttl(b"{" + ALICE.encode() + b"}:ans:m1")
    assert 0 < ttl <= 86_400_000


def test_a_suspended_subscriber_is_refused_on_every_node(
        store: ClusterStore, redis_nodes: RedisCluster) -> None:
    add(store, ALICE, balance="1.00")
    other = ClusterStore(redis_nodes.nodes, wait_timeout_ms=2000)
    try:
        other.run_write(op_set_status(ALICE, "suspend"))
        d = sms(engine_on(store), "m1")
        assert not d.ok and d.refusal == Refusal.SUSPENDED
    finally:
        other.close()


def test_ocs_apply_writes_nothing_when_a_write_is_malformed(store: ClusterStore) -> None:
    """Scripts do not roll back: every write is checked before the first is made."""
    k1, k2 = b"{t}:a", b"{t}:b"
    with pytest.raises(ResponseError, match="bad write BOGUS"):
        store.rc.execute_command("FCALL", "ocs_apply", 2, k1, k2,
                                 "0", "S", "1", "v", "0", "BOGUS", "2", "x")
    assert store.rc.get(k1) is None
    with pytest.raises(ResponseError, match="bad write S"):  # a key index out of range
        store.rc.execute_command("FCALL", "ocs_apply", 1, k1, "0", "S", "1", "v", "0",
                                 "S", "9", "v", "0")
    with pytest.raises(ResponseError, match="bad write ZA"):  # a score that is no number
        store.rc.execute_command("FCALL", "ocs_apply", 1, k1, "0", "S", "1", "v", "0",
                                 "ZA", "1", "soon", "m")
    with pytest.raises(ResponseError, match="bad write S"):  # cut short
        store.rc.execute_command("FCALL", "ocs_apply", 1, k1, "0", "S", "1", "v", "0",
                                 "S", "1", "v")
    assert store.rc.get(k1) is None


def test_a_killed_primary_loses_no_answered_charge(tmp_path: Path) -> None:
    """SIGKILL of the primary holding the subscriber while a node charges: its replica
    is promoted (and has no replica of its own until the killed node is back: WAIT fails,
    nothing is answered as a success meanwhile). Every debit answered as a success is in
    the wallet and has its CDR; the ones that got an error, re-sent, are charged once."""
    with redis_cluster(tmp_path / "redis", require_tool("redis-server"),
                       require_tool("redis-cli")) as cluster:
        store = ClusterStore(cluster.nodes, wait_timeout_ms=2000, deadline_s=20)
        try:
            store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
            add(store, ALICE, balance="100.00")
            e = engine_on(store)
            port = int(store.rc.get_node_from_key(b"{" + ALICE.encode() + b"}:bal").port)
            answered: list[str] = []
            failed: list[str] = []
            for i in range(60):
                if i == 20:
                    cluster.kill(port)
                    # a protocol agent's read (on its event loop) does not wait out the
                    # failover, nor for the slot map: it gives up after read_deadline_s
                    # (0.2 s), the map is read again in the background
                    t0 = time.monotonic()
                    with pytest.raises(StoreError, match="unavailable"):
                        e.check_balance(ids(), now=T0)
                    assert time.monotonic() - t0 < 1.0
                if i == 26:
                    cluster.start_node(port)  # it rejoins as the new primary's replica
                    cluster.wait_ok(60)
                    cluster.wait_replicas(60)
                try:
                    d = sms(e, f"m{i}")
                except StoreError:
                    failed.append(f"m{i}")
                    continue
                assert d.ok and not d.replayed
                answered.append(f"m{i}")
            assert failed and len(answered) >= 30
            for key in failed:  # the network element re-sends what got no answer
                assert sms(e, key).ok
            v = e.check_balance(ids(), now=T0)
            assert v is not None and v.balance == 100_000_000 - 60 * 150_000
            rows = [dec_cdr.decode(r) for r in store.outbox()]
            assert sorted(r.session_id for r in rows) == sorted(answered + failed)
            assert sum(r.charge for r in rows) == 60 * 150_000
            assert store.verify(undrained=True) == []
        finally:
            store.close()


def test_a_deleted_subscriber_frees_its_identities(store: ClusterStore) -> None:
    add(store, ALICE, balance="1.00", imsi="228010000000001", username="alice")
    store.run_write(op_set_status(ALICE, "delete"))
    e = engine_on(store)
    assert e.find_subscriber_now(((IdKind.IMSI, "228010000000001"),)) is None
    assert e.find_subscriber_now(((IdKind.USERNAME, "alice"),)) is None
    add(store, "41790000002", balance="1.00", imsi="228010000000001", username="alice")
    sub = e.find_subscriber_now(((IdKind.IMSI, "228010000000001"),))
    assert sub is not None and sub.msisdn == "41790000002"
    d = sms(e, "m1", "41790000002")
    assert d.ok and d.charged == 150_000


def test_one_imsi_is_given_once_across_nodes(store: ClusterStore,
                                             redis_nodes: RedisCluster) -> None:
    """Two nodes provision two new subscribers with the same IMSI at once: the index
    entry is taken only if nobody took it since it was read, so the second finds it
    taken and is refused; the IMSI finds the first, and nothing of the second is kept."""
    imsi, bob = "228010000000042", "41790000002"
    other = ClusterStore(redis_nodes.nodes, wait_timeout_ms=2000)
    runs: list[int] = []
    try:
        def op(tx: Tx) -> object:
            runs.append(1)
            result = op_add_subscriber(NewSubscriber(msisdn=ALICE, plan_id="prepaid-basic",
                                                     imsi=imsi))(tx)
            if len(runs) == 1:  # meanwhile, on the other node
                add(other, bob, imsi=imsi, username="bob")
            return result

        with pytest.raises(Conflict, match="IMSI"):
            store.run_write(op)
        assert len(runs) == 2
        e = engine_on(store)
        sub = e.find_subscriber_now(((IdKind.IMSI, imsi),))
        assert sub is not None and sub.msisdn == bob
        assert e.find_subscriber_now(ids()) is None
        assert store.verify() == []
    finally:
        other.close()


def test_fraud_rules_see_every_nodes_calls(store: ClusterStore, redis_nodes: RedisCluster,
                                           tmp_path: Path) -> None:
    """A SIM box spreads its calls over two nodes: the rules' state is in the account,
    so the 31st call in the hour blocks it whichever node sees it; the case (its id
    naming the account) is listed from the cluster, and resolving it on the other node
    reinstates the subscriber everywhere."""
    add(store, ALICE, balance="50.00")
    fraud = dataclasses.asdict(FraudConfig(high_risk_networks=("99901",)))
    other = ClusterStore(redis_nodes.nodes, wait_timeout_ms=2000)
    try:
        nodes = [ChargingEngine(s, None, EngineSettings(
            node=n, home_networks=frozenset({"22801"}), fraud=fraud))
            for s, n in ((store, "n1"), (other, "n2"))]

        def call(i: int) -> Settlement:
            e = nodes[i % 2]
            sid = f"pcscf;{i}"
            g = e.reserve_sync(ReserveRequest(
                request_key=b"r%d" % i, session_id=sid, subscriber=ids(),
                service=Service.VOICE, units=60, destination=f"4179{i:07d}", now=T0 + i))
            assert g.ok, g
            return e.commit_sync(CommitRequest(
                request_key=b"c%d" % i, session_id=sid, service=Service.VOICE,
                used_units=20, final=True, now=T0 + i + 20))

        for i in range(31):
            assert call(i).ok
        [raw] = store.fraud_cases()
        case = decode_case(raw)
        assert (case.msisdn, case.decision, case.measure) == (ALICE, "block", "suspended")
        assert case.case_id == int(ALICE) * CASE_SPAN + 1
        for e in nodes:
            sub = e.find_subscriber_now(ids())
            assert sub is not None and sub.status == "suspended"
        done = other.run_write(lambda tx: resolve(tx, case.case_id, reinstate=True,
                                                  note="whitelisted", at=T0 + 100))
        assert done.reinstated
        sub = nodes[0].find_subscriber_now(ids())
        assert sub is not None and sub.status == "active"
        assert store.verify() == []
        (tmp_path / "cdr").mkdir()
        with Store(tmp_path / "local") as local:  # the month's KPIs count it
            k = compute(tmp_path / "cdr", local, "2026-11", ledger=store)
        assert k["fraud_cases"] == {"opened": 1, "resolved": 1}
    finally:
        other.close()


def test_a_rerating_difference_moves_once_across_nodes(store: ClusterStore,
                                                       redis_nodes: RedisCluster) -> None:
    """A re-rating run's difference is moved once per (run, subscriber) whichever node
    runs it again: its mark is in the account; its CDR goes to the outbox; a prepaid
    debit stops at the money there is."""
    add(store, ALICE, balance="1.00")
    other = ClusterStore(redis_nodes.nodes, wait_timeout_ms=2000)
    try:
        req = AdjustRequest(msisdn=ALICE, amount=300_000, run_id="rr-1", period="2026-11",
                            now=T0)
        first = engine_on(store).adjust_sync(req)
        assert first.ok and first.amount == 300_000 and not first.capped
        again = engine_on(other, "n2").adjust_sync(req)
        assert again.replayed and again.record_id == first.record_id
        big = engine_on(other, "n2").adjust_sync(AdjustRequest(
            msisdn=ALICE, amount=5_000_000, run_id="rr-2", period="2026-11", now=T0))
        assert big.capped and big.amount == 700_000
        v = engine_on(store).check_balance(ids(), now=T0)
        assert v is not None and v.balance == 0
        rows = [dec_cdr.decode(r) for r in store.outbox()]
        assert sorted((r.session_id, r.charge, r.result) for r in rows) == [
            ("rr-1", 300_000, "rerate"), ("rr-2", 700_000, "rerate")]
        assert store.verify(undrained=True) == []
    finally:
        other.close()


def test_a_csv_import_into_the_cluster(store: ClusterStore, tmp_path: Path) -> None:
    """``ocs subscriber import`` on a cluster: a transaction per subscriber, several at
    once, each with its indexes and opening balance; a file with a row that is taken
    (or twice in the file) is refused whole before anything is written."""
    rows = [f"4179100{i:04d},prepaid-basic,22801{i:010d},user{i},,{i}.50" for i in range(60)]
    good = tmp_path / "good.csv"
    good.write_text("msisdn,plan,imsi,username,password,balance\n" + "\n".join(rows) + "\n")
    assert import_subscribers_each(store, good, threads=1) == 60  # (two steps of 32 rows)
    e = engine_on(store)
    for i in (0, 17, 59):
        sub = e.find_subscriber_now(((IdKind.IMSI, f"22801{i:010d}"),))
        assert sub is not None and sub.msisdn == f"4179100{i:04d}"
        found = e.find_subscriber_now(((IdKind.USERNAME, f"user{i}"),))
        assert found is not None and found.msisdn == sub.msisdn
        v = e.check_balance(((IdKind.MSISDN, sub.msisdn),), now=T0)
        assert v is not None and v.balance == i * 1_000_000 + 500_000
    assert len(store.subscribers()) == 60
    bad = tmp_path / "bad.csv"
    bad.write_text("msisdn,plan,imsi\n41792000001,prepaid-basic,\n"
                   "41792000002,prepaid-basic,228010000000017\n")  # line 3: IMSI taken
    with pytest.raises(ProvisioningError, match=r"bad.csv:3: IMSI 228010000000017 is taken"):
        import_subscribers_each(store, bad)
    twice = tmp_path / "twice.csv"
    twice.write_text("msisdn,plan\n41792000003,prepaid-basic\n41792000003,prepaid-basic\n")
    with pytest.raises(ProvisioningError, match="twice in the file"):
        import_subscribers_each(store, twice)
    assert len(store.subscribers()) == 60  # nothing of either


def test_one_hot_account_on_one_node_never_runs_out_of_attempts(
        store: ClusterStore) -> None:
    """Sixteen operations on one wallet at once from one node take turns on the account
    (before, each re-ran on every other's write and some gave up: a 5012 to the
    gateway): none conflicts, every debit charged exactly."""
    add(store, ALICE, balance="100.00")
    e = engine_on(store)
    results: list[bool] = []

    def run(t: int) -> None:
        for i in range(5):
            results.append(sms(e, f"t{t}-{i}").ok)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [True] * 80 and store.conflicts == 0
    v = e.check_balance(ids(), now=T0)
    assert v is not None and v.balance == 100_000_000 - 80 * 150_000


def test_the_reaper_looks_at_a_slot_again_only_when_its_next_reservation_is_due(
        store: ClusterStore) -> None:
    """Once what was due in a slot is expired, the slot's next look is at its next
    reservation's time (not every pass while it holds any reservation)."""
    from ocs.charging.model import ExpireRequest
    from ocs.store.cluster import slot_of

    add(store, ALICE, balance="1.00")
    e = engine_on(store)
    for sid, at in (("early", T0), ("late", T0 + 500)):
        assert e.reserve_sync(ReserveRequest(
            request_key=sid.encode(), session_id=sid, subscriber=ids(),
            service=Service.DATA, units=MB, rating_group=10, now=at)).ok
    slot = slot_of(b"{" + ALICE.encode() + b"}")
    (key, exp), = store.expiries(T0 + 901)  # (its first look: every slot)
    store._next_full["expiry"] = float("inf")  # from here, only the slots it knows
    assert store.run_write(lambda tx: e.op_expire(
        tx, ExpireRequest(key=key, expires_at=exp, now=T0 + 901)))
    assert store.expiries(T0 + 902) == []
    assert store._expiry_slots.at[slot] == T0 + 500 + 900  # the late one's time
    before = store.round_trips
    assert store.expiries(T0 + 903) == [] and store.round_trips == before  # not asked
    assert [k for k, _ in store.expiries(T0 + 1400)] != []  # due: looked at again
