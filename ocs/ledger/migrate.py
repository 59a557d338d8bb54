"""``ocs store migrate --to-config PATH``: one node's LMDB store into a Redis Cluster.

Run with the server stopped. What charging needs goes across: the plans, zones and their
versions; every subscriber with its balance (allowance buckets, fraud state), its ledger
of top-ups and their references, its open reservations (with their expiry and session
owner entries: sessions open now go on being charged on the cluster) and the answers
still inside the idempotency window (a retransmission after the move is replayed, not
charged again). Each subscriber is one atomic step; a subscriber already on the cluster
is left as it is, so an interrupted migration is run again to finish.

What stays in the node's LMDB store, which it keeps using beside the cluster: CDRs not
exported yet (its exporter writes them to its files), alarms, NMS history, API tokens,
billing runs. Fraud cases are not carried (they stay readable in the node's store). The
SMS queue is not carried either: on the cluster a message id names its account, and
the ids an ESME holds for its receipts cannot change; messages still waiting are
reported as skipped (exit 1): stop SMPP traffic, let the queue empty, run again.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import msgspec

from ocs.charging.model import Debit, StoredAnswer
from ocs.store.env import (
    ANSWER_EXPIRY,
    ANSWERS,
    BALANCES,
    IDX_IMSI,
    IDX_USERNAME,
    LEDGER,
    LEDGER_REFS,
    META,
    META_LEDGER_SEQ,
    META_PLANS_VERSION,
    PLAN_VERSIONS,
    PLANS,
    REFUNDS,
    RES_EXPIRY,
    RESERVATIONS,
    SESSION_OWNERS,
    SMS_DUE,
    SUBSCRIBERS,
    ZONES,
    Store,
    pack_u64,
    unpack_u64,
)
from ocs.store.records import Subscriber, dec_reservation, dec_subscriber
from ocs.store.tx import StorePort, Tx

_dec_stored = msgspec.msgpack.Decoder(StoredAnswer)


@dataclass
class Moved:
    plans: int = 0
    subscribers: int = 0
    already_there: int = 0
    reservations: int = 0
    answers: int = 0
    skipped: list[str] = field(default_factory=list)


def _rows(store: Store, db: bytes) -> list[tuple[bytes, bytes]]:
    with store.read() as txn:
        return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=store.dbs[db])]


def _answer_owner(raw: bytes) -> str:
    answer = _dec_stored.decode(raw).answer
    return str(getattr(answer, "msisdn", "") or "")


def migrate(source: Store, target: StorePort, *, answer_retention_s: int,
            now: int | None = None) -> Moved:
    """Copy ``source`` into ``target`` (see the module's text); what was done."""
    at = int(time.time()) if now is None else now
    out = Moved()
    shared = [(db, _rows(source, db)) for db in (PLANS, PLAN_VERSIONS, ZONES)]
    with source.read() as txn:
        version = txn.get(META_PLANS_VERSION, db=source.dbs[META])

    def plans(tx: Tx) -> int:
        for db, rows in shared:
            for k, v in rows:
                tx.put(db, k, v)
        if version is not None:
            tx.put(META, META_PLANS_VERSION, bytes(version))
        return len(shared[0][1])

    out.plans = target.run_write(plans)
    # everything else by subscriber
    ledger: dict[bytes, list[tuple[bytes, bytes]]] = defaultdict(list)
    for k, v in _rows(source, LEDGER):
        ledger[k.partition(b"\x00")[0]].append((k, v))
    refs: dict[bytes, list[tuple[bytes, bytes]]] = defaultdict(list)
    for k, v in _rows(source, LEDGER_REFS):
        refs[k.partition(b"\x00")[0]].append((k, v))
    reservations: dict[bytes, list[tuple[bytes, bytes]]] = defaultdict(list)
    for k, v in _rows(source, RESERVATIONS):
        reservations[k.partition(b"\x00")[0]].append((k, v))
    answers: dict[bytes, list[tuple[bytes, bytes]]] = defaultdict(list)
    oldest = at - answer_retention_s
    for k, v in _rows(source, ANSWERS):
        stored = _dec_stored.decode(v)
        if stored.stored_at >= oldest:
            answers[_answer_owner(v).encode()].append((k, v))
    refunds = dict(_rows(source, REFUNDS))
    balances = dict(_rows(source, BALANCES))
    subscribers = _rows(source, SUBSCRIBERS)

    waiting = len(_rows(source, SMS_DUE))
    if waiting:
        out.skipped.append(f"{waiting} SMS message(s) waiting for delivery: not carried "
                           "(let the queue empty, then run again)")
    for msisdn, raw in subscribers:
        sub = dec_subscriber.decode(raw)
        if sub.msisdn.encode() != msisdn:
            out.skipped.append(f"{msisdn!r}: stored under another MSISDN")
            continue

        def one(tx: Tx, msisdn: bytes = msisdn, raw: bytes = raw,
                sub: Subscriber = sub) -> bool:
            if tx.get(SUBSCRIBERS, msisdn) is not None:
                return False  # moved by an earlier run
            tx.put(SUBSCRIBERS, msisdn, raw)
            tx.put(BALANCES, msisdn, balances.get(msisdn, b""))
            if sub.imsi:
                tx.put(IDX_IMSI, sub.imsi.encode(), msisdn)
            if sub.username:
                tx.put(IDX_USERNAME, sub.username.encode(), msisdn)
            last = 0
            for k, v in ledger.get(msisdn, ()):
                tx.put(LEDGER, k, v)
                last = max(last, unpack_u64(k.partition(b"\x00")[2]))
            if last:
                tx.put(META, META_LEDGER_SEQ, pack_u64(last))
            for k, v in refs.get(msisdn, ()):
                tx.put(LEDGER_REFS, k, v)
            for k, v in reservations.get(msisdn, ()):
                res = dec_reservation.decode(v)
                tx.put(RESERVATIONS, k, v)
                tx.put(SESSION_OWNERS, res.key, msisdn)
                tx.put(RES_EXPIRY, pack_u64(res.expires_at) + res.key, b"")
            tx.bind(msisdn.decode())
            for k, v in answers.get(msisdn, ()):
                answer = _dec_stored.decode(v).answer
                if isinstance(answer, Debit) and answer.ok:
                    tx.index_answer(k, msisdn)  # the refund that names only its key
                tx.put(ANSWERS, k, v)
                tx.put(ANSWER_EXPIRY, pack_u64(_dec_stored.decode(v).stored_at) + k, b"")
                if k in refunds:
                    tx.put(REFUNDS, k, refunds[k])
            return True

        if not balances.get(msisdn):
            out.skipped.append(f"{msisdn.decode()}: no balance record")
            continue
        if target.run_write(one):
            out.subscribers += 1
            out.reservations += len(reservations.get(msisdn, ()))
            out.answers += len(answers.get(msisdn, ()))
        else:
            out.already_there += 1
    return out
