"""``ocs rerate``: a period's CDRs rated again — with other plans (a corrected tariff) or
the plan versions now in the store — and the difference per subscriber moved as one
adjustment each (a CDR with result ``rerate``), idempotent by run id.

Each record is priced the way live rating and ``ocs cdr explain`` price it: an event on
its own, a session report on the session's running total with the rate chosen when the
session opened (without ``--plans``: the plan version in effect then — a session that
live rating moved to a new version at a later quota is re-rated whole with the one it
opened under); the allowance it used stays as it was. Records that are not re-rated,
and why (counted in the result): refunds and the events they refunded, capped session
reports (what the balance held, not the price, set them), records whose plan the given
plans do not have, and records no rate of the new plan prices. An earlier run's
adjustments for the same period count against the new difference, so running again
with other plans corrects the total instead of adding to it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from ocs.billing.run import BillingError, _rows
from ocs.cdr.fileformat import SESSION_RESULTS, format_row, parse_iso_utc
from ocs.cdr.reader import closed_cdr_files, journal_records
from ocs.charging.plans import PlanBook
from ocs.money import MoneyError, format_amount, parse_amount
from ocs.rating.engine import UsageContext, cost, cycle_of, is_zero_rated, select_rate
from ocs.rating.plans import SERVICE_OF, Plan, Rate
from ocs.store.env import Store
from ocs.store.records import CdrRecord

_MISS = object()
_TIMED = object()
_CACHE = 20_000
"""Entries per cache before it starts over (memory stays flat whatever the rows)."""


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
        for s in sorted(self.subscribers.values(), key=lambda s: s.msisdn):
            w.writerow([s.msisdn, s.cdrs, format_amount(s.old, 6), format_amount(s.new, 6),
                        format_amount(s.earlier_runs, 6), format_amount(s.delta, 6)])
        return out.getvalue()


@dataclass(slots=True)
class _Session:
    chargeable: int = 0
    opened_at: str = ""
    """The start time of its first report as the file has it (parsed when needed)."""


class Rerater:
    """Feed it every record in journal order (:meth:`feed_row` for a file's rows,
    :meth:`feed` for the journal's records) after every refund (:meth:`refunded`); it
    keeps only the open sessions' running totals and bounded caches, so memory does not
    grow with the number of records."""

    def __init__(self, period: str, book: PlanBook, plans: dict[str, Plan] | None, *,
                 zone_of_network: dict[str, str], subscriber: str = ""):
        self.result = Result(period)
        self._book = book
        self._plans = plans
        self._zone_of = zone_of_network
        self._only = subscriber
        self._sessions: dict[tuple[str, str, str], _Session] = {}
        self._refunded: set[tuple[str, str]] = set()
        self._amounts: dict[str, int] = {}
        self._periods: dict[tuple[str, int], str | object | None] = {}
        self._periods_s: dict[tuple[str, str], str | object | None] = {}
        self._hours: dict[str, int] = {}
        self._rates: dict[tuple[object, ...], tuple[bool, Rate | None]] = {}
        self._has_bands: dict[tuple[int, str], bool] = {}
        self._fixed_plans: dict[str, Plan | object | None] = {}
        self._costs: dict[tuple[int, int], int] = {}

    def refunded(self, msisdn: str, session_id: str) -> None:
        """Before feeding: an event a refund gave back (it keeps its price)."""
        self._refunded.add((msisdn, session_id))

    def _period(self, plan_id: str, end: int) -> str | None:
        """The billing cycle of a record (the plan's time zone), cached per quarter hour
        (no time zone moves a month's start off a quarter hour)."""
        key = (plan_id, end // 900)
        p = self._periods.get(key, _MISS)
        if p is _MISS:
            plan = self._book.plan_at(plan_id, end)
            p = cycle_of(plan, end) if plan is not None else None
            if len(self._periods) > _CACHE:
                self._periods.clear()
            self._periods[key] = p
        return p  # type: ignore[return-value]

    def _period_s(self, plan_id: str, end: str) -> str | None:
        """:meth:`_period` of an end time as the file has it, cached per minute."""
        key = (plan_id, end[:16])
        p = self._periods_s.get(key, _MISS)
        if p is _MISS:
            p = self._period(plan_id, self._epoch(end))
            if len(self._periods_s) > _CACHE:
                self._periods_s.clear()
            self._periods_s[key] = p
        return p  # type: ignore[return-value]

    def feed(self, r: CdrRecord) -> None:
        """One record (from the journal: not in a closed file yet), as its file row."""
        self.feed_row(next(csv.reader([format_row(r)])))

    def feed_row(self, row: list[str]) -> None:
        """One row of a CDR file as the csv module reads it (23, 25 or 26 columns): the
        hot path (rows/s is a benchmark target), with the parsing cached the way billing
        caches it. A record's start time is parsed only when its price depends on the
        time. Raises ValueError (or MoneyError) for a field that does not parse."""
        res = self.result
        session_id, service_s, rg_s, result = row[1], row[4], row[5], row[20]
        units, allowance = int(row[12]), int(row[21])
        key = (session_id, service_s, rg_s)
        session: _Session | None = None
        before = 0
        if result in SESSION_RESULTS:
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = _Session(opened_at=row[7])
            before = session.chargeable
            session.chargeable += units - allowance
            if result == "final" or result == "expired":
                del self._sessions[key]
        msisdn = row[2]
        if self._only and msisdn != self._only:
            return
        charge_s = row[13]
        charge = self._amounts.get(charge_s)
        if charge is None:
            charge = parse_amount(charge_s, allow_negative=True, field="charge")
            if len(self._amounts) < 65536:
                self._amounts[charge_s] = charge
        destination = row[6]
        if result == "rerate":  # an earlier run's adjustment (its period as destination)
            if destination == res.period:
                sub = res.subscribers.get(msisdn)
                if sub is None:
                    sub = res.subscribers[msisdn] = Subscriber(msisdn)
                sub.earlier_runs += charge
            return
        plan_id = row[15]
        period = self._periods_s.get((plan_id, row[8][:16]), _MISS)
        if period is _MISS:
            period = self._period_s(plan_id, row[8])
        if period != res.period:
            return
        if result == "refund" or (result == "event" and (msisdn, session_id) in self._refunded):
            res.skip("refunded")
            return
        if result == "capped":
            res.skip("capped")
            return
        opened = session.opened_at if session is not None else row[7]
        at = -1
        plan = self._fixed_plans.get(plan_id, _MISS)
        if plan is _MISS:
            plan = self._fixed(plan_id)
        if plan is _TIMED:
            at = self._epoch(opened)
            plan = self._book.plan_at(plan_id, at)
        if plan is None or service_s not in SERVICE_OF:
            res.skip("plan not in the given plans")
            return
        assert isinstance(plan, Plan)
        minute = 0
        banded = self._has_bands.get((id(plan), service_s))
        if banded is None:
            banded = self._banded(plan, service_s)
        if banded:
            if at < 0:
                at = self._epoch(opened)
            minute = at // 60
        roaming, visited = row[17] == "1", row[18]
        slice_ = row[23] if len(row) > 23 else ""
        rkey = (id(plan), service_s, destination, rg_s, roaming, visited, slice_, minute)
        hit = self._rates.get(rkey)
        if hit is None:
            if at < 0:
                at = self._epoch(opened)
            ctx = UsageContext(SERVICE_OF[service_s], at, int(rg_s) if rg_s else None,
                               destination, self._zone_of.get(visited) if roaming else None,
                               roaming, slice_)
            hit = (is_zero_rated(plan, ctx), select_rate(plan, ctx))
            if len(self._rates) > _CACHE:
                self._rates.clear()
            self._rates[rkey] = hit
        zero, rate = hit
        chargeable = units - allowance
        if zero:
            new = 0
        elif rate is None:
            res.skip("no rate of the new plan prices it")
            return
        elif before:
            new = cost(rate, before + chargeable) - cost(rate, before)
        else:  # an event, or a session's first report: cached per rate and units
            ckey = (id(rate), chargeable)
            new = self._costs.get(ckey, -1)
            if new < 0:
                new = cost(rate, chargeable)
                if len(self._costs) > _CACHE:
                    self._costs.clear()
                self._costs[ckey] = new
        sub = res.subscribers.get(msisdn)
        if sub is None:
            sub = res.subscribers[msisdn] = Subscriber(msisdn)
        sub.cdrs += 1
        sub.old += charge
        sub.new += new

    def _epoch(self, text: str) -> int:
        """``2026-11-18T12:34:56Z`` -> seconds (the hour's start cached)."""
        hour = self._hours.get(text[:13])
        if hour is None:
            hour = parse_iso_utc(text[:13] + ":00:00Z")
            if len(self._hours) > _CACHE:
                self._hours.clear()
            self._hours[text[:13]] = hour
        if len(text) != 20 or text[13] != ":" or text[16] != ":" or text[19] != "Z":
            raise ValueError(f"time {text!r}: expected YYYY-MM-DDTHH:MM:SSZ")
        return hour + int(text[14:16]) * 60 + int(text[17:19])

    def _fixed(self, plan_id: str) -> Plan | object | None:
        """The plan that rates every record of ``plan_id`` whatever its time (the given
        plans', or a plan with one version); None: not in the given plans; _TIMED: the
        version depends on the time."""
        plan = self._fixed_plans.get(plan_id, _MISS)
        if plan is _MISS:
            if self._plans is not None:
                plan = self._plans.get(plan_id)
            else:
                plan = self._book.only_version(plan_id) or _TIMED
            self._fixed_plans[plan_id] = plan
        return plan

    def _banded(self, plan: Plan, service: str) -> bool:
        key = (id(plan), service)
        bands = self._has_bands.get(key)
        if bands is None:
            bands = self._has_bands[key] = any(r.bands for r in plan.rates
                                               if r.service.value == service)
        return bands

def rerate_store(rr: Rerater, store: Store, cdr_dir: Path) -> None:
    """Feed ``rr`` every CDR in journal order: the closed files' rows, then the journal's
    records (the current period's not yet in a closed file). First a quick look for
    refunds (rare: a byte search, each hit parsed)."""
    files = closed_cdr_files(cdr_dir)
    pending = list(journal_records(store))
    for path in files:
        with path.open("rb") as f:
            for line in f:
                if b",refund," in line:
                    row = next(csv.reader([line.decode("utf-8", "replace")]), [])
                    if len(row) > 20 and row[20] == "refund":
                        rr.refunded(row[2], row[1])
    for rec in pending:
        if rec.result == "refund":
            rr.refunded(rec.msisdn, rec.session_id)
    for path in files:
        for line_no, row in _rows(path):
            try:
                rr.feed_row(row)
            except (ValueError, MoneyError) as exc:
                raise BillingError(f"{path}:{line_no}: {exc}") from None
    for rec in pending:
        rr.feed(rec)
