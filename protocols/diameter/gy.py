"""The Gy credit-control application (RFC 4006 / RFC 8506, 3GPP TS 32.299).

:func:`parse_ccr` turns a checked CCR into a :class:`Ccr` (or a 5004/5005 error with
Failed-AVP); :class:`GyAgent` runs it through the charging API and builds the CCA.
Every money change is a charging command named by (Session-Id, CC-Request-Number) and
its Rating-Group, so a retransmission — even one arriving after a
restart, when the node's duplicate cache is gone — replays the stored answer and
charges nothing. The CCA is built only from charging's answers, after its durable
commit.

Sessions: CCR-I opens one (one reservation per rating group), CCR-U settles the used
units and grants the next quota in the same transaction, CCR-T settles and releases,
CCR-E is stateless (direct debit, refund, balance check, price enquiry). The supervision
timer Tcc (2 × Validity-Time) is the reservation's expiry: the reaper settles it, and a
later CCR-U for that session gets 5002.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from ocs import metrics
from ocs.charging.api import (
    ChargeEvent,
    ChargingService,
    CloseSession,
    Debit,
    Grant,
    Identity,
    IdKind,
    OpenSession,
    PriceEnquiry,
    Refund,
    RefundEvent,
    Refusal,
    ReleaseSession,
    RequestRef,
    Service,
    Settlement,
    Subscriber,
    UpdateSession,
    status_refusal,
)
from ocs.sessions import AbortRequired, Session, SessionTable, Turns, all_answers, answered
from protocols.diameter import codec as c
from protocols.diameter.codec import VENDOR_3GPP, A, Avp, Message, MessageError, Rc

log = structlog.get_logger(__name__)

INITIAL, UPDATE, TERMINATION, EVENT = 1, 2, 3, 4
DIRECT_DEBITING, REFUND_ACCOUNT, CHECK_BALANCE, PRICE_ENQUIRY = 0, 1, 2, 3
SUB_E164, SUB_IMSI, SUB_SIP_URI, SUB_NAI, SUB_PRIVATE = 0, 1, 2, 3, 4
FUA_TERMINATE, FUA_REDIRECT = 0, 1
REDIRECT_URL = 2
ENOUGH_CREDIT, NO_CREDIT = 0, 1
REAUTH_AUTHORIZE_ONLY = 0

CONTEXT_SERVICE = {
    "32251": Service.DATA,
    "32260": Service.VOICE,
    "32275": Service.VOICE,
    "32274": Service.SMS,
    "32270": Service.MMS,
}
"""Service-Context-Id (``[<ext>.<MNC>.<MCC>.<Rel>.]3225x@3gpp.org``) -> service."""

CURRENCY_NUMERIC = {"EUR": 978, "USD": 840, "CHF": 756, "GBP": 826, "SEK": 752,
                    "NOK": 578, "DKK": 208, "PLN": 985, "CZK": 203, "JPY": 392}

REFUSAL_CODE = {
    Refusal.UNKNOWN_SUBSCRIBER: Rc.USER_UNKNOWN,
    Refusal.SUSPENDED: Rc.END_USER_SERVICE_DENIED,
    Refusal.BLOCKED: Rc.END_USER_SERVICE_DENIED,
    Refusal.TERMINATED: Rc.END_USER_SERVICE_DENIED,
    Refusal.ROAMING_NOT_ALLOWED: Rc.END_USER_SERVICE_DENIED,
    Refusal.OUT_OF_CREDIT: Rc.CREDIT_LIMIT_REACHED,
    Refusal.CREDIT_LIMIT_REACHED: Rc.CREDIT_LIMIT_REACHED,
    Refusal.RATING_FAILED: Rc.RATING_FAILED,
    Refusal.UNKNOWN_RESERVATION: Rc.UNKNOWN_SESSION_ID,
    Refusal.SESSION_CONFLICT: Rc.UNABLE_TO_COMPLY,
    Refusal.SESSION_ENDED: Rc.UNKNOWN_SESSION_ID,
    Refusal.NOT_OWNER: Rc.INVALID_AVP_VALUE,
    Refusal.IMPLAUSIBLE_USAGE: Rc.INVALID_AVP_VALUE,
    Refusal.REQUEST_MISMATCH: Rc.INVALID_AVP_VALUE,
    Refusal.NOT_REFUNDABLE: Rc.UNABLE_TO_COMPLY,
    Refusal.ALREADY_REFUNDED: Rc.UNABLE_TO_COMPLY,
}


_CREDIT = frozenset({Refusal.OUT_OF_CREDIT, Refusal.CREDIT_LIMIT_REACHED})
_ENDS_SESSIONS = frozenset({Refusal.UNKNOWN_SUBSCRIBER, Refusal.BLOCKED, Refusal.TERMINATED})
"""Statuses whose sessions are aborted (ASR); a suspended one is re-authorised (RAR)."""

# -- the request -------------------------------------------------------------------------

@dataclass(slots=True)
class Units:
    time: int | None = None
    total: int | None = None
    input: int | None = None
    output: int | None = None
    specific: int | None = None

    def add(self, other: Units) -> None:
        for name in ("time", "total", "input", "output", "specific"):
            v = getattr(other, name)
            if v is not None:
                setattr(self, name, (getattr(self, name) or 0) + v)

    def amount(self, service: Service) -> int | None:
        """The units of ``service`` (bytes, seconds, messages); None when not given."""
        if service is Service.DATA:
            if self.total is not None:
                return self.total
            if self.input is not None or self.output is not None:
                return (self.input or 0) + (self.output or 0)
            return None
        if service is Service.VOICE or service is Service.TIME:
            return self.time
        return self.specific


def _units(avp: Avp) -> Units:
    u = Units()
    for a in avp.group(2):
        if a.vendor:
            continue
        code = a.code
        if code == A.CC_TIME:
            u.time = a.u32
        elif code == A.CC_TOTAL_OCTETS:
            u.total = a.u64
        elif code == A.CC_INPUT_OCTETS:
            u.input = a.u64
        elif code == A.CC_OUTPUT_OCTETS:
            u.output = a.u64
        elif code == A.CC_SERVICE_SPECIFIC_UNITS:
            u.specific = a.u64
    return u


@dataclass(slots=True)
class Mscc:
    rating_group: int | None = None
    service_identifier: int | None = None
    requested: Units | None = None
    """Requested-Service-Unit; None = no new quota wanted (usage report only)."""
    used: Units | None = None
    """Used-Service-Unit summed over every USU in the MSCC."""
    reporting_reason: int | None = None


@dataclass(slots=True)
class Ccr:
    session_id: str
    origin_host: str
    origin_realm: str
    destination_realm: str
    request_type: int
    request_number: int
    context_id: str
    service: Service
    identity: Identity
    requested_action: int = DIRECT_DEBITING
    msccs: list[Mscc] = field(default_factory=list)
    single: Mscc | None = None
    """Requested/Used-Service-Unit at command level (no MSCC)."""
    destination: str = ""
    visited_network: str = ""
    termination_cause: int | None = None


def _digits_of_address(text: str) -> str:
    """E.164 digits of ``tel:+41…``, ``sip:+41…@host``, ``+41 79…`` or plain digits."""
    if text.isascii() and text.isdigit():
        return text  # the usual Subscription-Id-Data: digits already
    if ":" in text:
        text = text.split(":", 1)[1]
    text = text.split("@", 1)[0].split(";", 1)[0]
    return "".join(ch for ch in text if ch.isascii() and ch.isdigit())


def _service_of(context_id: str) -> Service | None:
    head = context_id.rsplit("@", 1)[0]
    return CONTEXT_SERVICE.get(head.rsplit(".", 1)[-1])


def _identity(subscriptions: list[Avp], user: Avp | None) -> Identity:
    ids: list[tuple[IdKind, str]] = []
    for sub in subscriptions:
        kind, data = None, ""
        for a in sub.group():
            if a.vendor:
                continue
            if a.code == A.SUBSCRIPTION_ID_TYPE:
                kind = a.u32
            elif a.code == A.SUBSCRIPTION_ID_DATA:
                data = a.text
        if kind is None or not data:
            raise MessageError(Rc.MISSING_AVP, "Subscription-Id needs Type and Data",
                               c.zero_filled(A.SUBSCRIPTION_ID_TYPE if kind is None
                                             else A.SUBSCRIPTION_ID_DATA))
        if kind == SUB_E164:
            ids.append((IdKind.MSISDN, _digits_of_address(data)))
        elif kind == SUB_IMSI:
            ids.append((IdKind.IMSI, data))
        elif kind == SUB_SIP_URI:
            digits = _digits_of_address(data)
            if digits:
                ids.append((IdKind.MSISDN, digits))
        elif kind in (SUB_NAI, SUB_PRIVATE):
            ids.append((IdKind.USERNAME, data))
    if user is not None and user.data:
        ids.append((IdKind.USERNAME, user.text))
    return tuple(ids)


def _required(first: dict[int, Avp], code: int) -> Avp:
    a = first.get(code)
    if a is None:
        raise MessageError(Rc.MISSING_AVP, f"missing AVP {code}", c.zero_filled(code))
    return a


_SINGLE = frozenset({A.SESSION_ID, A.CC_REQUEST_TYPE, A.CC_REQUEST_NUMBER, A.ORIGIN_HOST,
                     A.ORIGIN_REALM, A.SERVICE_CONTEXT_ID, A.REQUESTED_ACTION,
                     A.DESTINATION_REALM, A.AUTH_APPLICATION_ID})
"""AVPs the CCR grammar allows once (RFC 4006 §3.1): a second copy is 5009."""


def _nested(avps: list[Avp], *path: tuple[int, int]) -> Avp | None:
    """The first AVP at ``path`` of (code, vendor) steps inside ``avps``."""
    found: Avp | None = None
    level = avps
    for depth, (code, vendor) in enumerate(path):
        found = c.find(level, code, vendor)
        if found is None:
            return None
        if depth < len(path) - 1:
            level = found.group(depth + 1)
    return found


def parse_ccr(msg: Message) -> Ccr:
    """The credit-control view of a checked CCR; MessageError for a bad or missing AVP.
    One pass over the top-level AVPs sorts out what the rest reads (the first of each
    base AVP; every MSCC, Subscription-Id and Used-Service-Unit; the 3GPP ones)."""
    first: dict[int, Avp] = {}
    mscc_avps: list[Avp] = []
    subscriptions: list[Avp] = []
    usu: list[Avp] = []
    svc_info = top_mccmnc = None
    for a in msg.avps:
        code = a.code
        if a.vendor:
            if a.vendor == VENDOR_3GPP:
                if code == A.SERVICE_INFORMATION and svc_info is None:
                    svc_info = a
                elif code == A.TGPP_SGSN_MCC_MNC and top_mccmnc is None:
                    top_mccmnc = a
        elif code == A.MULTIPLE_SERVICES_CREDIT_CONTROL:
            mscc_avps.append(a)
        elif code == A.SUBSCRIPTION_ID:
            subscriptions.append(a)
        elif code == A.USED_SERVICE_UNIT:
            usu.append(a)
        elif code not in first:
            first[code] = a
        elif code in _SINGLE:
            raise MessageError(Rc.AVP_OCCURS_TOO_MANY_TIMES, f"AVP {code} more than once",
                               a.encode())
    sid_avp = _required(first, A.SESSION_ID)
    sid = sid_avp.text
    if not sid:
        raise MessageError(Rc.INVALID_AVP_VALUE, "empty Session-Id", sid_avp.encode())
    origin_host = _required(first, A.ORIGIN_HOST).text
    origin_realm = _required(first, A.ORIGIN_REALM).text
    dest_realm = _required(first, A.DESTINATION_REALM).text
    app = _required(first, A.AUTH_APPLICATION_ID)
    if app.u32 != c.App.CREDIT_CONTROL:
        raise MessageError(Rc.INVALID_AVP_VALUE, f"Auth-Application-Id {app.u32}", app.encode())
    context_avp = _required(first, A.SERVICE_CONTEXT_ID)
    context_id = context_avp.text
    rt_avp = _required(first, A.CC_REQUEST_TYPE)
    request_type = rt_avp.u32
    if request_type not in (INITIAL, UPDATE, TERMINATION, EVENT):
        raise MessageError(Rc.INVALID_AVP_VALUE, f"CC-Request-Type {request_type}",
                           rt_avp.encode())
    request_number = _required(first, A.CC_REQUEST_NUMBER).u32
    action = DIRECT_DEBITING
    ra = first.get(A.REQUESTED_ACTION)
    if ra is not None:
        action = ra.u32
        if action not in (DIRECT_DEBITING, REFUND_ACCOUNT, CHECK_BALANCE, PRICE_ENQUIRY):
            raise MessageError(Rc.INVALID_AVP_VALUE, f"Requested-Action {action}", ra.encode())
    msccs: list[Mscc] = []
    for m in mscc_avps:
        item = Mscc()
        for a in m.group():
            if a.vendor == VENDOR_3GPP:
                if a.code == A.REPORTING_REASON:
                    item.reporting_reason = a.u32
                continue
            if a.vendor:
                continue
            if a.code == A.RATING_GROUP:
                item.rating_group = a.u32
            elif a.code == A.SERVICE_IDENTIFIER:
                item.service_identifier = a.u32
            elif a.code == A.REQUESTED_SERVICE_UNIT:
                item.requested = _units(a)
            elif a.code == A.USED_SERVICE_UNIT:
                used = _units(a)
                if item.used is None:
                    item.used = used
                else:
                    item.used.add(used)
                for inner in a.group(2):
                    if inner.vendor == VENDOR_3GPP and inner.code == A.REPORTING_REASON:
                        item.reporting_reason = inner.u32
        msccs.append(item)
    single = None
    rsu = first.get(A.REQUESTED_SERVICE_UNIT)
    if rsu is not None or usu:
        single = Mscc(requested=_units(rsu) if rsu is not None else None)
        for u in usu:
            if single.used is None:
                single.used = _units(u)
            else:
                single.used.add(_units(u))
    service = _service_of(context_id) or _guess_service(msccs, single)
    if service is None:
        raise MessageError(Rc.RATING_FAILED, f"no service for Service-Context-Id {context_id}",
                           context_avp.encode())
    destination = visited = ""
    if svc_info is not None:
        info = svc_info.group()
        ps = _nested(info, (A.PS_INFORMATION, VENDOR_3GPP))
        if ps is not None:
            mccmnc = c.find(ps.group(2), A.TGPP_SGSN_MCC_MNC, VENDOR_3GPP)
            if mccmnc is not None:
                visited = mccmnc.text
        called = _nested(info, (A.IMS_INFORMATION, VENDOR_3GPP),
                         (A.CALLED_PARTY_ADDRESS, VENDOR_3GPP))
        if called is not None:
            destination = _digits_of_address(called.text)
        recipient = _nested(info, (A.SMS_INFORMATION, VENDOR_3GPP),
                            (A.RECIPIENT_INFO, VENDOR_3GPP),
                            (A.RECIPIENT_ADDRESS, VENDOR_3GPP),
                            (A.ADDRESS_DATA, VENDOR_3GPP))
        if recipient is not None:
            destination = _digits_of_address(recipient.text)
    if not visited and top_mccmnc is not None:
        visited = top_mccmnc.text
    tc = first.get(A.TERMINATION_CAUSE)
    identity = _identity(subscriptions, first.get(A.USER_NAME))
    return Ccr(
        session_id=sid, origin_host=origin_host, origin_realm=origin_realm,
        destination_realm=dest_realm, request_type=request_type,
        request_number=request_number, context_id=context_id, service=service,
        identity=identity, requested_action=action, msccs=msccs, single=single,
        destination=destination, visited_network=visited,
        termination_cause=tc.u32 if tc is not None else None,
    )


def _guess_service(msccs: list[Mscc], single: Mscc | None) -> Service | None:
    for m in [*msccs, *([single] if single else [])]:
        for u in (m.requested, m.used):
            if u is None:
                continue
            if u.time is not None:
                return Service.VOICE
            if u.total is not None or u.input is not None or u.output is not None:
                return Service.DATA
            if u.specific is not None:
                return Service.SMS
    return None


# -- the answer --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class GySettings:
    origin_host: str
    origin_realm: str
    validity_s: int = 900
    """Validity-Time of a grant; the reservation lives 2 × this (Tcc)."""
    quota_threshold_percent: int = 20
    """Volume/Time-Quota-Threshold as a share of the grant (0 = none)."""
    quota_holding_s: int = 0
    """Quota-Holding-Time in grants (0 = not sent: the client's default)."""
    final_unit_action: str = "terminate"
    """terminate | redirect (needs redirect_url)."""
    redirect_url: str = ""
    failure_handling: int = 2
    """Credit-Control-Failure-Handling sent in CCAs (RETRY_AND_TERMINATE)."""
    currency: str = "EUR"


def _unit_avp(service: Service, units: int) -> bytes:
    if service is Service.DATA:
        return c.u64(A.CC_TOTAL_OCTETS, units)
    if service is Service.VOICE or service is Service.TIME:
        return c.u32(A.CC_TIME, min(units, 0xFFFFFFFF))
    return c.u64(A.CC_SERVICE_SPECIFIC_UNITS, units)


def money_avps(amount_micro: int, currency: str) -> bytes:
    """Unit-Value (Value-Digits × 10^Exponent) + Currency-Code for a micro amount."""
    value, exp = amount_micro, -6
    while value and value % 10 == 0 and exp < 0:
        value //= 10
        exp += 1
    if value == 0:
        exp = 0
    uv = c.grouped(A.UNIT_VALUE, c.i64(A.VALUE_DIGITS, value), c.i32(A.EXPONENT, exp))
    return uv + c.u32(A.CURRENCY_CODE, CURRENCY_NUMERIC.get(currency, 0))


@dataclass(slots=True)
class MsccResult:
    mscc: Mscc
    result_code: int = Rc.SUCCESS
    granted: int | None = None
    final: bool = False
    redirect: bool = False
    validity: bool = True


def encode_mscc(r: MsccResult, service: Service, s: GySettings) -> bytes:
    parts = []
    if r.granted is not None:
        parts.append(c.grouped(A.GRANTED_SERVICE_UNIT, _unit_avp(service, r.granted)))
    m = r.mscc
    if m.service_identifier is not None:
        parts.append(c.u32(A.SERVICE_IDENTIFIER, m.service_identifier))
    if m.rating_group is not None:
        parts.append(c.u32(A.RATING_GROUP, m.rating_group))
    if r.validity and r.result_code in (Rc.SUCCESS, Rc.CREDIT_LIMIT_REACHED):
        parts.append(c.u32(A.VALIDITY_TIME, s.validity_s))
    parts.append(c.u32(A.RESULT_CODE, r.result_code))
    if r.final or r.redirect:
        parts.append(_fui(s))
    if r.granted and s.quota_threshold_percent and not r.final:
        th = min(0xFFFFFFFF, r.granted * s.quota_threshold_percent // 100)
        if th:
            code = A.VOLUME_QUOTA_THRESHOLD if service is Service.DATA else (
                A.TIME_QUOTA_THRESHOLD if service in (Service.VOICE, Service.TIME)
                else A.UNIT_QUOTA_THRESHOLD)
            parts.append(c.u32(code, th, vendor=VENDOR_3GPP))
    if r.granted and s.quota_holding_s:
        parts.append(c.u32(A.QUOTA_HOLDING_TIME, s.quota_holding_s, vendor=VENDOR_3GPP))
    return c.grouped(A.MULTIPLE_SERVICES_CREDIT_CONTROL, *parts)


def _fui(s: GySettings) -> bytes:
    if s.final_unit_action == "redirect" and s.redirect_url:
        return c.grouped(A.FINAL_UNIT_INDICATION,
                         c.u32(A.FINAL_UNIT_ACTION, FUA_REDIRECT),
                         c.grouped(A.REDIRECT_SERVER,
                                   c.u32(A.REDIRECT_ADDRESS_TYPE, REDIRECT_URL),
                                   c.utf8(A.REDIRECT_SERVER_ADDRESS, s.redirect_url)))
    return c.grouped(A.FINAL_UNIT_INDICATION, c.u32(A.FINAL_UNIT_ACTION, FUA_TERMINATE))


# -- sessions ----------------------------------------------------------------------------

@dataclass(slots=True, kw_only=True)
class GySession(Session):
    """A credit-control session (its deadline is Tcc: dropped when no CCR arrives before
    it; ``owner`` is the Origin-Host of the client that opened it: only it may report on
    the session, and RAR/ASR go to the connection its CCRs come on)."""

    origin_host: str = ""
    origin_realm: str = ""
    peer: Any = None
    """The connection the CCRs arrive on (for RAR/ASR)."""
    groups: set[int | None] = field(default_factory=set)
    """Rating groups (None = single-service) with a reservation."""
    asked: set[int | None] = field(default_factory=set)
    """Rating groups the client asked quota for (refused ones included)."""
    destination: str = ""


class GyAgent:
    """Runs checked CCRs through charging; holds the live session table."""

    def __init__(self, charging: ChargingService, settings: GySettings, *,
                 clock: Callable[[], float] = time.time):
        self.charging = charging
        self.s = settings
        self.clock = clock
        self.sessions: SessionTable[GySession] = SessionTable()
        self.turns = Turns()
        self.counters: dict[str, int] = {}
        # constant parts of every CCA, encoded once
        self._origin = (c.octets(A.ORIGIN_HOST, settings.origin_host.encode())
                        + c.octets(A.ORIGIN_REALM, settings.origin_realm.encode())
                        + c.u32(A.AUTH_APPLICATION_ID, c.App.CREDIT_CONTROL))
        self._session_tail = (c.u32(A.CC_SESSION_FAILOVER, 1)
                              + c.u32(A.CREDIT_CONTROL_FAILURE_HANDLING,
                                      settings.failure_handling))

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _now(self) -> int:
        return int(self.clock())

    @property
    def tcc_s(self) -> int:
        return 2 * self.s.validity_s

    @staticmethod
    def _ref(ccr: Ccr) -> RequestRef:
        return RequestRef("gy", ccr.session_id, ccr.request_number)

    # -- entry point ----------------------------------------------------------------------

    async def handle(self, msg: Message, peer: Any = None) -> bytes:
        """The CCA for one checked CCR (MessageError for a malformed one). With a ``peer``
        (the connection), the session's owner is the CCR's Origin-Host: the peer layer
        has made sure a direct peer's is that of its CER (a relay's requests carry their
        origin's, with Route-Record); without one (sans-IO tests) sessions have none."""
        ccr = parse_ccr(msg)
        if ccr.destination_realm.lower() != self.s.origin_realm.lower():
            raise MessageError(Rc.REALM_NOT_SERVED, f"realm {ccr.destination_realm}",
                               protocol=True)
        self._check_plausible(msg, ccr)
        self._count(f"ccr_{ccr.request_type}")
        owner = f"diameter:{ccr.origin_host.lower()}" if peer is not None else ""
        if ccr.request_type == EVENT:
            rc, body = await self._event(ccr)
            return self._cca(msg, ccr, rc, body)
        async with self.turns.of(ccr.session_id):  # RAR collisions, parallel CCR-U
            if ccr.request_type == INITIAL:
                rc, body = await self._initial(ccr, peer, owner)
            elif ccr.request_type == UPDATE:
                rc, body = await self._update(ccr, peer, owner)
            else:
                rc, body = await self._terminate(ccr, peer, owner)
        return self._cca(msg, ccr, rc, body)

    def _check_plausible(self, msg: Message, ccr: Ccr) -> None:
        """5004 for a report above the plausibility limit of its unit (nothing charged)."""
        limit = self.charging.max_usage(ccr.service)
        for item in self._items(ccr):
            for units in (item.used, item.requested):
                amount = units.amount(ccr.service) if units is not None else None
                if amount is not None and amount > limit:
                    self._count("implausible_usage")
                    log.warning("gy_implausible_usage", session=ccr.session_id,
                                rating_group=item.rating_group, units=amount, limit=limit)
                    raise MessageError(Rc.INVALID_AVP_VALUE,
                                       f"{amount} units in one report (limit {limit})",
                                       _offending_unit_avp(msg, ccr.service, limit))

    def _refused(self, ccr: Ccr, answers: Iterable[Any]) -> None:
        """A request key reused with other content, or a session of another peer: 5004,
        and nothing was charged."""
        for ans in answers:
            refusal = getattr(ans, "refusal", "")
            if refusal == Refusal.REQUEST_MISMATCH:
                self._count("request_mismatch")
                log.warning("gy_request_mismatch", session=ccr.session_id,
                            request_number=ccr.request_number)
                raise MessageError(Rc.INVALID_AVP_VALUE,
                                   "CC-Request-Number reused with different content",
                                   c.u32(A.CC_REQUEST_NUMBER, ccr.request_number))
            if refusal == Refusal.NOT_OWNER:
                raise self._not_owner(ccr)

    def _not_owner(self, ccr: Ccr) -> MessageError:
        self._count("not_owner")
        log.warning("gy_session_of_another_peer", session=ccr.session_id,
                    origin_host=ccr.origin_host)
        return MessageError(Rc.INVALID_AVP_VALUE, "the session belongs to another peer",
                            c.utf8(A.SESSION_ID, ccr.session_id))

    def _other_subscriber(self, ccr: Ccr, sess: GySession) -> bool:
        """The CCR names a subscriber other than the session's (a takeover attempt)."""
        if not ccr.identity or ccr.identity == sess.identity or not sess.msisdn:
            return False
        sub = self.charging.subscriber(ccr.identity)
        if sub is not None and sub.msisdn == sess.msisdn:
            return False
        self._count("other_subscriber")
        log.warning("gy_session_of_another_subscriber", session=ccr.session_id)
        return True

    def _cca(self, msg: Message, ccr: Ccr, rc: int, body: bytes) -> bytes:
        parts = [
            msg.find(A.SESSION_ID).encode(),  # type: ignore[union-attr]
            c.u32(A.RESULT_CODE, rc),
            self._origin,
            c.u32(A.CC_REQUEST_TYPE, ccr.request_type),
            c.u32(A.CC_REQUEST_NUMBER, ccr.request_number),
            body,
        ]
        if ccr.request_type != EVENT:
            parts.append(self._session_tail)
        for a in msg.avps:
            if a.code == A.PROXY_INFO and not a.vendor:
                parts.append(a.encode())
        return c.encode_message(msg.code, msg.flags & c.FLAG_P, msg.app, msg.hbh, msg.e2e,
                                b"".join(parts))

    def _subscriber_refusal(self, ccr: Ccr) -> tuple[int, str]:
        """(command Result-Code, msisdn) before any write: 5030 / 4010 answered at once."""
        sub = self.charging.subscriber(ccr.identity) if ccr.identity else None
        refusal = status_refusal(sub)
        if sub is None or refusal is not None:
            return REFUSAL_CODE[refusal or Refusal.UNKNOWN_SUBSCRIBER], sub.msisdn if sub else ""
        return Rc.SUCCESS, sub.msisdn

    def _items(self, ccr: Ccr) -> list[Mscc]:
        if ccr.msccs:
            return ccr.msccs
        return [ccr.single or Mscc(requested=Units())]

    def _from_grant(self, item: Mscc, g: Grant) -> MsccResult:
        if g.ok and g.zero_rated:
            return MsccResult(item, Rc.CREDIT_CONTROL_NOT_APPLICABLE, validity=False)
        if g.ok:
            return MsccResult(item, Rc.SUCCESS, granted=g.granted_units, final=g.final)
        code = REFUSAL_CODE.get(Refusal(g.refusal), Rc.UNABLE_TO_COMPLY) if g.refusal else (
            Rc.UNABLE_TO_COMPLY)
        if code == Rc.CREDIT_LIMIT_REACHED and self._redirecting:
            # RFC 4006 §5.6.2: no credit -> FUI REDIRECT + Validity-Time, no GSU
            return MsccResult(item, Rc.SUCCESS, redirect=True)
        return MsccResult(item, code, validity=code == Rc.CREDIT_LIMIT_REACHED)

    @property
    def _redirecting(self) -> bool:
        return self.s.final_unit_action == "redirect" and bool(self.s.redirect_url)

    def _body(self, ccr: Ccr, results: list[MsccResult]) -> bytes:
        if ccr.msccs:
            return b"".join(encode_mscc(r, ccr.service, self.s) for r in results)
        # single-service: GSU, Validity-Time and FUI at command level
        parts = []
        for r in results:
            if r.granted is not None:
                parts.append(c.grouped(A.GRANTED_SERVICE_UNIT, _unit_avp(ccr.service, r.granted)))
            if r.validity and r.result_code in (Rc.SUCCESS, Rc.CREDIT_LIMIT_REACHED):
                parts.append(c.u32(A.VALIDITY_TIME, self.s.validity_s))
            if r.final or r.redirect:
                parts.append(_fui(self.s))
        return b"".join(parts)

    @staticmethod
    def _command_code(ccr: Ccr, results: list[MsccResult]) -> int:
        if ccr.msccs:
            return Rc.SUCCESS
        return results[0].result_code if results else Rc.SUCCESS

    def _open(self, ccr: Ccr, sess: GySession, item: Mscc) -> Awaitable[Grant]:
        units = item.requested.amount(ccr.service) if item.requested is not None else None
        return self.charging.open_session(OpenSession(
            request=self._ref(ccr), session_id=ccr.session_id, subscriber=sess.identity,
            service=sess.service, units=units or None, rating_group=item.rating_group,
            destination=sess.destination, visited_network=sess.visited_network,
            protocol="diameter", validity_s=self.tcc_s, now=self._now(), owner=sess.owner))

    # -- CCR-I ----------------------------------------------------------------------------

    async def _initial(self, ccr: Ccr, peer: Any, owner: str = "") -> tuple[int, bytes]:
        rc, msisdn = self._subscriber_refusal(ccr)
        if rc != Rc.SUCCESS:
            self._count(f"refused_{rc}")
            return rc, b""
        known = self.sessions.get(ccr.session_id)
        if known is not None and known.owner and known.owner != owner:
            raise self._not_owner(ccr)
        sess = GySession(session_id=ccr.session_id, identity=ccr.identity, msisdn=msisdn,
                         service=ccr.service, origin_host=ccr.origin_host,
                         origin_realm=ccr.origin_realm, peer=peer, owner=owner,
                         visited_network=ccr.visited_network, destination=ccr.destination,
                         deadline=self.clock() + self.tcc_s)
        items = self._items(ccr)
        grants = await all_answers(self._open(ccr, sess, item) for item in items)
        self._refused(ccr, grants)
        results = []
        for item, g in zip(items, grants, strict=True):
            sess.asked.add(item.rating_group)
            if g.ok and not g.zero_rated:
                sess.groups.add(item.rating_group)
            if g.final or not g.ok:
                sess.limited = True
            results.append(self._from_grant(item, g))
        # keep the session when it holds quota, or waits for credit (a top-up -> RAR)
        if sess.groups or any(not g.ok and g.refusal in _CREDIT for g in grants):
            self.sessions[ccr.session_id] = sess
        return self._command_code(ccr, results), self._body(ccr, results)

    # -- CCR-U ----------------------------------------------------------------------------

    def _session(self, ccr: Ccr, peer: Any, owner: str = "") -> GySession | None:
        """The live session; re-attached from the store after a restart, or when its CCRs
        now come on another connection (with several workers the session may have gone on
        in another process meanwhile: the store says what is left of it). None when it is
        unknown or its Tcc ran out. MessageError 5004 when it belongs to another peer."""
        now = self.clock()
        sess = self.sessions.get(ccr.session_id)
        if sess is not None and sess.owner and sess.owner != owner and now <= sess.deadline:
            raise self._not_owner(ccr)
        if sess is not None and now <= sess.deadline and (
                peer is None or sess.peer is None or sess.peer is peer):
            self.sessions.touch(sess, now + self.tcc_s)
            if peer is not None:
                sess.peer = peer
            return sess
        live = [h for h in self.charging.session_holds(ccr.session_id) if h.expires_at > now]
        if not live:
            self.sessions.pop(ccr.session_id, None)
            return None
        first = live[0]
        if first.owner and first.owner != owner:  # "": opened before owners were kept
            raise self._not_owner(ccr)
        sess = GySession(session_id=ccr.session_id,
                         identity=ccr.identity or ((IdKind.MSISDN, first.msisdn),),
                         msisdn=first.msisdn, service=first.service,
                         origin_host=ccr.origin_host, origin_realm=ccr.origin_realm,
                         peer=peer, owner=owner, groups={r.rating_group for r in live},
                         visited_network=first.visited_network,
                         destination=first.destination, deadline=now + self.tcc_s)
        self.sessions[ccr.session_id] = sess
        return sess

    def _commit(self, ccr: Ccr, sess: GySession, item: Mscc, *,
                final: bool) -> Awaitable[Settlement]:
        used = (item.used.amount(sess.service) or 0) if item.used is not None else 0
        bytes_in = (item.used.input or 0) if item.used else 0
        bytes_out = (item.used.output or 0) if item.used else 0
        if final:
            return self.charging.close_session(CloseSession(
                request=self._ref(ccr), session_id=ccr.session_id, service=sess.service,
                rating_group=item.rating_group, used_units=used, bytes_in=bytes_in,
                bytes_out=bytes_out, now=self._now(), owner=sess.owner))
        next_units = None
        if item.requested is not None:
            next_units = item.requested.amount(sess.service) or 0
        return self.charging.update_session(UpdateSession(
            request=self._ref(ccr), session_id=ccr.session_id, service=sess.service,
            rating_group=item.rating_group, used_units=used, bytes_in=bytes_in,
            bytes_out=bytes_out, next_units=next_units, validity_s=self.tcc_s,
            now=self._now(), owner=sess.owner))

    async def _update(self, ccr: Ccr, peer: Any, owner: str = "") -> tuple[int, bytes]:
        sess = self._session(ccr, peer, owner)
        if sess is None:
            self._count("unknown_session")
            return Rc.UNKNOWN_SESSION_ID, b""
        if self._other_subscriber(ccr, sess):
            return Rc.USER_UNKNOWN, b""
        sess.notified = ""
        items = self._items(ccr) if (ccr.msccs or ccr.single) else [
            Mscc(rating_group=g, requested=Units()) for g in sorted(
                sess.groups, key=lambda g: -1 if g is None else g)]
        futs: list[Awaitable[Any]] = []
        for item in items:
            if item.rating_group in sess.groups:
                futs.append(self._commit(ccr, sess, item, final=False))
            elif item.requested is not None:
                futs.append(self._open(ccr, sess, item))
            elif item.used is not None and (item.used.amount(sess.service) or 0) > 0:
                futs.append(self.charging.charge_event(ChargeEvent(
                    request=self._ref(ccr), subscriber=sess.identity, service=sess.service,
                    units=item.used.amount(sess.service) or 0, session_id=ccr.session_id,
                    rating_group=item.rating_group, destination=sess.destination,
                    visited_network=sess.visited_network, protocol="diameter",
                    now=self._now())))
            else:
                futs.append(answered(None))
        answers = await all_answers(futs)
        self._refused(ccr, answers)
        results: list[MsccResult] = []
        sess.limited = False
        for item, ans in zip(items, answers, strict=True):
            if item.requested is not None:
                sess.asked.add(item.rating_group)
            results.append(self._update_result(sess, item, ans))
        return self._command_code(ccr, results), self._body(ccr, results)

    def _update_result(self, sess: GySession, item: Mscc, ans: Any) -> MsccResult:
        if isinstance(ans, Settlement):
            if not ans.ok:  # settled by the reaper meanwhile
                sess.groups.discard(item.rating_group)
                return MsccResult(item, Rc.UNKNOWN_SESSION_ID, validity=False)
            g = ans.next_grant
            if g is None:  # a usage report without RSU: no new quota, a sane Validity-Time
                return MsccResult(item, Rc.SUCCESS)
            if g.final or not g.ok:
                sess.limited = True
            return self._from_grant(item, g)
        if isinstance(ans, Grant):
            if ans.ok and not ans.zero_rated:
                sess.groups.add(item.rating_group)
            if ans.final or not ans.ok:
                sess.limited = True
            return self._from_grant(item, ans)
        if isinstance(ans, Debit):
            if ans.ok:
                return MsccResult(item, Rc.SUCCESS)
            code = REFUSAL_CODE.get(Refusal(ans.refusal), Rc.UNABLE_TO_COMPLY)
            return MsccResult(item, code, validity=False)
        return MsccResult(item, Rc.SUCCESS)

    # -- CCR-T ----------------------------------------------------------------------------

    async def _terminate(self, ccr: Ccr, peer: Any = None, owner: str = "") -> tuple[int, bytes]:
        sess = self._session(ccr, peer, owner)
        known = sess is not None
        if sess is not None and self._other_subscriber(ccr, sess):
            return Rc.USER_UNKNOWN, b""
        reported = {m.rating_group: m for m in self._items(ccr)} if (
            ccr.msccs or ccr.single) else {}
        groups = set(sess.groups) if sess is not None else set()
        if sess is None:
            # a retransmitted CCR-T of a session already closed replays its answers
            if not reported:
                self._count("unknown_session")
                return Rc.UNKNOWN_SESSION_ID, b""
            sess = GySession(session_id=ccr.session_id, identity=ccr.identity,
                             service=ccr.service, origin_host=ccr.origin_host,
                             origin_realm=ccr.origin_realm, owner=owner)
            groups = set(reported)
        order = sorted(groups | set(reported), key=lambda g: -1 if g is None else g)
        answers = await all_answers(
            self._commit(ccr, sess, reported.get(rg) or Mscc(rating_group=rg), final=True)
            for rg in order)
        self._refused(ccr, answers)
        self.sessions.pop(ccr.session_id, None)
        if not known and not any(isinstance(a, Settlement) and a.ok for a in answers):
            self._count("unknown_session")
            return Rc.UNKNOWN_SESSION_ID, b""
        return Rc.SUCCESS, b""  # a live session without quota (refused) ends cleanly too

    # -- CCR-E ----------------------------------------------------------------------------

    async def _event(self, ccr: Ccr) -> tuple[int, bytes]:
        action = ccr.requested_action
        items = self._items(ccr)
        if action == CHECK_BALANCE:
            return self._check_balance(ccr, items[0])
        if action == PRICE_ENQUIRY:
            return self._price(ccr, items[0])
        if action == REFUND_ACCOUNT:
            # A refund names the debit it reverses by Session-Id (and Rating-Group): the
            # DIRECT_DEBITING event of that session (CC-Request-Number 0).
            refunds = await all_answers(self.charging.refund(RefundEvent(
                request=self._ref(ccr), original=RequestRef("gy", ccr.session_id, 0),
                rating_group=item.rating_group, now=self._now()))
                for item in items)
            self._refused(ccr, refunds)
            return self._event_answer(ccr, items, refunds)
        rc, _msisdn = self._subscriber_refusal(ccr)
        if rc != Rc.SUCCESS:
            self._count(f"refused_{rc}")
            return rc, b""
        debits = await all_answers(self.charging.charge_event(ChargeEvent(
            request=self._ref(ccr), subscriber=ccr.identity, service=ccr.service,
            units=(item.requested.amount(ccr.service) if item.requested else None) or (
                1 if ccr.service in (Service.SMS, Service.MMS) else 0),
            session_id=ccr.session_id, rating_group=item.rating_group,
            destination=ccr.destination, visited_network=ccr.visited_network,
            protocol="diameter", now=self._now())) for item in items)
        self._refused(ccr, debits)
        return self._event_answer(ccr, items, debits)

    def _event_answer(self, ccr: Ccr, items: list[Mscc],
                      answers: list[Any]) -> tuple[int, bytes]:
        results = []
        for item, ans in zip(items, answers, strict=True):
            if isinstance(ans, Debit) and ans.ok:
                code = Rc.CREDIT_CONTROL_NOT_APPLICABLE if ans.zero_rated else Rc.SUCCESS
                results.append(MsccResult(item, code, granted=ans.units, validity=False))
            elif isinstance(ans, Refund) and ans.ok:
                results.append(MsccResult(item, Rc.SUCCESS, validity=False))
            else:
                refusal = getattr(ans, "refusal", "")
                code = REFUSAL_CODE.get(Refusal(refusal), Rc.UNABLE_TO_COMPLY) if refusal else (
                    Rc.UNABLE_TO_COMPLY)
                results.append(MsccResult(item, code, validity=False))
        if ccr.msccs:
            rc = Rc.SUCCESS
            if all(r.result_code == results[0].result_code for r in results):
                rc = results[0].result_code  # one outcome for the whole event
            return rc, b"".join(encode_mscc(r, ccr.service, self.s) for r in results)
        return self._command_code(ccr, results), self._body(ccr, results)

    def _check_balance(self, ccr: Ccr, item: Mscc) -> tuple[int, bytes]:
        view = self.charging.balance(ccr.identity) if ccr.identity else None
        if view is None:
            return Rc.USER_UNKNOWN, b""
        enough = view.available > 0 and view.status == "active"
        units = item.requested.amount(ccr.service) if item.requested else None
        if enough and units:
            quote = self.charging.price(self._enquiry(ccr, item, units))
            enough = quote.ok and quote.charge <= view.available
        return Rc.SUCCESS, c.u32(A.CHECK_BALANCE_RESULT, ENOUGH_CREDIT if enough else NO_CREDIT)

    def _enquiry(self, ccr: Ccr, item: Mscc, units: int) -> PriceEnquiry:
        return PriceEnquiry(subscriber=ccr.identity, service=ccr.service, units=units,
                            rating_group=item.rating_group, destination=ccr.destination,
                            visited_network=ccr.visited_network, now=self._now())

    def _price(self, ccr: Ccr, item: Mscc) -> tuple[int, bytes]:
        units = (item.requested.amount(ccr.service) if item.requested else None) or (
            1 if ccr.service in (Service.SMS, Service.MMS) else 0)
        quote = self.charging.price(self._enquiry(ccr, item, units))
        if not quote.ok:
            code = REFUSAL_CODE.get(Refusal(quote.refusal), Rc.UNABLE_TO_COMPLY)
            if code == Rc.RATING_FAILED:
                return code, c.grouped(A.FAILED_AVP, c.utf8(A.SERVICE_CONTEXT_ID,
                                                            ccr.context_id))
            return code, b""
        sub = self.charging.subscriber(ccr.identity)
        currency = sub.currency if sub is not None else self.s.currency
        return Rc.SUCCESS, c.grouped(A.COST_INFORMATION, money_avps(quote.charge, currency))

    # -- server-initiated -----------------------------------------------------------------

    def rar_body(self, sess: GySession) -> bytes:
        """Body of a RAR for ``sess`` (after Origin-Host/Realm): re-authorise all groups."""
        return b"".join([
            c.utf8(A.SESSION_ID, sess.session_id),
            c.octets(A.DESTINATION_REALM, sess.origin_realm.encode()),
            c.octets(A.DESTINATION_HOST, sess.origin_host.encode()),
            c.u32(A.AUTH_APPLICATION_ID, c.App.CREDIT_CONTROL),
            c.u32(A.RE_AUTH_REQUEST_TYPE, REAUTH_AUTHORIZE_ONLY),
        ])

    def asr_body(self, sess: GySession) -> bytes:
        return b"".join([
            c.utf8(A.SESSION_ID, sess.session_id),
            c.octets(A.DESTINATION_REALM, sess.origin_realm.encode()),
            c.octets(A.DESTINATION_HOST, sess.origin_host.encode()),
            c.u32(A.AUTH_APPLICATION_ID, c.App.CREDIT_CONTROL),
        ])

    async def release_session(self, session_id: str) -> int:
        """Drop a session the client says it no longer has (RAA/ASA 5002): release its
        reservations. Returns how many were released."""
        self.sessions.pop(session_id, None)
        futs = [self.charging.release_session(ReleaseSession(
            request=RequestRef("gy", session_id, "release"), session_id=session_id,
            service=h.service, rating_group=h.rating_group, now=self._now()))
            for h in self.charging.session_holds(session_id)]
        return sum(1 for r in await all_answers(futs) if r.ok)

    def _can_afford(self, sess: GySession, sub: Subscriber) -> bool:
        groups = (sess.groups | sess.asked) or {None}
        return any(self.charging.affordable_units(sub, sess.service, 1, rating_group=g,
                                                  visited_network=sess.visited_network)
                   for g in groups)

    def sweep(self, limit: int = 20000) -> list[tuple[str, GySession]]:
        """Sessions to notify: ('asr', s) for a blocked or deleted subscriber, ('rar', s) for
        a suspended one or a credit-limited one that now has credit. Drops sessions past
        Tcc. Checks at most ``limit`` sessions per call (round robin)."""
        expired = self.sessions.expire(self.clock())
        if expired:
            metrics.SESSION_EVENTS.labels("diameter", "expired").inc(len(expired))
        out = [("asr" if isinstance(ev, AbortRequired) else "rar", ev.session)
               for ev in self.sessions.review(self.charging, limit,
                                              credit_back=self._can_afford)]
        for kind, _sess in out:
            metrics.SESSION_EVENTS.labels("diameter", kind).inc()
        metrics.LIVE_SESSIONS.labels("diameter").set(len(self.sessions))
        return out


def _offending_unit_avp(msg: Message, service: Service, limit: int) -> bytes:
    """For Failed-AVP: the first Used/Requested-Service-Unit above ``limit``, else the first
    MSCC whose units add up above it."""
    for m in msg.find_all(A.MULTIPLE_SERVICES_CREDIT_CONTROL):
        used = Units()
        for a in m.group():
            if a.vendor == 0 and a.code in (A.USED_SERVICE_UNIT, A.REQUESTED_SERVICE_UNIT):
                units = _units(a)
                if (units.amount(service) or 0) > limit:
                    return a.encode()
                if a.code == A.USED_SERVICE_UNIT:
                    used.add(units)
        if (used.amount(service) or 0) > limit:
            return m.encode()
    for code in (A.USED_SERVICE_UNIT, A.REQUESTED_SERVICE_UNIT):
        for a in msg.find_all(code):
            if (_units(a).amount(service) or 0) > limit:
                return a.encode()
    return c.zero_filled(A.USED_SERVICE_UNIT)
