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


def test_a_sim_swap_moves_the_imsi_index_with_the_record(demo_store: Store) -> None:
    from ocs.charging.engine import ChargingEngine, EngineSettings
    from ocs.charging.model import IdKind
    from ocs.passwords import verify_password
    from ocs.provisioning import SubscriberChange, op_set_subscriber

    add(demo_store, "41790000001", imsi="228010000000001", username="ann@example.net")
    add(demo_store, "41790000002", imsi="228010000000002")
    eng = ChargingEngine(demo_store, None, EngineSettings(node="t"))

    def owner(kind: IdKind, value: str) -> str | None:
        sub = eng.find_subscriber_now(((kind, value),))
        return sub.msisdn if sub is not None else None

    new, changed = demo_store.run_write(op_set_subscriber("41790000001", SubscriberChange(
        imsi="228010000000009", password="s3cret", roaming=False)))
    assert changed == ["imsi", "password", "roaming"]
    assert owner(IdKind.IMSI, "228010000000009") == "41790000001"
    assert owner(IdKind.IMSI, "228010000000001") is None  # the old SIM is gone
    assert verify_password("s3cret", new.password_hash) and new.roaming is False
    # someone else's IMSI: refused, nothing changed (the whole operation is one write)
    with pytest.raises(ProvisioningError, match="already belongs to subscriber 41790000002"):
        demo_store.run_write(op_set_subscriber("41790000001", SubscriberChange(
            imsi="228010000000002", username="new@example.net")))
    assert owner(IdKind.USERNAME, "ann@example.net") == "41790000001"
    assert owner(IdKind.USERNAME, "new@example.net") is None
    new, changed = demo_store.run_write(op_set_subscriber("41790000001", SubscriberChange(
        username="", plan_id="prepaid-data")))
    assert changed == ["username", "plan"] and new.username == "" and (
        new.plan_id, new.plan_history[-1][1]) == ("prepaid-data", "prepaid-basic")
    assert owner(IdKind.USERNAME, "ann@example.net") is None
    with pytest.raises(ProvisioningError, match="postpaid"):
        demo_store.run_write(op_set_subscriber("41790000001",
                                               SubscriberChange(credit_limit="50")))
    with pytest.raises(ProvisioningError, match="postpaid"):  # a mode the plan is not
        demo_store.run_write(op_set_subscriber("41790000001", SubscriberChange(
            plan_id="postpaid-business")))
    _new, nothing = demo_store.run_write(op_set_subscriber("41790000001", SubscriberChange(
        roaming=False)))
    assert nothing == []
