"""The charging API: the one core module the protocol agents import for charging.

A protocol agent is a translator: it turns its messages into the frozen, keyword-only
commands below, hands them to a :class:`ChargingService` and turns the typed answers
(each with its :class:`Refusal`, or none) back into its own codes. It never builds a
store key: a request is named by a :class:`RequestRef` (who sent it, in which session,
with which number), and the core derives the idempotency key from that, so a
retransmission gets the stored answer and the same name with other content is refused
(``Refusal.REQUEST_MISMATCH``).

Errors: :class:`ChargingBusy` (answer busy; the peer retries), :class:`ChargingPaused`
(new charging refused for now, e.g. no room for CDR files) and the other
:class:`ChargingUnavailable` (the store or its writer cannot take it) — nothing was
charged in any of them.

The write commands return awaitables that resolve after the durable commit; they are
plain futures (no task per call), so an agent may gather several for one message.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

import msgspec

from ocs.charging.model import (
    BIND_TOUCH_S,
    BalanceView,
    Debit,
    Grant,
    Identity,
    IdKind,
    PriceQuote,
    Refund,
    Refusal,
    Released,
    Settlement,
    SmppBindRequest,
    SmppBindsOf,
    SmsOutcomeRequest,
    status_refusal,
)
from ocs.errors import ChargingBusy, ChargingError, ChargingPaused, ChargingUnavailable
from ocs.messaging import SmsMessage
from ocs.rating.plans import Service
from ocs.store.records import Subscriber

__all__ = [
    "BIND_TOUCH_S", "BalanceView", "ChargeEvent", "ChargingBusy", "ChargingError", "ChargingPaused",
    "ChargingService", "ChargingUnavailable", "CloseSession", "Debit", "DeliveryOutcome",
    "Grant", "IdKind", "Identity", "OpenSession", "PriceEnquiry", "PriceQuote", "Refund",
    "RefundEvent", "Refusal", "ReleaseSession", "Released", "RequestRef", "Service",
    "SessionHold", "Settlement", "SmppBind", "SmppBindsOf", "SmsMessage", "SubmitSms",
    "Subscriber", "UpdateSession", "status_refusal",
]


class RequestRef(msgspec.Struct, frozen=True):
    """A request as its protocol names it: unique per ``origin`` (``"gy"``,
    ``"radius:<client>"``, ``"smpp:<system_id>"``), ``session`` and ``number``
    (CC-Request-Number, RADIUS Identifier + Authenticator, SMPP sequence number);
    ``session`` may be "" where the number alone names the request (a RADIUS packet).
    ``step`` tells apart several operations made for one request (a RADIUS Interim
    without Start first opens the session, then charges the report)."""

    origin: str
    session: str
    number: int | str
    step: str = ""


class OpenSession(msgspec.Struct, frozen=True, kw_only=True):
    """Reserve units for a session (Gy CCR-I, RADIUS Start): the answer is a
    :class:`Grant`."""

    request: RequestRef
    session_id: str
    subscriber: Identity
    service: Service
    protocol: str
    now: int
    units: int | None = None
    """Requested units (bytes, seconds, messages); None = the configured default grant."""
    rating_group: int | None = None
    destination: str = ""
    visited_network: str = ""
    validity_s: int | None = None
    owner: str = ""
    """The peer opening the session (``diameter:<Origin-Host>``, ``radius:<client>``);
    later requests from another owner are refused ``NOT_OWNER``."""
    slice: str = ""
    """5G S-NSSAI of the PDU session, "SST" or "SST-SD" (SD lower-case hex): rates may
    name slices; recorded on the CDRs. "" = none."""
    dnn: str = ""
    """5G data network name, recorded on the CDRs."""
    callback: str = ""
    """Where the peer takes notifications for the session (Nchf notifyUri), kept with it
    so any worker that picks the session up can notify."""


class UpdateSession(msgspec.Struct, frozen=True, kw_only=True):
    """Settle reported usage and grant more in the same transaction (Gy CCR-U, RADIUS
    Interim): a :class:`Settlement` whose ``next_grant`` is the new quota."""

    request: RequestRef
    session_id: str
    service: Service
    now: int
    rating_group: int | None = None
    used_units: int = 0
    cumulative_units: int | None = None
    """Instead of ``used_units``: the session's total so far (RADIUS counters); the delta
    since the last report is charged, so a repeated report charges nothing."""
    bytes_in: int = 0
    bytes_out: int = 0
    next_units: int | None = 0
    """Units to grant next (0 = the default grant; None = no new grant)."""
    validity_s: int | None = None
    owner: str = ""
    clamp_excess: bool = False
    """Usage above the plausibility limit: charge up to the limit and count the rest
    (``Settlement.excess_units``) instead of refusing the report."""


class CloseSession(msgspec.Struct, frozen=True, kw_only=True):
    """Settle the last usage and close the session (Gy CCR-T, RADIUS Stop, Accounting-On,
    the NAS no longer has it): a :class:`Settlement`."""

    request: RequestRef
    session_id: str
    service: Service
    now: int
    rating_group: int | None = None
    used_units: int = 0
    cumulative_units: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    owner: str = ""
    """"" = internal: closes whoever's session it is."""
    clamp_excess: bool = False
    remember_end: bool = False
    """Remember the end (while answers are kept): a later report for the session is
    answered ``SESSION_ENDED`` and charges nothing instead of opening it again."""


class ReleaseSession(msgspec.Struct, frozen=True, kw_only=True):
    """Give back what a session holds without charging (the client no longer has it)."""

    request: RequestRef
    session_id: str
    service: Service
    now: int
    rating_group: int | None = None


class ChargeEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Charge one event at once (Gy CCR-E direct debiting, SMS): a :class:`Debit`."""

    request: RequestRef
    subscriber: Identity
    service: Service
    protocol: str
    now: int
    units: int = 1
    session_id: str = ""
    rating_group: int | None = None
    destination: str = ""
    visited_network: str = ""
    characters: int = 0
    """Message length in characters (SMS/MMS), recorded on the CDR."""
    slice: str = ""
    dnn: str = ""


class RefundEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Reverse the :class:`ChargeEvent` named ``original`` (same rating group): a
    :class:`Refund`."""

    request: RequestRef
    original: RequestRef
    now: int
    rating_group: int | None = None


class SubmitSms(msgspec.Struct, frozen=True, kw_only=True):
    """Charge an SMS and queue it for delivery in one transaction: a :class:`Debit`
    whose ``record_id`` is the message id."""

    charge: ChargeEvent
    submitter: str
    route: str
    source: str
    destination: str
    data_coding: int = 0
    esm_class: int = 0
    payload: bytes = b""
    registered_delivery: int = 0
    validity_s: int = 86400


DeliveryOutcome = SmsOutcomeRequest
"""What became of a delivery attempt: ``delivered`` | ``retry`` | ``expire``, or
``claim`` (this worker delivers it; nobody else tries before ``lease_until``)."""

SmppBind = SmppBindRequest
"""A bind of ``system_id`` taken by ``worker`` (refused at ``max_binds`` over every
worker), or given back with ``release``."""


class PriceEnquiry(msgspec.Struct, frozen=True, kw_only=True):
    subscriber: Identity
    service: Service
    units: int
    now: int
    rating_group: int | None = None
    destination: str = ""
    visited_network: str = ""
    slice: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionHold:
    """What one open session holds for one rating group (or service)."""

    session_id: str
    msisdn: str
    service: Service
    rating_group: int | None
    owner: str
    expires_at: int
    destination: str
    visited_network: str
    callback: str = ""


class ChargingService(Protocol):
    """Charging as the protocol agents see it. Writes resolve after the durable commit;
    reads never wait for the writer."""

    def open_session(self, cmd: OpenSession) -> Awaitable[Grant]: ...

    def update_session(self, cmd: UpdateSession) -> Awaitable[Settlement]: ...

    def close_session(self, cmd: CloseSession) -> Awaitable[Settlement]: ...

    def release_session(self, cmd: ReleaseSession) -> Awaitable[Released]: ...

    def charge_event(self, cmd: ChargeEvent) -> Awaitable[Debit]: ...

    def refund(self, cmd: RefundEvent) -> Awaitable[Refund]: ...

    def submit_sms(self, cmd: SubmitSms) -> Awaitable[Debit]: ...

    def delivery_outcome(self, cmd: DeliveryOutcome) -> Awaitable[bool]: ...

    def smpp_bind(self, cmd: SmppBind) -> Awaitable[bool]: ...

    def smpp_binds_reset(self, holder: SmppBindsOf) -> Awaitable[int]: ...

    def smpp_binds_touch(self, holder: SmppBindsOf) -> Awaitable[int]: ...

    # -- reads ------------------------------------------------------------------------

    def subscriber(self, ids: Identity) -> Subscriber | None: ...

    def balance(self, ids: Identity) -> BalanceView | None: ...

    def price(self, enquiry: PriceEnquiry) -> PriceQuote: ...

    def affordable_units(self, sub: Subscriber, service: Service, cap: int, *,
                         rating_group: int | None = None,
                         visited_network: str = "", slice_: str = "") -> int | None:
        """How many units (<= cap) the subscriber's money buys now; None = not priced."""

    def prices(self, sub: Subscriber, service: Service) -> bool:
        """The subscriber's plan has rates for ``service``."""

    def max_usage(self, service: Service) -> int:
        """The plausibility limit of one report of ``service``'s unit."""

    def session_holds(self, session_id: str) -> list[SessionHold]: ...

    async def sessions_with_prefix(self, prefix: str) -> list[SessionHold]:
        """Open holds of every session whose id starts with ``prefix`` (a rare, costly
        question: a NAS restarted; may raise ChargingBusy when too many wait)."""

    async def due_messages(self, now: int, *, fresh_routes: set[str], skip: set[str],
                           limit: int = 500, receivers: bool = True) -> list[SmsMessage]:
        """Queued messages whose next try has come, and any routed to ``fresh_routes``
        (a receiver just bound); ``skip``: ids being delivered right now; ``receivers``:
        some are bound to this process (on a cluster it looks for what waits for them
        more often)."""
