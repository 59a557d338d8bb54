"""One subscriber's account inside one write transaction (the LMDB adapter).

Records are loaded on first use and kept: the balance record (money, the allowance
buckets and the fraud rules' state) is changed in memory and written once, by
:meth:`Account.save` at the end of the operation.
Reservations and answers are written when the operation decides them (each once).
Reservations live under the subscriber (``msisdn NUL session NUL unit``); the session
owner index (``session NUL unit -> msisdn``) finds the subscriber of a session report.
"""

from __future__ import annotations

import msgspec

from ocs.cdr import journal
from ocs.charging.model import Debit, StoredAnswer
from ocs.fraud import cases as fraud_cases
from ocs.fraud.rules import Event as FraudEvent
from ocs.fraud.rules import FraudSettings
from ocs.store.env import (
    ANSWER_EXPIRY,
    ANSWERS,
    BALANCES,
    META,
    REFUNDS,
    RES_EXPIRY,
    RESERVATIONS,
    SESSION_OWNERS,
    SUBSCRIBERS,
    pack_u64,
)
from ocs.store.records import (
    Allowance,
    Balance,
    CdrRecord,
    Reservation,
    Subscriber,
    dec_balance,
    dec_reservation,
    dec_subscriber,
    encode,
)
from ocs.store.tx import Tx

_RERATE = b"rerate\x00"
"""meta: + run id NUL msisdn -> the Adjusted a re-rating run made (never trimmed)."""

_enc = msgspec.msgpack.Encoder()
_dec_stored = msgspec.msgpack.Decoder(StoredAnswer)


def session_owner(tx: Tx, unit: bytes) -> str | None:
    """The subscriber whose open reservation ``unit`` (session NUL rating group or
    service) is, from the index; None when no reservation is open under it."""
    raw = tx.get(SESSION_OWNERS, unit)
    return raw.decode() if raw is not None else None


def stored_answer(tx: Tx, key: bytes) -> StoredAnswer | None:
    """The answer kept for request ``key`` (whoever's): a refund finds its debit's."""
    raw = tx.get(ANSWERS, key)
    return _dec_stored.decode(raw) if raw is not None else None


def drop_expiry(tx: Tx, unit: bytes, expires_at: int) -> None:
    """Forget one reaper entry (the reaper's own, possibly stale)."""
    tx.delete(RES_EXPIRY, pack_u64(expires_at) + unit)


class Account:
    """The records of subscriber ``msisdn`` ("" = nobody's: answers to requests of an
    unknown subscriber) in ``tx``."""

    __slots__ = ("_alw", "_bal", "_bal_raw", "_key", "_save", "_sub", "_sub_loaded",
                 "msisdn", "tx")

    def __init__(self, tx: Tx, msisdn: str, sub: Subscriber | None = None):
        self.tx = tx
        self.msisdn = msisdn
        tx.bind(msisdn)
        self._key = msisdn.encode()
        self._sub = sub
        self._sub_loaded = sub is not None
        self._bal: Balance | None = None
        self._bal_raw: bytes | None = None
        self._alw: Allowance | None = None
        self._save = False

    # -- the subscriber, balance and allowances (loaded once, saved once) --------------

    def subscriber(self) -> Subscriber | None:
        if not self._sub_loaded:
            raw = self.tx.get(SUBSCRIBERS, self._key) if self._key else None
            self._sub = dec_subscriber.decode(raw) if raw is not None else None
            self._sub_loaded = True
        return self._sub

    def balance(self) -> Balance:
        """The balance record to change; :meth:`save` writes it once :meth:`touch` is
        called."""
        if self._bal is None:
            self._bal_raw = self.tx.get(BALANCES, self._key)
            self._bal = dec_balance.decode(self._bal_raw) if self._bal_raw else Balance()
        return self._bal

    def revert_balance(self) -> Balance:
        """Forget the changes made to the balance and its allowance buckets (they are as
        stored again) and return it."""
        if self._bal is None:
            return self.balance()
        self._bal = dec_balance.decode(self._bal_raw) if self._bal_raw else Balance()
        self._alw = None
        return self._bal

    def allowance(self, cycle: str, *, roll: bool = True) -> Allowance:
        """The allowance buckets (kept in the balance record); with ``roll``, a bucket of
        an earlier cycle comes back full for ``cycle`` (without: as stored, to release
        what it holds)."""
        if self._alw is None:
            bal = self.balance()
            alw = bal.allowance if bal.allowance is not None else Allowance(cycle=cycle)
            if roll and alw.cycle != cycle:
                alw = Allowance(cycle=cycle)  # a new cycle: buckets start full again
            bal.allowance = self._alw = alw
        return self._alw

    def touch(self) -> None:
        """Mark the balance record (money, allowance buckets, fraud state) for
        :meth:`save`."""
        self._save = True

    def save(self) -> None:
        """Write what was touched, once (the end of the operation)."""
        if self._save and self._bal is not None:
            self.tx.put(BALANCES, self._key, encode(self._bal))
        self._save = False

    # -- reservations -----------------------------------------------------------------

    def reservation(self, unit: bytes) -> Reservation | None:
        raw = self.tx.get(RESERVATIONS, self._key + b"\x00" + unit)
        return dec_reservation.decode(raw) if raw is not None else None

    def keep_reservation(self, res: Reservation, *, expired_at: int | None) -> None:
        """Write ``res`` (loaded with expiry ``expired_at``; None: a new one) and its
        reaper entry; a new one is entered in the session owner index."""
        unit = res.key
        if expired_at is None:
            self.tx.put(SESSION_OWNERS, unit, self._key)
        elif expired_at != res.expires_at:
            drop_expiry(self.tx, unit, expired_at)
        self.tx.put(RESERVATIONS, self._key + b"\x00" + unit, encode(res))
        if expired_at != res.expires_at:
            self.tx.put(RES_EXPIRY, pack_u64(res.expires_at) + unit, b"")

    def end_reservation(self, res: Reservation, *, expired_at: int) -> None:
        """Delete ``res`` (loaded with expiry ``expired_at``), its reaper entry and its
        owner index entry."""
        unit = res.key
        self.tx.delete(RESERVATIONS, self._key + b"\x00" + unit)
        drop_expiry(self.tx, unit, expired_at)
        self.tx.delete(SESSION_OWNERS, unit)

    # -- stored answers (idempotent replay) -------------------------------------------

    def answer(self, key: bytes) -> StoredAnswer | None:
        raw = self.tx.get(ANSWERS, key)
        return _dec_stored.decode(raw) if raw is not None else None

    def keep_answer(self, key: bytes, stored: StoredAnswer) -> None:
        if isinstance(stored.answer, Debit) and stored.answer.ok:
            self.tx.index_answer(key, self._key)  # a refund finds it by its key alone
        self.tx.put(ANSWERS, key, _enc.encode(stored))
        self.tx.put(ANSWER_EXPIRY, pack_u64(stored.stored_at) + key, b"")

    def refunded(self, debit_key: bytes) -> bool:
        return self.tx.get(REFUNDS, debit_key) is not None

    def mark_refunded(self, debit_key: bytes, refund_key: bytes) -> None:
        self.tx.put(REFUNDS, debit_key, refund_key)

    # -- what the operation leaves for others: CDRs, fraud cases, re-rating marks -------

    def next_cdr(self, node: str) -> tuple[int, str]:
        """The journal sequence and record id of this operation's next CDR."""
        seq = journal.next_seq(self.tx)
        return seq, self.tx.record_id(node, seq)

    def keep_cdr(self, seq: int, rec: CdrRecord) -> None:
        """Journal one CDR of this subscriber (in the operation's write)."""
        journal.put(self.tx, seq, rec)

    def fraud_check(self, cfg: FraudSettings, sub: Subscriber, ev: FraudEvent) -> str:
        """Run the fraud rules on ``ev``: their state is in the balance record (saved with
        it); a case they open is recorded, a block suspends ``sub``."""
        self.touch()
        return fraud_cases.check(self.tx, cfg, sub, ev, self.balance())

    def adjustment(self, run_id: str) -> bytes | None:
        """What re-rating run ``run_id`` moved on this account (None: nothing yet)."""
        return self.tx.get(META, _RERATE + run_id.encode() + b"\x00" + self._key)

    def keep_adjustment(self, run_id: str, done: bytes) -> None:
        self.tx.put(META, _RERATE + run_id.encode() + b"\x00" + self._key, done)
