"""What a charging operation touches in the store, recorded from the real engine on LMDB.

The Redis Cluster backend runs each operation as one atomic step in one hash slot: the
records of one subscriber. So every operation here must (1) touch the records of at most
one subscriber, (2) write outside that subscriber's records only to the stores declared
below (each has its cluster mapping in ``ocs/ledger``), and (3) read each of the
subscriber's records once and write it once (load once, decide, save once).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
from tests_support import WEDNESDAY_NOON, add

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import (
    AdjustRequest,
    CommitRequest,
    DebitRequest,
    ExpireRequest,
    IdKind,
    RefundRequest,
    ReleaseRequest,
    ReserveRequest,
    StoredAnswer,
    SubmitSmsRequest,
)
from ocs.provisioning import op_set_status
from ocs.rating.plans import Service
from ocs.store import Store
from ocs.store import env as db
from ocs.store.records import dec_reservation
from ocs.store.tx import Tx
from ocs.store.verify import verify

T0 = WEDNESDAY_NOON
ALICE, BOB, CAROL = "41790000001", "41790000002", "41790000003"
MB = 1_000_000

SCOPED_BY_KEY = {db.SUBSCRIBERS, db.BALANCES}
"""Records keyed by the subscriber's MSISDN (the balance holds the allowance buckets)."""
READ_ONLY_SHARED = {db.IDX_IMSI, db.IDX_USERNAME, db.PLANS, db.PLAN_VERSIONS, db.ZONES}
"""Indexes and the tariff: read, never written by a charging operation."""
DECLARED_SHARED_WRITES = {db.CDR_JOURNAL, db.RES_EXPIRY, db.ANSWER_EXPIRY, db.FRAUD_CASES,
                          db.SMS, db.SMS_DUE, db.REFUNDS, db.SESSION_OWNERS}
"""Written by charging outside the subscriber's records (see ocs/ledger: the CDR and case
outbox, the expiry indexes, the SMS queue, the refund marks)."""
META_KEYS = {db.META_CDR_SEQ, b"fraud_case_seq"}
RERATE = b"rerate\x00"
"""meta: + run id NUL msisdn -> what a re-rating run moved for that subscriber."""


class RecordingTx(Tx):
    """A real write transaction that keeps what each operation did."""

    def __init__(self, inner: Tx):
        super().__init__(inner._txn, inner._dbs, inner.batch)
        self.log: list[tuple[str, bytes, bytes, bytes | None]] = []

    def get(self, name: bytes, key: bytes) -> bytes | None:
        value = super().get(name, key)
        self.log.append(("get", name, key, value))
        return value

    def put(self, name: bytes, key: bytes, value: bytes) -> None:
        self.log.append(("put", name, key, value))
        super().put(name, key, value)

    def delete(self, name: bytes, key: bytes) -> None:
        self.log.append(("delete", name, key, super().get(name, key)))
        super().delete(name, key)

    def scan(self, name: bytes, start: bytes = b"", stop: bytes | None = None, *,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        self.log.append(("scan", name, start, None))
        return super().scan(name, start, stop, limit=limit)


_answer = msgspec.msgpack.Decoder(StoredAnswer)


def owner(name: bytes, key: bytes, value: bytes | None) -> str | None:
    """The subscriber a record belongs to (None: no subscriber's)."""
    if name in SCOPED_BY_KEY:
        return key.decode()
    if name == db.META and key.startswith(RERATE):
        return key.rsplit(b"\x00", 1)[1].decode()
    if name == db.RESERVATIONS and value is not None:
        return dec_reservation.decode(value).msisdn
    if name == db.ANSWERS and value is not None:
        return getattr(_answer.decode(value).answer, "msisdn", "") or None
    return None


def run(engine: ChargingEngine, op: Callable[[Any], Any]) -> tuple[Any, RecordingTx]:
    box: list[RecordingTx] = []

    def fn(tx: Tx) -> Any:
        box.append(RecordingTx(tx))
        return op(box[0])

    return engine.store.run_write(fn), box[0]


def check(log: list[tuple[str, bytes, bytes, bytes | None]]) -> None:
    owners = {o for what, name, key, value in log if (o := owner(name, key, value))}
    assert len(owners) <= 1, f"one operation touched several subscribers: {owners}"
    for what, name, key, _v in log:
        if what == "get" or what == "scan":
            continue
        if name == db.META:
            assert key in META_KEYS or key.startswith(RERATE), f"undeclared meta {key!r}"
        else:
            assert name in SCOPED_BY_KEY | DECLARED_SHARED_WRITES | {
                db.RESERVATIONS, db.ANSWERS}, f"undeclared write to {name!r}"
    reads = Counter((name, key) for what, name, key, _v in log
                    if what == "get" and name in SCOPED_BY_KEY | {db.RESERVATIONS})
    writes = Counter((name, key) for what, name, key, _v in log
                     if what in ("put", "delete") and name in SCOPED_BY_KEY | {
                         db.RESERVATIONS, db.ANSWERS})
    assert [k for k, n in reads.items() if n > 1] == [], "a record loaded twice"
    assert [k for k, n in writes.items() if n > 1] == [], "a record written twice"


@pytest.fixture
def scoped(demo_store: Store) -> ChargingEngine:
    add(demo_store, ALICE, balance="1.00", imsi="228011234567890")
    add(demo_store, BOB, balance="5.00")
    add(demo_store, CAROL, balance="1.00", roaming=False)
    fraud = {"enabled": True, "review_score": 40, "block_score": 70}
    return ChargingEngine(demo_store, None, EngineSettings(
        node="t1", home_networks=frozenset({"22801"}), fraud=fraud))


def ids(msisdn: str) -> tuple[tuple[IdKind, str], ...]:
    return ((IdKind.MSISDN, msisdn),)


def reserve(key: str, msisdn: str, session: str, **kw: Any) -> ReserveRequest:
    return ReserveRequest(request_key=key.encode(), session_id=session,
                          subscriber=ids(msisdn), service=kw.pop("service", Service.DATA),
                          units=kw.pop("units", 5 * MB), rating_group=kw.pop("rg", 10),
                          now=kw.pop("now", T0), **kw)


def commit(key: str, session: str, used: int, **kw: Any) -> CommitRequest:
    return CommitRequest(request_key=key.encode(), session_id=session,
                         service=Service.DATA, rating_group=10, used_units=used,
                         now=kw.pop("now", T0 + 60), **kw)


def test_every_operation_stays_in_one_subscribers_records(scoped: ChargingEngine) -> None:
    e = scoped
    steps: list[tuple[str, Callable[[Any], Any]]] = [
        ("reserve", lambda tx: e.op_reserve(tx, reserve("r1", ALICE, "s1"))),
        ("reserve again", lambda tx: e.op_reserve(tx, reserve("r1", ALICE, "s1"))),
        ("reserve bob", lambda tx: e.op_reserve(tx, reserve("r2", BOB, "s2"))),
        ("bob takes alice's session", lambda tx: e.op_reserve(tx, reserve("r3", BOB, "s1"))),
        ("interim", lambda tx: e.op_commit(tx, commit("c1", "s1", MB, next_units=MB))),
        ("interim over the money", lambda tx: e.op_commit(
            tx, commit("c2", "s1", 2 * MB, next_units=200 * MB, now=T0 + 90))),
        ("final", lambda tx: e.op_commit(tx, commit("c3", "s1", MB, final=True,
                                                    remember_end=True, now=T0 + 120))),
        ("after the end", lambda tx: e.op_commit(tx, commit("c4", "s1", MB, now=T0 + 130))),
        ("release", lambda tx: e.op_release(tx, ReleaseRequest(
            request_key=b"x2", session_id="s2", service=Service.DATA, rating_group=10))),
        ("roaming reserve", lambda tx: e.op_reserve(tx, reserve(
            "r4", ALICE, "s4", visited_network="31026"))),
        ("roaming refused", lambda tx: e.op_reserve(tx, reserve(
            "r7", CAROL, "s7", visited_network="31026"))),
        ("debit", lambda tx: e.op_debit(tx, DebitRequest(
            request_key=b"d1", subscriber=ids(BOB), service=Service.SMS,
            destination="4915112345", now=T0))),
        ("refund", lambda tx: e.op_refund(tx, RefundRequest(
            request_key=b"f1", original_key=b"d1", now=T0))),
        ("refund twice", lambda tx: e.op_refund(tx, RefundRequest(
            request_key=b"f2", original_key=b"d1", now=T0))),
        ("sms", lambda tx: e.op_submit_sms(tx, SubmitSmsRequest(
            debit=DebitRequest(request_key=b"m1", subscriber=ids(BOB), service=Service.SMS,
                               destination="41791234567", now=T0),
            submitter="esme", route="smsc", source=BOB, destination="41791234567",
            payload=b"hi", validity_s=3600))),
        ("adjust", lambda tx: e.op_adjust(tx, AdjustRequest(
            run_id="run1", msisdn=BOB, amount=10_000, period="2026-11", now=T0))),
        ("unknown subscriber", lambda tx: e.op_reserve(tx, reserve("r5", "41799999999",
                                                                   "s5"))),
        ("reserve to expire", lambda tx: e.op_reserve(tx, reserve("r6", BOB, "s6",
                                                                  validity_s=30))),
    ]
    for name, op in steps:
        _result, tx = run(e, op)
        try:
            check(tx.log)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
    (key, exp), = e.expired_reservations(T0 + 31)
    _r, tx = run(e, lambda tx: e.op_expire(tx, ExpireRequest(key=key, expires_at=exp,
                                                             now=T0 + 31)))
    check(tx.log)


def test_a_refused_grant_and_a_suspended_subscriber_load_each_record_once(
        scoped: ChargingEngine) -> None:
    """A second grant on a session whose usage already took all the money is refused;
    with the fraud rules on, only their state is kept: the balance as stored (it was
    loaded a second time for that) and the session's reaper entry untouched."""
    e = scoped
    run(e, lambda tx: e.op_reserve(tx, reserve("r1", ALICE, "s1")))
    s, _tx = run(e, lambda tx: e.op_commit(tx, commit("c1", "s1", 200 * MB, next_units=MB)))
    assert s.capped and s.next_grant is not None and not s.next_grant.ok
    g, tx = run(e, lambda tx: e.op_reserve(tx, reserve("r2", ALICE, "s1", now=T0 + 70)))
    assert not g.ok
    check(tx.log)
    assert verify(e.store) == []
    e.store.run_write(op_set_status(BOB, "suspend"))
    _g, tx = run(e, lambda tx: e.op_reserve(tx, reserve("r3", BOB, "s2")))
    check(tx.log)


def test_the_check_sees_a_second_subscriber(scoped: ChargingEngine) -> None:
    """The recorder would notice an operation reaching into another subscriber."""
    e = scoped

    def both(tx: Any) -> None:
        e.op_reserve(tx, reserve("r1", ALICE, "s1"))
        e.op_reserve(tx, reserve("r2", BOB, "s2"))

    _r, tx = run(e, both)
    with pytest.raises(AssertionError, match="several subscribers"):
        check(tx.log)
