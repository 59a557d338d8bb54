"""``ocs bill run``: invoices for one period from closed CDR files.

Semantics (all amounts int micro-units until formatted):

- A CDR belongs to the calendar month of its ``end_time`` in its plan's time zone.
- Each closed file remembers the period through which it has been billed. A run of
  period P bills the rows of each file whose period is after that mark and at most P:
  rows of P are the period's usage, rows of earlier periods arrived late and become
  adjustment lines. Rows of later periods stay for later runs.
- The first run of a period records its inputs (files with checksums and marks, the
  subscribers with their plan terms, invoice numbers). Running it again rebuilds the
  invoices from that record: byte-identical output, or an error if a file changed.
- Invoice lines are rounded to the cent (half up) one by one; tax is computed per
  taxable line, rounded per line, and stated once as a single line. So
  total = sum of lines = subtotal + tax.
- Postpaid usage is billed at the charges the engine already rated (allowances and
  overage included); prepaid usage is listed as information (already paid).
- A malformed or truncated file stops the run with its file and line; nothing is
  written (outputs go to a temp dir renamed into place at the end).
"""

from __future__ import annotations

import calendar
import contextlib
import csv
import datetime as dt
import hashlib
import io
import os
import re
import time
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ocs.billing.invoice import SERVICE_TEXT, Invoice, Line
from ocs.billing.render import write_invoices
from ocs.cdr.fileformat import COLUMNS, header_ok, iso_utc
from ocs.cdr.reader import closed_cdr_files
from ocs.config import BillingConfig
from ocs.money import MICRO, MoneyError, parse_amount
from ocs.provisioning import all_plans
from ocs.store.env import BILLING, Store
from ocs.store.records import Subscriber, dec_subscriber
from ocs.store.tx import StorePort

_PERIOD_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
CENT = MICRO // 100

# Column positions in the CDR file format.
_C = {name: i for i, name in enumerate(COLUMNS)}
_MSISDN, _SERVICE, _END, _UNITS = _C["msisdn"], _C["service"], _C["end_time"], _C["units"]
_CHARGE, _PLAN, _RESULT = _C["charge"], _C["plan_id"], _C["result"]
_ALLOWANCE = _C["allowance_units"]

class BillingError(ValueError):
    """A run that cannot go ahead (bad period, edited or malformed CDR file, ...)."""


def round_cents(micros: int) -> int:
    """Round half away from zero to a whole cent."""
    q, r = divmod(abs(micros), CENT)
    if r * 2 >= CENT:
        q += 1
    return q * CENT if micros >= 0 else -q * CENT


def round_ratio_cents(numerator: int, denominator: int) -> int:
    """numerator / denominator micro-units, rounded half up to a whole cent, exactly."""
    q, r = divmod(numerator, denominator * CENT)
    if 2 * r >= denominator * CENT:
        q += 1
    return q * CENT


def check_period(period: str) -> tuple[int, int]:
    m = _PERIOD_RE.match(period)
    if not m:
        raise BillingError(f"period {period!r}: expected YYYY-MM")
    return int(m.group(1)), int(m.group(2))


# -- stored run records -------------------------------------------------------------------


class FileUse(msgspec.Struct, array_like=True, frozen=True):
    name: str
    sha256: str
    after: str
    """Rows with ``after < period <= run period`` were billed by this run ("" = none before)."""


class SubscriberTerms(msgspec.Struct, array_like=True, frozen=True):
    msisdn: str
    plan_id: str
    plan_name: str
    mode: str
    currency: str
    timezone: str
    monthly_fee: int
    created_at: int
    terminated_at: int
    segments: list[tuple[int, str, str, int]] = []
    """Plan segments in force: (from, plan id, plan name, monthly fee), oldest first."""
    customer_name: str = ""
    billing_address: str = ""


class Issuer(msgspec.Struct, array_like=True, frozen=True):
    """Who issued a run's invoices (``[billing] issuer_*`` at its first run)."""

    name: str = ""
    address: str = ""
    tax_id: str = ""


class RunRecord(msgspec.Struct, frozen=True):
    period: str
    files: list[FileUse]
    subscribers: list[SubscriberTerms]
    issuer: Issuer = Issuer()


_enc = msgspec.msgpack.Encoder()
_dec_run = msgspec.msgpack.Decoder(RunRecord)


# -- invoices -----------------------------------------------------------------------------


@dataclass(slots=True)
class Usage:
    """Per subscriber: (kind, service, row period) -> [units, charge, allowance units]."""

    buckets: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)



@dataclass(frozen=True, slots=True)
class RunSummary:
    period: str
    invoices: int
    rows: int
    files: int
    subtotal: int
    tax: int
    total: int
    out_dir: Path | None
    rerun: bool


ProgressFn = Callable[[int, int], None]


class Biller:
    def __init__(self, store: Store, cdr_dir: Path, cfg: BillingConfig, *,
                 clock: Callable[[], float] = time.time, ledger: StorePort | None = None):
        self.store = store
        """Where the billing runs are kept (the node's LMDB store)."""
        self.ledger: StorePort = ledger if ledger is not None else store
        """Where subscribers and plans are (the same store, or the Redis Cluster)."""
        self.cdr_dir = cdr_dir
        self.cfg = cfg
        self.clock = clock
        """Now, for "has the period ended" (tests bill months of their own calendar)."""
        self._period_cache: dict[tuple[str, str], str] = {}

    # -- state --------------------------------------------------------------------------

    def _get(self, key: bytes) -> bytes | None:
        return self.store.get(BILLING, key)

    def stored_run(self, period: str) -> RunRecord | None:
        raw = self._get(b"run:" + period.encode())
        return _dec_run.decode(raw) if raw is not None else None

    def _billed_through(self, name: str) -> str:
        raw = self._get(b"file:" + name.encode())
        return raw.decode() if raw is not None else ""

    def later_runs(self, period: str) -> list[str]:
        with self.store.read() as txn, txn.cursor(db=self.store.dbs[BILLING]) as cur:
            out = []
            if cur.set_range(b"run:"):
                for k in cur.iternext(keys=True, values=False):
                    k = bytes(k)
                    if not k.startswith(b"run:"):
                        break
                    if k[4:].decode() > period:
                        out.append(k[4:].decode())
            return out

    # -- inputs -------------------------------------------------------------------------

    def _plan_record(self, period: str) -> RunRecord:
        """What a first run of ``period`` bills: unbilled file rows, current subscribers."""
        year, month = check_period(period)
        plans = all_plans(self.ledger)
        subs: list[SubscriberTerms] = []
        for v in self.ledger.subscribers():
            sub: Subscriber = dec_subscriber.decode(v)
            plan = plans.get(sub.plan_id, {})
            tz = str(plan.get("timezone", "UTC"))
            start, end, _days = period_bounds(year, month, tz)
            terminated = sub.updated_at if sub.status == "terminated" else 0
            if sub.created_at >= end or (terminated and terminated < start):
                continue
            segments = []
            history = [*sub.plan_history, (sub.plan_since or sub.created_at, sub.plan_id)]
            for since, pid in history:
                pt = plans.get(pid, {})
                segments.append((since, pid, str(pt.get("name", pid)),
                                 parse_amount(str(pt.get("monthly_fee", "0")))))
            subs.append(SubscriberTerms(
                msisdn=sub.msisdn, plan_id=sub.plan_id,
                plan_name=str(plan.get("name", sub.plan_id)), mode=sub.mode,
                currency=sub.currency, timezone=tz,
                monthly_fee=parse_amount(str(plan.get("monthly_fee", "0"))),
                created_at=sub.created_at, terminated_at=terminated, segments=segments,
                customer_name=sub.customer_name, billing_address=sub.billing_address))
        files = []
        for path in closed_cdr_files(self.cdr_dir):
            after = self._billed_through(path.name)
            if after >= period:
                continue
            files.append(FileUse(path.name, _sha256(path), after))
        return RunRecord(period=period, files=files, subscribers=subs, issuer=Issuer(
            name=self.cfg.issuer_name, address=self.cfg.issuer_address,
            tax_id=self.cfg.issuer_tax_id))

    def _row_period(self, tz: str, end_time: str) -> str:
        key = (tz, end_time[:16])
        p = self._period_cache.get(key)
        if p is None:
            if not _TS_RE.match(end_time):
                raise ValueError(f"end_time {end_time!r} is not UTC ISO 8601")
            t = dt.datetime.strptime(end_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
            local = t.astimezone(zoneinfo.ZoneInfo(tz))
            p = f"{local.year:04d}-{local.month:02d}"
            if len(self._period_cache) > 100_000:
                self._period_cache.clear()
            self._period_cache[key] = p
        return p

    def _scan(self, record: RunRecord, progress: ProgressFn | None) -> tuple[
            dict[str, Usage], int]:
        """Stream the record's files; aggregate billable rows per subscriber."""
        tz_of = {s.msisdn: s.timezone for s in record.subscribers}
        plan_tz = {pid: str(p.get("timezone", "UTC")) for pid, p in
                   all_plans(self.ledger).items()}
        acc: dict[tuple[str, str, str, str], list[int]] = {}
        rows = 0
        total_bytes = sum((self.cdr_dir / f.name).stat().st_size for f in record.files
                          if (self.cdr_dir / f.name).exists())
        done_bytes = 0
        for fu in record.files:
            path = self.cdr_dir / fu.name
            if not path.exists():
                raise BillingError(f"{path}: CDR file billed by this period is missing")
            if _sha256(path) != fu.sha256:
                raise BillingError(f"{path}: changed since period {record.period} was billed "
                                   "(checksum differs); run 'ocs bill reconcile'")
            rows += self._scan_file(path, fu.after, record.period, tz_of, plan_tz, acc)
            done_bytes += path.stat().st_size
            if progress is not None:
                progress(done_bytes, total_bytes)
        usage: dict[str, Usage] = {}
        for (msisdn, kind, service, p), b in acc.items():
            u = usage.get(msisdn)
            if u is None:
                u = usage[msisdn] = Usage()
            u.buckets[(kind, service, p)] = b
        return usage, rows

    def _scan_file(self, path: Path, after: str, period: str, tz_of: dict[str, str],
                   plan_tz: dict[str, str], acc: dict[tuple[str, str, str, str], list[int]]
                   ) -> int:
        """The hot loop (rows/s is a benchmark target): one pass, cached parsing."""
        period_cache = self._period_cache
        amounts: dict[str, int] = {}
        rows = 0
        with _cdr_csv(path) as (reader, width):
            for row in reader:
                if len(row) != width:
                    raise BillingError(f"{path}:{reader.line_num}: expected {width} "
                                       f"fields, got {len(row)}")
                msisdn = row[_MSISDN]
                end = row[_END]
                tz = tz_of.get(msisdn) or plan_tz.get(row[_PLAN], "UTC")
                p = period_cache.get((tz, end[:16]))
                if p is None:
                    try:
                        p = self._row_period(tz, end)
                    except ValueError as exc:
                        raise BillingError(f"{path}:{reader.line_num}: {exc}") from None
                if p <= after or p > period:
                    continue
                charge_s = row[_CHARGE]
                charge = amounts.get(charge_s)
                allowance_s = row[_ALLOWANCE]
                try:
                    if charge is None:
                        charge = parse_amount(charge_s, allow_negative=True, field="charge")
                        if len(amounts) < 65536:
                            amounts[charge_s] = charge
                    units = int(row[_UNITS])
                    allowance = int(allowance_s) if allowance_s != "0" else 0
                except (ValueError, MoneyError) as exc:
                    raise BillingError(f"{path}:{reader.line_num}: {exc}") from None
                kind = "usage" if p == period else "adjustment"
                if row[_RESULT] == "refund":
                    kind = "credit"
                elif row[_RESULT] == "rerate":  # its period: when the run moved it
                    kind = "rerate"
                key = (msisdn, kind, row[_SERVICE], p)
                b = acc.get(key)
                if b is None:
                    acc[key] = [units, charge, allowance]
                else:
                    b[0] += units
                    b[1] += charge
                    b[2] += allowance
                rows += 1
        return rows

    # -- invoices -----------------------------------------------------------------------

    def _tax_rule(self, msisdn: str) -> tuple[str, int]:
        best: tuple[int, str, int] | None = None
        for t in self.cfg.taxes:
            if msisdn.startswith(t.prefix) and (best is None or len(t.prefix) > best[0]):
                best = (len(t.prefix), t.name, parse_amount(t.rate))
        return (best[1], best[2]) if best else ("", 0)

    def _invoice(self, terms: SubscriberTerms, usage: Usage | None, period: str,
                 invoice_id: str, issuer: Issuer) -> Invoice | None:
        year, month = check_period(period)
        _start, end, days = period_bounds(year, month, terms.timezone)
        lines: list[Line] = []
        segments = terms.segments or [(terms.created_at, terms.plan_id, terms.plan_name,
                                       terms.monthly_fee)]
        for i, (since, _pid, plan_name, fee) in enumerate(segments):
            until = segments[i + 1][0] if i + 1 < len(segments) else 0
            active = segment_days(since, until, terms.terminated_at, terms.timezone, year,
                                  month)
            if not fee or not active:
                continue
            amount = fee if active == days else round_ratio_cents(fee * active, days)
            desc = f"Monthly fee, {plan_name}"
            if active != days:
                desc += f" (pro rata {active}/{days} days)"
            lines.append(Line("fee", desc, active, amount))
        prepaid: list[tuple[str, int, int]] = []
        if usage is not None:
            for (kind, service, p), (units, charge, allowance) in sorted(
                    usage.buckets.items()):
                name, unit = SERVICE_TEXT.get(service, (service, "units"))
                if terms.mode != "postpaid":
                    if kind == "usage":
                        prepaid.append((service, units, charge))
                    continue
                if kind == "usage":
                    if allowance:
                        lines.append(Line("allowance", f"{name} ({unit}) included in the "
                                          "plan's allowance", allowance, 0))
                    lines.append(Line("usage", f"{name} ({unit})", units - allowance,
                                      round_cents(charge)))
                elif kind == "rerate":
                    lines.append(Line("adjustment", "Re-rating adjustment (a tariff "
                                      "correction of earlier usage)", 0, round_cents(charge)))
                elif kind == "adjustment":
                    lines.append(Line("adjustment", f"{name} ({unit}) from {p}, reported "
                                      "after that period was billed", units,
                                      round_cents(charge)))
                else:
                    lines.append(Line("credit", f"Refund, {name} ({p})", units,
                                      round_cents(charge)))
        for d in self.cfg.discounts:
            if d.plan and d.plan != terms.plan_id:
                continue
            kinds = {"fee": ("fee",), "usage": ("usage", "adjustment"),
                     "all": ("fee", "usage", "adjustment")}[d.applies_to]
            base = sum(ln.amount for ln in lines if ln.kind in kinds)
            if base > 0:
                pct = parse_amount(d.percent)
                lines.append(Line("discount", f"{d.description} ({_pct(pct // 100)} %)", 0,
                                  -round_ratio_cents(base * pct, 100 * MICRO)))
        if not lines and not prepaid:
            return None
        subtotal = sum(ln.amount for ln in lines)
        tax_name, rate = self._tax_rule(terms.msisdn)
        tax = sum(round_ratio_cents(ln.amount * rate, MICRO) if ln.amount >= 0 else
                  -round_ratio_cents(-ln.amount * rate, MICRO) for ln in lines) if rate else 0
        if rate and lines:
            lines.append(Line("tax", f"{tax_name} {_pct(rate)} %", 0, tax))
        issue = _local_date(end, terms.timezone)
        due = issue + dt.timedelta(days=self.cfg.due_days)
        return Invoice(invoice_id=invoice_id, msisdn=terms.msisdn, period=period,
                       plan=terms.plan_id, plan_name=terms.plan_name, currency=terms.currency,
                       lines=lines, subtotal=subtotal, tax=tax, total=subtotal + tax,
                       due_date=due.isoformat(), issue_date=issue.isoformat(),
                       tax_name=tax_name, tax_rate=rate, prepaid_usage=prepaid,
                       customer_name=terms.customer_name,
                       billing_address=terms.billing_address, issuer_name=issuer.name,
                       issuer_address=issuer.address, issuer_tax_id=issuer.tax_id)

    # -- the run ------------------------------------------------------------------------

    def period_end(self, period: str) -> tuple[int, str]:
        """When ``period`` has ended everywhere it is billed: the latest end of the month
        over the time zones of the stored plans (and UTC), with that time zone."""
        year, month = check_period(period)
        zones = {"UTC"} | {str(p.get("timezone", "UTC"))
                           for p in all_plans(self.ledger).values()}
        return max((period_bounds(year, month, tz)[1], tz) for tz in sorted(zones))

    def run(self, period: str, out_dir: Path | None, *, dry_run: bool = False,
            preview: bool = False, pdf: bool = False, progress: ProgressFn | None = None,
            ) -> tuple[RunSummary, list[Invoice]]:
        """Bill ``period`` into ``out_dir``. A first run of a period that has not ended
        yet (:meth:`period_end`, by :attr:`clock`) is refused unless ``preview``:
        invoices as they would be today, written without recording the run (nothing is
        locked; the real run after the month's end bills every row). ``dry_run`` writes
        nothing at all."""
        check_period(period)
        record = self.stored_run(period)
        rerun = record is not None
        if record is None and not preview and not dry_run:
            end, tz = self.period_end(period)
            if self.clock() < end:
                raise BillingError(
                    f"period {period} has not ended yet (it ends {iso_utc(end)}, midnight in "
                    f"{tz}): billing it now would lock it; --preview shows its invoices "
                    "without billing it")
        if record is None:
            later = self.later_runs(period)
            if later:
                raise BillingError(f"period {period} comes before {later[0]}, which is "
                                   "already billed")
            record = self._plan_record(period)
        usage, rows = self._scan(record, progress)
        invoices: list[Invoice] = []
        seq = 0
        for terms in sorted(record.subscribers, key=lambda s: s.msisdn):
            inv = self._invoice(terms, usage.get(terms.msisdn), period,
                                f"INV-{period.replace('-', '')}-{seq + 1:06d}", record.issuer)
            if inv is not None:
                seq += 1
                invoices.append(inv)
        summary = RunSummary(
            period=period, invoices=len(invoices), rows=rows, files=len(record.files),
            subtotal=sum(i.subtotal for i in invoices), tax=sum(i.tax for i in invoices),
            total=sum(i.total for i in invoices), out_dir=None if dry_run else out_dir,
            rerun=rerun)
        if dry_run or out_dir is None:
            return summary, invoices
        write_invoices(invoices, out_dir, pdf=pdf)
        if not rerun and not preview:
            self._save(record)
        return summary, invoices

    def _save(self, record: RunRecord) -> None:
        def op(tx: Any) -> None:
            tx.put(BILLING, b"run:" + record.period.encode(), _enc.encode(record))
            for f in record.files:
                tx.put(BILLING, b"file:" + f.name.encode(), record.period.encode())

        self.store.run_write(op)


# -- helpers ------------------------------------------------------------------------------


def period_bounds(year: int, month: int, tz: str) -> tuple[int, int, int]:
    """(start, end) epoch seconds of the month in ``tz``, and its number of days."""
    z = zoneinfo.ZoneInfo(tz)
    days = calendar.monthrange(year, month)[1]
    start = dt.datetime(year, month, 1, tzinfo=z)
    nxt = dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=z)
    return int(start.timestamp()), int(nxt.timestamp()), days


def segment_days(since: int, until: int, terminated: int, tz: str, year: int,
                 month: int) -> int:
    """Days of the month a plan segment was in force, in the plan's time zone.

    The segment runs from the day of ``since`` (activation or plan change) to the day
    before ``until`` (the next change; 0 = none) or the day of termination, inclusive.
    """
    days = calendar.monthrange(year, month)[1]
    first = dt.date(year, month, 1)
    last = dt.date(year, month, days)
    begin = max(first, _local_date(since, tz)) if since else first
    finish = last
    if until:
        finish = min(finish, _local_date(until, tz) - dt.timedelta(days=1))
    if terminated:
        finish = min(finish, _local_date(terminated, tz))
    return max(0, (finish - begin).days + 1)


def _local_date(ts: int, tz: str) -> dt.date:
    return dt.datetime.fromtimestamp(ts, tz=zoneinfo.ZoneInfo(tz)).date()


def _pct(rate: int) -> str:
    s = f"{rate * 100 / MICRO:.4f}".rstrip("0").rstrip(".")
    return s


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _cdr_csv(path: Path) -> Iterator[tuple[Any, int]]:
    """Open a CDR file for reading rows: checks the header, turns decode and CSV errors
    into ``file:line`` errors, and on a clean finish checks the file ends with a newline.
    Yields (csv reader, row width)."""
    with path.open("rb") as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        try:
            header = next(reader, None)
            if not header_ok(header):
                raise BillingError(f"{path}:1: not a CDR file (unexpected header)")
            yield reader, len(header or ())
        except UnicodeDecodeError:
            raise BillingError(f"{path}:{reader.line_num + 1}: not UTF-8 text") from None
        except csv.Error as exc:
            raise BillingError(f"{path}:{reader.line_num + 1}: {exc}") from None
        raw.seek(0, os.SEEK_END)
        if raw.tell():
            raw.seek(-1, os.SEEK_END)
            if raw.read(1) != b"\n":
                raise BillingError(f"{path}:{reader.line_num}: truncated (no final newline)")


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Rows of a CDR file with line numbers (every row checked for its width)."""
    with _cdr_csv(path) as (reader, width):
        for row in reader:
            if len(row) != width:
                raise BillingError(f"{path}:{reader.line_num}: expected {width} fields, "
                                   f"got {len(row)}")
            yield reader.line_num, row
