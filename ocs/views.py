"""What the CLI's ``--json`` prints and the REST API answers: one builder per shape.

Read models over the store and the CDR files, shared by :mod:`ocs.cli` and
:mod:`ocs.api` so both say the same thing in the same words.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ocs.cdr.fileformat import iso_utc
from ocs.cdr.query import subscriber_records
from ocs.cdr.reader import journal_records
from ocs.charging.engine import ChargingEngine
from ocs.charging.model import IdKind
from ocs.money import format_amount
from ocs.provisioning import TopUp, ledger_entries
from ocs.rating.plans import compile_plan
from ocs.store.cluster import ClusterStore
from ocs.store.env import BALANCES, IDX_IMSI, IDX_USERNAME, SUBSCRIBERS, Store
from ocs.store.records import Balance, CdrRecord, Subscriber, dec_balance, dec_subscriber
from ocs.store.tx import StorePort


def subscriber(engine: ChargingEngine, msisdn: str) -> dict[str, Any] | None:
    """``ocs subscriber show --json``: the record, balance and this cycle's allowances;
    None if there is no such subscriber."""
    with engine.store.view() as tx:
        raw = tx.get(SUBSCRIBERS, msisdn.encode())
    if raw is None:
        return None
    view = engine.check_balance(((IdKind.MSISDN, msisdn),))
    if view is None:  # deleted in between
        return None
    sub = dec_subscriber.decode(raw)
    return {
        **_identity(sub),
        "balance": format_amount(view.balance),
        "reserved": format_amount(view.reserved),
        "available": format_amount(view.available),
        "credit_limit": format_amount(sub.credit_limit),
        "roaming": sub.roaming,
        "name": sub.customer_name,
        "address": sub.billing_address,
        "allowances": view.allowances,
    }


def _identity(sub: Subscriber) -> dict[str, Any]:
    """What a subscriber's record says of it, first in every shape."""
    return {
        "msisdn": sub.msisdn,
        "imsi": sub.imsi,
        "username": sub.username,
        "plan": sub.plan_id,
        "mode": sub.mode,
        "status": sub.status,
        "currency": sub.currency,
    }


def subscriber_item(sub: Subscriber, bal: Balance) -> dict[str, Any]:
    """One row of ``ocs subscriber list --json``."""
    return {
        **_identity(sub),
        "balance": format_amount(bal.balance),
        "reserved": format_amount(bal.reserved),
    }


def subscriber_items(store: Store, *, after: str = "", limit: int | None = None,
                     status: str = "") -> tuple[list[dict[str, Any]], str]:
    """Subscribers in MSISDN order after ``after`` (exclusive), at most ``limit``; with the
    last MSISDN of the page when more follow (the next page's ``after``), else ""."""
    with store.read() as txn:
        bals = store.dbs[BALANCES]
        cur = txn.cursor(db=store.dbs[SUBSCRIBERS])
        start = after.encode() + b"\x00" if after else b""
        found = cur.set_range(start) if start else cur.first()
        rows = ((v, txn.get(k, db=bals)) for k, v in cur) if found else iter(())
        return subscriber_page(rows, after=after, limit=limit, status=status)


def cluster_subscriber_items(cluster: ClusterStore, *, after: str = "",
                             limit: int | None = None, status: str = "") -> tuple[
                                 list[dict[str, Any]], str]:
    """:func:`subscriber_items` of a Redis Cluster (a scan of every primary's keys)."""
    return subscriber_page(((s, b) for _m, s, b in cluster.subscriber_records()),
                           after=after, limit=limit, status=status)


def subscriber_page(rows: Iterable[tuple[bytes, bytes | None]], *, after: str = "",
                    limit: int | None = None, status: str = "") -> tuple[
                        list[dict[str, Any]], str]:
    """:func:`subscriber_items` over (subscriber, balance) records in MSISDN order (a
    Redis Cluster's, read whole)."""
    items: list[dict[str, Any]] = []
    for raw, bal in rows:
        sub = dec_subscriber.decode(raw)
        if after and sub.msisdn <= after:
            continue
        if status and sub.status != status:
            continue
        if limit is not None and len(items) == limit:
            return items, items[-1]["msisdn"]
        items.append(subscriber_item(sub, dec_balance.decode(bal) if bal is not None
                                     else Balance()))
    return items, ""


def find_subscribers(ledger: StorePort, text: str) -> list[dict[str, Any]]:
    """The subscribers an operator means by ``text`` — an MSISDN, IMSI or user name
    (exact; a care agent reads it off a screen or a SIM) — as list rows."""
    found: list[dict[str, Any]] = []
    key = text.encode()
    if not text:
        return found
    with ledger.view() as tx:
        msisdns = [key] + [tx.get(idx, key) for idx in (IDX_IMSI, IDX_USERNAME)]
        for m in dict.fromkeys(x for x in msisdns if x is not None):
            raw = tx.get(SUBSCRIBERS, m)
            if raw is not None:
                bal = tx.get(BALANCES, m)
                found.append(subscriber_item(dec_subscriber.decode(raw),
                                             dec_balance.decode(bal) if bal is not None
                                             else Balance()))
    return found


def topup(msisdn: str, top: TopUp, reference: str) -> dict[str, Any]:
    """``ocs subscriber topup --json``."""
    out: dict[str, Any] = {"msisdn": msisdn, "amount": format_amount(top.entry.amount),
                           "balance": format_amount(top.balance.balance)}
    if reference:
        out.update(reference=reference, replayed=top.replayed, entry=top.entry.seq)
    return out


def history(ledger: StorePort, records: Iterator[Any], msisdn: str, *,
            since: int | None = None, until: int | None = None) -> list[dict[str, Any]] | None:
    """``ocs subscriber history --json``: ledger entries (top-ups, opening balances) from
    ``ledger`` (the LMDB store or the Redis Cluster) and charges from ``records`` (CDRs)
    in time order, within [since, until); None if there is no such subscriber."""
    items: list[dict[str, Any]] = []
    key = msisdn.encode()
    with ledger.view() as tx:
        if tx.get(SUBSCRIBERS, key) is None:
            return None
        entries = ledger_entries(tx, msisdn)
    for e in entries:
        items.append({"time": e.at, "kind": e.kind, "amount": e.amount,
                      "reference": e.reference, "actor": e.actor, "service": "",
                      "units": None, "record_id": "",
                      "balance_after": None if e.actor == "ledger"  # (not known)
                      else format_amount(e.balance_after)})
    for r in records:
        if r.msisdn != msisdn:
            continue
        kind = {"refund": "refund", "rerate": "adjustment"}.get(r.result, "charge")
        items.append({"time": r.end_time, "kind": kind, "amount": -r.charge,
                      "reference": r.session_id if kind == "adjustment" else "",
                      "actor": r.protocol, "service": r.service if kind != "adjustment"
                      else "", "units": r.units, "record_id": r.record_id,
                      "balance_after": None})
    items = [i for i in items if (since is None or i["time"] >= since)
             and (until is None or i["time"] < until)]
    items.sort(key=lambda i: i["time"])  # stable: each source is in its own order
    for i in items:
        i["time"] = iso_utc(i["time"])
        i["amount"] = format_amount(i["amount"])
    return items


def subscriber_cdrs(cdr_dir: Path, store: Store, msisdn: str) -> Iterator[CdrRecord]:
    """One subscriber's CDRs: the closed files' (DuckDB picks them out of every file),
    then the journal's not in a closed file yet."""
    yield from subscriber_records(cdr_dir, msisdn)
    yield from (r for r in journal_records(store) if r.msisdn == msisdn)


def plan(table: dict[str, Any]) -> dict[str, Any]:
    """``ocs plan show --json`` (and one item of ``plan list --json``)."""
    p = compile_plan(table)
    return {
        "id": p.id,
        "name": p.name,
        "mode": p.mode.value,
        "currency": p.currency,
        "monthly_fee": format_amount(p.monthly_fee),
        "timezone": p.timezone,
        "zero_rated_groups": sorted(p.zero_rated_groups),
        "allowances": {
            "data_bytes": p.allowances.data_bytes,
            "voice_seconds": p.allowances.voice_seconds,
            "sms": p.allowances.sms,
        },
        "rates": [
            {
                "id": r.id,
                "service": r.service.value,
                "price": format_amount(r.price),
                "unit": r.unit,
                "rating_groups": sorted(r.rating_groups) if r.rating_groups is not None
                else None,
                "prefix": r.prefix,
                "first_increment_s": r.first_increment_s,
                "increment_s": r.increment_s,
                "connect_fee": format_amount(r.connect_fee),
                "zones": sorted(r.zones),
                "bands": list(r.bands),
                "slices": sorted(r.slices),
            }
            for r in p.rates
        ],
        "bands": [
            {"id": b.id, "days": sorted(b.days), "from_min": b.from_min, "to_min": b.to_min}
            for b in p.bands.values()
        ],
    }
