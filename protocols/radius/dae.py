"""Dynamic Authorization client (RFC 5176): Disconnect-Request / CoA-Request to a NAS.

Requests carry the session identification NAS implementations need (Acct-Session-Id,
User-Name, NAS-IP-Address, Calling-Station-Id when known) and Event-Timestamp; the
authenticator is computed as for Accounting-Request. Each request is retried a bounded
number of times with the same Identifier and authenticator; a reply counts only if it
comes from the target, matches the Identifier and carries a valid Response Authenticator.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog

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


class DaeClient:
    def __init__(self, *, timeout_s: float = 2.0, attempts: int = 3):
        self.timeout_s = timeout_s
        self.attempts = attempts
        self._transport: asyncio.DatagramTransport | None = None
        self._waiting: dict[tuple[str, int, int], tuple[asyncio.Future[Packet], bytes,
                                                         bytes]] = {}
        self._next_id: dict[tuple[str, int], int] = {}
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

    def _identifier(self, target: DaeTarget) -> int:
        k = (target.address, target.port)
        n = self._next_id.get(k, 0)
        while (target.address, target.port, n) in self._waiting:
            n = (n + 1) % 256
        self._next_id[k] = (n + 1) % 256
        return n

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
        ident = self._identifier(target)
        raw = encode_request(code, ident, target.secret,
                             [*session.attributes(int(time.time())), *(extra or [])])
        key = (target.address, target.port, ident)
        fut: asyncio.Future[Packet] = asyncio.get_running_loop().create_future()
        self._waiting[key] = (fut, raw[4:20], target.secret)
        kind = "disconnect" if code == Code.DISCONNECT_REQUEST else "coa"
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
