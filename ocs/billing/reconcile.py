"""``ocs bill reconcile --period``: do the CDR files, the charging engine's balances and
the invoices agree? Every difference is listed, one line each.

1. Each CDR file the period's run billed still has the checksum recorded then.
2. Per subscriber, all charges in CDRs ever written (closed files plus the journal, which
   holds everything not yet in a closed file) equal the money the engine moved
   (``charged_total`` of the balance).
3. Per postpaid subscriber, the usage billed on the period's invoice equals the charges
   of the CDR rows the run billed, within the per-line rounding to the cent.

4. Per subscriber, the balance is its top-ups minus its charges, and its ledger's
   top-ups add up to the balance's (subscribers whose top-ups all predate the ledger
   have no entries until their next top-up).

A period not billed yet (the current one) gets checks 2 and 4.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ocs.billing.run import CENT, Biller, BillingError, _rows, _sha256
from ocs.cdr.fileformat import COLUMNS
from ocs.cdr.reader import closed_cdr_files
from ocs.config import BillingConfig
from ocs.money import MoneyError, format_amount, parse_amount
from ocs.provisioning import ledger_entries
from ocs.store.env import BALANCES, CDR_JOURNAL, LEDGER, Store
from ocs.store.records import Balance, dec_balance, dec_cdr, dec_ledger_entry
from ocs.store.tx import StorePort

_MSISDN, _CHARGE = COLUMNS.index("msisdn"), COLUMNS.index("charge")


@dataclass(frozen=True, slots=True)
class Reconciliation:
    period: str
    differences: list[str]
    cdr_total: int
    engine_total: int
    invoiced_usage: int
    billed: bool = True
    """False: the period has no billing run yet (the current one): only the CDRs
    against the balances were compared, adjustments included."""

    @property
    def ok(self) -> bool:
        return not self.differences


def _engine_state(store: Store, ledger: StorePort | None, cdr_by_sub: dict[str, int]
                  ) -> tuple[dict[str, Balance], dict[str, int]]:
    """The balances and each subscriber's ledger top-ups; the CDRs not in a closed file
    yet added to ``cdr_by_sub``: this node's journal (the open ``.part``'s included),
    and on a cluster the rows still in the outboxes (every node's journal must have
    been flushed into files first: ``ocs cdr flush`` on each)."""
    with store.read() as txn:
        for _k, v in txn.cursor(db=store.dbs[CDR_JOURNAL]):
            rec = dec_cdr.decode(v)
            cdr_by_sub[rec.msisdn] += rec.charge
        if ledger is None:
            balances = {bytes(k).decode(): dec_balance.decode(v)
                        for k, v in txn.cursor(db=store.dbs[BALANCES])}
            tops: dict[str, int] = defaultdict(int)  # top-ups (and opening balances)
            for k, v in txn.cursor(db=store.dbs[LEDGER]):
                tops[bytes(k).split(b"\x00", 1)[0].decode()] += \
                    dec_ledger_entry.decode(v).amount
            return balances, tops
    from ocs.store.cluster import ClusterStore

    assert isinstance(ledger, ClusterStore)
    for raw in ledger.outbox():
        rec = dec_cdr.decode(raw)
        cdr_by_sub[rec.msisdn] += rec.charge
    balances, tops = {}, defaultdict(int)
    for m, _sub, bal in ledger.subscriber_records():
        msisdn = m.decode()
        balances[msisdn] = dec_balance.decode(bal) if bal is not None else Balance()
        with ledger.view() as view:
            for e in ledger_entries(view, msisdn):
                tops[msisdn] += e.amount
    return balances, tops


def reconcile(store: Store, cdr_dir: Path, period: str, cfg: BillingConfig, *,
              ledger: StorePort | None = None) -> Reconciliation:
    """``ledger``: the Redis Cluster, on one (subscribers, plans and balances there)."""
    biller = Biller(store, cdr_dir, cfg, ledger=ledger)
    record = biller.stored_run(period)
    diffs: list[str] = []
    for f in record.files if record is not None else ():
        path = cdr_dir / f.name
        if not path.exists():
            diffs.append(f"{f.name}: billed in {period} but missing")
        elif _sha256(path) != f.sha256:
            diffs.append(f"{f.name}: edited since {period} was billed (sha256 {f.sha256[:12]}"
                         f"… now {_sha256(path)[:12]}…)")
    # 2. CDR charges versus the engine's balances
    cdr_by_sub: dict[str, int] = defaultdict(int)
    for path in closed_cdr_files(cdr_dir):
        for line, row in _rows(path):
            try:
                cdr_by_sub[row[_MSISDN]] += parse_amount(row[_CHARGE], allow_negative=True)
            except MoneyError as exc:
                raise BillingError(f"{path}:{line}: {exc}") from None
    balances, tops = _engine_state(store, ledger, cdr_by_sub)
    engine_by_sub = {m: b.charged_total for m, b in balances.items()}
    # 4. the money put on each balance, the ledger, and what is left
    for msisdn, bal in sorted(balances.items()):
        if bal.balance != bal.topped_up_total - bal.charged_total:
            diffs.append(f"{msisdn}: balance {format_amount(bal.balance)} but top-ups "
                         f"{format_amount(bal.topped_up_total)} minus charges "
                         f"{format_amount(bal.charged_total)} make "
                         f"{format_amount(bal.topped_up_total - bal.charged_total)}")
        if msisdn in tops and tops[msisdn] != bal.topped_up_total:
            diffs.append(f"{msisdn}: the ledger's top-ups add up to "
                         f"{format_amount(tops[msisdn])}, the balance's to "
                         f"{format_amount(bal.topped_up_total)}")
    for msisdn in sorted(set(cdr_by_sub) | set(engine_by_sub)):
        a, b = cdr_by_sub.get(msisdn, 0), engine_by_sub.get(msisdn, 0)
        if a != b:
            diffs.append(f"{msisdn}: CDR charges {format_amount(a)} but the engine charged "
                         f"{format_amount(b)} (difference {format_amount(a - b)})")
    # 3. invoiced postpaid usage versus the CDR rows the run billed
    invoiced = 0
    if record is not None and not any("edited" in d or "missing" in d for d in diffs):
        _summary, invoices = biller.run(period, None, dry_run=True)
        usage, _rows_n = biller._scan(record, None)
        postpaid = {s.msisdn for s in record.subscribers if s.mode == "postpaid"}
        for inv in invoices:
            billed = [ln for ln in inv.lines if ln.kind in ("usage", "adjustment", "credit")]
            invoiced += sum(ln.amount for ln in billed)
            if inv.msisdn not in postpaid:
                continue
            u = usage.get(inv.msisdn)
            raw = sum(b[1] for b in u.buckets.values()) if u else 0
            got = sum(ln.amount for ln in billed)
            if abs(got - raw) > len(billed) * CENT // 2:
                diffs.append(f"{inv.msisdn}: invoice {inv.invoice_id} bills usage "
                             f"{format_amount(got)}, CDRs say {format_amount(raw)}")
    return Reconciliation(period=period, differences=diffs, cdr_total=sum(cdr_by_sub.values()),
                          engine_total=sum(engine_by_sub.values()), invoiced_usage=invoiced,
                          billed=record is not None)
