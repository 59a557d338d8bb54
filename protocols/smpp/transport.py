"""TCP transport for SMPP: one asyncio Protocol per connection, each owning one
:class:`~protocols.smpp.session.SmppSession`. The only module of the package that
touches sockets."""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

import structlog

from protocols.smpp.agent import SmppAgent
from protocols.smpp.pdu import Framer, PduError
from protocols.smpp.session import Action, Authenticate, Charge, Close, Send, SmppSession, nack

log = structlog.get_logger(__name__)
_bind_ids = itertools.count(1)
_RUN = os.urandom(3).hex()


class SmppConnection(asyncio.Protocol):
    def __init__(self, agent: SmppAgent, node: str):
        self.agent = agent
        cfg = agent.cfg
        self.loop = asyncio.get_running_loop()
        self.session = SmppSession(window=cfg.window, throttle_per_s=cfg.throttle_per_s,
                                   system_id=node[:15], enquire_link_s=cfg.enquire_link_s,
                                   response_timeout_s=cfg.response_timeout_s,
                                   bind_timeout_s=cfg.bind_timeout_s, now=self.loop.time())
        self.framer = Framer()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.bind_id = f"{_RUN}{next(_bind_ids)}"
        self.tasks: set[asyncio.Task[None]] = set()
        self.bound_as = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm()

    def _arm(self) -> None:
        """One timer per connection, at the session's next deadline."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        when = self.session.get_timer()
        if when is not None and self.transport is not None:
            self.timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        actions = self.session.handle_timer(self.loop.time())
        for a in actions:
            if isinstance(a, Close):
                log.info("smpp_bind_closed", system_id=self.session.system_id, reason=a.reason)
        self._run(actions)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.bound_as:
            self.agent.unbound(self.bound_as)
            self.bound_as = ""
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            pdus = self.framer.feed(data)
        except PduError as e:
            self._run([nack(e.status, e.sequence), Close(str(e))])
            return
        now = self.loop.time()
        for pdu in pdus:
            self._run(self.session.receive(pdu, now))
        self._arm()

    def _run(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                if self.transport is not None:
                    self.transport.write(a.pdu.encode())
            elif isinstance(a, Close):
                if self.transport is not None:
                    self.transport.close()
            elif isinstance(a, Authenticate):
                status = self.agent.authenticate(a.bind)
                if status == 0:
                    self.bound_as = a.bind.system_id
                self._run(self.session.bind_done(a.sequence, a.command_id, a.bind.system_id,
                                                 status, a.bind.interface_version))
            elif isinstance(a, Charge):
                task = asyncio.ensure_future(self._charge(a))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _charge(self, a: Charge) -> None:
        status, message_id = await self.agent.submit(self.session.system_id, self.bind_id,
                                                     a.sequence, a.submit)
        self._run(self.session.submit_done(a.sequence, a.command_id, status, message_id))


class SmppListener:
    def __init__(self, agent: SmppAgent, node: str):
        self.agent = agent
        self.node = node
        self.server: asyncio.Server | None = None
        self.connections: set[SmppConnection] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()

        def factory() -> SmppConnection:
            conn = SmppConnection(self.agent, self.node)
            self.connections.add(conn)
            return conn

        self.server = await loop.create_server(factory, host, port)
        sock = self.server.sockets[0].getsockname()
        log.info("smpp_listening", address=f"{sock[0]}:{sock[1]}")
        return str(sock[0]), int(sock[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        pending = [t for c in self.connections for t in c.tasks]
        if pending:
            await asyncio.wait(pending, timeout=10)
        for c in self.connections:
            if c.transport is not None:
                c.transport.close()


async def start_smpp(server: Any) -> SmppListener:
    """``ocs serve`` starter for the ``[smpp]`` section."""
    from ocs.config import parse_listen

    listener = SmppListener(SmppAgent(server.engine, server.cfg.smpp), server.cfg.node.name)
    await listener.start(*parse_listen(server.cfg.smpp.listen))
    server.smpp = listener
    return listener


