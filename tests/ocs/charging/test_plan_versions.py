"""Plan versions with effective times: which version rates an event, a session moving to
the new version at its next quota, the version on every CDR, and loads that change
nothing adding nothing."""

from __future__ import annotations

from pathlib import Path

from tests_support import CONFIG_DIR, WEDNESDAY_NOON, add

from ocs.cdr.reader import every_record
from ocs.charging.engine import ChargingEngine
from ocs.charging.explain import explain_cdr
from ocs.charging.model import CommitRequest, DebitRequest, IdKind, ReserveRequest
from ocs.provisioning import op_load_plans, stored_plan_versions
from ocs.rating.plans import Service, parse_plans_document

T0 = WEDNESDAY_NOON
ALICE = ((IdKind.MSISDN, "41790000001"),)
ORIGINAL = (CONFIG_DIR / "plans.toml").read_text()
NATIONAL_020 = ORIGINAL.replace('id = "voice-national"\nservice = "voice"\nprice = "0.1000"',
                                'id = "voice-national"\nservice = "voice"\nprice = "0.2000"')
NATIONAL_030 = ORIGINAL.replace('id = "voice-national"\nservice = "voice"\nprice = "0.1000"',
                                'id = "voice-national"\nservice = "voice"\nprice = "0.3000"')
assert NATIONAL_020 != ORIGINAL != NATIONAL_030


def load(engine: ChargingEngine, text: str, **kw: int) -> dict[str, int]:
    report: dict[str, int] = {}
    engine.store.run_write(op_load_plans(parse_plans_document(text, "p.toml"), report=report,
                                         **kw))
    return report


def call(engine: ChargingEngine, key: str, at: int, units: int = 60) -> int:
    d = engine.debit_sync(DebitRequest(request_key=key.encode(), subscriber=ALICE,
                                       service=Service.VOICE, units=units,
                                       destination="41441234567", now=at))
    assert d.ok
    return d.charged


def test_loading_the_same_plans_again_adds_no_version(engine: ChargingEngine) -> None:
    assert load(engine, ORIGINAL) == {}  # (the fixture loaded them: version 1 each)
    assert load(engine, NATIONAL_020, now=T0) == {"prepaid-basic": 2}
    assert load(engine, NATIONAL_020, now=T0) == {}
    vs = stored_plan_versions(engine.store, "prepaid-basic")
    assert [(v.version, v.effective_at) for v in vs] == [(1, 0), (2, T0)]


def test_a_version_rates_from_its_effective_time(engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="100.00")
    load(engine, NATIONAL_020, effective_at=T0 + 100)  # loaded now, effective later
    assert call(engine, "before", T0 + 99) == 100_000  # 1 min at 0.10
    assert call(engine, "after", T0 + 100) == 200_000  # at 0.20
    # a third load effective before the second one's time supersedes it from then on
    load(engine, NATIONAL_030, effective_at=T0 + 50)
    assert call(engine, "v1", T0 + 49) == 100_000
    assert call(engine, "v3", T0 + 50) == 300_000
    assert call(engine, "v3-later", T0 + 10_000) == 300_000
    recs = list(every_record(Path("/nonexistent"), engine.store))
    assert [(r.plan_version, r.charge) for r in recs] == [
        (1, 100_000), (2, 200_000), (1, 100_000), (3, 300_000), (3, 300_000)]
    for i, r in enumerate(recs):  # each explained with its own version, exactly
        x = explain_cdr(engine, r, recs[:i])
        assert x.reproduced and x.explanation is not None
        assert x.explanation.plan.version == r.plan_version


def test_a_session_takes_the_new_version_at_its_next_quota(engine: ChargingEngine) -> None:
    """Usage before the quota that crosses the effective time stays priced by the old
    version; the quota granted after it is priced by the new one, on the running total
    (the connect fee and the blocks already paid are not paid again)."""
    add(engine.store, "41790000001", balance="100.00")
    load(engine, NATIONAL_020, effective_at=T0 + 100)
    g = engine.reserve_sync(ReserveRequest(
        request_key=b"r", session_id="s", subscriber=ALICE, service=Service.VOICE,
        units=60, destination="41441234567", now=T0))
    assert g.ok and g.money_reserved == 100_000

    def commit(n: int, used: int, at: int, final: bool = False):  # type: ignore[no-untyped-def]
        return engine.commit_sync(CommitRequest(
            request_key=b"c%d" % n, session_id="s", service=Service.VOICE, used_units=used,
            final=final, next_units=None if final else 60, now=at))

    s1 = commit(1, 60, T0 + 60)  # before the new version: 60 s at 0.10; next quota at 0.10
    assert s1.charged == 100_000 and s1.next_grant.money_reserved == 100_000
    s2 = commit(2, 60, T0 + 120)  # reported under 0.10; the next quota now at 0.20
    assert s2.charged == 100_000 and s2.next_grant.money_reserved == 200_000
    s3 = commit(3, 30, T0 + 150, final=True)  # 150 s total: the third block at 0.20
    assert s3.charged == 200_000
    recs = list(every_record(Path("/nonexistent"), engine.store))
    assert [(r.plan_version, r.units, r.charge) for r in recs] == [
        (1, 60, 100_000), (1, 60, 100_000), (2, 30, 200_000)]
    for i, r in enumerate(recs):
        x = explain_cdr(engine, r, recs[:i])
        assert x.reproduced, x.notes
    assert x.explanation is not None and x.explanation.session_units_before == 120


def test_a_store_from_before_versions_keeps_its_plans_as_version_one(
        engine: ChargingEngine) -> None:
    """Plans stored by the release before versions (no version records) rate as
    version 1 from the start, and the first change writes that history down."""
    from ocs.store.env import PLAN_VERSIONS

    def drop_versions(tx):  # type: ignore[no-untyped-def]
        for k, _ in tx.scan(PLAN_VERSIONS):
            tx.delete(PLAN_VERSIONS, k)

    engine.store.run_write(drop_versions)
    add(engine.store, "41790000001", balance="100.00")
    engine.plans = type(engine.plans)()  # a process started after the upgrade
    assert call(engine, "old", T0) == 100_000
    assert load(engine, NATIONAL_020, now=T0 + 10) == {"prepaid-basic": 2}
    vs = stored_plan_versions(engine.store, "prepaid-basic")
    assert [(v.version, v.effective_at) for v in vs] == [(1, 0), (2, T0 + 10)]
    assert call(engine, "new", T0 + 10) == 200_000


def test_the_warmer_compiles_current_and_scheduled_versions_ahead_of_use(
        engine: ChargingEngine) -> None:
    import time

    from ocs.charging.plans import PlanCache

    now = int(time.time())
    load(engine, NATIONAL_020, effective_at=now - 10)  # v2: in effect now
    load(engine, NATIONAL_030, effective_at=now + 3600)  # v3: scheduled
    cache = PlanCache()
    stop = cache.start_warming(engine.store, interval_s=0.05)
    try:
        deadline = time.monotonic() + 10
        book = cache.in_store(engine.store)
        while time.monotonic() < deadline and ("prepaid-basic", 3) not in book._compiled:
            time.sleep(0.02)
        compiled = {k for k in book._compiled if k[0] == "prepaid-basic"}
        assert compiled == {("prepaid-basic", 2), ("prepaid-basic", 3)}  # not v1
    finally:
        stop()
    plan = book.plan_at("prepaid-basic", now)
    assert plan is not None and plan.version == 2
