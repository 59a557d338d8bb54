"""Records kept in the store, encoded with msgspec MessagePack (array-like, compact).

Money fields are int micro-units; times are int seconds since the Unix epoch (UTC).
"""

from __future__ import annotations

from typing import Any

import msgspec


class Finding(msgspec.Struct, array_like=True, frozen=True):
    """An indicator as recorded: what fired, on which value, against which threshold."""

    name: str
    value: str
    threshold: str
    weight: int
    at: int


class FraudState(msgspec.Struct, array_like=True, kw_only=True):
    """Per-subscriber state: a fixed number of counters and small bounded lists."""

    events: int = 0
    hours: list[int] = msgspec.field(default_factory=lambda: [0] * 24)
    """Events per local hour of day (halved when the total passes 10,000)."""
    used_prefixes: list[str] = []
    """High-risk prefixes already used (the first use is the indicator)."""
    spend_hour: int = 0
    spend_in_hour: int = 0
    baseline: float = 0.0
    """Exponentially decayed spend per hour (micro-units)."""
    history_h: int = 0
    calls_hour: int = 0
    calls: int = 0
    call_seconds: int = 0
    destinations: list[int] = []
    """CRC32 of this hour's call destinations (at most 64)."""
    sessions: list[tuple[str, str, int]] = []
    """(session id, location, expires at) of open sessions (at most 8)."""
    open_case: int = 0
    findings: list[Finding] = []
    """Indicators of the last 24 hours (at most 16): their weights add up to the score."""


class Subscriber(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    msisdn: str
    imsi: str = ""
    username: str = ""
    password_hash: str = ""
    """``scrypt$<salt hex>$<hash hex>``; empty when the subscriber has no password."""
    plan_id: str
    mode: str  # prepaid | postpaid
    status: str = "active"  # active | suspended | blocked | terminated
    currency: str
    credit_limit: int = 0
    roaming: bool = True
    created_at: int = 0
    updated_at: int = 0
    plan_history: tuple[tuple[int, str], ...] = ()
    """Earlier plans as (effective from, plan id); the current plan took over at
    ``plan_since``. Billing prorates monthly fees over these segments."""
    plan_since: int = 0
    customer_name: str = ""
    """Who is billed (a person or company), as on the invoice."""
    billing_address: str = ""
    """Lines separated by newlines, as on the invoice."""


class Allowance(msgspec.Struct, array_like=True, kw_only=True):
    """Per-cycle allowance buckets: what was used and what open reservations hold."""

    cycle: str = ""
    data_used: int = 0
    data_reserved: int = 0
    voice_used: int = 0
    voice_reserved: int = 0
    sms_used: int = 0
    sms_reserved: int = 0


class Balance(msgspec.Struct, array_like=True, kw_only=True):
    balance: int = 0
    """Committed money. Prepaid: credit (never < 0). Postpaid: minus the unbilled usage."""
    reserved: int = 0
    """Money held by open reservations."""
    charged_total: int = 0
    """Sum of every committed charge minus refunds (for reconciliation)."""
    topped_up_total: int = 0
    fraud: FraudState | None = None
    """The fraud rules' state of this subscriber: in the balance record because every
    charge reads and writes that record anyway (no extra lookup, write or page)."""
    allowance: Allowance | None = None
    """The allowance buckets of the current (or last charged) cycle: in the same record
    for the same reason (schema 1 kept them in a record of their own)."""


class RateSnapshot(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    """The price terms a reservation was granted under, so settling is exact."""

    plan_id: str
    rate_id: str
    service: str
    price: int
    unit_size: int
    first_increment_s: int
    increment_s: int
    connect_fee: int
    plan_version: int = 0
    """The plan version the rate was taken from (0: a reservation made before versions)."""


class Reservation(msgspec.Struct, array_like=True, kw_only=True):
    key: bytes
    session_id: str
    msisdn: str
    imsi: str
    service: str
    rating_group: int | None
    destination: str
    visited_network: str
    roaming: bool
    protocol: str
    rate: RateSnapshot
    mode: str
    currency: str
    cycle: str
    allowance_ok: bool
    started_at: int
    last_at: int
    expires_at: int
    granted_units: int = 0
    money_reserved: int = 0
    allowance_reserved: int = 0
    used_total: int = 0
    chargeable_total: int = 0
    charged_total: int = 0
    commits: int = 0
    owner: str = ""
    """Who opened the session (see ReserveRequest.owner)."""
    slice: str = ""
    """5G S-NSSAI the session was rated under ("" = none)."""
    dnn: str = ""
    callback: str = ""
    """Where the peer takes notifications for the session (Nchf notifyUri)."""


class CdrRecord(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    record_id: str
    session_id: str
    msisdn: str
    imsi: str
    service: str
    rating_group: int | None
    destination: str
    start_time: int
    end_time: int
    duration_s: int
    bytes_in: int
    bytes_out: int
    units: int
    charge: int
    currency: str
    plan_id: str
    rate_id: str
    roaming: bool
    visited_network: str
    protocol: str
    result: str
    allowance_units: int = 0
    """Of ``units``, how many came from the plan's allowance (charged nothing)."""
    characters: int = 0
    """SMS/MMS: characters of the message (GSM 03.38, UCS-2 or octets); 0 otherwise."""
    slice: str = ""
    """5G S-NSSAI ("SST" or "SST-SD") of a PDU session charged over Nchf; "" otherwise."""
    dnn: str = ""
    """5G data network name of that PDU session."""
    plan_version: int = 0
    """The version of ``plan_id`` it was rated with (0: not rated, e.g. a refund, or
    written before plan versions)."""


class CdrExportState(msgspec.Struct, array_like=True, kw_only=True):
    """Where the CDR exporter is; lives in meta so a restart resumes exactly."""

    file_seq: int = 0
    """Sequence number of the open (or next) file."""
    open_name: str = ""
    """Base name (without .part) of the open file; empty = none open."""
    open_started_at: int = 0
    first_seq: int = 1
    """Journal sequence of the first record in the open file."""
    written_seq: int = 0
    """Last journal sequence confirmed (fsynced) in the .part file."""
    part_bytes: int = 0
    closing_end_seq: int = 0
    """Non-zero while a close is in progress: the file holds [first_seq, closing_end_seq)."""


_enc = msgspec.msgpack.Encoder()
encode = _enc.encode


def decoder(tp: Any) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(tp)


dec_subscriber = msgspec.msgpack.Decoder(Subscriber)
dec_balance = msgspec.msgpack.Decoder(Balance)
dec_allowance = msgspec.msgpack.Decoder(Allowance)
dec_reservation = msgspec.msgpack.Decoder(Reservation)
dec_cdr = msgspec.msgpack.Decoder(CdrRecord)
dec_export_state = msgspec.msgpack.Decoder(CdrExportState)


class PlanVersion(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    """One load of a plan: it rates events from ``effective_at`` on, until a later
    version's effective time (the highest version effective at an event's time wins)."""

    version: int
    effective_at: int
    loaded_at: int
    table: dict[str, Any]
    """The validated TOML table, as loaded."""


dec_plan_version = msgspec.msgpack.Decoder(PlanVersion)


def plan_version_key(plan_id: str, version: int) -> bytes:
    return plan_id.encode() + b"\x00" + version.to_bytes(4, "big")


class PlanVersionHead(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    """The first fields of a :class:`PlanVersion` (decoding skips the table)."""

    version: int
    effective_at: int
    loaded_at: int


dec_plan_version_head = msgspec.msgpack.Decoder(PlanVersionHead)


class ApiToken(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    """A REST API bearer token as kept: its role and who made it, never the token (the
    key is its SHA-256)."""

    token_id: str
    """The token's first characters: names it in ``ocs api token list`` and the logs."""
    role: str
    name: str = ""
    created_at: int = 0
    created_by: str = ""


dec_api_token = msgspec.msgpack.Decoder(ApiToken)


class LedgerEntry(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    """Money put on a balance (a top-up, the opening balance): what charges are not.
    Charges, refunds and re-rating adjustments are CDRs; together the two are the
    account's history, and ``balance = top-ups − charges`` (``ocs bill reconcile``)."""

    seq: int
    at: int
    kind: str
    """``topup``, or ``opening``: a new subscriber's starting balance, or the top-ups a
    balance had before the ledger existed (written at its first top-up since)."""
    amount: int
    reference: str = ""
    """The caller's reference (a payment id): the same one again credits nothing."""
    actor: str = ""
    balance_after: int = 0


dec_ledger_entry = msgspec.msgpack.Decoder(LedgerEntry)
