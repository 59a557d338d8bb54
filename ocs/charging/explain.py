"""Charges explained with the engine's own inputs: an event as it would be rated now
(``ocs rate explain``) and a stored CDR as it was rated (``ocs cdr explain``), checking
that the explanation reproduces the CDR's charge exactly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ocs.cdr.fileformat import SESSION_RESULTS
from ocs.charging.engine import ChargingEngine, allowance_free, event_uses_allowance
from ocs.charging.model import Identity
from ocs.money import format_amount
from ocs.rating.engine import UsageContext, cycle_of, is_zero_rated
from ocs.rating.explain import Explanation, explain
from ocs.rating.plans import SERVICE_OF, Service
from ocs.store.records import CdrRecord


class ExplainError(LookupError):
    """Nothing to explain: no such subscriber, plan or record."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventExplanation:
    explanation: Explanation
    msisdn: str = ""
    refusal: str = ""
    """Why the subscriber would be refused before rating (suspended, roaming not
    allowed...); "" when they would be rated."""
    allowance_free: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"msisdn": self.msisdn or None, "refusal": self.refusal or None,
                "allowance_free": self.allowance_free, **self.explanation.to_json()}


def explain_event(engine: ChargingEngine, *, service: Service, units: int, at: int,
                  subscriber: Identity | None = None, plan_id: str = "",
                  rating_group: int | None = None, destination: str = "",
                  visited_network: str = "", slice_: str = "") -> EventExplanation:
    """A one-off event of ``units`` at ``at``, for a subscriber (their plan, status and
    allowance left in that cycle) or for a plan alone (no allowance)."""
    book = engine.plans.in_store(engine.store)
    ctx = engine.rating_context(book, service, at, rating_group, destination,
                                visited_network, slice_)
    if subscriber is None:
        plan = book.plan_at(plan_id, at)
        if plan is None:
            raise ExplainError(f"no plan {plan_id!r}" if not book.has_plan(plan_id) else
                               f"plan {plan_id!r} has no version in effect at {at}")
        return EventExplanation(explanation=explain(plan, ctx, units))
    with engine.store.view() as view:
        sub = engine.find_subscriber(view, subscriber)
        if sub is None:
            raise ExplainError(f"no subscriber {subscriber[0][1]!r}")
        plan = book.plan_at(sub.plan_id, at)
        if plan is None:
            raise ExplainError(f"subscriber {sub.msisdn}'s plan {sub.plan_id!r} has no "
                               f"version in effect at {at}")
        free: int | None = None
        if not is_zero_rated(plan, ctx) and event_uses_allowance(plan, ctx):
            alw = engine.allowance_in(view, sub.msisdn.encode(), cycle_of(plan, at))
            free = allowance_free(alw, plan, service)
    refusal = engine.check_subscriber(sub, ctx.roaming)
    return EventExplanation(
        explanation=explain(plan, ctx, units, allowance_units=min(units, free or 0)),
        msisdn=sub.msisdn, refusal=refusal.value if refusal is not None else "",
        allowance_free=free)


@dataclass(frozen=True, slots=True, kw_only=True)
class CdrExplanation:
    record: CdrRecord
    explanation: Explanation | None
    reproduced: bool | None
    """None: not a rated record (a re-rating adjustment)."""
    notes: tuple[str, ...]
    session_records: tuple[str, ...] = field(default=())
    """The session's earlier records its price builds on."""

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {
            "record_id": r.record_id, "msisdn": r.msisdn, "session_id": r.session_id,
            "result": r.result, "plan_id": r.plan_id, "plan_version": r.plan_version,
            "rate_id": r.rate_id, "units": r.units,
            "allowance_units": r.allowance_units, "charge": format_amount(r.charge),
            "charge_micro": r.charge, "currency": r.currency,
            "reproduced": self.reproduced, "notes": list(self.notes),
            "session_records": list(self.session_records),
            "explanation": self.explanation.to_json() if self.explanation else None,
        }


def session_of(rec: CdrRecord, earlier: Sequence[CdrRecord]) -> list[CdrRecord]:
    """The records before ``rec`` (journal order) of its reservation: the same session,
    service and rating group."""
    return [e for e in earlier if e.result in SESSION_RESULTS
            and e.session_id == rec.session_id and e.service == rec.service
            and e.rating_group == rec.rating_group]


def explain_cdr(engine: ChargingEngine, rec: CdrRecord,
                earlier: Sequence[CdrRecord]) -> CdrExplanation:
    """Rate ``rec`` again as the engine did, from the plans in the store now and the
    records ``earlier`` than it (the whole journal order before it, or at least its
    session's): the explanation, and whether it reproduces the charge exactly."""
    if rec.result == "refund":
        return _refund(engine, rec, earlier)
    if rec.result == "rerate":
        return CdrExplanation(record=rec, explanation=None, reproduced=None, notes=(
            f"a re-rating adjustment, not a rated event: run {rec.session_id} moved this "
            f"difference for period {rec.destination} (its report lists the records)",))
    book = engine.plans.in_store(engine.store)
    service = SERVICE_OF.get(rec.service)
    if service is None:
        return CdrExplanation(record=rec, explanation=None, reproduced=False,
                              notes=(f"unknown service {rec.service!r}",))
    before: list[CdrRecord] = []
    at = rec.start_time
    notes: list[str] = []
    if rec.result in SESSION_RESULTS:
        before = session_of(rec, earlier)
        # the rate was chosen when the session opened, or when a quota moved it to the
        # plan version it reports under
        for b in reversed(before):
            if b.plan_version != rec.plan_version:
                break
            at = b.start_time
        notes.append(f"a session report: its rate was chosen at {at} (the session's start "
                     "or the quota that took this plan version) and it is priced on the "
                     "session's running total")
    plan = (book.plan_version(rec.plan_id, rec.plan_version) if rec.plan_version
            else book.plan_at(rec.plan_id, at))
    if plan is None:
        return CdrExplanation(record=rec, explanation=None, reproduced=False,
                              notes=(f"plan {rec.plan_id!r} version {rec.plan_version} is "
                                     "not in the store", *notes))
    ctx = UsageContext(service=service, at=at, rating_group=rec.rating_group,
                       destination=rec.destination,
                       zone=book.zone_of_network.get(rec.visited_network)
                       if rec.roaming else None,
                       roaming=rec.roaming, slice=rec.slice)
    e = explain(plan, ctx, rec.units, allowance_units=rec.allowance_units,
                session_units_before=sum(b.units - b.allowance_units for b in before))
    picked = "zero-rated" if e.zero_rated else (e.winner.id if e.winner else "")
    reproduced = picked == rec.rate_id
    if not reproduced:
        notes.append(f"rating picks {picked or 'no rate'}, the record says {rec.rate_id}"
                     + ("" if rec.plan_version else
                        " (a record from before plan versions: the plan may have changed)"))
    elif rec.result == "capped":
        reproduced = 0 <= rec.charge <= e.charge
        notes.append(f"capped: the report cost {format_amount(e.charge)}, the balance "
                     f"held {format_amount(rec.charge)}")
    elif rec.charge != e.charge:
        reproduced = False
        notes.append(f"the record charged {format_amount(rec.charge)}, rating gives "
                     f"{format_amount(e.charge)}"
                     + ("" if rec.plan_version else
                        " (a record from before plan versions: the plan may have changed)"))
    else:
        notes.append(f"reproduces the charge exactly: {rec.charge} micro")
    return CdrExplanation(record=rec, explanation=e, reproduced=reproduced,
                          notes=tuple(notes),
                          session_records=tuple(b.record_id for b in before))


def _refund(engine: ChargingEngine, rec: CdrRecord,
            earlier: Sequence[CdrRecord]) -> CdrExplanation:
    """A refund gives back one event's charge: find it and explain that."""
    for orig in reversed(earlier):
        if (orig.result == "event" and orig.session_id == rec.session_id
                and orig.rate_id == rec.rate_id and orig.units == -rec.units
                and orig.charge == -rec.charge):
            inner = explain_cdr(engine, orig, earlier)
            return CdrExplanation(
                record=rec, explanation=inner.explanation, reproduced=inner.reproduced,
                notes=(f"a refund of {orig.record_id} (charged {format_amount(orig.charge)}),"
                       " given back in full", *inner.notes),
                session_records=(orig.record_id,))
    return CdrExplanation(record=rec, explanation=None, reproduced=False,
                          notes=("a refund whose original charge is not among the records",))
