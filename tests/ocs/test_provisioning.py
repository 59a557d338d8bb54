"""Top-ups with a reference and the ledger: a retried top-up credits once, every top-up
is an entry (with the opening balance), and the entries add up to the balance's."""

from __future__ import annotations

import pytest
from tests_support import WEDNESDAY_NOON, add

from ocs.provisioning import (
    ProvisioningError,
    ledger_entries,
    op_credit,
    stored_ledger,
)
from ocs.store import Store
from ocs.store.env import BALANCES, LEDGER
from ocs.store.records import Balance, dec_balance
from ocs.store.tx import Tx


def balance(store: Store, msisdn: str) -> Balance:
    raw = store.get(BALANCES, msisdn.encode())
    assert raw is not None
    return dec_balance.decode(raw)


def test_the_same_reference_credits_once(demo_store: Store) -> None:
    add(demo_store, "41790000001", balance="1.00")
    first = demo_store.run_write(op_credit("41790000001", "2.50", reference="pay-77",
                                           actor="crm", now=WEDNESDAY_NOON))
    again = demo_store.run_write(op_credit("41790000001", "2.50", reference="pay-77",
                                           actor="crm", now=WEDNESDAY_NOON + 60))
    assert not first.replayed and again.replayed and again.entry == first.entry
    assert balance(demo_store, "41790000001").balance == 3_500_000
    with pytest.raises(ProvisioningError, match=r"was a top-up of 2\.5000, not 9\.0000"):
        demo_store.run_write(op_credit("41790000001", "9", reference="pay-77"))
    other = demo_store.run_write(op_credit("41790000001", "2.50", reference="pay-78"))
    assert other.balance.balance == 6_000_000
    entries = stored_ledger(demo_store, "41790000001")
    assert entries is not None
    assert [(e.kind, e.amount, e.reference) for e in entries] == [
        ("opening", 1_000_000, ""), ("topup", 2_500_000, "pay-77"),
        ("topup", 2_500_000, "pay-78")]
    assert entries[1].actor == "crm" and entries[1].balance_after == 3_500_000
    assert stored_ledger(demo_store, "41790000099") is None


@pytest.mark.parametrize("ref", ["x" * 129, "a\nb", "a\x00b"])
def test_a_reference_is_one_short_line(demo_store: Store, ref: str) -> None:
    add(demo_store, "41790000001")
    with pytest.raises(ProvisioningError, match="reference"):
        demo_store.run_write(op_credit("41790000001", "1", reference=ref))


def test_top_ups_from_before_the_ledger_open_it(demo_store: Store) -> None:
    """A store from the release before the ledger: the balance has top-ups, the ledger
    none. The next top-up writes them as one opening entry first, so the sums agree."""
    add(demo_store, "41790000001", balance="4.00")

    def forget(tx: Tx) -> None:
        for k, _ in tx.scan(LEDGER):
            tx.delete(LEDGER, k)

    demo_store.run_write(forget)
    demo_store.run_write(op_credit("41790000001", "1", now=WEDNESDAY_NOON))

    def check(tx: Tx) -> None:
        entries = ledger_entries(tx, "41790000001")
        assert [(e.kind, e.amount) for e in entries] == [("opening", 4_000_000),
                                                         ("topup", 1_000_000)]
        raw = tx.get(BALANCES, b"41790000001")
        assert raw is not None
        assert sum(e.amount for e in entries) == dec_balance.decode(raw).topped_up_total

    demo_store.run_write(check)
