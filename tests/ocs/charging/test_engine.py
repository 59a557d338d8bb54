"""The charging engine on both store adapters, a real LMDB store and a real Redis Cluster
(3 primaries, 3 replicas on loopback), with exact amounts."""

from __future__ import annotations

import pytest
from tests_support import WEDNESDAY_NOON, add

from ocs.charging.engine import ChargingEngine
from ocs.charging.model import (
    CommitRequest,
    DebitRequest,
    ExpireRequest,
    IdKind,
    RefundRequest,
    Refusal,
    ReleaseRequest,
    ReserveRequest,
    TrimRequest,
)
from ocs.provisioning import op_set_status, op_topup
from ocs.rating.plans import Service
from ocs.store.cluster import ClusterStore
from ocs.store.env import CDR_JOURNAL
from ocs.store.records import dec_cdr
from ocs.store.verify import verify

T0 = WEDNESDAY_NOON
ALICE = ((IdKind.MSISDN, "41790000001"),)
MB = 1_000_000


@pytest.fixture
def engine(engine_on_both: ChargingEngine) -> ChargingEngine:
    return engine_on_both


def on_redis(engine: ChargingEngine) -> bool:
    return isinstance(engine.store, ClusterStore)


def consistent(engine: ChargingEngine) -> bool:
    """The store's records agree with each other (``ocs store verify`` on LMDB, its
    cluster counterpart on Redis)."""
    if isinstance(engine.store, ClusterStore):
        return engine.store.verify(undrained=True) == []
    return verify(engine.lmdb("verify")) == []


def bal(engine: ChargingEngine, ids=ALICE):  # type: ignore[no-untyped-def]
    v = engine.check_balance(ids, now=T0)
    assert v is not None
    return v


def cdrs(engine: ChargingEngine) -> list:  # type: ignore[type-arg]
    """The CDRs journalled (LMDB) or waiting in the slots' outboxes (Redis)."""
    if isinstance(engine.store, ClusterStore):
        return [dec_cdr.decode(v) for v in engine.store.outbox()]
    store = engine.lmdb("the journal")
    with store.read() as txn:
        return [dec_cdr.decode(v) for _, v in txn.cursor(db=store.dbs[CDR_JOURNAL])]


def reserve(engine: ChargingEngine, key: str, units: int | None = 5 * MB, rg: int | None = 10,
            session: str = "s1", ids=ALICE, service=Service.DATA, **kw):  # type: ignore[no-untyped-def]
    return engine.reserve_sync(ReserveRequest(
        request_key=key.encode(), session_id=session, subscriber=ids, service=service,
        units=units, rating_group=rg, now=kw.pop("now", T0), **kw))


def commit(engine: ChargingEngine, key: str, used: int, *, rg: int | None = 10,
           session: str = "s1", final: bool = False, next_units: int | None = None,
           service=Service.DATA, now: int = T0 + 60):  # type: ignore[no-untyped-def]
    return engine.commit_sync(CommitRequest(
        request_key=key.encode(), session_id=session, service=service, rating_group=rg,
        used_units=used, bytes_in=used // 2, bytes_out=used - used // 2, final=final,
        next_units=next_units, now=now))


def test_reserve_commit_exact(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00")
    g = reserve(engine, "r1")
    assert g.ok and g.granted_units == 5 * MB and not g.final
    assert g.money_reserved == 50_000 and g.rate_id == "data-home"
    v = bal(engine)
    assert (v.balance, v.reserved, v.available) == (1_000_000, 50_000, 950_000)
    s = commit(engine, "c1", 3 * MB + 1, final=True)
    assert s.ok and s.charged == 30_001 and not s.capped
    v = bal(engine)
    assert (v.balance, v.reserved) == (969_999, 0)
    rows = cdrs(engine)
    assert len(rows) == 1
    r = rows[0]
    assert (r.charge, r.units, r.rate_id, r.result, r.session_id) == (
        30_001, 3 * MB + 1, "data-home", "final", "s1")
    # numbered per node on LMDB, per account on Redis (unique across the nodes)
    assert r.record_id == ("41790000001-1" if on_redis(engine) else "t1-1")
    assert r.start_time == T0 and r.end_time == T0 + 60


def test_interim_commits_price_cumulatively(engine: ChargingEngine) -> None:
    """Voice blocks: 61 s then 59 s is 120 s = 2 blocks, not 3."""
    add(engine.store, "41790000001", balance="10.00")
    g = reserve(engine, "r1", units=120, rg=None, service=Service.VOICE,
                destination="41441234567")
    assert g.ok and g.money_reserved == 200_000
    s1 = commit(engine, "c1", 61, rg=None, service=Service.VOICE, next_units=59)
    assert s1.charged == 200_000
    assert s1.next_grant is not None and s1.next_grant.ok
    # the second minute is already paid by the block: no more money is needed for 59 s
    assert s1.next_grant.money_reserved == 0
    s2 = commit(engine, "c2", 59, rg=None, service=Service.VOICE, final=True, now=T0 + 120)
    assert s2.charged == 0
    assert bal(engine).balance == 10_000_000 - 200_000
    assert [c.charge for c in cdrs(engine)] == [200_000, 0]


def test_grant_limited_by_credit_is_final(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="0.025")
    g = reserve(engine, "r1", units=10 * MB)
    assert g.ok and g.final
    assert g.granted_units == 2_500_000 and g.money_reserved == 25_000
    # nothing left for a second session
    g2 = reserve(engine, "r2", session="s2")
    assert not g2.ok and g2.refusal == Refusal.OUT_OF_CREDIT


def test_overuse_caps_prepaid_at_zero(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="0.01")
    g = reserve(engine, "r1", units=MB)
    assert g.ok and g.money_reserved == 10_000
    s = commit(engine, "c1", 5 * MB, final=True)
    assert s.capped and s.charged == 10_000
    assert bal(engine).balance == 0
    assert cdrs(engine)[0].result == "capped"


def test_no_free_slack_after_capped_interim(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="0.01")
    reserve(engine, "r1", units=MB)
    s = commit(engine, "c1", 4_294_968_296, next_units=MB)  # far beyond the credit
    assert s.capped and s.charged == 10_000
    assert s.next_grant is not None and not s.next_grant.ok
    assert s.next_grant.refusal == Refusal.OUT_OF_CREDIT and s.next_grant.final


def test_retry_is_replayed_not_charged_twice(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00")
    reserve(engine, "r1")
    s1 = commit(engine, "c1", MB, next_units=MB)
    s2 = commit(engine, "c1", MB, next_units=MB)
    assert not s1.replayed and s2.replayed
    assert s2.charged == s1.charged == 10_000
    assert bal(engine).balance == 990_000
    assert len(cdrs(engine)) == 1
    d1 = engine.debit_sync(DebitRequest(request_key=b"d", subscriber=ALICE,
                                        service=Service.SMS, destination="41791", now=T0))
    d2 = engine.debit_sync(DebitRequest(request_key=b"d", subscriber=ALICE,
                                        service=Service.SMS, destination="41791", now=T0))
    assert d1.charged == 50_000 and d2.replayed
    assert bal(engine).balance == 940_000


def test_release_returns_everything(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00")
    reserve(engine, "r1")
    r = engine.release_sync(ReleaseRequest(request_key=b"x", session_id="s1",
                                           service=Service.DATA, rating_group=10, now=T0))
    assert r.ok and r.money_released == 50_000
    v = bal(engine)
    assert (v.balance, v.reserved) == (1_000_000, 0)
    assert cdrs(engine) == []
    assert engine.session_reservations("s1") == []
    assert engine.expired_reservations(T0 + 10**6) == []  # no reaper entry left


def test_refusals(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00")
    add(engine.store, "41790000002", balance="1.00", roaming=False)
    unknown = ((IdKind.MSISDN, "41799999999"),)
    assert reserve(engine, "a", ids=unknown).refusal == Refusal.UNKNOWN_SUBSCRIBER
    assert reserve(engine, "b", rg=77).refusal == Refusal.RATING_FAILED
    bob = ((IdKind.MSISDN, "41790000002"),)
    g = reserve(engine, "c", ids=bob, visited_network="26201")
    assert g.refusal == Refusal.ROAMING_NOT_ALLOWED
    # home network listed in home_networks is not roaming
    assert reserve(engine, "d", ids=bob, visited_network="22801", session="s9").ok
    engine.store.run_write(op_set_status("41790000001", "suspend"))
    assert reserve(engine, "e").refusal == Refusal.SUSPENDED
    engine.store.run_write(op_set_status("41790000001", "block"))
    assert reserve(engine, "f").refusal == Refusal.BLOCKED
    engine.store.run_write(op_set_status("41790000001", "delete"))
    assert reserve(engine, "g").refusal == Refusal.TERMINATED
    assert commit(engine, "h", 1, session="nope").refusal == Refusal.UNKNOWN_RESERVATION


def test_session_id_of_another_subscriber_is_refused(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00")
    add(engine.store, "41790000002", balance="1.00")
    assert reserve(engine, "r1").ok
    g = reserve(engine, "r2", ids=((IdKind.MSISDN, "41790000002"),))
    assert g.refusal == Refusal.SESSION_CONFLICT
    assert bal(engine).reserved == 50_000
    assert bal(engine, ((IdKind.MSISDN, "41790000002"),)).reserved == 0


def test_zero_rated_group(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="0")
    g = reserve(engine, "r1", rg=99)
    assert g.ok and g.zero_rated and g.money_reserved == 0


def test_lookup_by_imsi_and_username(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00", imsi="228010000000001",
        username="alice@example.net")
    ids = ((IdKind.USERNAME, "nobody"), (IdKind.IMSI, "228010000000001"))
    assert reserve(engine, "r1", ids=ids).msisdn == "41790000001"
    ids2 = ((IdKind.USERNAME, "alice@example.net"),)
    assert reserve(engine, "r2", ids=ids2, session="s2").msisdn == "41790000001"


def test_allowance_first_then_money(engine: ChargingEngine) -> None:
    carol = ((IdKind.MSISDN, "41790000003"),)
    add(engine.store, "41790000003", plan="prepaid-data", balance="1.00")
    # 1 GB allowance: reserve 999 MB from it, then a 2 MB request spans the boundary
    g = reserve(engine, "r1", ids=carol, units=999 * MB, rg=None)
    assert g.ok and g.allowance_reserved == 999 * MB and g.money_reserved == 0
    s = commit(engine, "c1", 999 * MB, rg=None, final=True)
    assert s.charged == 0 and s.allowance_used == 999 * MB
    g2 = reserve(engine, "r2", ids=carol, units=2 * MB, rg=None, session="s2")
    assert g2.allowance_reserved == MB and g2.money_reserved == 5_000  # 1 MB at 0.005
    s2 = commit(engine, "c2", 2 * MB, rg=None, session="s2", final=True)
    assert s2.charged == 5_000 and s2.allowance_used == MB
    v = bal(engine, carol)
    assert v.balance == 995_000
    assert v.allowances["data"]["remaining"] == 0
    # SMS allowance (100) used before money, by direct debit
    d = engine.debit_sync(DebitRequest(request_key=b"sms1", subscriber=carol,
                                       service=Service.SMS, units=2, now=T0))
    assert d.allowance_used == 2 and d.charged == 0


def test_roaming_does_not_use_allowance(engine: ChargingEngine) -> None:
    carol = ((IdKind.MSISDN, "41790000003"),)
    add(engine.store, "41790000003", plan="prepaid-data", balance="1.00")
    g = reserve(engine, "r1", ids=carol, units=MB, rg=None, visited_network="26201")
    assert g.ok and g.allowance_reserved == 0 and g.rate_id == "data-eu"
    assert g.money_reserved == 20_000


def test_postpaid_credit_limit(engine: ChargingEngine) -> None:
    dave = ((IdKind.MSISDN, "41790000004"),)
    add(engine.store, "41790000004", plan="postpaid-business", postpaid=True,
        credit_limit="1.00")
    # roaming data (no allowance): 0.50 per MB against a 1.00 credit limit
    g = reserve(engine, "r1", ids=dave, units=5 * MB, rg=None, visited_network="310260")
    assert g.ok and g.final and g.granted_units == 2 * MB and g.money_reserved == 1_000_000
    s = commit(engine, "c1", 3 * MB, rg=None, final=True)
    # postpaid usage is charged in full (billed later), even past the limit
    assert s.charged == 1_500_000 and not s.capped
    v = bal(engine, dave)
    assert v.balance == -1_500_000 and v.available == 0
    g2 = reserve(engine, "r2", ids=dave, units=MB, rg=None, session="s2",
                 visited_network="310260")
    assert g2.refusal == Refusal.CREDIT_LIMIT_REACHED


def test_direct_debit_and_refund(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="0.20")
    d = engine.debit_sync(DebitRequest(request_key=b"sms-1", subscriber=ALICE,
                                       service=Service.SMS, destination="4915112345", now=T0))
    assert d.ok and d.charged == 150_000 and d.rate_id == "sms-international"
    d2 = engine.debit_sync(DebitRequest(request_key=b"sms-2", subscriber=ALICE,
                                        service=Service.SMS, destination="4915112345", now=T0))
    assert not d2.ok and d2.refusal == Refusal.OUT_OF_CREDIT
    assert bal(engine).balance == 50_000
    r = engine.refund_sync(RefundRequest(request_key=b"ref-1", original_key=b"sms-1", now=T0))
    assert r.ok and r.refunded == 150_000
    again = engine.refund_sync(RefundRequest(request_key=b"ref-2", original_key=b"sms-1",
                                             now=T0))
    assert again.refusal == Refusal.ALREADY_REFUNDED
    assert engine.refund_sync(RefundRequest(request_key=b"ref-1", original_key=b"sms-1",
                                            now=T0)).replayed
    assert engine.refund_sync(RefundRequest(request_key=b"ref-3", original_key=b"sms-2",
                                            now=T0)).refusal == Refusal.NOT_REFUNDABLE
    assert bal(engine).balance == 200_000
    assert [(c.charge, c.result) for c in cdrs(engine)] == [(150_000, "event"),
                                                          (-150_000, "refund")]


def test_reaper_settles_expired(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00")
    reserve(engine, "r1", validity_s=30)
    assert engine.expired_reservations(T0 + 29) == []
    due = engine.expired_reservations(T0 + 31)
    assert len(due) == 1
    key, exp = due[0]
    assert engine.store.run_write(
        lambda tx: engine.op_expire(tx, ExpireRequest(key=key, expires_at=exp, now=T0 + 31)))
    v = bal(engine)
    assert (v.balance, v.reserved) == (1_000_000, 0)
    rows = cdrs(engine)
    assert [(r.result, r.charge, r.units) for r in rows] == [("expired", 0, 0)]
    assert engine.expired_reservations(T0 + 10_000) == []


def test_refreshed_reservation_is_not_reaped(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00")
    reserve(engine, "r1", validity_s=30)
    (key, exp), = engine.expired_reservations(T0 + 31)
    commit(engine, "c1", MB, next_units=MB, now=T0 + 20)  # refreshes expiry to T0+20+900
    assert not engine.store.run_write(
        lambda tx: engine.op_expire(tx, ExpireRequest(key=key, expires_at=exp, now=T0 + 31)))
    assert bal(engine).reserved == 10_000


def test_price_enquiry_and_top_up(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00")
    q = engine.price_enquiry(ALICE, Service.VOICE, 61, destination="41900123", now=T0)
    assert q.ok and q.charge == 4_500_000 and q.rate_id == "voice-premium"
    assert q.billed_units == 120
    engine.store.run_write(op_topup("41790000001", "2.50"))
    assert bal(engine).balance == 3_500_000


def test_answer_trim(engine: ChargingEngine) -> None:
    if on_redis(engine):
        pytest.skip("answers on Redis expire by their own TTL (the cluster tests check it)")
    add(engine.store, "41790000001", balance="1.00")
    reserve(engine, "r1")
    assert engine.store.run_write(
        lambda tx: engine.op_trim_answers(tx, TrimRequest(before=T0))) == 0
    assert engine.store.run_write(
        lambda tx: engine.op_trim_answers(tx, TrimRequest(before=T0 + 1))) == 1


def test_a_key_reused_with_other_content_is_refused(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00")
    assert reserve(engine, "r1").ok
    first = commit(engine, "c1", MB, next_units=5 * MB)
    assert first.ok and first.charged == 10_000
    again = commit(engine, "c1", 5 * MB, next_units=5 * MB)  # same key, other usage
    assert (again.ok, again.refusal, again.charged) == (False, Refusal.REQUEST_MISMATCH, 0)
    replay = commit(engine, "c1", MB, next_units=5 * MB, now=T0 + 999)  # a retransmission
    assert replay.ok and replay.replayed and replay.charged == 10_000
    assert bal(engine).balance == 990_000 and len(cdrs(engine)) == 1
    other = reserve(engine, "r1", units=7 * MB)
    assert other.refusal == Refusal.REQUEST_MISMATCH


def test_reports_after_the_end_charge_nothing(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00")
    assert reserve(engine, "r1").ok
    stop = engine.commit_sync(CommitRequest(
        request_key=b"stop", session_id="s1", service=Service.DATA, rating_group=10,
        used_units=2 * MB, final=True, remember_end=True, now=T0 + 60))
    assert stop.charged == 20_000
    late = commit(engine, "stop-again", 2 * MB, final=True)
    assert (late.ok, late.refusal) == (False, Refusal.SESSION_ENDED)
    interim = commit(engine, "interim-after", 3 * MB, next_units=0)
    assert interim.refusal == Refusal.SESSION_ENDED
    v = bal(engine)
    assert (v.balance, v.reserved) == (980_000, 0) and len(cdrs(engine)) == 1


def test_sessions_belong_to_their_owner(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00")
    assert reserve(engine, "r1", owner="radius:a").ok
    stolen = engine.commit_sync(CommitRequest(
        request_key=b"x", session_id="s1", service=Service.DATA, rating_group=10,
        used_units=4 * MB, final=True, now=T0 + 60, owner="radius:b"))
    assert (stolen.ok, stolen.refusal) == (False, Refusal.NOT_OWNER)
    assert reserve(engine, "r2", owner="radius:b").refusal == Refusal.NOT_OWNER
    mine = engine.commit_sync(CommitRequest(
        request_key=b"y", session_id="s1", service=Service.DATA, rating_group=10,
        used_units=MB, final=True, now=T0 + 60, owner="radius:a"))
    assert mine.ok and mine.charged == 10_000 and bal(engine).balance == 990_000


def test_implausible_usage(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00")
    limit = engine.settings.max_usage_bytes
    assert reserve(engine, "r1").ok
    refused = commit(engine, "c1", limit + 1, next_units=0)
    assert (refused.ok, refused.refusal) == (False, Refusal.IMPLAUSIBLE_USAGE)
    assert bal(engine).balance == 1_000_000
    # clamped (RADIUS): the limit's worth is charged (capped by the credit), the rest not,
    # and a later cumulative report does not charge it either
    clamped = engine.commit_sync(CommitRequest(
        request_key=b"c2", session_id="s1", service=Service.DATA, rating_group=10,
        cumulative_units=2**63 - 1, next_units=0, now=T0 + 60, clamp_excess=True))
    assert clamped.ok and clamped.excess_units == 2**63 - 1 - limit
    assert clamped.charged == 1_000_000 and clamped.capped
    later = engine.commit_sync(CommitRequest(
        request_key=b"c3", session_id="s1", service=Service.DATA, rating_group=10,
        cumulative_units=2**63 - 1, final=True, now=T0 + 90, clamp_excess=True))
    assert later.ok and later.used_units == 0 and later.charged == 0
    d = engine.debit_sync(DebitRequest(request_key=b"d", subscriber=ALICE,
                                       service=Service.SMS, units=10_001, destination="4179",
                                       now=T0))
    assert d.refusal == Refusal.IMPLAUSIBLE_USAGE


def test_a_refused_grant_on_an_open_session_keeps_it_reapable(engine: ChargingEngine) -> None:
    """Its usage took all the money; a new CCR-I on the same session is refused and the
    session stays with its reaper entry (it was lost before: reaped never)."""
    add(engine.store, "41790000001", balance="1.00")
    reserve(engine, "r1")
    s = commit(engine, "c1", 200 * MB, next_units=MB)
    assert s.capped and s.charged == 1_000_000 and not s.next_grant.ok  # type: ignore[union-attr]
    g = reserve(engine, "r2", now=T0 + 70)
    assert not g.ok and g.refusal == Refusal.OUT_OF_CREDIT
    assert consistent(engine)
    (key, exp), = engine.expired_reservations(T0 + 60 + 901)
    assert engine.store.run_write(lambda tx: engine.op_expire(
        tx, ExpireRequest(key=key, expires_at=exp, now=T0 + 60 + 901)))
    assert bal(engine).balance == 0 and consistent(engine)


def test_a_refund_gives_back_the_allowance_the_debit_used(engine: ChargingEngine) -> None:
    add(engine.store, "41790000009", plan="postpaid-business")
    biz = ((IdKind.MSISDN, "41790000009"),)
    d = engine.debit_sync(DebitRequest(request_key=b"sms-a", subscriber=biz,
                                       service=Service.SMS, destination="41791234567",
                                       now=T0))
    assert d.ok and (d.allowance_used, d.charged) == (1, 0)
    assert bal(engine, biz).allowances["sms"]["used"] == 1
    r = engine.refund_sync(RefundRequest(request_key=b"ref-a", original_key=b"sms-a",
                                         now=T0))
    assert r.ok and (r.refunded, r.allowance_restored) == (0, 1)
    assert bal(engine, biz).allowances["sms"] == {"total": 500, "used": 0, "reserved": 0,
                                                  "remaining": 500}
    assert [(c.result, c.units, c.allowance_units) for c in cdrs(engine)] == [
        ("event", 1, 1), ("refund", -1, -1)]
    assert consistent(engine)


def test_a_session_id_longer_than_a_store_key_still_charges(engine: ChargingEngine) -> None:
    """Peers choose session ids (a RADIUS one is the client, a 253-byte NAS-Identifier and
    a 253-byte Acct-Session-Id): reservations of any length are kept (LMDB takes keys of
    511 bytes), found again by session and by its RADIUS prefix, and charged exactly."""
    add(engine.store, "41790000001", balance="1.00")
    prefix = "radius:c:" + "n" * 253 + ":"
    long_sid = prefix + "s" * 253
    other = prefix + "s" * 252 + "t"  # the same first 400 bytes
    assert reserve(engine, "r1", session=long_sid).money_reserved == 50_000
    assert reserve(engine, "r2", session=other).money_reserved == 50_000
    assert [r.session_id for r in engine.session_reservations(long_sid)] == [long_sid]
    assert {r.session_id for r in engine.reservations_with_prefix(prefix)} == {long_sid,
                                                                              other}
    s = commit(engine, "c1", MB, session=long_sid, final=True)
    assert s.ok and s.charged == 10_000
    assert [r.session_id for r in engine.session_reservations(other)] == [other]
    assert bal(engine).balance == 990_000 and bal(engine).reserved == 50_000
    assert consistent(engine)
