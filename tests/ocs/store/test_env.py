"""Opening a store: schema 1 (reservations keyed by session) migrates to 2."""

from __future__ import annotations

from pathlib import Path

import msgspec
from tests_support import CONFIG_DIR, WEDNESDAY_NOON, add

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import CommitRequest, IdKind, ReserveRequest
from ocs.provisioning import op_load_plans
from ocs.rating.plans import Service, load_plans_file
from ocs.store.env import (
    ALLOWANCES,
    ANSWER_EXPIRY,
    ANSWERS,
    BALANCES,
    ENDED_PREFIX,
    META,
    META_SCHEMA,
    RES_EXPIRY,
    RESERVATIONS,
    SCHEMA_VERSION,
    SESSION_OWNERS,
    Store,
    pack_u64,
    session_part,
    unpack_u64,
)
from ocs.store.records import dec_balance, dec_reservation, encode
from ocs.store.tx import Tx
from ocs.store.verify import verify

T0 = WEDNESDAY_NOON
ALICE, BIZ = "41790000001", "41790000003"


def _engine(store: Store) -> ChargingEngine:
    return ChargingEngine(store, None, EngineSettings(node="t1"))


def _as_schema_1(tx: Tx, sessions: tuple[str, ...] = ()) -> None:
    """Lay the store out as schema 1 wrote it: reservations under session NUL unit (the
    whole session id, however long), no owner index, the allowance buckets in a record of
    their own, the ended-session markers of ``sessions`` under their whole ids too."""
    for key, raw in tx.scan(RESERVATIONS):
        res = dec_reservation.decode(raw)
        v1 = res.session_id.encode() + b"\x00" + res.key.rpartition(b"\x00")[2]
        tx.delete(RESERVATIONS, key)
        if tx.get(RES_EXPIRY, pack_u64(res.expires_at) + res.key) is not None:
            tx.delete(RES_EXPIRY, pack_u64(res.expires_at) + res.key)
            tx.put(RES_EXPIRY, pack_u64(res.expires_at) + v1, b"")
        res.key = v1
        tx.put(RESERVATIONS, v1, encode(res))
    for key, raw in tx.scan(ANSWERS, ENDED_PREFIX, ENDED_PREFIX + b"\xff"):
        for sid in sessions:
            short = ENDED_PREFIX + session_part(sid) + b"\x00"
            if key.startswith(short):
                v1 = ENDED_PREFIX + sid.encode() + b"\x00" + key[len(short):]
                at = pack_u64(int(msgspec.msgpack.decode(raw)[0]))
                tx.delete(ANSWERS, key)
                tx.put(ANSWERS, v1, raw)
                tx.delete(ANSWER_EXPIRY, at + key)
                tx.put(ANSWER_EXPIRY, at + v1, b"")
    for key, _v in tx.scan(SESSION_OWNERS):
        tx.delete(SESSION_OWNERS, key)
    for key, raw in tx.scan(BALANCES):
        bal = dec_balance.decode(raw)
        if bal.allowance is not None:
            tx.put(ALLOWANCES, key, encode(bal.allowance))
            bal.allowance = None
            tx.put(BALANCES, key, encode(bal))
    tx.put(META, META_SCHEMA, pack_u64(1))


def test_schema_1_reservations_move_under_their_subscriber(tmp_path: Path) -> None:
    data = tmp_path / "d"
    store = Store(data, map_size_mb=64)
    store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    add(store, ALICE, balance="1.00")
    add(store, "41790000002", balance="1.00")
    add(store, BIZ, plan="postpaid-business")
    eng = _engine(store)
    for n, (msisdn, session) in enumerate([(ALICE, "gy;1"), (ALICE, "gy;2"),
                                           ("41790000002", "radius:10.0.0.1:nas:7"),
                                           (BIZ, "gy;9")]):
        g = eng.reserve_sync(ReserveRequest(
            request_key=b"r%d" % n, session_id=session,
            subscriber=((IdKind.MSISDN, msisdn),), service=Service.DATA, units=1_000_000,
            rating_group=10, now=T0))
        assert g.ok and g.money_reserved == (0 if msisdn == BIZ else 10_000)
        assert g.allowance_reserved == (1_000_000 if msisdn == BIZ else 0)
    store.run_write(_as_schema_1)
    with store.read() as txn:
        assert txn.get(b"gy;1\x0010", db=store.dbs[RESERVATIONS]) is not None
    store.close()

    store = Store(data, map_size_mb=64)
    try:
        assert store.migrated == ("schema 1 -> 2: 4 open reservations moved, 1 allowance "
                                  "records merged into balances")
        with store.read() as txn:
            assert txn.stat(store.dbs[ALLOWANCES])["entries"] == 0
        assert unpack_u64(store.get(META, META_SCHEMA) or b"") == SCHEMA_VERSION == 2
        assert verify(store) == []
        eng = _engine(store)
        assert [r.session_id for r in eng.session_reservations("gy;1")] == ["gy;1"]
        assert len(eng.reservations_with_prefix("radius:10.0.0.1:")) == 1
        s = eng.commit_sync(CommitRequest(
            request_key=b"c1", session_id="gy;1", service=Service.DATA, rating_group=10,
            used_units=500_001, final=True, now=T0 + 30))
        assert s.ok and s.charged == 5_001 and s.msisdn == ALICE
        view = eng.check_balance(((IdKind.MSISDN, ALICE),), now=T0 + 30)
        assert view is not None and (view.balance, view.reserved) == (994_999, 10_000)
        assert verify(store) == []
        held = eng.check_balance(((IdKind.MSISDN, BIZ),), now=T0 + 30)
        assert held is not None and held.allowances["data"]["reserved"] == 1_000_000
        s = eng.commit_sync(CommitRequest(
            request_key=b"c2", session_id="gy;9", service=Service.DATA, rating_group=10,
            used_units=400_000, final=True, now=T0 + 30))
        assert s.ok and s.charged == 0 and s.allowance_used == 400_000
        biz = eng.check_balance(((IdKind.MSISDN, BIZ),), now=T0 + 30)
        assert biz is not None and biz.allowances["data"] == {
            "total": 5_000_000_000, "used": 400_000, "reserved": 0,
            "remaining": 4_999_600_000}
        assert verify(store) == []
    finally:
        store.close()
    again = Store(data, map_size_mb=64)  # once only
    assert again.migrated == ""
    again.close()


def test_schema_1_long_session_ids_are_found_again(tmp_path: Path) -> None:
    """Schema 1 kept session ids of up to ~500 bytes whole in its keys; schema 2 keeps
    their first 400 bytes and a digest. An open one is charged after the migration, a
    report for an ended one is still answered as ended (charging nothing)."""
    data = tmp_path / "d"
    store = Store(data, map_size_mb=64)
    store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    add(store, ALICE, balance="1.00")
    eng = _engine(store)
    open_sid, ended_sid = "radius:c:" + "o" * 450, "radius:c:" + "e" * 450
    for n, sid in enumerate((open_sid, ended_sid)):
        assert eng.reserve_sync(ReserveRequest(
            request_key=b"r%d" % n, session_id=sid, subscriber=((IdKind.MSISDN, ALICE),),
            service=Service.DATA, units=1_000_000, rating_group=10, now=T0)).ok
    end = eng.commit_sync(CommitRequest(
        request_key=b"end", session_id=ended_sid, service=Service.DATA, rating_group=10,
        used_units=1_000_000, final=True, remember_end=True, now=T0 + 10))
    assert end.ok and end.charged == 10_000
    store.run_write(lambda tx: _as_schema_1(tx, (open_sid, ended_sid)))
    with store.read() as txn:
        assert txn.get(ENDED_PREFIX + ended_sid.encode() + b"\x00" + b"10",
                       db=store.dbs[ANSWERS]) is not None
        assert txn.get(open_sid.encode() + b"\x00" + b"10",
                       db=store.dbs[RESERVATIONS]) is not None
    store.close()

    store = Store(data, map_size_mb=64)
    try:
        assert store.migrated.startswith("schema 1 -> 2: 1 open reservations moved")
        assert verify(store) == []
        eng = _engine(store)
        assert [r.session_id for r in eng.session_reservations(open_sid)] == [open_sid]
        late = eng.commit_sync(CommitRequest(
            request_key=b"late", session_id=ended_sid, service=Service.DATA,
            rating_group=10, used_units=1_000_000, now=T0 + 20))
        assert not late.ok and late.refusal == "session_ended"
        s = eng.commit_sync(CommitRequest(
            request_key=b"c", session_id=open_sid, service=Service.DATA, rating_group=10,
            used_units=2_000_000, final=True, now=T0 + 30))
        assert s.ok and s.charged == 20_000
        view = eng.check_balance(((IdKind.MSISDN, ALICE),), now=T0 + 30)
        assert view is not None and (view.balance, view.reserved) == (970_000, 0)
        assert verify(store) == []
    finally:
        store.close()
