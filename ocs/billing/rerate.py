"""``ocs rerate``: a period's CDRs rated again — with other plans (a corrected tariff) or
the plan versions now in the store — and the difference per subscriber moved as one
adjustment each (a CDR with result ``rerate``), idempotent by run id.

Each record is priced the way live rating and ``ocs cdr explain`` price it: an event on
its own, a session report on the session's running total with the rate chosen when the
session opened; the allowance it used stays as it was. Records that are not re-rated,
and why (counted in the result): refunds and the events they refunded, capped session
reports (what the balance held, not the price, set them), records whose plan the given
plans do not have, and records no rate of the new plan prices. An earlier run's
adjustments for the same period count against the new difference, so running again
with other plans corrects the total instead of adding to it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field

from ocs.charging.plans import PlanBook
from ocs.rating.engine import UsageContext, cost, cycle_of, is_zero_rated, select_rate
from ocs.rating.plans import SERVICE_OF, Plan
from ocs.store.records import CdrRecord

SESSION_RESULTS = frozenset({"interim", "final", "capped", "expired"})


@dataclass(slots=True)
class Subscriber:
    msisdn: str
    cdrs: int = 0
    old: int = 0
    new: int = 0
    earlier_runs: int = 0
    """What earlier re-rating runs already moved for this period."""

    @property
    def delta(self) -> int:
        return self.new - self.old - self.earlier_runs


@dataclass(slots=True)
class Result:
    period: str
    subscribers: dict[str, Subscriber] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    @property
    def cdrs(self) -> int:
        return sum(s.cdrs for s in self.subscribers.values())

    def report_csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["msisdn", "cdrs", "old_total", "new_total", "earlier_runs", "delta"])
        from ocs.money import format_amount

        for s in sorted(self.subscribers.values(), key=lambda s: s.msisdn):
            w.writerow([s.msisdn, s.cdrs, format_amount(s.old, 6), format_amount(s.new, 6),
                        format_amount(s.earlier_runs, 6), format_amount(s.delta, 6)])
        return out.getvalue()


@dataclass(slots=True)
class _Session:
    chargeable: int = 0
    opened_at: int = 0


class Rerater:
    """Feed it every record in journal order (:meth:`feed`); it keeps only the open
    sessions' running totals, so memory does not grow with the number of records."""

    def __init__(self, period: str, book: PlanBook, plans: dict[str, Plan] | None, *,
                 home_zone_of: dict[str, str], subscriber: str = ""):
        self.result = Result(period)
        self._book = book
        self._plans = plans
        self._zone_of = home_zone_of
        self._only = subscriber
        self._sessions: dict[tuple[str, str, int | None], _Session] = {}
        self._refunded: set[tuple[str, str]] = set()

    def refunded(self, records: Iterable[CdrRecord]) -> None:
        """First pass: the events refunds gave back (they keep their price)."""
        for r in records:
            if r.result == "refund":
                self._refunded.add((r.msisdn, r.session_id))

    def _period(self, r: CdrRecord) -> str | None:
        plan = self._book.plan_at(r.plan_id, r.end_time)
        return cycle_of(plan, r.end_time) if plan is not None else None

    def _new_plan(self, r: CdrRecord, at: int) -> Plan | None:
        if self._plans is not None:
            return self._plans.get(r.plan_id)
        return self._book.plan_at(r.plan_id, at)

    def feed(self, r: CdrRecord) -> None:
        res = self.result
        key = (r.session_id, r.service, r.rating_group)
        session: _Session | None = None
        if r.result in SESSION_RESULTS:
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = _Session(opened_at=r.start_time)
        before = session.chargeable if session is not None else 0
        if session is not None:
            session.chargeable += r.units - r.allowance_units
            if r.result in ("final", "expired"):
                del self._sessions[key]
        if self._only and r.msisdn != self._only:
            return
        if r.result == "rerate":  # an earlier run's adjustment (its period as destination)
            if r.destination == res.period:
                sub = res.subscribers.setdefault(r.msisdn, Subscriber(r.msisdn))
                sub.earlier_runs += r.charge
            return
        if self._period(r) != res.period:
            return
        if r.result == "refund" or (r.result == "event"
                                    and (r.msisdn, r.session_id) in self._refunded):
            res.skip("refunded")
            return
        if r.result == "capped":
            res.skip("capped")
            return
        service = SERVICE_OF.get(r.service)
        at = session.opened_at if session is not None else r.start_time
        plan = self._new_plan(r, at)
        if plan is None or service is None:
            res.skip("plan not in the given plans")
            return
        ctx = UsageContext(service=service, at=at, rating_group=r.rating_group,
                           destination=r.destination,
                           zone=self._zone_of.get(r.visited_network) if r.roaming else None,
                           roaming=r.roaming, slice=r.slice)
        chargeable = r.units - r.allowance_units
        if is_zero_rated(plan, ctx):
            new = 0
        else:
            rate = select_rate(plan, ctx)
            if rate is None:
                res.skip("no rate of the new plan prices it")
                return
            new = cost(rate, before + chargeable) - cost(rate, before)
        sub = res.subscribers.setdefault(r.msisdn, Subscriber(r.msisdn))
        sub.cdrs += 1
        sub.old += r.charge
        sub.new += new
