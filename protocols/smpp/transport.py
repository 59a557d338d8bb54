"""TCP transport for SMPP: one asyncio Protocol per connection, each owning one
:class:`~protocols.smpp.session.SmppSession`. The only module of the package that
touches sockets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from typing import Any

import structlog

from ocs import metrics
from ocs.charging.api import BIND_TOUCH_S, DeliveryOutcome, SmppBindsOf, SmsMessage
from ocs.config import Config, parse_listen
from protocols.smpp.agent import SmppAgent
from protocols.smpp.pdu import (
    Cmd,
    Framer,
    Pdu,
    PduError,
    Status,
    Tag,
    encode_deliver,
    receipt_text,
)
from protocols.smpp.session import (
    Action,
    Authenticate,
    Charge,
    Close,
    Response,
    Send,
    SmppSession,
    nack,
)

log = structlog.get_logger(__name__)
_bind_ids = itertools.count(1)
_RUN = os.urandom(3).hex()


_MAX_HELD = 256
"""PDUs held per connection while its bind is counted (a pipelining ESME's first burst)."""


_SECONDS = metrics.REQUEST_SECONDS.labels("smpp")
_BIND_OUTCOME: dict[int, str] = {Status.ROK: "ok", Status.RINVPASWD: "bad_credentials",
                 Status.RBINDFAIL: "bind_limit"}


def _status_name(status: int) -> str:
    """ESME_ROK, ESME_RSUBMITFAIL, ... (hex for a code without a name)."""
    try:
        return f"ESME_{Status(status).name}"
    except ValueError:
        return f"0x{status:08x}"


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
        self.source = ""
        """The ESME's address (bind failures are braked per source)."""
        self.waiting: dict[int, asyncio.Future[Pdu]] = {}
        """Our requests (deliver_sm) by sequence number, until their response."""
        self.on_bound: Any = None
        self._held: list[Pdu] | None = None
        """PDUs that came while a bind was being counted in the store (several workers):
        they are handled, in order, once the bind is answered."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.source = str(peer[0]) if peer else ""
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

    def request(self, cmd: int, body: bytes) -> asyncio.Future[Pdu]:
        """Send one of our requests; the future gets its response."""
        seq = self.session.next_sequence()
        fut: asyncio.Future[Pdu] = self.loop.create_future()
        self.waiting[seq] = fut
        assert self.transport is not None
        self.transport.write(Pdu(cmd, 0, seq, body).encode())
        return fut

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("bind closed"))
        self.waiting.clear()
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
            if self._held is not None and len(self._held) < _MAX_HELD:
                self._held.append(pdu)
                continue
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
                if self.agent.worker is None:  # counted here: answer at once
                    self._bound(a, self.agent.authenticate(a.bind, self.source))
                else:
                    self._held = []
                    task = asyncio.ensure_future(self._bind(a))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
            elif isinstance(a, Response):
                fut = self.waiting.pop(a.pdu.sequence, None)
                if fut is not None and not fut.done():
                    fut.set_result(a.pdu)
            elif isinstance(a, Charge):
                task = asyncio.ensure_future(self._charge(a))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _bind(self, a: Authenticate) -> None:
        status = await self.agent.authenticate_shared(a.bind, self.source)
        if status == 0 and self.transport is None:  # closed while the bind was counted
            self.agent.unbound(a.bind.system_id)
            return
        self._bound(a, status)
        held, self._held = self._held or [], None
        for pdu in held:
            self._run(self.session.receive(pdu, self.loop.time()))
        self._arm()

    def _bound(self, a: Authenticate, status: int) -> None:
        metrics.SMPP_BINDS.labels(_BIND_OUTCOME.get(status, _status_name(status))).inc()
        if status == 0:
            self.bound_as = a.bind.system_id
        self._run(self.session.bind_done(a.sequence, a.command_id, a.bind.system_id,
                                         status, a.bind.interface_version))
        if status == 0 and self.on_bound is not None:
            self.on_bound()

    async def _charge(self, a: Charge) -> None:
        started = time.monotonic()
        status, message_id = await self.agent.submit(self.session.system_id, self.bind_id,
                                                     a.sequence, a.submit)
        _SECONDS.observe(time.monotonic() - started)
        metrics.SMPP_SUBMITS.labels(_status_name(status)).inc()
        self._run(self.session.submit_done(a.sequence, a.command_id, status, message_id))


UNROUTED_GRACE_S = 3
"""With several workers, a due message for a route none of this worker's binds serves is
left to the worker that has a receiver; only if it stays due this long (nobody has one)
is it rescheduled from here."""


class SmppListener:
    def reconfigure(self, cfg: Config) -> None:
        """A config reload: SMPP accounts, routes and throttle for new binds."""
        if cfg.smpp is not None:
            self.agent.reconfigure(cfg.smpp)

    def __init__(self, agent: SmppAgent, node: str):
        self.agent = agent
        self.node = node
        self.server: asyncio.Server | None = None
        self.connections: set[SmppConnection] = set()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._inflight: set[str] = set()
        self._fresh: set[str] = set()
        """system_ids that just bound a receiver: their waiting messages go now."""
        agent.on_queued = self._wake.set

    @property
    def shared(self) -> bool:
        """Other worker processes deliver from the same queue: claim before delivering."""
        return self.agent.worker is not None

    def receivers(self, system_id: str) -> list[SmppConnection]:
        return [c for c in self.connections
                if c.transport is not None and c.session.receiver
                and c.session.system_id == system_id]

    async def _deliver_loop(self) -> None:
        """Deliver what is due: to a receiver bind of the route's system_id, else later."""
        touched = time.monotonic()
        while True:
            self._wake.clear()
            if self.shared and time.monotonic() - touched >= BIND_TOUCH_S:
                touched = time.monotonic()
                await self._touch_binds()
            now = int(time.time())
            fresh, self._fresh = self._fresh, set()
            try:
                due = await self._due(now, fresh)
            except Exception as exc:  # the store is away: the next round asks again
                log.warning("smpp_queue_unread", error=str(exc))
                self._fresh |= fresh
                due = []
            for msg in due:
                if msg.message_id in self._inflight:
                    continue
                if now >= msg.expires_at:
                    await self._outcome(msg.message_id, "expire")
                    continue
                targets = [c for c in self.receivers(msg.route)
                           if len(c.waiting) < self.agent.cfg.window]
                if not targets:
                    if not self.shared or now - msg.next_try >= UNROUTED_GRACE_S:
                        await self._outcome(msg.message_id, "retry",
                                            expect=msg.next_try if self.shared else -1)
                    continue
                if self.shared and not await self._outcome(
                        msg.message_id, "claim", expect=msg.next_try,
                        lease_until=now + int(self.agent.cfg.response_timeout_s) + 5):
                    continue  # another worker has it
                conn = min(targets, key=lambda c: len(c.waiting))
                self._inflight.add(msg.message_id)
                task = asyncio.ensure_future(self._deliver(conn, msg))
                conn.tasks.add(task)
                task.add_done_callback(conn.tasks.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.5)
            await asyncio.sleep(0.02)  # coalesce wake-ups: one pass per 20 ms at most

    async def _due(self, now: int, fresh: set[str]) -> list[SmsMessage]:
        """Messages whose next try has come, and any waiting for a freshly bound route."""
        return await self.agent.charging.due_messages(
            now, fresh_routes=fresh, skip=self._inflight,
            receivers=any(c.transport is not None and c.session.receiver
                          for c in self.connections))

    async def _touch_binds(self) -> None:
        """This worker still holds its binds (counted in the store over every worker and
        node: a holder not heard from lately, whose node died, counts no more)."""
        assert self.agent.worker is not None
        try:
            await self.agent.charging.smpp_binds_touch(SmppBindsOf(
                node=self.agent.node, worker=self.agent.worker, now=int(time.time())))
        except Exception as exc:  # asked again in BIND_TOUCH_S
            log.warning("smpp_binds_untouched", error=str(exc))

    def _bound(self, system_id: str) -> None:
        self._fresh.add(system_id)
        self._wake.set()

    async def _outcome(self, message_id: str, outcome: str, *, expect: int = -1,
                       lease_until: int = 0) -> bool:
        if outcome != "claim":
            metrics.SMPP_DELIVERIES.labels(outcome).inc()
        try:
            return bool(await self.agent.charging.delivery_outcome(DeliveryOutcome(
                message_id=message_id, outcome=outcome, now=int(time.time()),
                refund_expired=self.agent.cfg.refund_expired, expect_next_try=expect,
                lease_until=lease_until)))
        except Exception as exc:  # busy or writer restarting: the next round tries again
            log.warning("smpp_outcome_failed", message_id=message_id, error=str(exc))
            return False

    async def _deliver(self, conn: SmppConnection, msg: SmsMessage) -> None:
        tlvs: dict[int, bytes] = {}
        payload = msg.payload
        if msg.kind == "receipt":
            tlvs = {Tag.RECEIPTED_MESSAGE_ID: msg.receipted_id.encode() + b"\x00",
                    Tag.MESSAGE_STATE: bytes((msg.receipt_state,))}
            if msg.receipt_stat:  # (older receipts were queued with their text)
                payload = receipt_text(
                    message_id=msg.receipted_id, stat=msg.receipt_stat,
                    submitted_at=msg.original_submitted_at, done_at=msg.submitted_at,
                    text=msg.original_text).encode("ascii", "replace")
        body = encode_deliver(msg.source, msg.destination, msg.esm_class, msg.data_coding,
                              payload, tlvs)
        try:
            resp = await asyncio.wait_for(conn.request(Cmd.DELIVER_SM, body),
                                          self.agent.cfg.response_timeout_s)
            ok = resp.status == 0
        except (TimeoutError, ConnectionError):
            ok = False
        self.agent.counters["deliver_ok" if ok else "deliver_failed"] += 1
        await self._outcome(msg.message_id, "delivered" if ok else "retry")
        self._inflight.discard(msg.message_id)
        if ok:
            self._wake.set()  # a receipt may have been queued

    async def start(self, host: str, port: int, *, reuse_port: bool = False
                    ) -> tuple[str, int]:
        loop = asyncio.get_running_loop()

        def factory() -> SmppConnection:
            conn = SmppConnection(self.agent, self.node)
            conn.on_bound = lambda: self._bound(conn.session.system_id)
            self.connections = {c for c in self.connections if c.transport is not None}
            self.connections.add(conn)
            return conn

        if self.agent.worker is not None:
            # the binds this worker held died with its last run (worker 0: the node's)
            worker = self.agent.worker
            await self.agent.charging.smpp_binds_reset(SmppBindsOf(
                node=self.agent.node, worker=-1 if worker == 0 else worker,
                now=int(time.time())))
        self.server = await loop.create_server(factory, host, port, reuse_port=reuse_port)
        self._worker = loop.create_task(self._deliver_loop())
        sock = self.server.sockets[0].getsockname()
        log.info("smpp_listening", address=f"{sock[0]}:{sock[1]}")
        return str(sock[0]), int(sock[1])

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
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
    agent = SmppAgent(server.charging, server.cfg.smpp)
    agent.node = server.cfg.node.name
    if server.workers > 1 or server.cluster is not None:
        agent.worker = server.worker  # binds counted over every worker and node
    listener = SmppListener(agent, server.cfg.node.name)
    await listener.start(*parse_listen(server.cfg.smpp.listen), reuse_port=server.reuse_port)
    server.smpp = listener
    return listener


