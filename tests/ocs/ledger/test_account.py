"""One subscriber's account on a real LMDB transaction: loaded once, saved once."""

from __future__ import annotations

from tests_support import add

from ocs.ledger.account import Account, session_owner
from ocs.store import Store
from ocs.store.env import BALANCES, RES_EXPIRY, RESERVATIONS, pack_u64
from ocs.store.records import RateSnapshot, Reservation, dec_balance
from ocs.store.tx import Tx

ALICE = "41790000001"


class CountingTx(Tx):
    def __init__(self, inner: Tx):
        super().__init__(inner._txn, inner._dbs, inner.batch)
        self.gets: list[bytes] = []
        self.puts: list[bytes] = []

    def get(self, name: bytes, key: bytes) -> bytes | None:
        self.gets.append(name)
        return super().get(name, key)

    def put(self, name: bytes, key: bytes, value: bytes) -> None:
        self.puts.append(name)
        super().put(name, key, value)


def _res(unit: bytes, expires_at: int) -> Reservation:
    rate = RateSnapshot(plan_id="p", rate_id="r", service="data", price=1, unit_size=1,
                        first_increment_s=1, increment_s=1, connect_fee=0)
    return Reservation(key=unit, session_id="s1", msisdn=ALICE, imsi="", service="data",
                       rating_group=10, destination="", visited_network="", roaming=False,
                       protocol="gy", rate=rate, mode="prepaid", currency="CHF",
                       cycle="2026-11", allowance_ok=False, started_at=0, last_at=0,
                       expires_at=expires_at, money_reserved=7)


def test_records_are_loaded_once_and_saved_once_when_touched(demo_store: Store) -> None:
    add(demo_store, ALICE, balance="1.00")

    def op(inner: Tx) -> CountingTx:
        tx = CountingTx(inner)
        acct = Account(tx, ALICE)
        acct.balance().balance -= 5
        acct.balance().balance -= 5
        acct.allowance("2026-11").data_used += 1
        acct.allowance("2026-11").data_used += 1
        acct.subscriber()
        acct.subscriber()
        acct.save()  # nothing touched: nothing written
        assert tx.puts == []
        acct.touch()
        acct.save()
        acct.save()
        return tx

    tx = demo_store.run_write(op)
    assert sorted(tx.gets) == [BALANCES, b"subscribers"]  # the buckets are in the balance
    assert tx.puts == [BALANCES]
    raw = demo_store.get(BALANCES, ALICE.encode())
    assert raw is not None and dec_balance.decode(raw).balance == 999_990
    alw = dec_balance.decode(raw).allowance
    assert alw is not None and (alw.cycle, alw.data_used) == ("2026-11", 2)


def test_revert_balance_forgets_the_changes(demo_store: Store) -> None:
    add(demo_store, ALICE, balance="1.00")

    def op(tx: Tx) -> None:
        acct = Account(tx, ALICE)
        acct.balance().reserved += 50
        fresh = acct.revert_balance()
        assert fresh.reserved == 0 and acct.balance() is fresh
        fresh.balance += 1
        acct.touch()
        acct.save()

    demo_store.run_write(op)
    raw = demo_store.get(BALANCES, ALICE.encode())
    assert raw is not None and dec_balance.decode(raw).balance == 1_000_001


def test_a_reservation_lives_under_its_subscriber_with_its_index_entries(
        demo_store: Store) -> None:
    unit = b"s1\x0010"

    def keep(tx: Tx) -> None:
        Account(tx, ALICE).keep_reservation(_res(unit, 100), expired_at=None)

    demo_store.run_write(keep)
    assert demo_store.get(RESERVATIONS, ALICE.encode() + b"\x00" + unit) is not None
    assert demo_store.get(RESERVATIONS, unit) is None
    assert demo_store.get(RES_EXPIRY, pack_u64(100) + unit) == b""

    def move(tx: Tx) -> None:
        acct = Account(tx, ALICE)
        res = acct.reservation(unit)
        assert res is not None and res.money_reserved == 7
        res.expires_at = 200
        acct.keep_reservation(res, expired_at=100)

    demo_store.run_write(move)
    assert demo_store.get(RES_EXPIRY, pack_u64(100) + unit) is None
    assert demo_store.get(RES_EXPIRY, pack_u64(200) + unit) == b""
    assert demo_store.run_write(lambda tx: session_owner(tx, unit)) == ALICE
    assert demo_store.run_write(lambda tx: Account(tx, "41790000002").reservation(unit)) is None

    def end(tx: Tx) -> None:
        acct = Account(tx, ALICE)
        res = acct.reservation(unit)
        assert res is not None
        acct.end_reservation(res, expired_at=200)

    demo_store.run_write(end)
    assert demo_store.run_write(lambda tx: session_owner(tx, unit)) is None
    assert demo_store.get(RES_EXPIRY, pack_u64(200) + unit) is None
    assert demo_store.get(RESERVATIONS, ALICE.encode() + b"\x00" + unit) is None
