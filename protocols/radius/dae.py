"""Dynamic Authorization client (RFC 5176): Disconnect-Request / CoA-Request to a NAS.

Requests carry the session identification NAS implementations need (Acct-Session-Id,
User-Name, NAS-IP-Address, Calling-Station-Id when known) and Event-Timestamp; the
authenticator is computed as for Accounting-Request. Each request is retried a bounded
number of times with the same Identifier and authenticator; a reply counts only if it
comes from the target, matches the Identifier and carries a valid Response Authenticator.

One source port gives 256 Identifiers per NAS (RFC 5176 §3). When all of them are in
flight, further requests to that NAS wait in a bounded queue (``max_queue``) and take an
Identifier as one is freed; past the queue's limit a request is dropped (outcome
``dropped``, counted), so a slow or silent CoA port can never block the event loop or grow
memory without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

from ocs import metrics
from protocols.radius.codec import (
    Attr,
    Code,
    Drop,
    Packet,
    attr,
    decode,
    encode_request,
    response_authenticator_ok,
)

log = structlog.get_logger(__name__)

ERROR_SESSION_NOT_FOUND = 503


class DaeOutcome(StrEnum):
    ACK = "ack"
    NAK = "nak"
    SESSION_GONE = "session_gone"  # NAK with Error-Cause 503
    TIMEOUT = "timeout"
    DROPPED = "dropped"  # the NAS's queue was full: not sent


IDENTIFIERS = 256


@dataclass(frozen=True, slots=True)
class DaeTarget:
    address: str
    port: int
    secret: bytes


@dataclass(frozen=True, slots=True)
class SessionRef:
    """What identifies a session to its NAS."""

    acct_session_id: str
    user_name: str = ""
    nas_ip: bytes = b""
    calling_station_id: str = ""

    def attributes(self, now: int) -> list[tuple[int, bytes]]:
        attrs = [attr(Attr.ACCT_SESSION_ID, self.acct_session_id)]
        if self.user_name:
            attrs.append(attr(Attr.USER_NAME, self.user_name))
        if len(self.nas_ip) == 4:
            attrs.append(attr(Attr.NAS_IP_ADDRESS, self.nas_ip))
        if self.calling_station_id:
            attrs.append(attr(Attr.CALLING_STATION_ID, self.calling_station_id))
        attrs.append(attr(Attr.EVENT_TIMESTAMP, now))
        return attrs


class _DaeProtocol(asyncio.DatagramProtocol):
    def __init__(self, client: DaeClient):
        self._client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._client._received(data, addr)


@dataclass(slots=True)
class _Nas:
    """Identifiers of one target: the free ones and the requests waiting for one."""

    free: deque[int] = field(default_factory=lambda: deque(range(IDENTIFIERS)))
    queue: deque[asyncio.Future[int]] = field(default_factory=deque)


class DaeClient:
    def __init__(self, *, timeout_s: float = 2.0, attempts: int = 3, max_queue: int = 1024):
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.max_queue = max_queue
        self._transport: asyncio.DatagramTransport | None = None
        self._waiting: dict[tuple[str, int, int], tuple[asyncio.Future[Packet], bytes,
                                                         bytes]] = {}
        self._nas: dict[tuple[str, int], _Nas] = {}
        self.counters: dict[str, int] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _DaeProtocol(self), local_addr=("0.0.0.0", 0))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    async def _identifier(self, target: DaeTarget) -> int | None:
        """A free Identifier for ``target``: at once, after waiting in its queue, or None
        when the queue is full."""
        nas = self._nas.setdefault((target.address, target.port), _Nas())
        if nas.free and not nas.queue:
            return nas.free.popleft()
        if len(nas.queue) >= self.max_queue:
            return None
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        nas.queue.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release(target, fut.result())  # handed over as we were cancelled
            else:
                nas.queue.remove(fut)
            raise

    def _release(self, target: DaeTarget, ident: int) -> None:
        k = (target.address, target.port)
        nas = self._nas[k]
        while nas.queue:
            waiter = nas.queue.popleft()
            if not waiter.done():
                waiter.set_result(ident)
                return
        nas.free.append(ident)
        if len(nas.free) == IDENTIFIERS:
            del self._nas[k]

    def _received(self, data: bytes, addr: Any) -> None:
        if len(data) < 20:
            self._count("reply_dropped")
            return
        entry = self._waiting.get((addr[0], addr[1], data[1]))
        if entry is None:
            self._count("reply_unexpected")
            return
        fut, request_auth, secret = entry
        try:
            pkt = decode(data)
        except Drop:
            self._count("reply_dropped")
            return
        if not response_authenticator_ok(pkt, request_auth, secret):
            self._count("reply_bad_authenticator")
            return
        if not fut.done():
            fut.set_result(pkt)

    async def send(self, code: Code, target: DaeTarget, session: SessionRef,
                   extra: list[tuple[int, bytes]] | None = None) -> DaeOutcome:
        """Send a Disconnect-Request or CoA-Request and wait for ACK/NAK (with retries)."""
        if self._transport is None:
            await self.start()
        assert self._transport is not None
        kind = "disconnect" if code == Code.DISCONNECT_REQUEST else "coa"
        ident = await self._identifier(target)
        if ident is None:
            outcome = DaeOutcome.DROPPED
            self._count(f"{kind}_dropped")
            n = self.counters[f"{kind}_dropped"]
            if n & (n - 1) == 0:  # 1, 2, 4, 8...: a flood logs a few lines, not one each
                log.warning("radius_dae_dropped", kind=kind, target=target.address,
                            session=session.acct_session_id, queue_limit=self.max_queue,
                            dropped=n)
        else:
            try:
                outcome = await self._exchange(code, kind, target, session, ident, extra)
            finally:
                self._release(target, ident)
        metrics.RADIUS_DAE.labels(kind, outcome.value).inc()
        return outcome

    async def _exchange(self, code: Code, kind: str, target: DaeTarget, session: SessionRef,
                        ident: int, extra: list[tuple[int, bytes]] | None) -> DaeOutcome:
        assert self._transport is not None
        raw = encode_request(code, ident, target.secret,
                             [*session.attributes(int(time.time())), *(extra or [])])
        key = (target.address, target.port, ident)
        fut: asyncio.Future[Packet] = asyncio.get_running_loop().create_future()
        self._waiting[key] = (fut, raw[4:20], target.secret)
        try:
            for _attempt in range(self.attempts):
                self._transport.sendto(raw, (target.address, target.port))
                self._count(f"{kind}_sent")
                try:
                    reply = await asyncio.wait_for(asyncio.shield(fut), self.timeout_s)
                except TimeoutError:
                    continue
                if reply.code in (Code.DISCONNECT_ACK, Code.COA_ACK):
                    outcome = DaeOutcome.ACK
                elif reply.integer(Attr.ERROR_CAUSE) == ERROR_SESSION_NOT_FOUND:
                    outcome = DaeOutcome.SESSION_GONE
                else:
                    outcome = DaeOutcome.NAK
                    log.warning("radius_dae_nak", kind=kind, target=target.address,
                                session=session.acct_session_id,
                                error_cause=reply.integer(Attr.ERROR_CAUSE))
                self._count(f"{kind}_{outcome}")
                return outcome
            self._count(f"{kind}_timeout")
            log.warning("radius_dae_timeout", kind=kind, target=target.address,
                        session=session.acct_session_id)
            return DaeOutcome.TIMEOUT
        finally:
            self._waiting.pop(key, None)
            if not fut.done():
                fut.cancel()
