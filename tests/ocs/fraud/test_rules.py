"""The real-time fraud rules, pure: each indicator, its threshold, and what stays quiet."""

from __future__ import annotations

import random

from ocs.fraud.rules import HOME, Event, FraudSettings, FraudState, decision, evaluate

T = 1_790_000_000 - 1_790_000_000 % 86400 + 12 * 3600  # 12:00 UTC on some day
CFG = FraudSettings(high_risk_prefixes=("882", "41900"), high_risk_networks=frozenset({"99901"}))


def ev(kind: str = "event", at: int = T, service: str = "voice", **kw: object) -> Event:
    return Event(kind=kind, at=at, local_hour=(at // 3600) % 24, service=service, **kw)  # type: ignore[arg-type]


def names(found: list[object]) -> list[str]:
    return [f.name for f in found]  # type: ignore[attr-defined]


def test_high_risk_prefix_first_use_only() -> None:
    s = FraudState()
    assert names(evaluate(s, ev(destination="8821234"), CFG)) == ["high_risk_prefix"]
    assert evaluate(s, ev(destination="8829999"), CFG) == []
    assert names(evaluate(s, ev(destination="41900111"), CFG)) == ["high_risk_prefix"]
    assert evaluate(s, ev(destination="41791112233"), CFG) == []


def test_night_usage_needs_a_daytime_history() -> None:
    s = FraudState()
    night = T - 12 * 3600 + 3 * 3600  # 03:00
    assert evaluate(s, ev(at=night), CFG) == []  # no history yet: not judged
    s = FraudState()
    for i in range(60):
        evaluate(s, ev(at=T + i * 60), CFG)
    found = evaluate(s, ev(at=night + 86400), CFG)
    assert names(found) == ["night_usage"] and found[0].value.startswith("03h")


def test_long_call_once_when_crossing() -> None:
    s = FraudState()
    assert evaluate(s, ev("usage", units=3600, session_total=3600, session_id="c"), CFG) == []
    found = evaluate(s, ev("usage", units=11_000, session_total=14_600, session_id="c"), CFG)
    assert names(found) == ["long_call"]
    assert evaluate(s, ev("usage", units=100, session_total=14_700, session_id="c"), CFG) == []


def test_roaming_indicators() -> None:
    s = FraudState()
    assert names(evaluate(s, ev("refused_roaming", location="26201"), CFG)) == [
        "roaming_disabled"]
    assert names(evaluate(s, ev("start", service="data", session_id="a", location="99901",
                                roaming=True), CFG)) == ["high_risk_network"]


def test_distant_sessions_at_once() -> None:
    s = FraudState()
    assert evaluate(s, ev("start", service="data", session_id="a", location=HOME), CFG) == []
    assert evaluate(s, ev("start", service="data", session_id="a", location=HOME), CFG) == []
    found = evaluate(s, ev("start", service="data", session_id="b", location="26201",
                           roaming=True), CFG)
    assert names(found) == ["distant_sessions"]
    evaluate(s, ev("end", service="data", session_id="a"), CFG)
    evaluate(s, ev("end", service="data", session_id="b"), CFG)
    assert evaluate(s, ev("start", service="data", session_id="c", location="20801"), CFG) == []


def test_sim_box_pattern() -> None:
    s = FraudState()
    found = []
    for i in range(31):  # 31 calls of 20 s to 31 different numbers within the hour
        found += evaluate(s, ev("end", at=T + i * 60, session_id=f"s{i}", units=20,
                                session_total=20, destination=f"4179{i:07d}"), CFG)
    assert names(found) == ["sim_box"]
    # a busy but normal caller: long calls to a few numbers
    s = FraudState()
    quiet = []
    for i in range(40):
        quiet += evaluate(s, ev("end", at=T + i * 60, session_id=f"n{i}", units=300,
                                session_total=300, destination=f"417900000{i % 3}"), CFG)
    assert quiet == []


def test_spend_velocity_against_own_baseline() -> None:
    s = FraudState()
    for h in range(48):  # two days at about 0.20 an hour
        assert evaluate(s, ev(at=T + h * 3600, service="sms", charge=200_000), CFG) == []
    hour = T + 48 * 3600
    found = []
    for i in range(30):  # then 1.00 a minute
        found += evaluate(s, ev(at=hour + i * 60, service="sms", charge=1_000_000), CFG)
    assert names(found) == ["velocity"]  # once, when the hour's spend crosses the limit


def test_decision_thresholds() -> None:
    assert decision(10, CFG) == "allow" and decision(40, CFG) == "review"
    assert decision(100, CFG) == "block"


def test_normal_population_is_rarely_flagged() -> None:
    """5,000 generated ordinary subscribers over a week: at most 0.1 % reach review."""
    rng = random.Random(7)
    flagged = 0
    for n in range(5000):
        s = FraudState()
        score: dict[str, int] = {}
        for day in range(7):
            for _ in range(rng.randint(2, 12)):  # daytime calls, SMS, data sessions
                at = T - 12 * 3600 + day * 86400 + rng.randint(8 * 3600, 22 * 3600)
                kind = rng.random()
                if kind < 0.5:
                    found = evaluate(s, ev("end", at=at, session_id=f"{n}-{at}",
                                           units=rng.randint(30, 900), session_total=0,
                                           destination=f"41{rng.randint(0, 10**9):09d}"), CFG)
                elif kind < 0.8:
                    found = evaluate(s, ev("event", at=at, service="sms", units=1,
                                           charge=50_000,
                                           destination=f"417{rng.randint(0, 10**8):08d}"),
                                     CFG)
                else:
                    sid = f"d{n}-{at}"
                    found = evaluate(s, ev("start", at=at, service="data", session_id=sid),
                                     CFG)
                    found += evaluate(s, ev("end", at=at + 600, service="data",
                                            session_id=sid, units=5_000_000, charge=50_000),
                                      CFG)
                for f in found:
                    score[f.name] = f.weight
        if decision(sum(score.values()), CFG) != "allow":
            flagged += 1
    assert flagged <= 5, flagged
