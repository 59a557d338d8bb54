"""Why an event costs what it costs (``ocs rate explain``, ``ocs cdr explain``).

It runs the live rating path — :func:`select_rate` with a trace, :func:`billed_units`,
:func:`cost` — so what it explains is what was (or would be) charged, to the micro-unit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ocs.money import format_amount
from ocs.rating.engine import (
    Trace,
    UsageContext,
    billed_units,
    cost,
    is_zero_rated,
    local_time,
    select_rate,
)
from ocs.rating.plans import TIMED, Plan, Rate

SPECIFICITY = ("zone", "prefix length", "rating group named", "slice", "band named",
               "listed first")
"""The parts of the specificity key, most significant first (see :func:`select_rate`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    rate: Rate
    matched: bool
    why: str
    key: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        r = self.rate
        out: dict[str, Any] = {
            "rate": r.id, "prefix": r.prefix, "matched": self.matched, "why": self.why,
            "price": format_amount(r.price), "unit": r.unit,
        }
        if self.key is not None:
            out["specificity"] = {name.replace(" ", "_"): v for name, v in
                                  zip(SPECIFICITY[:-1], self.key[:-1], strict=True)}
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Explanation:
    plan: Plan
    ctx: UsageContext
    units: int
    zero_rated: bool
    candidates: tuple[Candidate, ...]
    unlisted: int
    """Rates of the service whose prefix does not start the destination, not listed."""
    winner: Rate | None
    allowance_units: int
    session_units_before: int
    """Chargeable units of the same session charged before this report (sessions are
    priced on their running total, so block rounding and connect fee apply once)."""
    billed_units: int
    cost_before: int
    cost_after: int
    charge: int
    arithmetic: tuple[str, ...]

    @property
    def chargeable_units(self) -> int:
        return self.units - self.allowance_units

    def to_json(self) -> dict[str, Any]:
        c = self.ctx
        w = self.winner
        return {
            "plan": self.plan.id,
            "plan_version": self.plan.version,
            "service": c.service.value,
            "destination": c.destination,
            "at": dt.datetime.fromtimestamp(c.at, tz=dt.UTC).isoformat().replace("+00:00", "Z"),
            "local_time": local_time(self.plan, c.at).isoformat(),
            "roaming": c.roaming,
            "zone": c.zone,
            "rating_group": c.rating_group,
            "slice": c.slice,
            "units": self.units,
            "zero_rated": self.zero_rated,
            "candidates": [x.to_json() for x in self.candidates],
            "unlisted_other_prefixes": self.unlisted,
            "winner": w.id if w is not None else None,
            "allowance_units": self.allowance_units,
            "chargeable_units": self.chargeable_units,
            "session_units_before": self.session_units_before,
            "billed_units": self.billed_units,
            "price": format_amount(w.price) if w is not None else None,
            "unit": w.unit if w is not None else None,
            "unit_size": w.unit_size if w is not None else None,
            "connect_fee": format_amount(w.connect_fee) if w is not None else None,
            "charge": format_amount(self.charge),
            "charge_micro": self.charge,
            "currency": self.plan.currency,
            "arithmetic": list(self.arithmetic),
        }


def _less_specific(key: tuple[int, ...], best: tuple[int, ...], winner: Rate) -> str:
    for name, mine, theirs in zip(SPECIFICITY, key, best, strict=True):
        if mine != theirs:
            return f"matches, but {winner.id} wins on {name}"
    return f"matches, but {winner.id} wins"  # (keys are unique: order is in them)


LIST_OTHER_PREFIXES = 20
"""Rates whose prefix does not start the destination are listed up to this many (a
plan with a rate deck has thousands); past it they are only counted."""


def candidates(plan: Plan, ctx: UsageContext) -> tuple[Rate | None, tuple[Candidate, ...],
                                                        int]:
    """The rate live rating picks; every rate of the service whose prefix starts the
    destination with why it did or did not match, in plan order (the others too, when
    few); and how many others were left out."""
    trace: Trace = []
    winner = select_rate(plan, ctx, trace)
    seen = {id(rate): (why, key) for rate, why, key in trace}
    best = seen[id(winner)][1] if winner is not None else None
    others = sum(1 for r in plan.rates if r.service is ctx.service) - len(seen)
    listed = others <= LIST_OTHER_PREFIXES
    out: list[Candidate] = []
    for rate in plan.rates:
        if rate.service is not ctx.service:
            continue
        if id(rate) not in seen:
            if listed:
                out.append(Candidate(rate=rate, matched=False,
                                     why=f"prefix {rate.prefix} does not start "
                                         f"{ctx.destination or 'the (empty) destination'}"))
            continue
        why, key = seen[id(rate)]
        if key is None:
            out.append(Candidate(rate=rate, matched=False, why=why))
        elif rate is winner:
            out.append(Candidate(rate=rate, matched=True, why="the most specific match",
                                 key=key))
        else:
            assert best is not None and winner is not None
            out.append(Candidate(rate=rate, matched=True,
                                 why=_less_specific(key, best, winner), key=key))
    return winner, tuple(out), 0 if listed else others


def _units(rate: Rate, n: int) -> str:
    if rate.service in TIMED:
        return f"{n} s"
    return f"{n} {'B' if rate.service.value == 'data' else 'messages' if n != 1 else 'message'}"


def explain(plan: Plan, ctx: UsageContext, units: int, *, allowance_units: int = 0,
            session_units_before: int = 0) -> Explanation:
    """Explain rating ``units`` of which ``allowance_units`` come from the plan's
    allowance, after ``session_units_before`` chargeable units of the same session."""
    winner, cands, unlisted = candidates(plan, ctx)
    zero = is_zero_rated(plan, ctx)
    lines: list[str] = []
    if zero:
        lines.append(f"rating group {ctx.rating_group} is zero-rated on plan {plan.id}: "
                     "nothing is charged, no rate applies")
        return Explanation(plan=plan, ctx=ctx, units=units, zero_rated=True,
                           candidates=cands, unlisted=unlisted, winner=None, allowance_units=0,
                           session_units_before=session_units_before, billed_units=0,
                           cost_before=0, cost_after=0, charge=0, arithmetic=tuple(lines))
    if winner is None:
        lines.append(f"no {ctx.service.value} rate of plan {plan.id} matches: the event is "
                     "refused (RATING_FAILED)")
        return Explanation(plan=plan, ctx=ctx, units=units, zero_rated=False,
                           candidates=cands, unlisted=unlisted, winner=None,
                           allowance_units=allowance_units,
                           session_units_before=session_units_before, billed_units=0,
                           cost_before=0, cost_after=0, charge=0, arithmetic=tuple(lines))
    r = winner
    chargeable = units - allowance_units
    if allowance_units:
        lines.append(f"{_units(r, allowance_units)} of {_units(r, units)} from the plan's "
                     f"allowance: {_units(r, chargeable)} chargeable")
    before = session_units_before
    total = before + chargeable
    if before:
        lines.append(f"the session had {_units(r, before)} chargeable before: priced on the "
                     f"running total {_units(r, total)}, minus what {_units(r, before)} cost")
    billed = billed_units(r, total)
    if r.service in TIMED and total > 0:
        lines.append(f"{total} s rounded up to {billed} s ({r.first_increment_s} s first, "
                     f"then {r.increment_s} s blocks)")
    after = cost(r, total)
    fee = f"{format_amount(r.connect_fee)} connect fee + " if r.connect_fee else ""
    if total > 0:
        lines.append(
            f"cost({_units(r, total)}) = {fee}ceil({billed} x {r.price} micro / "
            f"{r.unit_size} per {r.unit}) = {after} micro")
    else:
        lines.append(f"cost(0) = 0 (nothing chargeable{': no connect fee' if fee else ''})")
    prior = cost(r, before)
    if before:
        lines.append(f"cost({_units(r, before)}) = {prior} micro")
    charge = after - prior
    lines.append(f"charge = {after} - {prior} = {charge} micro = {format_amount(charge)} "
                 f"{plan.currency}" if before else
                 f"charge = {charge} micro = {format_amount(charge)} {plan.currency}")
    return Explanation(plan=plan, ctx=ctx, units=units, zero_rated=False, candidates=cands,
                       unlisted=unlisted, winner=r, allowance_units=allowance_units,
                       session_units_before=before, billed_units=billed, cost_before=prior,
                       cost_after=after, charge=charge, arithmetic=tuple(lines))
