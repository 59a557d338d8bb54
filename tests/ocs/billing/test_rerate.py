"""Re-rating: a period's CDRs priced again exactly as live rating priced them, the
difference per subscriber moved once per run id, billed as a line, reconciled."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from charging_support import PREMIUM_3, mixed_run, provision
from tests_support import WEDNESDAY_NOON

from ocs.billing.rerate import Rerater, rerate_store
from ocs.cdr.export import CdrExporter
from ocs.cdr.reader import every_record
from ocs.charging.engine import ChargingEngine
from ocs.charging.model import AdjustRequest
from ocs.rating.engine import cycle_of
from ocs.rating.plans import compile_plan, parse_plans_document

PERIOD = "2026-11"


def rerate(engine: ChargingEngine, plans_text: str | None = None, subscriber: str = "",
           cdr_dir: Path = Path("/nonexistent")) -> Rerater:
    book = engine.plans.in_store(engine.store)
    plans = None
    if plans_text is not None:
        doc = parse_plans_document(plans_text, "p.toml")
        plans = {str(t["id"]): compile_plan(t, known_zones={"EU", "NA"}) for t in doc.plans}
    rr = Rerater(PERIOD, book, plans, zone_of_network=book.zone_of_network,
                 subscriber=subscriber)
    rerate_store(rr, engine.store, cdr_dir)
    return rr


def test_the_same_plans_reproduce_every_charge(engine: ChargingEngine,
                                                tmp_path: Path) -> None:
    """From closed files (the raw-row path) and the journal alike."""
    provision(engine)
    mixed_run(engine, random.Random(7))
    cdr_dir = tmp_path / "cdr"
    CdrExporter(engine.store, cdr_dir, "t1", rotate_s=10**6, rotate_records=60).run_once(
        WEDNESDAY_NOON)
    assert len(list(cdr_dir.glob("*.csv"))) >= 2
    res = rerate(engine, cdr_dir=cdr_dir).result
    assert res.cdrs > 100
    every = list(every_record(cdr_dir, engine.store))  # each record counted once
    assert res.cdrs + sum(res.skipped.values()) == len(every)
    assert all(s.delta == 0 and s.old == s.new for s in res.subscribers.values())
    assert res.skipped.get("capped") and res.skipped.get("refunded")


def test_a_price_change_moves_the_exact_difference_once(engine: ChargingEngine) -> None:
    provision(engine)
    mixed_run(engine, random.Random(7))
    recs = list(every_record(Path("/nonexistent"), engine.store))
    # premium calls on prepaid-basic: 2.00 -> 3.00 a minute; connect fees unchanged
    premium = [r for r in recs if r.rate_id == "voice-premium"
               and r.plan_id == "prepaid-basic"]
    assert premium and not any(r.result == "capped" for r in premium)
    from ocs.rating.engine import cost

    plan = compile_plan(next(t for t in parse_plans_document(PREMIUM_3, "p").plans
                             if t["id"] == "prepaid-basic"))
    new_rate = next(r for r in plan.rates if r.id == "voice-premium")
    old_rate = next(r for r in engine.plans.in_store(engine.store).plans["prepaid-basic"].rates
                    if r.id == "voice-premium")
    refunded = {(r.msisdn, r.session_id) for r in recs if r.result == "refund"}
    totals: dict[tuple[str, str], int] = {}  # an event, or a session's total
    for r in premium:
        if (r.msisdn, r.session_id) not in refunded:
            k = (r.msisdn, r.session_id)
            totals[k] = totals.get(k, 0) + r.units - r.allowance_units
    want: dict[str, int] = {}
    for (m, _sid), units in totals.items():  # a session's reports telescope to its total
        want[m] = want.get(m, 0) + cost(new_rate, units) - cost(old_rate, units)
    res = rerate(engine, PREMIUM_3).result
    got = {m: s.delta for m, s in res.subscribers.items() if s.delta}
    assert got == want
    # moved once per run id, as a CDR the next run counts against its own difference
    for m, delta in got.items():
        a = engine.adjust_sync(AdjustRequest(msisdn=m, amount=delta, run_id="r1",
                                             period=PERIOD, now=WEDNESDAY_NOON + 9000))
        assert a.ok and a.amount == delta and not a.replayed
        again = engine.adjust_sync(AdjustRequest(msisdn=m, amount=delta, run_id="r1",
                                                 period=PERIOD, now=WEDNESDAY_NOON + 9001))
        assert again.replayed and again.record_id == a.record_id
    after = rerate(engine, PREMIUM_3).result
    assert all(s.delta == 0 for s in after.subscribers.values())
    back = rerate(engine).result  # back to the stored plans: the adjustment is undone
    assert {m: -s.delta for m, s in back.subscribers.items() if s.delta} == got


def test_only_the_period_and_the_subscriber_asked_for(engine: ChargingEngine) -> None:
    provision(engine)
    mixed_run(engine, random.Random(7))
    one = rerate(engine, PREMIUM_3, subscriber="41790000001").result
    assert set(one.subscribers) == {"41790000001"}
    book = engine.plans.in_store(engine.store)
    plan = book.plan_at("prepaid-basic", WEDNESDAY_NOON)
    assert plan is not None and cycle_of(plan, WEDNESDAY_NOON) == PERIOD
    rr = Rerater("2026-10", book, None, zone_of_network=book.zone_of_network)
    for r in every_record(Path("/nonexistent"), engine.store):
        rr.feed(r)
    assert rr.result.cdrs == 0


def test_a_malformed_row_stops_the_run_naming_file_and_line(tmp_path: Path) -> None:
    from charging_support import sms_store

    from ocs.billing.run import BillingError
    from ocs.charging.plans import PlanCache
    from ocs.store import Store

    sms_store(tmp_path / "s", 5)
    with Store(tmp_path / "s") as store:
        CdrExporter(store, tmp_path / "cdr", "n1", rotate_s=300, rotate_records=40).flush(
            WEDNESDAY_NOON)
        (f,) = (tmp_path / "cdr").glob("*.csv")
        lines = f.read_text().splitlines(keepends=True)
        lines[3] = lines[3].replace(",1,0.050000,", ",x,0.050000,")
        f.write_text("".join(lines))
        book = PlanCache().in_store(store)
        rr = Rerater(PERIOD, book, None, zone_of_network=book.zone_of_network)
        with pytest.raises(BillingError, match=rf"{f.name}:4: "):
            rerate_store(rr, store, tmp_path / "cdr")
