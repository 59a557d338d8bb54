"""The Diameter peer layer (RFC 6733 §5, RFC 3539 watchdog) as a sans-IO state machine.

One :class:`PeerConnection` per transport connection, server side: bytes go in through
:meth:`PeerConnection.receive`, time through :meth:`PeerConnection.handle_timer` when
:meth:`PeerConnection.get_timer` says; both return :class:`Event` lists (bytes to send,
an application request, an answer to one of our requests, or a close). The connection
answers CER, DWR and DPR itself and every protocol error it can see from the header and
the AVP dictionary, so the application only ever sees well-formed requests of an
advertised application from an open peer.

:class:`DuplicateCache` keeps answers by (peer, Origin-Host, End-to-End-Id) for the
duplicate detection of §5.4 / invariant 5 (shared by all connections of a node).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from protocols.diameter import codec as c
from protocols.diameter.codec import A, Avp, Cmd, FramingError, Message, MessageError, Rc

DISCONNECT_REBOOTING, DISCONNECT_BUSY, DISCONNECT_DO_NOT_WANT = 0, 1, 2


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalNode:
    """What this node advertises in CER/CEA and puts in every message it originates."""

    origin_host: str
    origin_realm: str
    host_addresses: tuple[str, ...] = ("127.0.0.1",)
    vendor_id: int = 0
    product_name: str = "ocs"
    firmware_revision: int = 1
    origin_state_id: int = field(default_factory=lambda: int(time.time()))
    auth_apps: tuple[int, ...] = (c.App.CREDIT_CONTROL,)
    supported_vendors: tuple[int, ...] = (c.VENDOR_3GPP,)
    allowed_peers: tuple[str, ...] = ()
    """Origin-Host allow-list (case-insensitive); empty = any peer."""
    relay_peers: tuple[str, ...] = ()
    """Peers (CER Origin-Host) that may forward other hosts' requests (with Route-Record);
    empty = any peer may."""

    def origin_avps(self) -> bytes:
        return (c.octets(A.ORIGIN_HOST, self.origin_host.encode())
                + c.octets(A.ORIGIN_REALM, self.origin_realm.encode()))


class State(Enum):
    WAIT_CER = "wait_cer"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Trigger(Enum):
    """What moves a connection from one :class:`State` to another."""

    CER_ACCEPTED = "cer_accepted"
    CER_REJECTED = "cer_rejected"
    NOT_CER_FIRST = "not_cer_first"
    """A message other than a CER request before the CER."""
    FRAMING_ERROR = "framing_error"
    """Bytes that cannot be framed (or a message too large): the stream is lost."""
    CER_TIMEOUT = "cer_timeout"
    WATCHDOG_EXPIRED = "watchdog_expired"
    DPR_RECEIVED = "dpr_received"
    DPA_RECEIVED = "dpa_received"
    DISCONNECT = "disconnect"
    """This side closes (a DPR when open, at once otherwise)."""
    TRANSPORT_CLOSED = "transport_closed"


TRANSITIONS: Final[Mapping[tuple[State, Trigger], State]] = {
    (State.WAIT_CER, Trigger.CER_ACCEPTED): State.OPEN,
    (State.WAIT_CER, Trigger.CER_REJECTED): State.CLOSED,
    (State.WAIT_CER, Trigger.NOT_CER_FIRST): State.CLOSED,
    (State.WAIT_CER, Trigger.FRAMING_ERROR): State.CLOSED,
    (State.WAIT_CER, Trigger.CER_TIMEOUT): State.CLOSED,
    (State.WAIT_CER, Trigger.DISCONNECT): State.CLOSED,
    (State.OPEN, Trigger.FRAMING_ERROR): State.CLOSED,
    (State.OPEN, Trigger.WATCHDOG_EXPIRED): State.CLOSED,
    (State.OPEN, Trigger.DPR_RECEIVED): State.CLOSED,
    (State.OPEN, Trigger.DPA_RECEIVED): State.CLOSED,
    (State.OPEN, Trigger.DISCONNECT): State.CLOSING,
    (State.CLOSING, Trigger.FRAMING_ERROR): State.CLOSED,
    (State.CLOSING, Trigger.DPR_RECEIVED): State.CLOSED,
    (State.CLOSING, Trigger.DPA_RECEIVED): State.CLOSED,
    (State.CLOSING, Trigger.DISCONNECT): State.CLOSED,
    **{(st, Trigger.TRANSPORT_CLOSED): State.CLOSED for st in State},
}
"""The peer state machine (RFC 6733 §5.6, as a responder), the one place it is written:
every state change of :class:`PeerConnection` goes through it. CLOSED is final."""


class PeerStateError(RuntimeError):
    """A state change the table does not have: a bug here, not the peer's doing."""


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class Request:
    """An application request for the application layer to answer."""

    message: Message
    raw: bytes


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to a request this side sent (RAR, ASR), matched by Hop-by-Hop id."""

    message: Message
    context: Any


@dataclass(frozen=True, slots=True)
class Close:
    reason: str


Event = Send | Request | Answer | Close


def _text(a: Avp | None) -> str:
    if a is None:
        return ""
    return a.data.decode("utf-8", "replace")


def answer_for(req: Message, local: LocalNode, result_code: int, *, error: bool = False,
               body: bytes = b"", text: str = "", failed_avp: bytes | None = None) -> bytes:
    """An answer to ``req``: hop-by-hop and end-to-end ids copied, R cleared, P copied; E set
    for protocol errors (answer-message grammar, §7.2). Session-Id first when the request
    had one, Proxy-Info echoed."""
    parts = []
    sid = req.find(A.SESSION_ID)
    if sid is not None:
        parts.append(sid.encode())
    parts.append(c.u32(A.RESULT_CODE, result_code))
    parts.append(local.origin_avps())
    parts.append(body)
    if text:
        parts.append(c.utf8(A.ERROR_MESSAGE, text[:200], flags=0))
    if failed_avp is not None:
        parts.append(c.grouped(A.FAILED_AVP, failed_avp))
    if error:
        parts.append(c.octets(A.ERROR_REPORTING_HOST, local.origin_host.encode(), flags=0))
    parts.extend(a.encode() for a in req.avps if a.code == A.PROXY_INFO and a.vendor == 0)
    flags = (req.flags & c.FLAG_P) | (c.FLAG_E if error else 0)
    return c.encode_message(req.code, flags, req.app, req.hbh, req.e2e, b"".join(parts))


def error_answer(req: Message, local: LocalNode, exc: MessageError) -> bytes:
    """The answer for a :class:`MessageError`: protocol errors (3xxx) with the E bit; other
    codes in the command's own answer, echoing what a credit-control answer must carry."""
    protocol = exc.protocol or 3000 <= exc.result_code < 4000
    body = b""
    if not protocol and req.code == Cmd.CCR:
        extra = []
        for code in (A.CC_REQUEST_TYPE, A.CC_REQUEST_NUMBER):
            a = req.find(code)
            if a is not None and len(a.data) == 4:
                extra.append(a.encode())
        body = c.u32(A.AUTH_APPLICATION_ID, req.app) + b"".join(extra)
    return answer_for(req, local, exc.result_code, error=protocol, body=body,
                      text=exc.text, failed_avp=exc.failed_avp)


def new_e2e_seed() -> int:
    """RFC 6733 §3: high 12 bits from the clock, low 20 random."""
    return ((int(time.time()) & 0xFFF) << 20) | random.getrandbits(20)


MAX_CER_MESSAGE = 16 * 1024
"""Largest message accepted before the CER is answered (a CER is a few hundred bytes):
an unknown peer cannot make us hold more than this per connection."""


class PeerConnection:
    """Server side of one connection to a Diameter peer.

    Before the CER: at most ``MAX_CER_MESSAGE`` bytes a message, and the CER must come
    within ``cer_timeout_s`` of the connection opening, however much else arrives."""

    def __init__(self, local: LocalNode, *, now: float, watchdog_s: float = 30.0,
                 max_message: int = c.MAX_MESSAGE, cer_timeout_s: float = 10.0):
        self.local = local
        self.state = State.WAIT_CER
        self.opened = now
        self.cer_timeout_s = cer_timeout_s
        self.peer_host = ""
        self.peer_realm = ""
        self.peer_apps: set[int] = set()
        self.watchdog_s = watchdog_s
        self.max_message = max_message
        self._buf = bytearray()
        self._last_rx = now
        self._dwr_sent_at: float | None = None
        self._dwr_hbh = -1
        self._next_tw = self._jitter(watchdog_s)
        self._hbh = random.getrandbits(32)
        self._e2e = new_e2e_seed()
        self.pending: dict[int, Any] = {}
        """Hop-by-Hop id -> context of requests this side sent and awaits answers for."""
        self.counters: dict[str, int] = {}

    @staticmethod
    def _jitter(tw: float) -> float:
        return max(1.0, tw + random.uniform(-2.0, 2.0)) if tw > 6 else tw

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def move(self, trigger: Trigger) -> None:
        """Change state as :data:`TRANSITIONS` says (PeerStateError if it has no entry)."""
        nxt = TRANSITIONS.get((self.state, trigger))
        if nxt is None:
            raise PeerStateError(f"{trigger.value} in state {self.state.value}")
        self.state = nxt

    # -- input ----------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        self._last_rx = now
        buf = self._buf
        buf += data
        events: list[Event] = []
        pos = 0
        limit = self.max_message if self.state is not State.WAIT_CER else min(
            self.max_message, MAX_CER_MESSAGE)
        try:
            while True:
                n = c.frame_length(buf, pos, limit)
                if n is None or len(buf) - pos < n:
                    break
                raw = bytes(buf[pos:pos + n])
                pos += n
                if not self._message(raw, events):
                    break
                limit = self.max_message
        except FramingError as exc:
            self._count("framing_error" if self.state is not State.WAIT_CER
                        else "oversize_before_cer")
            self.move(Trigger.FRAMING_ERROR)
            events.append(Close(f"framing: {exc}"))
        del buf[:pos]
        return events

    def _message(self, raw: bytes, events: list[Event]) -> bool:
        """Handle one framed message; False once the connection is closed."""
        self._dispatch(raw, events)
        return self.state is not State.CLOSED

    def _dispatch(self, raw: bytes, events: list[Event]) -> None:
        hdr = c.decode_header(raw)
        if self.state is State.WAIT_CER and not (hdr.code == Cmd.CER and hdr.is_request):
            self._count("before_cer")
            self.move(Trigger.NOT_CER_FIRST)
            events.append(Close(f"command {hdr.code} before CER"))
            return
        try:
            msg = c.decode(raw)
        except MessageError as exc:
            self._count(f"rc_{exc.result_code}")
            if hdr.is_request:
                events.append(Send(error_answer(hdr, self.local, exc)))
            return
        if not msg.is_request:
            self._answer(msg, events)
            return
        if msg.is_error or msg.flags & 0x0F:
            events.append(Send(answer_for(msg, self.local, Rc.INVALID_HDR_BITS, error=True,
                                          text="E bit or reserved bits set in a request")))
            return
        code = msg.code
        if code == Cmd.CER:
            self._cer(msg, events)
        elif code == Cmd.DWR:
            self._count("dwr")
            events.append(Send(answer_for(msg, self.local, Rc.SUCCESS, body=c.u32(
                A.ORIGIN_STATE_ID, self.local.origin_state_id))))
        elif code == Cmd.DPR:
            self._count("dpr")
            events.append(Send(answer_for(msg, self.local, Rc.SUCCESS)))
            self.move(Trigger.DPR_RECEIVED)
            events.append(Close("peer sent DPR"))
        elif code in (Cmd.CCR, Cmd.RAR, Cmd.ASR, Cmd.STR):
            if msg.app not in self.local.auth_apps:
                self._count("rc_3007")
                events.append(Send(answer_for(msg, self.local, Rc.APPLICATION_UNSUPPORTED,
                                              error=True, text=f"application {msg.app}")))
                return
            if code != Cmd.CCR:
                self._count("rc_3001")
                events.append(Send(answer_for(msg, self.local, Rc.COMMAND_UNSUPPORTED,
                                              error=True, text=f"command {code} as a request")))
                return
            try:
                c.check(msg.avps)
            except MessageError as exc:
                self._count(f"rc_{exc.result_code}")
                events.append(Send(error_answer(msg, self.local, exc)))
                return
            origin = _text(msg.find(A.ORIGIN_HOST))
            if origin.lower() != self.peer_host.lower() and not self._may_relay(msg):
                # Only a relay (which adds Route-Record) forwards requests of other hosts;
                # a direct peer speaks for itself, as its CER said.
                self._count("origin_host_mismatch")
                events.append(Send(answer_for(
                    msg, self.local, Rc.UNKNOWN_PEER, error=True,
                    text=f"Origin-Host {origin} is not this connection's peer")))
                return
            events.append(Request(msg, raw))
        else:
            self._count("rc_3001")
            events.append(Send(answer_for(msg, self.local, Rc.COMMAND_UNSUPPORTED, error=True,
                                          text=f"command {code}")))

    def _may_relay(self, msg: Message) -> bool:
        if msg.find(A.ROUTE_RECORD) is None:
            return False
        relays = self.local.relay_peers
        return not relays or self.peer_host.lower() in {r.lower() for r in relays}

    def _answer(self, msg: Message, events: list[Event]) -> None:
        if msg.code == Cmd.DWR and msg.hbh == self._dwr_hbh:
            self._dwr_sent_at = None
            self._dwr_hbh = -1
            return
        if msg.hbh not in self.pending:
            self._count("unknown_answer")
            return
        ctx = self.pending.pop(msg.hbh)
        if msg.code == Cmd.DPR:
            self.move(Trigger.DPA_RECEIVED)
            events.append(Close("DPA received"))
            return
        events.append(Answer(msg, ctx))

    def _cer(self, msg: Message, events: list[Event]) -> None:
        if self.state is not State.WAIT_CER:
            events.append(Send(answer_for(msg, self.local, Rc.UNABLE_TO_COMPLY,
                                          text="CER on an open connection")))
            return
        try:
            host = _text(msg.find(A.ORIGIN_HOST))
            realm = _text(msg.find(A.ORIGIN_REALM))
            if not host or not realm:
                missing = A.ORIGIN_HOST if not host else A.ORIGIN_REALM
                raise MessageError(Rc.MISSING_AVP, "CER without Origin-Host/Realm",
                                   c.zero_filled(missing))
            allowed = self.local.allowed_peers
            if allowed and host.lower() not in {p.lower() for p in allowed}:
                self._count("unknown_peer")
                events.append(Send(self._cea(msg, Rc.UNKNOWN_PEER,
                                             text=f"peer {host} is not configured")))
                self.move(Trigger.CER_REJECTED)
                events.append(Close(f"unknown peer {host}"))
                return
            apps = _offered_apps(msg.avps)
            common = apps & (set(self.local.auth_apps) | {c.App.RELAY})
            if not common:
                self._count("no_common_application")
                events.append(Send(self._cea(msg, Rc.NO_COMMON_APPLICATION,
                                             text=f"offered {sorted(apps)}")))
                self.move(Trigger.CER_REJECTED)
                events.append(Close("no common application"))
                return
            inband = [a.u32 for a in msg.find_all(A.INBAND_SECURITY_ID)]
            if inband and 0 not in inband:
                events.append(Send(self._cea(msg, Rc.NO_COMMON_SECURITY, text="only TLS offered")))
                self.move(Trigger.CER_REJECTED)
                events.append(Close("no common security"))
                return
        except MessageError as exc:
            events.append(Send(self._cea(msg, exc.result_code, text=exc.text,
                                         failed=exc.failed_avp)))
            self.move(Trigger.CER_REJECTED)
            events.append(Close(f"bad CER: {exc.text}"))
            return
        self.peer_host, self.peer_realm, self.peer_apps = host, realm, apps
        self.move(Trigger.CER_ACCEPTED)
        self._count("cer")
        events.append(Send(self._cea(msg, Rc.SUCCESS)))

    def _cea(self, msg: Message, rc: int, *, text: str = "", failed: bytes | None = None) -> bytes:
        lo = self.local
        body = b"".join([
            *(c.address(A.HOST_IP_ADDRESS, a) for a in lo.host_addresses),
            c.u32(A.VENDOR_ID, lo.vendor_id),
            c.utf8(A.PRODUCT_NAME, lo.product_name, flags=0),
            c.u32(A.ORIGIN_STATE_ID, lo.origin_state_id),
            *(c.u32(A.SUPPORTED_VENDOR_ID, v) for v in lo.supported_vendors),
            *(c.u32(A.AUTH_APPLICATION_ID, app) for app in lo.auth_apps),
            c.u32(A.FIRMWARE_REVISION, lo.firmware_revision, flags=0),
        ])
        return answer_for(msg, lo, rc, error=3000 <= rc < 4000, body=body, text=text,
                          failed_avp=failed)

    # -- time -----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next run (None: never, the connection is
        done). Traffic only moves deadlines later, so a caller may arm a timer for this
        time and, when it fires, call ``handle_timer`` and arm again: a deadline that
        moved meanwhile just finds nothing to do (h11's style, no poll of every peer)."""
        if self.state is State.WAIT_CER:
            return self.opened + self.cer_timeout_s
        if self.state is not State.OPEN:
            return None
        if self._dwr_sent_at is not None:
            return self._dwr_sent_at + self.watchdog_s
        return self._last_rx + self._next_tw

    def handle_timer(self, now: float) -> list[Event]:
        """Watchdog (RFC 3539): DWR after Tw of silence; no answer within Tw -> close.
        Before the CER: closed at its deadline."""
        if self.state is not State.OPEN:
            if self.state is State.WAIT_CER and now - self.opened >= self.cer_timeout_s:
                self.move(Trigger.CER_TIMEOUT)  # traffic does not extend it: a hard deadline
                self._count("cer_timeout")
                return [Close("no CER")]
            return []
        if self._dwr_sent_at is not None:
            if now - self._dwr_sent_at >= self.watchdog_s:
                self.move(Trigger.WATCHDOG_EXPIRED)
                self._count("watchdog_expired")
                return [Close("watchdog: no DWA")]
            return []
        if now >= self._last_rx + self._next_tw:
            self._next_tw = self._jitter(self.watchdog_s)
            self._dwr_sent_at = now
            data, self._dwr_hbh = self.request(Cmd.DWR, c.App.COMMON, c.u32(
                A.ORIGIN_STATE_ID, self.local.origin_state_id), track=False)
            return [Send(data)]
        return []

    # -- output ---------------------------------------------------------------------------

    def request(self, code: int, app: int, body: bytes, *, context: Any = None,
                track: bool = True, proxiable: bool = False) -> tuple[bytes, int]:
        """Encode a request this side originates; returns (bytes, Hop-by-Hop id)."""
        self._hbh = (self._hbh + 1) & 0xFFFFFFFF
        self._e2e = (self._e2e + 1) & 0xFFFFFFFF
        if track:
            self.pending[self._hbh] = context
        flags = c.FLAG_R | (c.FLAG_P if proxiable else 0)
        data = c.encode_message(code, flags, app, self._hbh, self._e2e,
                                self.local.origin_avps() + body)
        return data, self._hbh

    def disconnect(self, cause: int = DISCONNECT_REBOOTING) -> list[Event]:
        """Start a graceful close: DPR; the DPA (or the peer closing) ends it."""
        if self.state is not State.OPEN:
            if self.state is not State.CLOSED:
                self.move(Trigger.DISCONNECT)
            return [Close("closed before open")]
        self.move(Trigger.DISCONNECT)
        data, _ = self.request(Cmd.DPR, c.App.COMMON, c.u32(A.DISCONNECT_CAUSE, cause))
        return [Send(data)]


def _offered_apps(avps: Iterable[Avp]) -> set[int]:
    apps: set[int] = set()
    for a in avps:
        if a.vendor:
            continue
        if a.code in (A.AUTH_APPLICATION_ID, A.ACCT_APPLICATION_ID):
            apps.add(a.u32)
        elif a.code == A.VENDOR_SPECIFIC_APPLICATION_ID:
            for inner in a.group():
                if inner.vendor == 0 and inner.code in (A.AUTH_APPLICATION_ID,
                                                        A.ACCT_APPLICATION_ID):
                    apps.add(inner.u32)
    return apps


class DuplicateCache:
    """Answers by (peer's CER Origin-Host, Origin-Host, End-to-End-Id), kept ``window_s``
    (RFC 6733 §5.4 wants at least 4 minutes). An entry is a pending marker while the
    first copy is being processed, then the answer bytes without the header's Hop-by-Hop id."""

    PENDING = b""

    def __init__(self, window_s: float = 240.0):
        self.window_s = window_s
        self._answers: dict[tuple[str, str, int], bytes] = {}
        self._order: deque[tuple[float, tuple[str, str, int]]] = deque()

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: tuple[str, str, int]) -> bytes | None:
        return self._answers.get(key)

    def begin(self, key: tuple[str, str, int], now: float) -> None:
        self._expire(now)
        self._answers[key] = self.PENDING
        self._order.append((now + self.window_s, key))

    def finish(self, key: tuple[str, str, int], answer: bytes) -> None:
        if key in self._answers:
            self._answers[key] = answer

    def forget(self, key: tuple[str, str, int]) -> None:
        """The first copy got no answer worth repeating (overload): let a retry through."""
        self._answers.pop(key, None)

    def _expire(self, now: float) -> None:
        order, answers = self._order, self._answers
        while order and order[0][0] <= now:
            _, key = order.popleft()
            answers.pop(key, None)


def with_hbh(answer: bytes, hbh: int) -> bytes:
    """A stored answer re-addressed to a retransmission's Hop-by-Hop id."""
    return answer[:12] + hbh.to_bytes(4, "big") + answer[16:]
