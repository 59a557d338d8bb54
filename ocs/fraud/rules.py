"""Real-time fraud rules: pure functions over a subscriber's bounded state and one rated
event. The charging engine calls :func:`evaluate` inside the write transaction of every
reservation, usage report and direct debit, so the state is durable with the charge.

Indicators (each with a weight; the open case's score is the sum of its distinct
indicators, and decides review or block):

* ``high_risk_prefix`` — the first use of a destination under ``high_risk_prefixes``;
* ``night_usage`` — usage in the night hours of a subscriber whose history is daytime;
* ``long_call`` — a voice session longer than ``long_call_s``;
* ``roaming_disabled`` — a roaming attempt by a subscriber without roaming;
* ``high_risk_network`` — a visited network in ``high_risk_networks``;
* ``sim_box`` — more than ``sim_box_calls_per_hour`` calls in an hour with a short
  average duration to mostly distinct destinations;
* ``velocity`` — spend in the current hour far above the subscriber's own baseline (an
  exponentially decayed hourly spend);
* ``distant_sessions`` — sessions open at once from different locations (visited
  networks).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ocs.money import parse_amount
from ocs.store.records import FraudState as FraudState  # the record lives in the store

WEIGHTS = {
    "high_risk_prefix": 40,
    "night_usage": 20,
    "long_call": 40,
    "roaming_disabled": 40,
    "high_risk_network": 60,
    "sim_box": 100,
    "velocity": 60,
    "distant_sessions": 50,
}
HOME = "home"


@dataclass(frozen=True, slots=True, kw_only=True)
class FraudSettings:
    enabled: bool = True
    high_risk_prefixes: tuple[str, ...] = ()
    high_risk_networks: frozenset[str] = frozenset()
    long_call_s: int = 4 * 3600
    night_start: int = 0
    night_end: int = 6
    """Night = local hours in [night_start, night_end)."""
    night_min_events: int = 50
    """History needed before a profile counts as daytime."""
    night_max_share: float = 0.02
    sim_box_calls_per_hour: int = 30
    sim_box_max_avg_s: int = 60
    sim_box_min_distinct_share: float = 0.8
    velocity_factor: float = 10.0
    velocity_min_amount: int = 5_000_000
    """Spend in one hour below this never counts (micro-units)."""
    velocity_half_life_h: float = 72.0
    velocity_min_history_h: int = 24
    weights: dict[str, int] = field(default_factory=lambda: dict(WEIGHTS))
    review_score: int = 40
    block_score: int = 100

    @classmethod
    def of(cls, d: dict[str, Any] | None) -> FraudSettings:
        """From the ``[fraud]`` config (as a plain dict: it crosses to the writer)."""
        if not d:
            return cls(enabled=False)
        return cls(
            enabled=bool(d.get("enabled", True)),
            high_risk_prefixes=tuple(d.get("high_risk_prefixes", ())),
            high_risk_networks=frozenset(d.get("high_risk_networks", ())),
            long_call_s=int(d.get("long_call_s", 4 * 3600)),
            night_start=int(d.get("night_start", 0)),
            night_end=int(d.get("night_end", 6)),
            night_min_events=int(d.get("night_min_events", 50)),
            night_max_share=float(d.get("night_max_share", 0.02)),
            sim_box_calls_per_hour=int(d.get("sim_box_calls_per_hour", 30)),
            sim_box_max_avg_s=int(d.get("sim_box_max_avg_s", 60)),
            sim_box_min_distinct_share=float(d.get("sim_box_min_distinct_share", 0.8)),
            velocity_factor=float(d.get("velocity_factor", 10.0)),
            velocity_min_amount=parse_amount(str(d.get("velocity_min_amount", "5.00"))),
            velocity_half_life_h=float(d.get("velocity_half_life_h", 72.0)),
            velocity_min_history_h=int(d.get("velocity_min_history_h", 24)),
            weights={**WEIGHTS, **{k: int(v) for k, v in d.get("weights", {}).items()}},
            review_score=int(d.get("review_score", 40)),
            block_score=int(d.get("block_score", 100)),
        )


class Event(NamedTuple):
    """One rated event (a tuple: one is built for every charge)."""

    kind: str
    """start (a session asks for quota) | usage (a session reports use) | end (the last
    report) | event (a direct debit) | refused_roaming."""
    at: int
    local_hour: int
    service: str
    session_id: str = ""
    units: int = 0
    charge: int = 0
    session_total: int = 0
    """Units used by the session so far (voice: seconds)."""
    destination: str = ""
    location: str = HOME
    roaming: bool = False


@dataclass(frozen=True, slots=True)
class Indicator:
    name: str
    value: str
    threshold: str
    weight: int


def _hour(at: int) -> int:
    return at // 3600


def _roll_spend(s: FraudState, hour: int, half_life_h: float) -> None:
    if s.spend_hour == hour:
        return
    if s.spend_hour:
        gap = max(1, hour - s.spend_hour)
        keep = 0.5 ** (1.0 / half_life_h)
        # the finished hour enters the baseline, then the empty hours decay it
        s.baseline = s.baseline * keep + s.spend_in_hour * (1 - keep)
        s.baseline *= keep ** (gap - 1)
        s.history_h += gap
    s.spend_hour, s.spend_in_hour = hour, 0


def evaluate(s: FraudState, e: Event, cfg: FraudSettings) -> list[Indicator]:
    """Update ``s`` with ``e``; the indicators the event raised."""
    out: list[Indicator] = []
    w = cfg.weights
    hour = _hour(e.at)
    if e.kind == "refused_roaming":
        out.append(Indicator("roaming_disabled", e.location, "roaming off", w["roaming_disabled"]))
        return out
    # location rules, at the start of a session or on an event
    if e.kind in ("start", "event"):
        if e.location != HOME and e.location in cfg.high_risk_networks:
            out.append(Indicator("high_risk_network", e.location, "high_risk_networks",
                                 w["high_risk_network"]))
        if e.destination and cfg.high_risk_prefixes:
            for p in cfg.high_risk_prefixes:
                if e.destination.startswith(p):
                    if p not in s.used_prefixes:
                        s.used_prefixes = [*s.used_prefixes, p][-16:]
                        out.append(Indicator("high_risk_prefix", e.destination, p,
                                             w["high_risk_prefix"]))
                    break
        # night usage of a daytime subscriber (judged on history before this event)
        if cfg.night_start <= e.local_hour < cfg.night_end and s.events >= cfg.night_min_events:
            night = sum(s.hours[h] for h in range(cfg.night_start, cfg.night_end))
            share = night / max(1, sum(s.hours))
            if share < cfg.night_max_share:
                out.append(Indicator("night_usage", f"{e.local_hour:02d}h, night share "
                                     f"{share:.1%}", f"< {cfg.night_max_share:.0%}",
                                     w["night_usage"]))
        s.events += 1
        s.hours[e.local_hour] += 1
        if s.events % 1000 == 0 and sum(s.hours) > 10_000:
            s.hours = [h // 2 for h in s.hours]
    if e.kind == "start" and e.session_id:
        live = [x for x in s.sessions if x[2] > e.at and x[0] != e.session_id]
        far = [x for x in live if x[1] != e.location]
        if far:
            out.append(Indicator("distant_sessions", f"{e.location} while {far[0][1]}",
                                 "one location at a time", w["distant_sessions"]))
        s.sessions = [*live, (e.session_id, e.location, e.at + 2 * 3600)][-8:]
    if e.kind == "end" and e.session_id:
        s.sessions = [x for x in s.sessions if x[0] != e.session_id]
    # spend velocity against the subscriber's own decayed baseline
    if e.charge > 0:
        _roll_spend(s, hour, cfg.velocity_half_life_h)
        before = s.spend_in_hour
        s.spend_in_hour += e.charge
        base = s.baseline if s.history_h >= cfg.velocity_min_history_h else 0.0
        limit = max(cfg.velocity_factor * base, cfg.velocity_min_amount)
        if s.spend_in_hour > limit >= before:  # crossing it, once per hour
            out.append(Indicator("velocity", f"{s.spend_in_hour} in this hour",
                                 f"> {int(limit)} ({cfg.velocity_factor:g}x baseline "
                                 f"{int(base)})", w["velocity"]))
    # voice: long calls and the SIM-box pattern
    if e.service == "voice":
        if e.kind in ("usage", "end") and e.session_total > cfg.long_call_s >= (
                e.session_total - e.units):
            out.append(Indicator("long_call", f"{e.session_total} s", f"> {cfg.long_call_s} s",
                                 w["long_call"]))
        if e.kind in ("end", "event"):
            if s.calls_hour != hour:
                s.calls_hour, s.calls, s.call_seconds, s.destinations = hour, 0, 0, []
            s.calls += 1
            s.call_seconds += e.session_total or e.units
            if e.destination and len(s.destinations) < 64:
                h = zlib.crc32(e.destination.encode())
                if h not in s.destinations:
                    s.destinations = [*s.destinations, h]
            if s.calls == cfg.sim_box_calls_per_hour + 1:
                avg = s.call_seconds / s.calls
                distinct = len(s.destinations) / s.calls
                if avg < cfg.sim_box_max_avg_s and distinct >= cfg.sim_box_min_distinct_share:
                    out.append(Indicator(
                        "sim_box", f"{s.calls} calls/h, avg {avg:.0f} s, "
                                   f"{distinct:.0%} distinct",
                        f"> {cfg.sim_box_calls_per_hour}/h, < {cfg.sim_box_max_avg_s} s, "
                        f">= {cfg.sim_box_min_distinct_share:.0%}", w["sim_box"]))
    return out


def decision(score: int, cfg: FraudSettings) -> str:
    if score >= cfg.block_score:
        return "block"
    if score >= cfg.review_score:
        return "review"
    return "allow"
