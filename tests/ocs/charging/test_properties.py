"""Property: no sequence of operations makes a prepaid balance negative or creates or
destroys money, and every committed charge has exactly one CDR."""

from __future__ import annotations

import tempfile
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests_support import CONFIG_DIR, WEDNESDAY_NOON, add

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import (
    CommitRequest,
    DebitRequest,
    ExpireRequest,
    IdKind,
    RefundRequest,
    ReleaseRequest,
    ReserveRequest,
)
from ocs.provisioning import op_load_plans, op_topup
from ocs.rating.plans import Service, load_plans_file
from ocs.store import Store
from ocs.store.env import CDR_JOURNAL, RESERVATIONS
from ocs.store.records import dec_cdr, dec_reservation

SUBS = ["41790000001", "41790000003", "41790000004"]  # basic, data-allowance, postpaid
SESSIONS = ["s0", "s1", "s2"]

op_strategy = st.one_of(
    st.tuples(st.just("reserve"), st.sampled_from(SUBS), st.sampled_from(SESSIONS),
              st.integers(0, 3_000_000), st.sampled_from([Service.DATA, Service.VOICE])),
    st.tuples(st.just("commit"), st.sampled_from(SESSIONS), st.integers(0, 4_000_000),
              st.booleans(), st.one_of(st.none(), st.integers(0, 2_000_000)),
              st.sampled_from([Service.DATA, Service.VOICE])),
    st.tuples(st.just("release"), st.sampled_from(SESSIONS),
              st.sampled_from([Service.DATA, Service.VOICE])),
    st.tuples(st.just("debit"), st.sampled_from(SUBS), st.integers(1, 5),
              st.sampled_from(["41791", "4915", "41900"])),
    st.tuples(st.just("refund"), st.integers(0, 20)),
    st.tuples(st.just("topup"), st.sampled_from(SUBS[:2]), st.integers(1, 500_000)),
    st.tuples(st.just("retry"), st.integers(0, 50)),
    st.tuples(st.just("expire"), st.integers(0, 2000)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op_strategy, min_size=1, max_size=40))
def test_money_is_conserved_and_never_negative(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = Store(d, map_size_mb=32)
        try:
            _run(store, ops)
        finally:
            store.close()


def _run(store: Store, ops: list[tuple[Any, ...]]) -> None:
    store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    add(store, SUBS[0], balance="0.30")
    add(store, SUBS[1], plan="prepaid-data", balance="0.05")
    add(store, SUBS[2], plan="postpaid-business", postpaid=True, credit_limit="0.50")
    eng = ChargingEngine(store, None, EngineSettings(node="p", home_networks=frozenset()))
    topped = {s: 0 for s in SUBS}
    initial = {SUBS[0]: 300_000, SUBS[1]: 50_000, SUBS[2]: 0}
    now = WEDNESDAY_NOON
    sent: list[Any] = []  # requests sent, for retries
    debits: list[bytes] = []
    expected_cdrs = 0
    for i, op in enumerate(ops):
        now += 7
        key = f"k{i}".encode()
        kind = op[0]
        req: Any = None
        if kind == "reserve":
            _, sub, sess, units, svc = op
            req = ReserveRequest(request_key=key, session_id=sess,
                                 subscriber=((IdKind.MSISDN, sub),), service=svc, units=units,
                                 rating_group=10 if svc is Service.DATA else None,
                                 destination="41441234567", now=now)
        elif kind == "commit":
            _, sess, used, final, nxt, svc = op
            req = CommitRequest(request_key=key, session_id=sess, service=svc,
                                rating_group=10 if svc is Service.DATA else None,
                                used_units=used, final=final, next_units=nxt, now=now)
        elif kind == "release":
            _, sess, svc = op
            req = ReleaseRequest(request_key=key, session_id=sess, service=svc,
                                 rating_group=10 if svc is Service.DATA else None, now=now)
        elif kind == "debit":
            _, sub, n, dest = op
            req = DebitRequest(request_key=key, subscriber=((IdKind.MSISDN, sub),),
                               service=Service.SMS, units=n, destination=dest, now=now)
            debits.append(key)
        elif kind == "refund" and debits:
            req = RefundRequest(request_key=key, original_key=debits[op[1] % len(debits)],
                                now=now)
        elif kind == "topup":
            store.run_write(op_topup(op[1], f"0.{op[2]:06d}"))
            topped[op[1]] += op[2]
        elif kind == "retry" and sent:
            req = sent[op[1] % len(sent)]
        elif kind == "expire":
            now += op[1]
            for k, exp in eng.expired_reservations(now):
                expire = ExpireRequest(key=k, expires_at=exp, now=now)
                if store.run_write(lambda tx, r=expire: eng.op_expire(tx, r)):  # type: ignore[misc]
                    expected_cdrs += 1
        if req is None:
            continue
        result = _dispatch(eng, req)
        if req not in sent:
            sent.append(req)
            if getattr(result, "record_id", ""):
                expected_cdrs += 1
        else:
            assert result.replayed
        _check(store, eng, initial, topped, expected_cdrs)


def _dispatch(eng: ChargingEngine, req: Any) -> Any:
    if isinstance(req, ReserveRequest):
        return eng.reserve_sync(req)
    if isinstance(req, CommitRequest):
        return eng.commit_sync(req)
    if isinstance(req, ReleaseRequest):
        return eng.release_sync(req)
    if isinstance(req, DebitRequest):
        return eng.debit_sync(req)
    return eng.refund_sync(req)


def _check(store: Store, eng: ChargingEngine, initial: dict[str, int], topped: dict[str, int],
           expected_cdrs: int) -> None:
    with store.read() as txn:
        rows = [dec_cdr.decode(v) for _, v in txn.cursor(db=store.dbs[CDR_JOURNAL])]
        open_res = [dec_reservation.decode(v) for _, v in txn.cursor(db=store.dbs[RESERVATIONS])]
    assert len(rows) == expected_cdrs
    assert len({r.record_id for r in rows}) == len(rows)
    for sub in SUBS:
        v = eng.check_balance(((IdKind.MSISDN, sub),))
        assert v is not None
        charged = sum(r.charge for r in rows if r.msisdn == sub)
        # conservation: nothing created or destroyed
        assert initial[sub] + topped[sub] == v.balance + charged
        # reserved equals the money held by open reservations
        assert v.reserved == sum(r.money_reserved for r in open_res if r.msisdn == sub)
        if v.mode == "prepaid":
            assert v.balance >= 0
            assert v.balance - v.reserved >= 0
