"""``ocs rate explain`` / ``ocs cdr explain`` against the engine on a real store: an
event explained before it is charged costs what the charge then takes, and every CDR of
a mixed run (events, sessions with interim reports, allowances, roaming, a capped
session, a refund) is explained back to its exact charge."""

from __future__ import annotations

import random
from pathlib import Path

from charging_support import (
    DESTS,
    MB,
    NETWORKS,
    PLAN_BASIC,
    PREMIUM_3,
    SUBS,
    ids,
    mixed_run,
    provision,
)
from tests_support import WEDNESDAY_NOON

from ocs.cdr.export import CdrExporter
from ocs.cdr.reader import every_record
from ocs.charging.engine import ChargingEngine
from ocs.charging.explain import explain_cdr, explain_event
from ocs.charging.model import (
    DebitRequest,
)
from ocs.provisioning import op_load_plans
from ocs.rating.engine import local_time
from ocs.rating.plans import Service, parse_plans_document
from ocs.store.records import CdrRecord

T0 = WEDNESDAY_NOON


def records(engine: ChargingEngine, cdr_dir: Path) -> list[CdrRecord]:
    return list(every_record(cdr_dir, engine.store))


def test_every_cdr_of_a_mixed_run_is_explained_exactly(engine: ChargingEngine,
                                                       tmp_path: Path) -> None:
    provision(engine)
    mixed_run(engine, random.Random(7))
    cdr_dir = tmp_path / "cdr"
    # half of them in closed files, the rest still in the journal: read as one sequence
    exporter = CdrExporter(engine.store, cdr_dir, "t1", rotate_s=10**6, rotate_records=60)
    exporter.run_once(T0)
    recs = records(engine, cdr_dir)
    assert len({r.record_id for r in recs}) == len(recs) > 100
    assert list(cdr_dir.glob("*.csv")) and list(cdr_dir.glob("*.part"))
    results = {r.result for r in recs}
    assert {"event", "interim", "final", "capped", "refund"} <= results
    assert any(r.allowance_units for r in recs) and any(r.roaming for r in recs)
    fri = [r for r in recs if r.session_id == "fri"]
    assert [r.rate_id for r in fri] == ["voice-national"] * 3
    assert local_time(PLAN_BASIC, fri[-1].start_time).strftime("%a") == "Sat"
    for i, rec in enumerate(recs):
        x = explain_cdr(engine, rec, recs[:i])
        assert x.reproduced, (rec, x.notes)
        assert x.explanation is not None
        if rec.result == "refund":
            assert x.explanation.charge == -rec.charge
        elif rec.result == "capped":
            assert x.explanation.charge > rec.charge
        else:
            assert x.explanation.charge == rec.charge, x.notes
            assert x.explanation.allowance_units == rec.allowance_units


def test_explained_before_it_is_charged_is_what_it_costs(engine: ChargingEngine) -> None:
    """The explanation of an event now and the debit right after agree to the micro-unit
    and on the allowance, over random events (the debit changes what the next sees)."""
    provision(engine)
    rnd = random.Random(11)
    agreed = 0
    for i in range(300):
        msisdn = rnd.choice(list(SUBS))
        service = rnd.choice([Service.VOICE, Service.SMS, Service.DATA])
        units = {Service.VOICE: rnd.randint(1, 3000), Service.SMS: 1,
                 Service.DATA: rnd.randint(1, 200 * MB)}[service]
        kw = {"destination": rnd.choice(DESTS), "visited_network": rnd.choice(NETWORKS),
              "rating_group": rnd.choice([None, 10, 99]) if service is Service.DATA
              else None}
        at = T0 + 10 * i
        x = explain_event(engine, service=service, units=units, at=at, subscriber=ids(msisdn),
                          slice_="", **kw)  # type: ignore[arg-type]
        d = engine.debit_sync(DebitRequest(request_key=b"k%d" % i, subscriber=ids(msisdn),
                                           service=service, units=units, now=at,
                                           **kw))  # type: ignore[arg-type]
        e = x.explanation
        if not d.ok:
            assert x.refusal or e.winner is None or d.refusal in ("out_of_credit",
                                                                  "credit_limit_reached")
            continue
        agreed += 1
        assert d.rate_id == ("zero-rated" if e.zero_rated else e.winner.id)  # type: ignore[union-attr]
        assert (d.charged, d.allowance_used) == (e.charge, e.allowance_units)
    assert agreed > 150


def test_a_record_keeps_explaining_after_its_plan_changed(engine: ChargingEngine,
                                                           tmp_path: Path) -> None:
    """The CDR names the plan version it was rated with: a later price change does not
    stop it from being reproduced exactly (nor does a version effective later)."""
    provision(engine)
    d = engine.debit_sync(DebitRequest(request_key=b"a", subscriber=ids("41790000001"),
                                       service=Service.VOICE, units=61,
                                       destination="41900123456", now=T0))
    assert d.ok and d.charged == 4_500_000
    engine.store.run_write(op_load_plans(parse_plans_document(PREMIUM_3, "new.toml"),
                                         effective_at=T0 - 3600))
    (rec,) = records(engine, tmp_path / "cdr")
    assert rec.plan_version == 1
    x = explain_cdr(engine, rec, [])
    assert x.reproduced and x.explanation is not None
    assert x.explanation.charge == 4_500_000 and x.explanation.plan.version == 1
    now = explain_event(engine, service=Service.VOICE, units=61, at=T0,
                        subscriber=ids("41790000001"), destination="41900123456")
    assert now.explanation.plan.version == 2 and now.explanation.charge == 6_500_000


