"""``ocs rate explain``'s core: the live selection with a trace, and the arithmetic."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from tests_support import SATURDAY_NOON, WEDNESDAY_NOON, plans_by_id

from ocs.rating.engine import UsageContext, cost, rate_usage, select_rate
from ocs.rating.explain import explain
from ocs.rating.plans import Plan, Service, compile_plan

PLANS = plans_by_id()
BASIC = PLANS["prepaid-basic"]


def test_a_premium_call_explained() -> None:
    ctx = UsageContext(service=Service.VOICE, at=WEDNESDAY_NOON, destination="41900123456")
    e = explain(BASIC, ctx, 61)
    assert e.winner is not None and e.winner.id == "voice-premium"
    why = {c.rate.id: (c.matched, c.why) for c in e.candidates}
    assert why["voice-premium"] == (True, "the most specific match")
    assert why["voice-national"] == (True, "matches, but voice-premium wins on prefix length")
    assert why["voice-national-weekend"][0] is False
    assert "weekend" in why["voice-national-weekend"][1] and "Wed 13:00" in why[
        "voice-national-weekend"][1]
    assert why["voice-roaming"] == (False, "roaming only (the event is at home)")
    # 61 s -> 120 s (60 s first, 60 s blocks) at 2.00/min + 0.50 connect fee
    assert (e.billed_units, e.charge) == (120, 4_500_000)
    assert e.charge == rate_usage(BASIC, ctx, 61).charge  # type: ignore[union-attr]
    assert e.arithmetic[-1] == "charge = 4500000 micro = 4.5000 EUR"


def test_the_weekend_band_wins_on_saturday_and_the_allowance_counts() -> None:
    ctx = UsageContext(service=Service.VOICE, at=SATURDAY_NOON, destination="41441234567")
    e = explain(BASIC, ctx, 200, allowance_units=50)
    assert e.winner is not None and e.winner.id == "voice-national-weekend"
    national = next(c for c in e.candidates if c.rate.id == "voice-national")
    assert national.why == "matches, but voice-national-weekend wins on band named"
    assert e.chargeable_units == 150
    assert e.charge == cost(e.winner, 150)


def test_a_session_report_is_priced_on_the_running_total() -> None:
    """61 s then 59 s: the second report costs cost(120) - cost(61), here nothing (the
    first already paid for two 60 s blocks)."""
    ctx = UsageContext(service=Service.VOICE, at=WEDNESDAY_NOON, destination="41441234567")
    first = explain(BASIC, ctx, 61)
    second = explain(BASIC, ctx, 59, session_units_before=61)
    assert first.charge == 200_000 and second.charge == 0
    assert (second.cost_before, second.cost_after) == (200_000, 200_000)


def test_zero_rated_and_unrated() -> None:
    zrg = next(iter(BASIC.zero_rated_groups))
    e = explain(BASIC, UsageContext(service=Service.DATA, at=WEDNESDAY_NOON,
                                    rating_group=zrg), 10**6)
    assert e.zero_rated and e.charge == 0 and e.winner is None
    none = explain(BASIC, UsageContext(service=Service.TIME, at=WEDNESDAY_NOON), 60)
    assert none.winner is None and "no time rate" in none.arithmetic[0]


PREFIXES = ["", "4", "41", "419", "4179", "44", "49"]


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    rates = []
    for i in range(draw(st.integers(1, 8))):
        r: dict[str, object] = {
            "id": f"r{i}", "service": draw(st.sampled_from(["voice", "data"])),
            "price": draw(st.sampled_from(["0", "0.01", "0.333333", "1.5", "2"])),
            "prefix": draw(st.sampled_from(PREFIXES)),
            "connect_fee": draw(st.sampled_from(["0", "0.1"])),
        }
        if r["service"] == "voice":
            r["first_increment_s"] = draw(st.sampled_from([1, 30, 60]))
            r["increment_s"] = draw(st.sampled_from([1, 6, 60]))
        if draw(st.booleans()):
            r["rating_groups"] = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
        if draw(st.booleans()):
            r["bands"] = [draw(st.sampled_from(["weekend", "day"]))]
        if draw(st.integers(0, 3)) == 0:
            r["zones"] = [draw(st.sampled_from(["*", "eu"]))]
        rates.append(r)
    return compile_plan({
        "id": "p", "timezone": "Europe/Zurich", "rates": rates,
        "bands": [{"id": "weekend", "days": ["sat", "sun"]},
                  {"id": "day", "from": "08:00", "to": "18:00"}],
    }, known_zones={"eu"})


@settings(max_examples=300, deadline=None)
@given(plans(), st.sampled_from([Service.VOICE, Service.DATA]),
       st.sampled_from(["", "41", "4179123", "4420", "49301", "1"]),
       st.one_of(st.none(), st.integers(1, 3)),
       st.sampled_from([WEDNESDAY_NOON, SATURDAY_NOON, WEDNESDAY_NOON + 8 * 3600]),
       st.sampled_from([(False, None), (True, "eu"), (True, None)]),
       st.integers(0, 10**7), st.integers(0, 10**7))
def test_explain_is_the_live_path(plan: Plan, service: Service, dest: str, rg: int | None,
                                  at: int, roam: tuple[bool, str | None], units: int,
                                  before: int) -> None:
    ctx = UsageContext(service=service, at=at, rating_group=rg, destination=dest,
                       roaming=roam[0], zone=roam[1])
    e = explain(plan, ctx, units, session_units_before=before)
    live = select_rate(plan, ctx)
    assert e.winner is live
    # every rate of the service once, in plan order; a reason for each
    assert [c.rate for c in e.candidates] == [r for r in plan.rates if r.service is service]
    assert all(c.why for c in e.candidates)
    matched = [c for c in e.candidates if c.matched]
    assert all(c.key is not None for c in matched)
    if live is None:
        assert not matched and e.charge == 0
        return
    winner = next(c for c in matched if c.rate is live)
    assert all(c.key <= winner.key for c in matched)  # type: ignore[operator]
    assert e.charge == cost(live, before + units) - cost(live, before)
    if before == 0:
        assert e.charge == rate_usage(plan, ctx, units).charge  # type: ignore[union-attr]
