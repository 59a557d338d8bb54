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
from ocs.config import Config, parse_listen
from ocs.noc.service import AlarmService
from protocols.snmp.agent import StormControl, TrapTable, storm_notification, to_notification
from protocols.snmp.codec import (
    INFORM,
    TRAP_V2,
    Drop,
    Message,
    decode,
    encode_inform_response,
    raw_varbinds,
)

log = structlog.get_logger(__name__)


class TrapReceiver(asyncio.DatagramProtocol):
    def __init__(self, alarms: AlarmService, communities: tuple[str, ...], v3: Any = None, *,
                 table: TrapTable | None = None, storm: StormControl | None = None):
        self.alarms = alarms
        self.table = table
        self.storm = storm
        self.v3 = v3
        """A :class:`protocols.snmp.usm.V3Receiver` when v3 users are configured."""
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
            if d.reason == "v3_not_supported" and self.v3 is not None:
                self._v3(data, addr)
            else:
                self._drop(d.reason)
            return
        if not any(hmac.compare_digest(msg.community, c) for c in self.communities):
            self._drop("bad_community")
            return
        self.counters["received"] += 1
        metrics.SNMP_TRAPS.inc()
        if not self._admit(msg, addr):
            if msg.pdu_type == INFORM and self.transport is not None:
                self.transport.sendto(encode_inform_response(msg, raw_varbinds(data)), addr)
            return
        task = asyncio.ensure_future(self._handle(msg, data, addr, time.perf_counter()))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _admit(self, msg: Message, addr: Any) -> bool:
        """Storm control: False when the source is in a storm (counted, not processed).
        Keyed by the datagram's source address, not the v1 agent-addr it claims."""
        if self.storm is None:
            return True
        element = str(addr[0])
        ok, start = self.storm.admit(element, time.monotonic())
        if start:
            log.warning("snmp_trap_storm", element=element, threshold=self.storm.rate)
            self._submit(storm_notification(element, int(time.time()), started=True,
                                            rate=self.storm.rate))
        if not ok:
            self.counters["storm_suppressed"] += 1
        return ok

    def storm_tick(self) -> None:
        """Clear the summary alarm of storms that are over (called every second)."""
        if self.storm is None:
            return
        for element, suppressed, peak in self.storm.ended(time.monotonic()):
            log.info("snmp_trap_storm_over", element=element, suppressed=suppressed)
            self._submit(storm_notification(element, int(time.time()), started=False,
                                            rate=self.storm.rate, suppressed=suppressed,
                                            peak=peak))

    def _submit(self, n: Any) -> None:
        async def go() -> None:
            try:
                await self.alarms.notify(n)
            except Exception as exc:
                log.warning("snmp_notification_failed", error=str(exc))

        task = asyncio.ensure_future(go())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _v3(self, data: bytes, addr: Any) -> None:
        note, replies, outcome = self.v3.feed(data, (addr[0], addr[1]))
        if note is None:
            if replies and self.transport is not None:
                # a Report (engine discovery, time window, unknown user when reportable)
                for datagram, to in replies:
                    self.transport.sendto(datagram, to)
            if outcome == "usmStatsUnknownEngineIDs" and replies:
                self.counters["v3_discovery"] += 1  # the normal first step of an inform
            else:
                self._drop(f"v3_{outcome}")
            return
        self.counters["received_v3"] += 1
        metrics.SNMP_TRAPS.inc()
        msg = Message(3, b"", INFORM if note.confirmed else TRAP_V2, 0, note.varbinds)
        if not self._admit(msg, addr):
            if self.transport is not None:
                for datagram, to in replies:
                    self.transport.sendto(datagram, to)
            return
        task = asyncio.ensure_future(self._handle(msg, data, addr, time.perf_counter(),
                                                  replies))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, msg: Any, data: bytes, addr: Any, arrived: float,
                      replies: list[tuple[bytes, Any]] | None = None) -> None:
        n = to_notification(msg, addr[0], int(time.time()), self.table)
        try:
            outcome = await self.alarms.notify(n)
        except Exception as exc:  # busy or writer restarting: an inform will be resent
            self._drop("store_unavailable")
            log.warning("snmp_notification_failed", error=str(exc))
            return
        self.counters[f"alarm_{outcome}"] += 1
        if self.latencies is not None:
            self.latencies.append(time.perf_counter() - arrived)
        if self.transport is None:
            return
        if replies is not None:  # v3: pysnmp built the Response; it leaves now
            for datagram, to in replies:
                self.transport.sendto(datagram, to)
        elif msg.pdu_type == INFORM:
            self.transport.sendto(encode_inform_response(msg, raw_varbinds(data)), addr)


class SnmpListener:
    v3_users: tuple[Any, ...]

    def reconfigure(self, cfg: Config) -> None:
        """A config reload: the v1/v2c communities, the v3 users (the engine ID and its
        boot counter stay), the trap mapping and storm control."""
        snmp, noc = cfg.snmp, cfg.noc
        if snmp is None:
            return
        r = self.receiver
        r.communities = tuple(c.encode() for c in snmp.communities)
        r.table = TrapTable.of(noc.traps)
        if noc.storm_rate <= 0:
            r.storm = None
        elif r.storm is None or (r.storm.rate, r.storm.hold_s) != (noc.storm_rate,
                                                                   noc.storm_hold_s):
            r.storm = StormControl(noc.storm_rate, noc.storm_hold_s)
        if snmp.v3_users == self.v3_users:
            return
        self.v3_users = snmp.v3_users
        if snmp.v3_users:
            from protocols.snmp.usm import load_receiver

            r.v3 = load_receiver(list(snmp.v3_users), cfg.node.name, snmp.engine_id,
                                 cfg.data_dir / "snmp_engine_boots")
        else:
            r.v3 = None

    def __init__(self, receiver: TrapReceiver, v3_users: tuple[Any, ...] = ()):
        self.receiver = receiver
        self.v3_users = v3_users
        """The SNMPv3 users the receiver was built with (a reload rebuilds it on change)."""
        self.transport: asyncio.DatagramTransport | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.receiver.storm_tick()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self.receiver,
                                                                local_addr=(host, port))
        raw = self.transport.get_extra_info("socket")
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        if self.receiver.storm is not None:
            self._ticker = loop.create_task(self._tick())
        sock = self.transport.get_extra_info("sockname")
        log.info("snmp_listening", address=f"{sock[0]}:{sock[1]}")
        return str(sock[0]), int(sock[1])

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self.transport is not None:
            self.transport.close()
        if self.receiver.tasks:
            await asyncio.wait(self.receiver.tasks, timeout=10)


async def start_snmp(server: Any) -> SnmpListener:
    """``ocs serve`` starter for the ``[snmp]`` section."""
    cfg = server.cfg.snmp
    v3 = None
    if cfg.v3_users:
        from protocols.snmp.usm import load_receiver

        v3 = load_receiver(list(cfg.v3_users), server.cfg.node.name, cfg.engine_id,
                           server.cfg.data_dir / "snmp_engine_boots")
        log.info("snmp_v3_ready", engine_id=v3.engine_id.hex(), users=len(cfg.v3_users))
    noc = server.cfg.noc
    storm = StormControl(noc.storm_rate, noc.storm_hold_s) if noc.storm_rate > 0 else None
    listener = SnmpListener(TrapReceiver(server.alarms, cfg.communities, v3,
                                         table=TrapTable.of(noc.traps), storm=storm),
                            cfg.v3_users)
    await listener.start(*parse_listen(cfg.trap_listen))
    server.snmp = listener
    return listener
