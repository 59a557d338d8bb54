"""Opening a store: schema 1 (reservations keyed by session) migrates to 2."""

from __future__ import annotations

from pathlib import Path

from tests_support import CONFIG_DIR, WEDNESDAY_NOON, add

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import CommitRequest, IdKind, ReserveRequest
from ocs.provisioning import op_load_plans
from ocs.rating.plans import Service, load_plans_file
from ocs.store.env import (
    ALLOWANCES,
    BALANCES,
    META,
    META_SCHEMA,
    RESERVATIONS,
    SCHEMA_VERSION,
    SESSION_OWNERS,
    Store,
    pack_u64,
    unpack_u64,
)
from ocs.store.records import dec_balance, encode
from ocs.store.tx import Tx
from ocs.store.verify import verify

T0 = WEDNESDAY_NOON
ALICE, BIZ = "41790000001", "41790000003"


def _engine(store: Store) -> ChargingEngine:
    return ChargingEngine(store, None, EngineSettings(node="t1"))


def _as_schema_1(tx: Tx) -> None:
    """Lay the store out as schema 1 wrote it: reservations under session NUL unit, no
    owner index, the allowance buckets in a record of their own."""
    for key, raw in tx.scan(RESERVATIONS):
        tx.delete(RESERVATIONS, key)
        tx.put(RESERVATIONS, key.split(b"\x00", 1)[1], raw)
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
