"""``ocs store verify``: the store's records against each other, in one read transaction
(consistent also while the server runs). Every difference is one line.

- every balance's ``reserved`` is what its subscriber's open reservations hold, never
  negative; a prepaid balance is never below zero;
- balances (with their allowance buckets) and reservations belong to a subscriber;
  every subscriber has a balance;
- the IMSI and username indexes and the subscribers agree both ways;
- every reservation has its expiry entry and every expiry entry its reservation; every
  reservation is under its own subscriber and in the session owner index, and every
  index entry has its reservation;
- the CDR journal holds a contiguous run of sequence numbers ending at the last one
  given out;
- with ``cdr_dir`` (every CDR file since the store began): per subscriber, the charges of
  all CDRs (files and journal) equal the money the engine moved (``charged_total``).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from ocs.store.env import (
    BALANCES,
    CDR_JOURNAL,
    IDX_IMSI,
    IDX_USERNAME,
    META,
    META_CDR_SEQ,
    RES_EXPIRY,
    RESERVATIONS,
    SESSION_OWNERS,
    SUBSCRIBERS,
    Store,
    unpack_u64,
)
from ocs.store.records import dec_balance, dec_cdr, dec_reservation, dec_subscriber

CHARGE_COLUMN, MSISDN_COLUMN = 13, 2
"""Positions of ``charge`` and ``msisdn`` in a CDR file row (ocs.cdr.fileformat)."""


def _micro(text: str) -> int:
    """A CDR file's charge (``-0.050000``) in micro-units, exactly."""
    neg = text.startswith("-")
    whole, _, frac = text.lstrip("-").partition(".")
    value = int(whole or "0") * 1_000_000 + int((frac + "000000")[:6] or "0")
    return -value if neg else value


def verify(store: Store, cdr_dir: Path | None = None) -> list[str]:
    out: list[str] = []
    held: dict[str, int] = defaultdict(int)
    with store.read() as txn:
        def each(db: bytes) -> list[tuple[bytes, bytes]]:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=store.dbs[db])]

        subs = {k.decode(): dec_subscriber.decode(v) for k, v in each(SUBSCRIBERS)}
        balances = {k.decode(): dec_balance.decode(v) for k, v in each(BALANCES)}
        expiry = {k[8:]: unpack_u64(k[:8]) for k, _ in each(RES_EXPIRY)}
        owners = {k: v.decode() for k, v in each(SESSION_OWNERS)}
        for key, raw in each(RESERVATIONS):
            res = dec_reservation.decode(raw)
            held[res.msisdn] += res.money_reserved
            name = key.decode("utf-8", "replace").replace("\x00", "/")
            if res.msisdn not in subs:
                out.append(f"reservation {name}: subscriber {res.msisdn} does not exist")
            if key != res.msisdn.encode() + b"\x00" + res.key:
                out.append(f"reservation {name}: stored under another subscriber than "
                           f"its own ({res.msisdn})")
            owner = owners.pop(res.key, None)
            if owner != res.msisdn:
                out.append(f"reservation {name}: the session owner index names {owner}")
            at = expiry.pop(res.key, None)
            if at != res.expires_at:
                out.append(f"reservation {name}: expiry entry {at} but it expires at "
                           f"{res.expires_at}")
        for key, at in sorted(expiry.items()):
            out.append(f"expiry entry {at} for reservation "
                       f"{key.decode('utf-8', 'replace')!r} that does not exist")
        for key, owner in sorted(owners.items()):
            out.append(f"session owner index: {key.decode('utf-8', 'replace')!r} -> "
                       f"{owner} without its reservation")
        for msisdn in sorted(balances.keys() | held.keys()):
            bal = balances.get(msisdn)
            reserved = bal.reserved if bal is not None else 0
            if reserved != held.get(msisdn, 0):
                out.append(f"{msisdn}: balance holds {reserved} micro reserved, its open "
                           f"reservations {held.get(msisdn, 0)}")
            if reserved < 0:
                out.append(f"{msisdn}: reserved is negative ({reserved})")
            sub = subs.get(msisdn)
            if bal is not None and sub is None:
                out.append(f"{msisdn}: a balance without a subscriber")
            if bal is not None and sub is not None and sub.mode == "prepaid" and (
                    bal.balance < 0):
                out.append(f"{msisdn}: prepaid balance below zero ({bal.balance})")
        for msisdn in sorted(subs.keys() - balances.keys()):
            out.append(f"{msisdn}: a subscriber without a balance record")
        for db, field in ((IDX_IMSI, "imsi"), (IDX_USERNAME, "username")):
            indexed = {k.decode(): v.decode() for k, v in each(db)}
            for value, msisdn in sorted(indexed.items()):
                sub = subs.get(msisdn)
                if sub is None or getattr(sub, field) != value:
                    out.append(f"{field} index: {value} -> {msisdn}, which "
                               + ("does not exist" if sub is None
                                  else f"has {field} {getattr(sub, field)!r}"))
            for msisdn, sub in sorted(subs.items()):
                value = getattr(sub, field)
                if value and indexed.get(value) != msisdn and sub.status != "terminated":
                    out.append(f"{msisdn}: {field} {value} is not in the {field} index")
        seq_raw = txn.get(META_CDR_SEQ, db=store.dbs[META])
        last = unpack_u64(seq_raw) if seq_raw else 0
        seqs = [unpack_u64(k) for k, _ in each(CDR_JOURNAL)]
        if seqs and (seqs[-1] != last or seqs[-1] - seqs[0] + 1 != len(seqs)):
            out.append(f"CDR journal: {len(seqs)} records from {seqs[0]} to {seqs[-1]}, "
                       f"the last sequence given out is {last}")
        journal = [dec_cdr.decode(v) for _k, v in each(CDR_JOURNAL)]
    if cdr_dir is not None:
        on_cdrs: dict[str, int] = defaultdict(int)
        in_files: set[str] = set()
        for path in sorted(cdr_dir.glob("cdr_*.csv")):
            with path.open(encoding="utf-8", newline="") as f:
                rows = csv.reader(f)
                next(rows, None)
                for row in rows:
                    on_cdrs[row[MSISDN_COLUMN]] += _micro(row[CHARGE_COLUMN])
                    in_files.add(row[0])
        for rec in journal:
            if rec.record_id not in in_files:  # the open file's rows are in both
                on_cdrs[rec.msisdn] += rec.charge
        for msisdn in sorted(on_cdrs.keys() | balances.keys()):
            moved = balances[msisdn].charged_total if msisdn in balances else 0
            if on_cdrs.get(msisdn, 0) != moved:
                out.append(f"{msisdn}: CDRs charge {on_cdrs.get(msisdn, 0)} micro, the "
                           f"engine moved {moved}")
    return out
