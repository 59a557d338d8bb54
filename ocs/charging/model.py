"""Charging requests and answers.

Answers are msgspec structs so they can be stored as-is for idempotent replay; a
request retried with the same ``request_key`` gets the stored answer back with
``replayed=True`` and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import msgspec

from ocs.rating.plans import Service


class Refusal(StrEnum):
    """Why a request was refused; protocols map these to their own codes."""

    UNKNOWN_SUBSCRIBER = "unknown_subscriber"
    SUSPENDED = "suspended"
    BLOCKED = "blocked"
    TERMINATED = "terminated"
    OUT_OF_CREDIT = "out_of_credit"
    CREDIT_LIMIT_REACHED = "credit_limit_reached"
    RATING_FAILED = "rating_failed"
    ROAMING_NOT_ALLOWED = "roaming_not_allowed"
    UNKNOWN_RESERVATION = "unknown_reservation"
    SESSION_CONFLICT = "session_conflict"
    """The session id (and rating group) is already in use by another subscriber."""
    NOT_REFUNDABLE = "not_refundable"
    ALREADY_REFUNDED = "already_refunded"
    REQUEST_MISMATCH = "request_mismatch"
    """The request key was used before with different content (not a retransmission)."""
    SESSION_ENDED = "session_ended"
    """A report for a session that has already ended: answered, nothing charged."""
    NOT_OWNER = "not_owner"
    """The session belongs to another peer (Diameter CER Origin-Host, RADIUS client)."""
    IMPLAUSIBLE_USAGE = "implausible_usage"
    """A report above the configured plausibility limit for its unit."""


_STATUS_REFUSAL = {
    "suspended": Refusal.SUSPENDED,
    "blocked": Refusal.BLOCKED,
    "terminated": Refusal.TERMINATED,
}


class _HasStatus(Protocol):
    @property
    def status(self) -> str: ...


def status_refusal(sub: _HasStatus | None) -> Refusal | None:
    """The subscriber-status rule, its one copy: None when ``sub`` may be served, else
    why not (unknown, suspended, blocked, terminated). Suspended subscribers keep their
    sessions until re-authorised; blocked and terminated ones lose them."""
    if sub is None:
        return Refusal.UNKNOWN_SUBSCRIBER
    return _STATUS_REFUSAL.get(sub.status)


class IdKind(StrEnum):
    MSISDN = "msisdn"
    IMSI = "imsi"
    USERNAME = "username"


Identity = tuple[tuple[IdKind, str], ...]
"""Candidate subscriber ids in the protocol's order of preference; the first match pays."""


class Grant(msgspec.Struct, tag="grant", kw_only=True):
    ok: bool
    refusal: str = ""
    msisdn: str = ""
    granted_units: int = 0
    final: bool = False
    """True when this is the last grant the credit allows (Final-Unit-Indication)."""
    validity_s: int = 0
    zero_rated: bool = False
    """The rating group is carried free: no quota management needed."""
    rate_id: str = ""
    money_reserved: int = 0
    allowance_reserved: int = 0
    replayed: bool = False


class Settlement(msgspec.Struct, tag="settle", kw_only=True):
    ok: bool
    refusal: str = ""
    msisdn: str = ""
    used_units: int = 0
    allowance_used: int = 0
    charged: int = 0
    capped: bool = False
    """The usage cost more than the prepaid credit covered; the balance stopped at zero."""
    record_id: str = ""
    next_grant: Grant | None = None
    replayed: bool = False
    excess_units: int = 0
    """Units reported above the plausibility limit: acknowledged, not charged."""


class Released(msgspec.Struct, tag="release", kw_only=True):
    ok: bool
    refusal: str = ""
    msisdn: str = ""
    money_released: int = 0
    allowance_released: int = 0
    replayed: bool = False


class Debit(msgspec.Struct, tag="debit", kw_only=True):
    ok: bool
    refusal: str = ""
    msisdn: str = ""
    service: str = ""
    units: int = 0
    allowance_used: int = 0
    charged: int = 0
    rate_id: str = ""
    cycle: str = ""
    record_id: str = ""
    session_id: str = ""
    zero_rated: bool = False
    replayed: bool = False


class Refund(msgspec.Struct, tag="refund", kw_only=True):
    ok: bool
    refusal: str = ""
    msisdn: str = ""
    refunded: int = 0
    allowance_restored: int = 0
    record_id: str = ""
    replayed: bool = False


Answer = Grant | Settlement | Released | Debit | Refund


class StoredAnswer(msgspec.Struct, array_like=True):
    stored_at: int
    answer: Answer
    digest: bytes = b""
    """Of the request's content: the same key with another digest is no retransmission."""


class ReserveRequest(msgspec.Struct, frozen=True, kw_only=True):
    request_key: bytes
    session_id: str
    subscriber: Identity
    service: Service
    units: int | None = None
    """Requested units (bytes, seconds, messages); None = the configured default grant."""
    rating_group: int | None = None
    destination: str = ""
    visited_network: str = ""
    protocol: str = "internal"
    validity_s: int | None = None
    now: int | None = None
    owner: str = ""
    """The peer opening the session (``diameter:<Origin-Host>``, ``radius:<client>``);
    later requests from another owner are refused. "" = internal (reaper, operator)."""
    slice: str = ""
    """5G S-NSSAI ("SST" or "SST-SD"), rated and recorded on the CDRs; "" = none."""
    dnn: str = ""
    """5G data network name (APN), recorded on the CDRs."""
    callback: str = ""
    """The peer's notification address for the session (Nchf notifyUri)."""


class CommitRequest(msgspec.Struct, frozen=True, kw_only=True):
    request_key: bytes
    session_id: str
    service: Service
    rating_group: int | None = None
    used_units: int = 0
    cumulative_units: int | None = None
    """Instead of ``used_units``: the session's total so far (RADIUS counters); the delta
    since the last commit is charged, so a repeated report charges nothing."""
    bytes_in: int = 0
    bytes_out: int = 0
    final: bool = False
    """Close the reservation after settling (session end)."""
    next_units: int | None = None
    """When not final: grant this many more units in the same transaction (0 = default)."""
    validity_s: int | None = None
    now: int | None = None
    owner: str = ""
    """As in :class:`ReserveRequest`; "" = internal (acts on any owner's session)."""
    clamp_excess: bool = False
    """Usage above the plausibility limit: charge up to the limit and count the rest
    (RADIUS, which must answer) instead of refusing the report (Diameter: 5004)."""
    remember_end: bool = False
    """With ``final``: remember that the session ended (as long as answers are kept), so
    a later report for it is answered SESSION_ENDED and charges nothing, instead of
    opening it again (RADIUS, where an Interim or Stop without a Start opens a session).
    Diameter needs none: a CCR for a closed session is 5002 anyway."""


class ReleaseRequest(msgspec.Struct, frozen=True, kw_only=True):
    request_key: bytes
    session_id: str
    service: Service
    rating_group: int | None = None
    now: int | None = None


class DebitRequest(msgspec.Struct, frozen=True, kw_only=True):
    request_key: bytes
    subscriber: Identity
    service: Service
    units: int = 1
    session_id: str = ""
    rating_group: int | None = None
    destination: str = ""
    visited_network: str = ""
    protocol: str = "internal"
    characters: int = 0
    """Message length in characters (SMS/MMS), recorded on the CDR."""
    now: int | None = None
    slice: str = ""
    dnn: str = ""


class AdjustRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A re-rating run's difference for one subscriber and period: debit (positive) or
    credit (negative), once per run."""

    msisdn: str
    amount: int
    run_id: str
    period: str
    now: int | None = None


class Adjusted(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    refusal: str = ""
    amount: int = 0
    """What moved (a prepaid debit is capped at the money available)."""
    capped: bool = False
    record_id: str = ""
    replayed: bool = False


class RefundRequest(msgspec.Struct, frozen=True, kw_only=True):
    request_key: bytes
    original_key: bytes
    now: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceView:
    msisdn: str
    plan_id: str
    mode: str
    status: str
    currency: str
    balance: int
    reserved: int
    available: int
    credit_limit: int
    allowances: dict[str, dict[str, int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceQuote:
    ok: bool
    refusal: str = ""
    rate_id: str = ""
    units: int = 0
    billed_units: int = 0
    charge: int = 0
    zero_rated: bool = False
    explanation: str = ""


class ExpireRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Reaper: settle the reservation ``key`` if it still expires at ``expires_at``."""

    key: bytes
    expires_at: int
    now: int


class TrimRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Forget stored answers older than ``before`` (at most ``limit`` per operation)."""

    before: int
    limit: int = 2000


class SubmitSmsRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Charge an SMS (``debit``) and queue it for delivery, in one transaction."""

    debit: DebitRequest
    submitter: str
    route: str
    source: str
    destination: str
    data_coding: int = 0
    esm_class: int = 0
    payload: bytes = b""
    registered_delivery: int = 0
    validity_s: int = 86400


class SmsOutcomeRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What became of a delivery attempt: delivered | retry | expire; or ``claim``: this
    worker delivers it, nobody else tries before ``lease_until`` (several workers)."""

    message_id: str
    outcome: str
    now: int
    refund_expired: bool = True
    expect_next_try: int = -1
    """>= 0: apply only if the message is still due at that time (nobody claimed or
    rescheduled it since it was read)."""
    lease_until: int = 0


BIND_TTL_S = 30
"""A bind holder not heard from for this long (its node died) holds no binds."""
BIND_TOUCH_S = 10
"""How often a holder says it still holds its binds (``smpp_binds_touch``)."""


class SmppBindRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A bind of ``system_id`` taken by ``worker`` of ``node`` (refused at ``max_binds``
    over every worker of every node), or given back with ``release``."""

    system_id: str
    worker: int
    max_binds: int = 0
    release: bool = False
    node: str = ""
    now: int = 0
    """When it is taken: a holder's binds count while it was heard from within
    ``BIND_TTL_S`` (a node that died without giving them back stops counting)."""


class SmppBindsOf(msgspec.Struct, frozen=True, kw_only=True):
    """The SMPP binds held by ``worker`` of ``node`` (-1: by every worker of the node):
    forgotten (``smpp_binds_reset``: its connections died with its last run) or
    still held at ``now`` (``smpp_binds_touch``)."""

    node: str
    worker: int
    now: int
