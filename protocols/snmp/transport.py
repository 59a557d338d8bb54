"""UDP receiver for SNMP v1/v2c traps and informs: the only module of the package that
touches sockets. Wrong community, undecodable or SNMPv3 packets are dropped and counted;
an InformRequest is answered once its alarm change is committed."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
import time
from collections import Counter
from typing import Any

import structlog

from ocs import metrics
from protocols.snmp.agent import to_notification
from protocols.snmp.codec import INFORM, Drop, decode, encode_inform_response, raw_varbinds

log = structlog.get_logger(__name__)


class TrapReceiver(asyncio.DatagramProtocol):
    def __init__(self, engine: Any, communities: tuple[str, ...]):
        self.engine = engine
        self.communities = tuple(c.encode() for c in communities)
        self.transport: asyncio.DatagramTransport | None = None
        self.counters: Counter[str] = Counter()
        self.tasks: set[asyncio.Task[None]] = set()
        self.latencies: list[float] | None = None
        """When a list: arrival → alarm committed, in seconds, per notification (bench)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def _drop(self, reason: str) -> None:
        self.counters[f"drop_{reason}"] += 1
        metrics.SNMP_DROPPED.labels(reason).inc()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            msg = decode(data)
        except Drop as d:
            self._drop(d.reason)
            return
        if not any(hmac.compare_digest(msg.community, c) for c in self.communities):
            self._drop("bad_community")
            return
        self.counters["received"] += 1
        metrics.SNMP_TRAPS.inc()
        task = asyncio.ensure_future(self._handle(msg, data, addr, time.perf_counter()))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, msg: Any, data: bytes, addr: Any, arrived: float) -> None:
        n = to_notification(msg, addr[0], int(time.time()))
        try:
            outcome = await self.engine.submit("alarm_notify", n)
        except Exception as exc:  # busy or writer restarting: an inform will be resent
            self._drop("store_unavailable")
            log.warning("snmp_notification_failed", error=str(exc))
            return
        self.counters[f"alarm_{outcome}"] += 1
        if self.latencies is not None:
            self.latencies.append(time.perf_counter() - arrived)
        if msg.pdu_type == INFORM and self.transport is not None:
            self.transport.sendto(encode_inform_response(msg, raw_varbinds(data)), addr)


class SnmpListener:
    def __init__(self, receiver: TrapReceiver):
        self.receiver = receiver
        self.transport: asyncio.DatagramTransport | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self.receiver,
                                                                local_addr=(host, port))
        raw = self.transport.get_extra_info("socket")
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock = self.transport.get_extra_info("sockname")
        log.info("snmp_listening", address=f"{sock[0]}:{sock[1]}")
        return str(sock[0]), int(sock[1])

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.receiver.tasks:
            await asyncio.wait(self.receiver.tasks, timeout=10)


async def start_snmp(server: Any) -> SnmpListener:
    """``ocs serve`` starter for the ``[snmp]`` section."""
    from ocs.config import parse_listen

    cfg = server.cfg.snmp
    listener = SnmpListener(TrapReceiver(server.engine, cfg.communities))
    await listener.start(*parse_listen(cfg.trap_listen))
    server.snmp = listener
    return listener
