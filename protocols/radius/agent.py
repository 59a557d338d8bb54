"""RADIUS agent: turns verified packets into charging calls and builds the replies.

Accounting: Start opens a usage session (a reservation), Interim-Update charges the
bytes since the last report (cumulative counters, Gigawords included), Stop settles and
closes it, Accounting-On/Off closes every open session of that NAS. The reply goes out
only after the durable commit. Access: PAP against the subscriber's stored
hash, Accept with Session-Timeout / Acct-Interim-Interval, or Reject with Reply-Message.

A packet that fails verification is a :class:`~protocols.radius.codec.Drop` (silent
discard, counted by reason), never an exception that reaches the transport.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog

from ocs import metrics
from ocs.charging.api import (
    ChargingService,
    CloseSession,
    Grant,
    Identity,
    IdKind,
    OpenSession,
    Refusal,
    RequestRef,
    Service,
    Settlement,
    Subscriber,
    UpdateSession,
    status_refusal,
)
from ocs.config import RadiusConfig
from ocs.passwords import hash_password, verify_password
from ocs.sessions import ReauthRequired, Session, SessionTable
from protocols.authguard import FailureThrottle
from protocols.radius.codec import (
    VENDOR_3GPP,
    AcctStatus,
    Attr,
    Code,
    Drop,
    Packet,
    Tgpp,
    attr,
    decrypt_password,
    encode_reply,
    message_authenticator_ok,
    request_authenticator_ok,
)
from protocols.radius.dae import DaeClient, DaeOutcome, DaeTarget, SessionRef

log = structlog.get_logger(__name__)

_ZERO_AUTH = b"\x00" * 16
AUTH_FAILED = "authentication failed"
"""The one Reply-Message for an unknown user and a wrong password alike."""
_COUNTER_MAX = (1 << 63) - 1
_UNSEEN = object()
_REJECT_TEXT: dict[str, str] = {
    Refusal.UNKNOWN_SUBSCRIBER: "unknown user",
    Refusal.SUSPENDED: "account suspended",
    Refusal.BLOCKED: "account blocked",
    Refusal.TERMINATED: "account terminated",
    Refusal.OUT_OF_CREDIT: "no credit left",
    Refusal.CREDIT_LIMIT_REACHED: "credit limit reached",
    Refusal.ROAMING_NOT_ALLOWED: "roaming not allowed",
    Refusal.RATING_FAILED: "service not available on this plan",
}


@dataclass(frozen=True, slots=True)
class Client:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    secret: bytes
    name: str
    coa_address: str
    coa_port: int
    owner: str = field(init=False)
    """``radius:<name>``: owns the sessions this client opened (and names its requests)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "owner", f"radius:{self.name}")

    @property
    def dae_target(self) -> DaeTarget:
        return DaeTarget(self.coa_address, self.coa_port, self.secret)

    def owns(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return ip.version == self.network.version and ip in self.network


@dataclass(slots=True, kw_only=True)
class LiveSession(Session):
    """An accounting session seen on this server, for Dynamic Authorization (its
    ``notified`` is "disconnect" while a Disconnect-Request is under way)."""

    client: Client
    ref: SessionRef
    started: int = 0


def octets(pkt: Packet, octets_attr: int, gigawords_attr: int) -> int | None:
    """64-bit counter: Gigawords × 2^32 + Octets; None when the packet has neither."""
    low = pkt.integer(octets_attr)
    high = pkt.integer(gigawords_attr)
    if low is None and high is None:
        return None
    return ((high or 0) << 32) + (low or 0)


def identity(pkt: Packet) -> Identity:
    """Who pays: User-Name, else Calling-Station-Id (MSISDN), else 3GPP-IMSI."""
    ids: list[tuple[IdKind, str]] = []
    user = pkt.text(Attr.USER_NAME)
    if user:
        ids.append((IdKind.USERNAME, user))
    calling = "".join(c for c in pkt.text(Attr.CALLING_STATION_ID) if c.isdigit())
    if calling:
        ids.append((IdKind.MSISDN, calling))
    imsi = pkt.vsa(VENDOR_3GPP, Tgpp.IMSI)
    if imsi:
        ids.append((IdKind.IMSI, imsi.decode("ascii", "replace")))
    return tuple(ids)


class RadiusAgent:
    def __init__(self, charging: ChargingService, cfg: RadiusConfig, *,
                 validity_s: int = 900, clock: Any = time.time,
                 dae: DaeClient | None = None):
        self.charging = charging
        self.dae = dae
        self.sessions: SessionTable[LiveSession] = SessionTable()
        self._tasks: set[asyncio.Task[None]] = set()
        self.validity_s = validity_s
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self.reconfigure(cfg)
        self.guard = FailureThrottle()
        """Password guessing brake per (client, User-Name)."""
        self._dummy_hash = hash_password("no such user")
        """Checked for unknown users, so they take as long as a wrong password."""

    def reconfigure(self, cfg: RadiusConfig) -> None:
        """Take ``cfg`` (start-up, or a config reload): the clients and their secrets, the
        session settings. Live sessions go on; a packet from an address no client covers
        any more is dropped from now on."""
        self.cfg = cfg
        self.rating_group = cfg.rating_group if cfg.rating_group >= 0 else None
        clients = [
            Client(ipaddress.ip_network(c.address, strict=False), c.secret.encode(),
                   c.name or c.address, c.coa_address or c.address.split("/")[0],
                   c.coa_port or cfg.coa_port)
            for c in cfg.clients
        ]
        # most specific network first
        self.clients = sorted(clients, key=lambda c: c.network.prefixlen, reverse=True)
        self._client_cache: dict[str, Client | None] = {}
        self._owns_cache: dict[tuple[str, str], bool] = {}
        if self.dae is not None:
            self.dae.max_queue = cfg.dae_queue_limit

    def _owns(self, client: Client, nas_ip: str) -> bool:
        """``nas_ip`` lies in the client's address (cached: one NAS, one answer)."""
        key = (client.name, nas_ip)
        ok = self._owns_cache.get(key)
        if ok is None:
            if len(self._owns_cache) > 65536:
                self._owns_cache.clear()
            ok = self._owns_cache[key] = client.owns(nas_ip)
        return ok

    def client_for(self, address: str) -> Client | None:
        cached = self._client_cache.get(address, _UNSEEN)
        if cached is not _UNSEEN:
            return cached  # type: ignore[return-value]
        found = None
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        if ip is not None:
            for c in self.clients:
                if ip.version == c.network.version and ip in c.network:
                    found = c
                    break
        if len(self._client_cache) > 65536:
            self._client_cache.clear()
        self._client_cache[address] = found
        return found

    @staticmethod
    def _proxy_state(pkt: Packet) -> list[tuple[int, bytes]]:
        return [(Attr.PROXY_STATE, v) for v in pkt.all(Attr.PROXY_STATE)]

    # -- accounting -------------------------------------------------------------------

    async def accounting(self, client: Client, pkt: Packet) -> bytes:
        if pkt.code != Code.ACCOUNTING_REQUEST:
            raise Drop("unexpected_code")
        if not request_authenticator_ok(pkt, client.secret):
            raise Drop("bad_authenticator")
        if message_authenticator_ok(pkt, client.secret, _ZERO_AUTH) is False:
            raise Drop("bad_message_authenticator")
        status = pkt.integer(Attr.ACCT_STATUS_TYPE)
        if status is None:
            raise Drop("missing_acct_status_type")
        nas_ip = _ip(pkt.get(Attr.NAS_IP_ADDRESS))
        if nas_ip and not self._owns(client, nas_ip):
            # RFC 5080 §2.1.1: the client is who sent it; the attribute is only its claim
            self.counters["nas_ip_mismatch"] += 1
            metrics.RADIUS_SUSPECT.labels("nas_ip_mismatch").inc()
            n = self.counters["nas_ip_mismatch"]
            if n & (n - 1) == 0:
                log.warning("radius_nas_ip_mismatch", client=client.name, nas_ip=nas_ip,
                            seen=n)
        nas = pkt.text(Attr.NAS_IDENTIFIER) or nas_ip or client.name
        # the request's name: (client, Identifier, Request Authenticator); a NAS's
        # retransmission repeats both, a new report changes the Authenticator
        number = f"{pkt.identifier}:{pkt.authenticator.hex()}"
        # Sessions belong to the client that sent them (its own secret): another client
        # naming the same NAS reaches none of them.
        scope = f"radius:{client.name}:{nas}:"
        if status in (AcctStatus.ACCOUNTING_ON, AcctStatus.ACCOUNTING_OFF):
            await self._close_nas(client, scope, number)
        elif status in (AcctStatus.START, AcctStatus.INTERIM_UPDATE, AcctStatus.STOP):
            sid = pkt.text(Attr.ACCT_SESSION_ID)
            if not sid:
                raise Drop("missing_acct_session_id")
            session = scope + sid
            live = (self.sessions.pop(session, None) if status == AcctStatus.STOP
                    else self.sessions.get(session))
            if live is None:
                calling = pkt.text(Attr.CALLING_STATION_ID)
                ids = identity(pkt)
                service = self.service_for(ids)
                now = self.clock()
                live = LiveSession(
                    session_id=session, identity=ids, service=service, owner=client.owner,
                    rating_group=self.rating_group if service is Service.DATA else None,
                    client=client, started=int(now), deadline=now + self.validity_s,
                    ref=SessionRef(sid, pkt.text(Attr.USER_NAME),
                                   pkt.get(Attr.NAS_IP_ADDRESS) or b"", calling))
                if status != AcctStatus.STOP:
                    self.sessions[session] = live
            elif status != AcctStatus.STOP:
                # its reservation lives validity_s past this report; so does the entry
                self.sessions.touch(live, self.clock() + self.validity_s)
            # (Identifier, Authenticator) alone name the packet: no session in the key,
            # which stays short (every key is written twice, in the answers and their
            # expiry index, and long ones cost pages in every batch)
            await self._session(pkt, AcctStatus(status), session,
                                RequestRef(client.owner, "", number), live)
        else:
            self.counters["acct_status_ignored"] += 1
        self.counters[f"acct_{status}"] += 1
        return encode_reply(Code.ACCOUNTING_RESPONSE, pkt, client.secret,
                            self._proxy_state(pkt))

    def service_of(self, sub: Subscriber | None) -> Service:
        """Time-rated when the subscriber's plan prices connected time, else data."""
        if sub is not None and self.charging.prices(sub, Service.TIME):
            return Service.TIME
        return Service.DATA

    def service_for(self, ids: Identity) -> Service:
        return self.service_of(self.charging.subscriber(ids))

    async def _session(self, pkt: Packet, status: AcctStatus, session: str,
                       ref: RequestRef, live: LiveSession) -> None:
        charging = self.charging
        now = int(self.clock())
        service = live.service
        rg = self.rating_group if service is Service.DATA else None
        bytes_in = octets(pkt, Attr.ACCT_INPUT_OCTETS, Attr.ACCT_INPUT_GIGAWORDS)
        bytes_out = octets(pkt, Attr.ACCT_OUTPUT_OCTETS, Attr.ACCT_OUTPUT_GIGAWORDS)
        if service is Service.TIME:
            total = pkt.integer(Attr.ACCT_SESSION_TIME)
        else:
            total = None if bytes_in is None and bytes_out is None else (
                (bytes_in or 0) + (bytes_out or 0))
        # Counters are 64-bit each (two make 65 bits): keep them in the store's integers;
        # what lies above the plausibility limit is acknowledged, counted, not charged.
        if total is not None:
            total = min(total, _COUNTER_MAX)
        bytes_in = min(bytes_in, _COUNTER_MAX) if bytes_in is not None else None
        bytes_out = min(bytes_out, _COUNTER_MAX) if bytes_out is not None else None
        owner = live.client.owner
        visited = (pkt.vsa(VENDOR_3GPP, Tgpp.SGSN_MCC_MNC) or b"").decode("ascii", "replace")

        def reserve(r: RequestRef) -> Awaitable[Grant]:
            return charging.open_session(OpenSession(
                request=r, session_id=session, subscriber=identity(pkt), service=service,
                rating_group=rg, visited_network=visited, protocol="radius",
                validity_s=self.validity_s, now=now, owner=owner))

        def report(r: RequestRef) -> Awaitable[Settlement]:
            if status is AcctStatus.STOP:
                return charging.close_session(CloseSession(
                    request=r, session_id=session, service=service, rating_group=rg,
                    cumulative_units=total, bytes_in=bytes_in or 0, bytes_out=bytes_out or 0,
                    now=now, owner=owner, clamp_excess=True, remember_end=True))
            return charging.update_session(UpdateSession(
                request=r, session_id=session, service=service, rating_group=rg,
                cumulative_units=total, bytes_in=bytes_in or 0, bytes_out=bytes_out or 0,
                next_units=0, validity_s=self.validity_s, now=now, owner=owner,
                clamp_excess=True))

        if status is AcctStatus.START:
            grant = await reserve(ref)
            if not grant.ok:
                log.info("radius_start_refused", session=session, refusal=grant.refusal)
                self.disconnect(session, str(grant.refusal))
            live.limited = grant.ok and grant.final
            return
        settled = await report(ref)
        if not settled.ok and settled.refusal == Refusal.SESSION_ENDED:
            # A re-sent Stop (new Identifier, Acct-Delay-Time) or an Interim after the
            # Stop: answered, nothing charged, no hold taken.
            self.counters["ended_session_report"] += 1
            metrics.RADIUS_SUSPECT.labels("ended_session_report").inc()
            self.sessions.pop(session, None)
            log.info("radius_report_for_ended_session", session=session,
                     status=status.name.lower())
            return
        if not settled.ok and settled.refusal == Refusal.UNKNOWN_RESERVATION:
            # Interim or Stop without Start: open the session, then charge the report.
            grant = await reserve(msgspec.structs.replace(ref, step="open"))
            if not grant.ok:
                log.info("radius_session_refused", session=session, refusal=grant.refusal)
                self.disconnect(session, str(grant.refusal))
                return
            settled = await report(msgspec.structs.replace(ref, step="charge"))
        if settled.excess_units:
            self.counters["implausible_usage"] += 1
            metrics.RADIUS_SUSPECT.labels("implausible_usage").inc()
            log.warning("radius_implausible_usage", session=session,
                        excess_units=settled.excess_units,
                        limit=charging.max_usage(service))
        nxt = settled.next_grant
        if nxt is not None:
            live.limited = nxt.ok and nxt.final
        if nxt is not None and not nxt.ok:
            self.counters["credit_exhausted"] += 1
            log.info("radius_credit_exhausted", session=session, refusal=nxt.refusal)
            self.disconnect(session, str(nxt.refusal))

    # -- dynamic authorization ------------------------------------------------------

    def disconnect(self, session: str, reason: str) -> None:
        """Ask the NAS to end ``session`` (in the background; the reply to the NAS's own
        request does not wait for it)."""
        live = self.sessions.get(session)
        if self.dae is None or live is None or live.notified:
            return
        live.notified = "disconnect"
        task = asyncio.get_running_loop().create_task(self._disconnect(session, live, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _disconnect(self, session: str, live: LiveSession, reason: str) -> None:
        assert self.dae is not None
        outcome = await self.dae.send(Code.DISCONNECT_REQUEST, live.client.dae_target,
                                      live.ref)
        log.info("radius_disconnect", session=session, reason=reason, outcome=outcome)
        if outcome is DaeOutcome.SESSION_GONE:
            # The NAS no longer has it: settle here, no more usage will be reported.
            self.sessions.pop(session, None)
            now = int(self.clock())
            await self.charging.close_session(CloseSession(
                request=RequestRef(live.client.owner, session, f"gone:{now}"),
                session_id=session, service=live.service,
                rating_group=self.rating_group if live.service is Service.DATA else None,
                remember_end=True, now=now))
        elif outcome is DaeOutcome.ACK:
            self.sessions.pop(session, None)  # the NAS sends its Stop, which settles
        else:
            live.notified = ""  # try again on the next sweep

    async def sweep(self) -> int:
        """Disconnect live sessions whose subscriber was suspended, blocked or deleted
        (``ocs subscriber suspend`` runs in another process, so the server polls); extend
        credit-limited time sessions whose subscriber can pay again (CoA). Sessions with no
        report for ``validity_s`` (their reservation's life) are dropped without a store
        read; those whose reservation is gone otherwise (an Accounting-On seen by another
        worker) are forgotten. The event loop gets a turn every 256 sessions: the store
        reads of a pass over many sessions must not hold up the answers all at once."""
        n = 0
        expired = self.sessions.expire(self.clock())
        if expired:  # no report within validity_s: the reaper settles the reservation
            metrics.SESSION_EVENTS.labels("radius", "expired").inc(len(expired))
        todo = len(self.sessions)
        while todo > 0:
            chunk = min(256, todo)
            todo -= chunk
            for ev in self.sessions.review(
                    self.charging, chunk,
                    keep=lambda s: bool(self.charging.session_holds(s.session_id)),
                    credit_back=lambda s, _sub: s.service is Service.TIME):
                live = ev.session
                if isinstance(ev, ReauthRequired) and ev.refusal is None:
                    metrics.SESSION_EVENTS.labels("radius", "coa").inc()
                    if ev.subscriber is not None:
                        self._extend(live.session_id, live, ev.subscriber)
                else:  # RADIUS has no re-authorisation of a suspended subscriber
                    metrics.SESSION_EVENTS.labels("radius", "disconnect").inc()
                    self.disconnect(live.session_id, str(ev.refusal))
                    n += 1
            await asyncio.sleep(0)
        metrics.LIVE_SESSIONS.labels("radius").set(len(self.sessions))
        return n

    def _extend(self, session: str, live: LiveSession, sub: Subscriber) -> None:
        """A credit-limited time session whose subscriber topped up: CoA-Request with a
        longer Session-Timeout (connected so far + what the credit now buys)."""
        more = self.charging.affordable_units(sub, Service.TIME, self.cfg.session_timeout_s)
        if not more or self.dae is None:
            return
        timeout = int(self.clock()) - live.started + more
        live.limited = False  # one CoA per top-up; the next interim re-grants

        async def send() -> None:
            assert self.dae is not None
            outcome = await self.dae.send(Code.COA_REQUEST, live.client.dae_target, live.ref,
                                          [attr(Attr.SESSION_TIMEOUT, timeout)])
            log.info("radius_coa", session=session, session_timeout=timeout, outcome=outcome)
            if outcome is not DaeOutcome.ACK:
                live.limited = True  # try again on the next sweep

        task = asyncio.get_running_loop().create_task(send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 10.0) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)

    async def _close_nas(self, client: Client, prefix: str, number: str) -> None:
        """Accounting-On/Off: the NAS restarted, its sessions (of this client) are gone;
        settle them all."""
        now = int(self.clock())
        for session in [k for k in self.sessions if k.startswith(prefix)]:
            del self.sessions[session]
        for hold in await self.charging.sessions_with_prefix(prefix):
            await self.charging.close_session(CloseSession(
                request=RequestRef(client.owner, hold.session_id, number),
                session_id=hold.session_id, service=hold.service,
                rating_group=hold.rating_group, remember_end=True, now=now))

    # -- access -----------------------------------------------------------------------

    async def access(self, client: Client, pkt: Packet) -> bytes:
        if pkt.code != Code.ACCESS_REQUEST:
            raise Drop("unexpected_code")
        ma = message_authenticator_ok(pkt, client.secret)
        if ma is False:
            raise Drop("bad_message_authenticator")
        if ma is None and (self.cfg.require_message_authenticator
                           or pkt.get(Attr.EAP_MESSAGE) is not None):
            raise Drop("missing_message_authenticator")
        proxy = self._proxy_state(pkt)
        refusal, sub = await self._authorise(client, pkt)
        if refusal is not None:
            self.counters["access_reject"] += 1
            return encode_reply(Code.ACCESS_REJECT, pkt, client.secret,
                                [attr(Attr.REPLY_MESSAGE, _REJECT_TEXT.get(refusal, refusal)),
                                 *proxy], message_authenticator=True)
        self.counters["access_accept"] += 1
        timeout = self.cfg.session_timeout_s
        if sub is not None and sub.mode == "prepaid" and self.service_of(sub) is Service.TIME:
            timeout = self.charging.affordable_units(sub, Service.TIME, timeout) or 0
            if timeout <= 0:
                self.counters["access_reject"] += 1
                return encode_reply(Code.ACCESS_REJECT, pkt, client.secret,
                                    [attr(Attr.REPLY_MESSAGE, _REJECT_TEXT[
                                        Refusal.OUT_OF_CREDIT]), *proxy],
                                    message_authenticator=True)
        attrs = [attr(Attr.SESSION_TIMEOUT, timeout),
                 attr(Attr.ACCT_INTERIM_INTERVAL, self.cfg.interim_interval_s), *proxy]
        return encode_reply(Code.ACCESS_ACCEPT, pkt, client.secret, attrs,
                            message_authenticator=True)

    async def _authorise(self, client: Client, pkt: Packet) -> tuple[str | None,
                                                                    Subscriber | None]:
        """(None, subscriber) when the user may connect, else (refusal, subscriber).
        An unknown user and a wrong password get the same answer after the same work;
        a (client, User-Name) that keeps failing is held off (refused unchecked)."""
        pw_attr = pkt.get(Attr.USER_PASSWORD)
        if pw_attr is None:
            return "PAP (User-Password) is required", None
        guard_key = (client.name, pkt.text(Attr.USER_NAME))
        now = time.monotonic()
        if self.guard.held(guard_key, now):
            self.counters["access_throttled"] += 1
            metrics.AUTH_FAILURES.labels("radius", "throttled").inc()
            return AUTH_FAILED, None
        password = decrypt_password(pw_attr, client.secret, pkt.authenticator)
        sub = self.charging.subscriber(identity(pkt))
        stored = sub.password_hash if sub is not None and sub.password_hash else self._dummy_hash
        # scrypt takes milliseconds and releases the GIL: keep it off the event loop.
        ok = await asyncio.get_running_loop().run_in_executor(
            None, verify_password, password.decode("utf-8", "replace"), stored)
        if sub is None or not sub.password_hash or not ok:
            self.counters["access_bad_password"] += 1
            metrics.AUTH_FAILURES.labels("radius", "bad_credentials").inc()
            held = self.guard.failed(guard_key, now)
            log.warning("radius_access_failed", client=client.name, user=guard_key[1],
                     held_s=round(held, 1))
            return AUTH_FAILED, None
        self.guard.succeeded(guard_key)
        refusal = status_refusal(sub)
        if refusal is not None:
            return refusal, sub
        view = self.charging.balance(((IdKind.MSISDN, sub.msisdn),))
        if view is None:
            return Refusal.UNKNOWN_SUBSCRIBER, sub
        data_left = view.allowances.get("data", {}).get("remaining", 0)
        if view.available <= 0 and data_left <= 0:
            return (Refusal.CREDIT_LIMIT_REACHED if view.mode == "postpaid"
                    else Refusal.OUT_OF_CREDIT), sub
        return None, sub


def _ip(value: bytes | None) -> str:
    if value is None or len(value) != 4:
        return ""
    return socket.inet_ntoa(value)
