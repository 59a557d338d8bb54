"""UDP transport for RADIUS: the only module of the package that touches asyncio sockets.

Per datagram: find the client by source address (unknown -> counted drop), answer a
retransmission (same client address and port, Identifier and authenticator) from the
reply cache without processing it again, otherwise hand the packet to the agent and send
its reply when the agent returns (after the durable commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from ocs import metrics
from ocs.config import Config, parse_listen
from protocols.radius.agent import Client, RadiusAgent
from protocols.radius.codec import Drop, Packet, decode
from protocols.radius.dae import DaeClient

log = structlog.get_logger(__name__)

Handler = Callable[[Client, Packet], Awaitable[bytes]]
_IN_PROGRESS = b""


_SECONDS = metrics.REQUEST_SECONDS.labels("radius")
_ACCESS = {2: "accept", 3: "reject", 11: "challenge"}
"""Access-Accept, Access-Reject, Access-Challenge codes -> ``ocs_radius_access{result}``."""


class RadiusEndpoint(asyncio.DatagramProtocol):
    def __init__(self, agent: RadiusAgent, kind: str, handler: Handler, *,
                 dedup_window_s: float = 30.0, max_cache: int = 200_000):
        self.agent = agent
        self.kind = kind
        self.handler = handler
        self.window = dedup_window_s
        self.max_cache = max_cache
        self.transport: asyncio.DatagramTransport | None = None
        self._cache: OrderedDict[tuple[Any, int, bytes], tuple[float, bytes]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def _drop(self, reason: str) -> None:
        self.agent.counters[f"drop_{reason}"] += 1
        metrics.RADIUS_DROPPED.labels(self.kind, reason).inc()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        client = self.agent.client_for(addr[0])
        if client is None:
            self._drop("unknown_client")
            return
        if len(data) < 20:
            self._drop("short_packet")
            return
        key = (addr, data[1], data[4:20])
        now = time.monotonic()
        self._expire(now)
        cached = self._cache.get(key)
        if cached is not None:
            reply = cached[1]
            metrics.RADIUS_PACKETS.labels(self.kind, "duplicate").inc()
            if reply is not _IN_PROGRESS and self.transport is not None:
                self.transport.sendto(reply, addr)
            return
        try:
            pkt = decode(data)
        except Drop as d:
            self._drop(d.reason)
            return
        self._cache[key] = (now, _IN_PROGRESS)
        task = asyncio.ensure_future(self._handle(client, pkt, addr, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, client: Client, pkt: Packet, addr: Any,
                      key: tuple[Any, int, bytes]) -> None:
        started = time.monotonic()
        try:
            reply = await self.handler(client, pkt)
        except Drop as d:
            self._cache.pop(key, None)
            self._drop(d.reason)
            return
        except Exception as exc:  # charging failed (busy, writer gone): no answer, the
            # NAS retransmits; nothing was acknowledged
            self._cache.pop(key, None)
            metrics.RADIUS_PACKETS.labels(self.kind, "error").inc()
            log.warning("radius_request_failed", kind=self.kind, client=client.name,
                        error=f"{type(exc).__name__}: {exc}")
            return
        now = time.monotonic()
        self._cache[key] = (now, reply)
        metrics.RADIUS_PACKETS.labels(self.kind, "answered").inc()
        _SECONDS.observe(now - started)
        if self.kind == "auth" and reply:
            metrics.RADIUS_ACCESS.labels(_ACCESS.get(reply[0], str(reply[0]))).inc()
        if self.transport is not None:
            self.transport.sendto(reply, addr)

    def _expire(self, now: float) -> None:
        cache = self._cache
        limit = now - self.window
        while cache:
            t, _reply = next(iter(cache.values()))
            if t >= limit and len(cache) <= self.max_cache:
                break
            cache.popitem(last=False)

    async def drain(self, timeout: float = 10.0) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)


class RadiusListener:
    """Auth and accounting endpoints of one server."""

    def __init__(self, agent: RadiusAgent, *, sweep_interval_s: float = 5.0):
        self.agent = agent
        self.endpoints: list[tuple[asyncio.DatagramTransport, RadiusEndpoint]] = []
        self.sweep_interval_s = sweep_interval_s
        self._sweeper: asyncio.Task[None] | None = None

    def reconfigure(self, cfg: Config) -> None:
        """A config reload: the ``[radius]`` keys a running listener takes."""
        if cfg.radius is not None:
            self.agent.reconfigure(cfg.radius)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                await self.agent.sweep()
            except Exception as exc:  # keep sweeping; a store hiccup must not end it
                log.warning("radius_sweep_failed", error=str(exc))

    async def start(self, auth: tuple[str, int], acct: tuple[str, int], window: float, *,
                    reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        for kind, address, handler in (("auth", auth, self.agent.access),
                                       ("acct", acct, self.agent.accounting)):
            transport, proto = await loop.create_datagram_endpoint(
                lambda k=kind, h=handler: RadiusEndpoint(self.agent, k, h,  # type: ignore[misc]
                                                         dedup_window_s=window),
                local_addr=address, reuse_port=reuse_port)
            raw_sock = transport.get_extra_info("socket")
            if raw_sock is not None:  # bursts of requests must not overflow the queue
                with contextlib.suppress(OSError):
                    raw_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
                    raw_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            self.endpoints.append((transport, proto))
            sock = transport.get_extra_info("sockname")
            log.info("radius_listening", kind=kind, address=f"{sock[0]}:{sock[1]}")
        if self.agent.dae is not None:
            await self.agent.dae.start()
            self._sweeper = loop.create_task(self._sweep_loop())

    def address(self, kind: str) -> tuple[str, int]:
        for transport, proto in self.endpoints:
            if proto.kind == kind:
                sock = transport.get_extra_info("sockname")
                return str(sock[0]), int(sock[1])
        raise KeyError(kind)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for transport, proto in self.endpoints:
            transport.close()
            await proto.drain()
        await self.agent.drain()
        if self.agent.dae is not None:
            self.agent.dae.close()


async def start_radius(server: Any) -> RadiusListener:
    """``ocs serve`` starter for the ``[radius]`` section."""
    cfg = server.cfg.radius
    agent = RadiusAgent(server.charging, cfg, validity_s=server.cfg.charging.default_validity_s,
                        dae=DaeClient(max_queue=cfg.dae_queue_limit))
    listener = RadiusListener(agent, sweep_interval_s=server.cfg.charging.reaper_interval_s)
    await listener.start(parse_listen(cfg.auth_listen), parse_listen(cfg.acct_listen),
                         cfg.dedup_window_s, reuse_port=server.reuse_port)
    server.radius = listener
    return listener
