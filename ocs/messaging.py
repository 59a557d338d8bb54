"""Store-and-forward for SMS: the queue the SMPP side delivers from.

A submitted message is queued in the same transaction as its debit, so an accepted
submit is never lost. Delivery attempts, receipts, expiry and refunds are operations in
the store too; the SMPP transport only moves PDUs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from ocs.store.env import SMS, SMS_DUE, Store, pack_u64
from ocs.store.tx import Tx
from ocs.text import decode_gsm7

if TYPE_CHECKING:
    from ocs.store.cluster import ClusterStore


class SmsMessage(msgspec.Struct, array_like=True, kw_only=True):
    message_id: str
    kind: str  # message | receipt
    submitter: str  # system_id that submitted it (receipts go back there)
    route: str  # system_id to deliver to
    source: str
    destination: str
    data_coding: int
    esm_class: int
    payload: bytes
    registered_delivery: int
    submitted_at: int
    expires_at: int
    next_try: int
    attempts: int = 0
    state: str = "enroute"  # enroute | delivered | expired | undeliverable
    done_at: int = 0
    debit_key: bytes = b""
    receipted_id: str = ""
    receipt_state: int = 0
    lease: int = 0
    """While > now: a worker has claimed it for a delivery attempt (several workers)."""
    receipt_stat: str = ""
    """A receipt: what became of the message (DELIVRD, EXPIRED); the SMPP side writes
    the receipt's text from these facts (``submitted_at`` of a receipt is the original's
    done time). Receipts queued before these fields carry their text in ``payload``."""
    original_submitted_at: int = 0
    original_text: str = ""
    """A receipt: the first 20 characters of the original's text."""


_dec = msgspec.msgpack.Decoder(SmsMessage)
_enc = msgspec.msgpack.Encoder()

MAX_BACKOFF_S = 600
FRESH_READ = 20_000
"""On a cluster, how many waiting messages (of any route) a look for a receiver that just
bound reads to find that route's."""


def backoff(attempts: int) -> int:
    """Seconds until the next try after ``attempts`` failed ones: 5, 10, 20 ... 600."""
    return min(MAX_BACKOFF_S, 5 << min(16, max(0, attempts - 1)))


def load(tx: Tx, message_id: str) -> SmsMessage | None:
    raw = tx.get(SMS, message_id.encode())
    return _dec.decode(raw) if raw is not None else None


def due(store: Store, now: int, *, fresh_routes: set[str], skip: set[str],
        limit: int = 500) -> list[SmsMessage]:
    """Messages whose next try has come (at most ``limit``, oldest first), and any routed
    to ``fresh_routes`` (a receiver just bound); ids in ``skip`` are being delivered. A
    read transaction: it never waits for the writer."""
    out: list[SmsMessage] = []
    stop = pack_u64(now + 1)
    with store.read() as txn, txn.cursor(db=store.dbs[SMS_DUE]) as cur:
        for k in cur.iternext(keys=True, values=False):
            key = bytes(k)
            if len(out) >= limit or (key >= stop and not fresh_routes):
                break
            if key[8:].decode() in skip:
                continue
            raw = txn.get(key[8:], db=store.dbs[SMS])
            if raw is None:
                continue
            msg = _dec.decode(raw)
            if key < stop or msg.route in fresh_routes:
                out.append(msg)
    return out


def due_in_cluster(store: ClusterStore, now: int, *, fresh_routes: set[str],
                   skip: set[str], limit: int = 500, receivers: bool = True
                   ) -> list[SmsMessage]:
    """:func:`due` on a Redis Cluster (network reads: call it off the event loop);
    ``receivers``: some are bound to this process (it looks at every slot more often)."""
    out: list[SmsMessage] = []
    # a receiver just bound: read past ``limit`` what waits for others (bounded)
    for raw in store.sms_due(now, everything=bool(fresh_routes),
                             limit=max(limit, FRESH_READ) if fresh_routes else limit,
                             receivers=receivers):
        msg = _dec.decode(raw)
        if msg.state == "enroute" and msg.message_id not in skip and (
                msg.next_try <= now or msg.route in fresh_routes):
            out.append(msg)
    out.sort(key=lambda m: m.next_try)
    return out[:limit]


def enqueue(tx: Tx, msg: SmsMessage) -> None:
    tx.put(SMS, msg.message_id.encode(), _enc.encode(msg))
    tx.put(SMS_DUE, pack_u64(msg.next_try) + msg.message_id.encode(), b"")


def settle(tx: Tx, msg: SmsMessage, state: str, now: int) -> None:
    """Final state: out of the due index, kept as history."""
    tx.delete(SMS_DUE, pack_u64(msg.next_try) + msg.message_id.encode())
    msg.state = state
    msg.done_at = now
    tx.put(SMS, msg.message_id.encode(), _enc.encode(msg))
    tx.history(SMS, msg.message_id.encode())


def reschedule(tx: Tx, msg: SmsMessage, next_try: int) -> None:
    tx.delete(SMS_DUE, pack_u64(msg.next_try) + msg.message_id.encode())
    msg.attempts += 1
    msg.next_try = next_try
    msg.lease = 0
    enqueue(tx, msg)


def lease(tx: Tx, msg: SmsMessage, until: int) -> None:
    """Taken for a delivery attempt: not due for anyone else before ``until`` (if the
    attempt's outcome never comes, e.g. its worker died, it is due again then)."""
    tx.delete(SMS_DUE, pack_u64(msg.next_try) + msg.message_id.encode())
    msg.next_try = until
    msg.lease = until
    enqueue(tx, msg)


def decode(raw: bytes) -> SmsMessage:
    return _dec.decode(raw)


def message_text(msg: SmsMessage) -> str:
    """The message body as text (GSM 03.38, UCS-2 or Latin-1 by data_coding)."""
    if msg.data_coding == 0x08:
        return msg.payload[: len(msg.payload) // 2 * 2].decode("utf-16-be", "replace")
    if msg.data_coding == 0x00:
        return decode_gsm7(msg.payload)
    return msg.payload.decode("latin-1")
