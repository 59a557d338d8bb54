"""``ocs store verify``: a store charged through the engine is consistent; each kind of
damage is reported, one line each."""

from __future__ import annotations

from pathlib import Path

from tests_support import CONFIG_DIR, add

from ocs.cdr.export import CdrExporter
from ocs.cdr.fileformat import COLUMNS
from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import CommitRequest, DebitRequest, IdKind, ReserveRequest
from ocs.provisioning import op_load_plans
from ocs.rating.plans import Service, load_plans_file
from ocs.store import Store
from ocs.store.env import BALANCES, IDX_IMSI, RES_EXPIRY
from ocs.store.records import dec_balance, encode
from ocs.store.verify import CHARGE_COLUMN, MSISDN_COLUMN, verify

NOW = 1_795_000_000


def charged_store(tmp: Path) -> tuple[Store, Path]:
    store = Store(tmp / "d", map_size_mb=64)
    store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    add(store, "41790000001", balance="5.00", imsi="228010000000001", username="a@nai")
    add(store, "41790000002", balance="5.00")
    engine = ChargingEngine(store, None, EngineSettings(node="v"))
    who = ((IdKind.MSISDN, "41790000001"),)
    engine.reserve_sync(ReserveRequest(request_key=b"r1", session_id="s1", subscriber=who,
                                       service=Service.DATA, units=1_000_000, rating_group=10,
                                       now=NOW))
    engine.commit_sync(CommitRequest(request_key=b"c1", session_id="s1", service=Service.DATA,
                                     rating_group=10, used_units=300_000, next_units=0,
                                     now=NOW + 1))
    engine.debit_sync(DebitRequest(request_key=b"d1", subscriber=(
        (IdKind.MSISDN, "41790000002"),), service=Service.SMS, destination="41791234567",
        now=NOW + 2))
    cdr = tmp / "cdr"
    CdrExporter(store, cdr, "v", rotate_s=300, rotate_records=100_000).flush(NOW + 3)
    engine.debit_sync(DebitRequest(request_key=b"d2", subscriber=who, service=Service.SMS,
                                   destination="41791234567", now=NOW + 4))  # journal only
    return store, cdr


def test_a_charged_store_is_consistent(tmp_path: Path) -> None:
    store, cdr = charged_store(tmp_path)
    assert verify(store) == []
    assert verify(store, cdr) == []
    assert (COLUMNS[CHARGE_COLUMN], COLUMNS[MSISDN_COLUMN]) == ("charge", "msisdn")
    store.close()


def test_each_kind_of_damage_is_one_line(tmp_path: Path) -> None:
    store, cdr = charged_store(tmp_path)

    def damage(tx: object) -> None:
        raw = store.get(BALANCES, b"41790000002")
        assert raw is not None
        bal = dec_balance.decode(raw)
        bal.reserved += 7
        bal.charged_total += 1
        tx.put(BALANCES, b"41790000002", encode(bal))  # type: ignore[attr-defined]
        tx.delete(IDX_IMSI, b"228010000000001")  # type: ignore[attr-defined]
        tx.put(IDX_IMSI, b"999990000000001", b"41790000009")  # type: ignore[attr-defined]
        with store.read() as txn:
            key = next(k for k, _ in txn.cursor(db=store.dbs[RES_EXPIRY]))
        tx.delete(RES_EXPIRY, bytes(key))  # type: ignore[attr-defined]

    store.run_write(damage)  # type: ignore[arg-type]
    found = verify(store, cdr)
    assert len(found) == 5, found
    assert any(d.startswith("41790000002: balance holds 7 micro reserved") for d in found)
    assert any("expiry entry None but it expires at" in d for d in found)
    assert any(d.startswith("imsi index: 999990000000001 -> 41790000009, which does not")
               for d in found)
    assert any(d == "41790000001: imsi 228010000000001 is not in the imsi index" for d in found)
    assert any(d.startswith("41790000002: CDRs charge 50000 micro, the engine moved 50001")
               for d in found)
    store.close()
