"""Store-and-forward operations on both real stores (LMDB, and a Redis Cluster on
loopback): queue with the debit, outcomes, receipts, expiry refunds, backoff, binds."""

from __future__ import annotations

import pytest
from tests_support import CONFIG_DIR, WEDNESDAY_NOON, add

from ocs import messaging
from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import DebitRequest, IdKind, SmsOutcomeRequest, SubmitSmsRequest
from ocs.provisioning import op_load_plans
from ocs.rating.plans import Service, load_plans_file
from ocs.store.cluster import ClusterStore
from ocs.store.env import SMS_DUE
from protocols.smpp.pdu import receipt_text

T0 = WEDNESDAY_NOON


@pytest.fixture
def engine(engine_on_both: ChargingEngine) -> ChargingEngine:
    return engine_on_both


def submit(engine: ChargingEngine, key: bytes, regd: int = 1) -> str:
    d = engine.store.run_write(lambda tx: engine.op_submit_sms(tx, SubmitSmsRequest(
        debit=DebitRequest(request_key=key, subscriber=((IdKind.MSISDN, "41790000001"),),
                           service=Service.SMS, destination="41791234567", now=T0),
        submitter="esme", route="esme", source="41790000001", destination="41791234567",
        payload=b"hi", registered_delivery=regd, validity_s=60)))
    assert d.ok and d.charged == 50_000
    return str(d.record_id)


def outcome(engine: ChargingEngine, mid: str, what: str, now: int) -> bool:
    return bool(engine.store.run_write(lambda tx: engine.op_sms_outcome(
        tx, SmsOutcomeRequest(message_id=mid, outcome=what, now=now))))


def queued(engine: ChargingEngine) -> list[messaging.SmsMessage]:
    """The messages in the queue (due or not), by next try."""
    from ocs.store.env import SMS

    if isinstance(engine.store, ClusterStore):  # every slot's due set, read now
        engine.store._last_sms_scan = -1e9
        return sorted((messaging.decode(raw) for raw in engine.store.sms_due(
            2**40, everything=True, limit=10_000)), key=lambda m: (m.next_try, m.message_id))
    store = engine.lmdb("the queue")
    with store.read() as txn:
        return [messaging.decode(txn.get(bytes(k)[8:], db=store.dbs[SMS]))
                for k, _ in txn.cursor(db=store.dbs[SMS_DUE])]


def balance(engine: ChargingEngine) -> int:
    v = engine.check_balance(((IdKind.MSISDN, "41790000001"),))
    assert v is not None
    return v.balance


def test_queue_retry_deliver_receipt(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00")
    mid = submit(engine, b"s1")
    # the same submit again: replayed, not queued twice
    assert submit(engine, b"s1") == mid and len(queued(engine)) == 1
    assert outcome(engine, mid, "retry", T0 + 1)
    (m,) = queued(engine)
    assert (m.attempts, m.next_try) == (1, T0 + 1 + 5)
    assert outcome(engine, mid, "retry", T0 + 7)
    assert queued(engine)[0].next_try == T0 + 7 + 10
    assert outcome(engine, mid, "delivered", T0 + 20)
    assert not outcome(engine, mid, "delivered", T0 + 21)  # already final
    (r,) = queued(engine)
    assert r.kind == "receipt" and r.route == "esme" and r.receipted_id == mid
    # the facts of the receipt; its text is the SMPP side's (protocols.smpp.pdu)
    assert (r.receipt_stat, r.receipt_state, r.original_text) == ("DELIVRD", 2, "hi")
    assert (r.original_submitted_at, r.submitted_at) == (T0, T0 + 20) and r.payload == b""
    assert receipt_text(message_id=r.receipted_id, stat=r.receipt_stat,
                        submitted_at=r.original_submitted_at, done_at=r.submitted_at,
                        text=r.original_text) == (
        f"id:{mid} sub:001 dlvrd:001 submit date:2611181200 "
        f"done date:2611181200 stat:DELIVRD err:000 text:hi")
    assert balance(engine) == 950_000


def test_expiry_refunds_once(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00")
    mid = submit(engine, b"s2", regd=0)
    assert balance(engine) == 950_000
    assert outcome(engine, mid, "expire", T0 + 61)
    assert balance(engine) == 1_000_000
    assert not outcome(engine, mid, "expire", T0 + 62)
    assert balance(engine) == 1_000_000
    assert queued(engine) == []  # no receipt asked for


def test_backoff() -> None:
    assert [messaging.backoff(n) for n in (1, 2, 3, 8, 50)] == [5, 10, 20, 600, 600]


def claim(engine: ChargingEngine, mid: str, expect: int, until: int, now: int) -> bool:
    return bool(engine.store.run_write(lambda tx: engine.op_sms_outcome(
        tx, SmsOutcomeRequest(message_id=mid, outcome="claim", now=now, expect_next_try=expect,
                              lease_until=until))))


def test_claims_let_one_worker_deliver_and_lapse_if_it_never_answers(
        engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00")
    mid = submit(engine, b"s3", regd=0)
    (m,) = queued(engine)
    # two workers read it due at T0; the first claim wins, the second finds it moved
    assert claim(engine, mid, m.next_try, T0 + 15, T0)
    assert not claim(engine, mid, m.next_try, T0 + 15, T0)
    (leased,) = queued(engine)
    assert (leased.next_try, leased.attempts) == (T0 + 15, 0)  # a lease, not an attempt
    # a worker without a receiver does not reschedule what another has claimed
    assert not engine.store.run_write(lambda tx: engine.op_sms_outcome(tx, SmsOutcomeRequest(
        message_id=mid, outcome="retry", now=T0 + 4, expect_next_try=m.next_try)))
    assert queued(engine)[0].next_try == T0 + 15
    # a worker where a receiver just bound reads it as it is now: still leased, refused
    assert not claim(engine, mid, T0 + 15, T0 + 30, T0 + 5)
    # the claimant died: due again when the lease ends, claimed anew, then delivered
    assert claim(engine, mid, T0 + 15, T0 + 30, T0 + 15)
    assert outcome(engine, mid, "delivered", T0 + 16)
    assert queued(engine) == [] and balance(engine) == 950_000


def test_smpp_binds_are_counted_over_every_worker(engine: ChargingEngine) -> None:
    from ocs.charging.model import SmppBindRequest, SmppBindsOf

    def bind(worker: int, release: bool = False, node: str = "a", now: int = T0) -> bool:
        return bool(engine.store.run_write(lambda tx: engine.op_smpp_bind(
            tx, SmppBindRequest(system_id="esme", worker=worker, max_binds=3,
                                release=release, node=node, now=now))))

    def reset(worker: int, node: str = "a") -> int:
        return int(engine.store.run_write(lambda tx: engine.op_smpp_binds_reset(
            tx, SmppBindsOf(node=node, worker=worker, now=T0))))

    assert bind(0) and bind(1) and bind(1)
    assert not bind(0) and not bind(2)  # 3 held over workers 0 and 1
    assert engine.store.run_write(lambda tx: engine.op_smpp_bind(tx, SmppBindRequest(
        system_id="other", worker=2, max_binds=1, node="a", now=T0)))  # counted apart
    assert bind(1, release=True) and bind(2)
    assert reset(1) == 1  # worker 1 restarted: the bind it held is gone
    assert bind(0) and not bind(0)
    assert not bind(0, node="b")  # another node's worker 0 is another holder: 3 held
    assert reset(-1) == 3  # the node restarted: esme on 0 and 2, other on 2 (entries)
    assert bind(0)


def test_smpp_binds_of_a_node_not_heard_from_stop_counting(engine: ChargingEngine) -> None:
    """A cluster: node b died holding binds; from BIND_TTL_S on they count no more,
    while node a, which says it still holds its own, keeps them counted."""
    from ocs.charging.model import BIND_TTL_S, SmppBindRequest, SmppBindsOf

    def bind(node: str, now: int) -> bool:
        return bool(engine.store.run_write(lambda tx: engine.op_smpp_bind(
            tx, SmppBindRequest(system_id="esme", worker=0, max_binds=2, node=node,
                                now=now))))

    def touch(node: str, now: int) -> int:
        return int(engine.store.run_write(lambda tx: engine.op_smpp_binds_touch(
            tx, SmppBindsOf(node=node, worker=0, now=now))))

    assert bind("a", T0) and bind("b", T0)
    assert not bind("c", T0 + 5)
    assert touch("a", T0 + 20) == 1  # a is alive; b says nothing (it died)
    assert not bind("c", T0 + BIND_TTL_S)
    assert bind("c", T0 + BIND_TTL_S + 1)  # b's bind ran out; a's counts
    assert not bind("c", T0 + BIND_TTL_S + 2)
    # an entry of the form before nodes (count only) is this node's: live, reset by it
    from ocs.store.env import META, META_SMPP_BINDS, pack_u64
    engine.store.run_write(lambda tx: tx.put(
        META, META_SMPP_BINDS + b"legacy\x00" + (1).to_bytes(2, "big"), pack_u64(1)))
    assert not engine.store.run_write(lambda tx: engine.op_smpp_bind(tx, SmppBindRequest(
        system_id="legacy", worker=0, max_binds=1, node="a", now=T0 + 10**6)))
    assert engine.store.run_write(lambda tx: engine.op_smpp_binds_reset(
        tx, SmppBindsOf(node="a", worker=-1, now=T0))) == 2  # legacy + a's esme


def test_a_receipt_queued_before_the_receipt_facts_still_decodes() -> None:
    """Receipts queued by the version before carry their text in the payload and none of
    the receipt facts (the record is array-like: the new fields default)."""
    import msgspec

    old = ["m1-r", "receipt", "esme", "esme", "4179", "4178", 0, 4, b"id:m1 stat:DELIVRD",
           0, 100, 200, 100, 0, "enroute", 0, b"", "m1", 2, 0]
    msg = messaging.decode(msgspec.msgpack.encode(old))
    assert msg.receipt_stat == "" and msg.payload == b"id:m1 stat:DELIVRD"
    assert msg.receipted_id == "m1" and msg.receipt_state == 2


def test_on_redis_a_message_lives_in_its_account_and_settled_ones_expire(
        cluster_store: ClusterStore) -> None:
    from ocs.store.cluster import slot_of, sms_due_key, sms_key

    cluster_store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    engine = ChargingEngine(cluster_store, None, EngineSettings(node="t1"))
    add(engine.store, "41790000001", balance="1.00")
    mid = submit(engine, b"r1")
    assert mid.startswith("41790000001-")  # the id names its account
    key = sms_key(mid.encode())
    assert key.startswith(b"{41790000001}:sms:")
    rc = cluster_store.rc
    assert rc.pttl(key) == -1  # waiting: kept
    assert rc.zscore(sms_due_key(slot_of(key)), key) == T0
    assert outcome(engine, mid, "delivered", T0 + 3)
    ttl = rc.pttl(key)
    assert 0 < ttl <= cluster_store.answer_ttl_ms  # history: kept as long as answers
    assert rc.zscore(sms_due_key(slot_of(key)), key) is None
    (r,) = queued(engine)
    assert slot_of(sms_key(r.message_id.encode())) == slot_of(key)  # receipt: same slot
    # ids that name no account of this backend are no message (not an error)
    for bad in ("nope", "-1", "4179-x", "{41790000001}-1", ""):
        assert not outcome(engine, bad, "delivered", T0 + 4)
    assert balance(engine) == 950_000
    assert cluster_store.verify(undrained=True) == []


def test_on_redis_another_node_finds_messages_by_looking_at_every_slot(
        cluster_store: ClusterStore, redis_nodes: object) -> None:
    """Node B knows the slots it wrote to; what node A queued it finds by a look at every
    slot's due set: once a second with receivers bound here (or one that just bound),
    once in SMS_IDLE_SCAN_S without."""
    from ocs.store.cluster import SMS_IDLE_SCAN_S, SMS_SCAN_S, slot_of, sms_key

    cluster_store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    engine = ChargingEngine(cluster_store, None, EngineSettings(node="a"))
    bob = "41790000002"
    add(engine.store, "41790000001", balance="1.00")
    add(engine.store, bob, balance="1.00")
    first = submit(engine, b"a1")
    node_b = ClusterStore(redis_nodes.nodes)  # type: ignore[attr-defined]
    try:
        def found(**kw: bool) -> set[str]:
            return {messaging.decode(r).message_id
                    for r in node_b.sms_due(T0 + 1, **kw)}

        assert found(receivers=False) == {first}  # its first look is at every slot
        d = engine.store.run_write(lambda tx: engine.op_submit_sms(tx, SubmitSmsRequest(
            debit=DebitRequest(request_key=b"a2", subscriber=((IdKind.MSISDN, bob),),
                               service=Service.SMS, destination="41791234567", now=T0),
            submitter="esme", route="esme", source=bob, destination="41791234567",
            payload=b"yo")))
        second = str(d.record_id)
        assert slot_of(sms_key(second.encode())) != slot_of(sms_key(first.encode()))
        assert found(receivers=False) == {first}  # only the slot it knows, for now
        node_b._last_sms_scan -= SMS_SCAN_S
        assert found(receivers=False) == {first}  # idle: not before SMS_IDLE_SCAN_S
        assert found(receivers=True) == {first, second}  # receivers here: every second
        node_b._last_sms_scan -= SMS_SCAN_S
        assert found(receivers=False, everything=True) == {first, second}  # one just bound
        assert SMS_IDLE_SCAN_S > SMS_SCAN_S
        assert engine.store.run_write(lambda tx: engine.op_sms_outcome(tx, SmsOutcomeRequest(
            message_id=second, outcome="delivered", now=T0 + 2)))
        assert found(receivers=False) == {first}  # settled: out of the due set
    finally:
        node_b.close()


def test_on_redis_a_slot_is_looked_at_again_when_its_next_message_is_due(
        cluster_store: ClusterStore) -> None:
    from ocs.store.cluster import slot_of, sms_key

    cluster_store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    engine = ChargingEngine(cluster_store, None, EngineSettings(node="a"))
    add(engine.store, "41790000001", balance="1.00")
    mid = submit(engine, b"l1", regd=0)
    slot = slot_of(sms_key(mid.encode()))
    store = cluster_store
    assert [messaging.decode(r).message_id for r in store.sms_due(T0)] == [mid]  # (full)
    store._last_sms_scan = float("inf")  # no more looks at every slot: the known ones
    assert outcome(engine, mid, "retry", T0 + 1)  # next try T0 + 6
    assert store.sms_due(T0 + 2) == [] and store._sms_slots.at[slot] == T0 + 6
    before = store.round_trips
    assert store.sms_due(T0 + 3) == [] and store.round_trips == before  # nothing asked
    assert [messaging.decode(r).message_id for r in store.sms_due(T0 + 6)] == [mid]
    assert outcome(engine, mid, "delivered", T0 + 7)
    assert store.sms_due(T0 + 8) == [] and slot not in store._sms_slots.at


def test_on_redis_a_receiver_that_binds_gets_its_messages_behind_many_others(
        cluster_store: ClusterStore) -> None:
    """A look for a freshly bound route reads past the page limit: 30 messages put off
    for another route do not hide the one waiting for the new receiver."""
    cluster_store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    engine = ChargingEngine(cluster_store, None, EngineSettings(node="a"))
    add(engine.store, "41790000001", balance="10.00")
    for i in range(30):
        mid = submit(engine, b"o%d" % i, regd=0)
        assert outcome(engine, mid, "retry", T0)  # put off: next try T0 + 5
    d = engine.store.run_write(lambda tx: engine.op_submit_sms(tx, SubmitSmsRequest(
        debit=DebitRequest(request_key=b"mine", subscriber=((IdKind.MSISDN, "41790000001"),),
                           service=Service.SMS, destination="41891234567", now=T0),
        submitter="esme", route="other", source="41790000001", destination="41891234567",
        payload=b"x")))
    assert outcome(engine, str(d.record_id), "retry", T0)
    got = messaging.due_in_cluster(cluster_store, T0 + 1, fresh_routes={"other"},
                                   skip=set(), limit=10)
    assert [m.message_id for m in got] == [str(d.record_id)]
