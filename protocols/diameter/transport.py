"""asyncio TCP adapter for the Diameter peer layer and the Gy agent.

Thin on purpose: bytes in -> :class:`~protocols.diameter.peer.PeerConnection` events ->
writes, closes and one task per application request. Requests on a connection are
answered as they complete (pipelining); a duplicate (same Origin-Host and
End-to-End-Id) gets the first copy's answer; past ``max_pending_per_peer`` requests in
flight, or when the writer queue is full, the answer is 3004 TOO_BUSY (never silence).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

import structlog

from ocs import metrics
from ocs.charging.api import ChargingBusy, ChargingPaused, ChargingUnavailable
from ocs.config import Config, parse_listen
from protocols.diameter import codec as c
from protocols.diameter.codec import A, Cmd, MessageError, Rc
from protocols.diameter.gy import GyAgent, GySession, GySettings
from protocols.diameter.peer import (
    Answer,
    Close,
    DuplicateCache,
    Event,
    LocalNode,
    PeerConnection,
    Request,
    Send,
    State,
    Trigger,
    answer_for,
    error_answer,
    with_hbh,
)

log = structlog.get_logger(__name__)


class DiameterProtocol(asyncio.Protocol):
    """One connection. Flow control: when the peer does not read and our answers pile up
    past the write buffer's high-water mark, we stop reading its requests; if it stays
    there for ``write_stall_s`` the connection is closed (nothing grows without bound)."""

    def __init__(self, node: DiameterNode):
        self.node = node
        self.conn = PeerConnection(node.local, now=time.monotonic(),
                                   watchdog_s=node.watchdog_s,
                                   max_message=node.max_message,
                                   cer_timeout_s=node.cer_timeout_s)
        self._stall: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        """One timer per connection, at the peer core's next deadline (CER, Tw, DWA)."""
        self.transport: asyncio.Transport | None = None
        self.inflight = 0
        self.peer_address = ""
        self.waiters: dict[int, asyncio.Future[c.Message]] = {}
        self._announced = False
        self._out: list[bytes] = []

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer_address = f"{peer[0]}:{peer[1]}" if peer else "?"
        if len(self.node.connections) >= self.node.max_connections:
            _refused("max_connections")
            transport.close()  # never added: connection_lost finds nothing to undo
            return
        self.transport = tr = transport  # type: ignore[assignment]
        tr.set_write_buffer_limits(high=self.node.write_buffer_bytes)  # type: ignore[attr-defined]
        self.node.connections.add(self)
        self._arm()

    def _arm(self) -> None:
        self._timer = None
        when = self.conn.get_timer()
        if when is not None:  # the loop's clock is time.monotonic, like the core's
            self._timer = asyncio.get_running_loop().call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        self.apply(self.conn.handle_timer(time.monotonic()))
        self._arm()

    def pause_writing(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.pause_reading()
        if self._stall is None:
            self._stall = asyncio.get_running_loop().call_later(self.node.write_stall_s,
                                                                self._stalled)

    def resume_writing(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _stalled(self) -> None:
        self._stall = None
        _refused("write_stalled")
        log.warning("diameter_close", reason="peer does not read its answers",
                    address=self.peer_address, peer=self.conn.peer_host)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.apply(self.conn.receive(data, time.monotonic()))
        t = self._timer
        if t is not None:  # traffic moves deadlines later, but the CER brings Tw closer
            due = self.conn.get_timer()
            if due is not None and due < t.when():
                t.cancel()
                self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in (self._stall, self._timer):
            if handle is not None:
                handle.cancel()
        self._stall = self._timer = None
        self.node.connections.discard(self)
        if self._announced:
            metrics.DIAMETER_PEERS.dec()
        self.conn.move(Trigger.TRANSPORT_CLOSED)
        for fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError("peer connection closed"))
        self.waiters.clear()
        if self.conn.peer_host:
            log.info("diameter_peer_closed", peer=self.conn.peer_host,
                     address=self.peer_address)

    # events
    def apply(self, events: list[Event]) -> None:
        t = self.transport
        for ev in events:
            if isinstance(ev, Send):
                self.write(ev.data)
            elif isinstance(ev, Request):
                self.node.dispatch(self, ev)
            elif isinstance(ev, Answer):
                fut = self.waiters.pop(ev.message.hbh, None)
                if fut is not None and not fut.done():
                    fut.set_result(ev.message)
            elif isinstance(ev, Close):
                quiet = ev.reason in ("peer sent DPR", "DPA received")
                if ev.reason == "no CER":
                    _refused("cer_timeout")
                elif ev.reason.startswith("framing") and not self.conn.peer_host:
                    _refused("oversize_before_cer")
                (log.info if quiet else log.warning)(
                    "diameter_close", reason=ev.reason, address=self.peer_address,
                    peer=self.conn.peer_host)
                self._flush()
                if t is not None:
                    t.close()
        if not self._announced and self.conn.state is State.OPEN:
            self._announced = True
            metrics.DIAMETER_PEERS.inc()
            log.info("diameter_peer_open", peer=self.conn.peer_host, realm=self.conn.peer_realm,
                     address=self.peer_address)

    def write(self, data: bytes) -> None:
        """Queue an answer; answers completed in one loop iteration leave in one write."""
        self._out.append(data)
        if len(self._out) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        out, self._out = self._out, []
        t = self.transport
        if t is not None and not t.is_closing() and out:
            t.write(out[0] if len(out) == 1 else b"".join(out))

    async def request(self, code: int, app: int, body: bytes, timeout: float) -> c.Message:
        """Send a request of ours (RAR, ASR) and wait for its answer."""
        if self.conn.state is not State.OPEN:
            raise ConnectionError("peer connection not open")
        data, hbh = self.conn.request(code, app, body, proxiable=True)
        fut: asyncio.Future[c.Message] = asyncio.get_running_loop().create_future()
        self.waiters[hbh] = fut
        self.write(data)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.waiters.pop(hbh, None)
            self.conn.pending.pop(hbh, None)


SWEEP_LIMIT = 20_000
"""Sessions checked per sweep (the rest next time: the table rotates)."""
SWEEP_CHUNK = 256


class DiameterNode:
    """The Diameter server: listener, connections, duplicate cache, watchdog and the
    server-initiated RAR/ASR sweep."""

    def __init__(self, agent: GyAgent, local: LocalNode, *, watchdog_s: float = 30.0,
                 tx_timeout_s: float = 10.0, dedup_window_s: float = 240.0,
                 max_pending_per_peer: int = 4096, sweep_interval_s: float = 5.0,
                 max_connections: int = 1024, cer_timeout_s: float = 10.0,
                 max_message: int = c.MAX_MESSAGE, write_buffer_bytes: int = 1 << 20,
                 write_stall_s: float = 30.0):
        self.agent = agent
        self.max_connections = max_connections
        self.cer_timeout_s = cer_timeout_s
        self.max_message = max_message
        self.write_buffer_bytes = write_buffer_bytes
        self.write_stall_s = write_stall_s
        self.local = local
        self.watchdog_s = watchdog_s
        self.tx_timeout_s = tx_timeout_s
        self.max_pending = max_pending_per_peer
        self.sweep_interval_s = sweep_interval_s
        self.dedup = DuplicateCache(dedup_window_s)
        self._inflight: dict[tuple[str, str, int], asyncio.Future[bytes]] = {}
        self.connections: set[DiameterProtocol] = set()
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []

    def reconfigure(self, cfg: Config) -> None:
        """A config reload: who may connect (allowed_peers) and relay (relay_peers). Peers
        already connected stay; their next CER (a reconnect) meets the new lists."""
        if cfg.diameter is not None:
            self.local = dataclasses.replace(self.local,
                                             allowed_peers=tuple(cfg.diameter.allowed_peers),
                                             relay_peers=tuple(cfg.diameter.relay_peers))

    # -- requests -------------------------------------------------------------------------

    def dispatch(self, proto: DiameterProtocol, ev: Request) -> None:
        msg = ev.message
        origin = msg.find(A.ORIGIN_HOST)
        # keyed by the peer that did the CER as well: a peer cannot reach another's answers
        key = (proto.conn.peer_host, origin.data.decode("utf-8", "replace") if origin else "",
               msg.e2e)
        stored = self.dedup.get(key)
        if stored is not None:
            metrics.DIAMETER_DUPLICATES.inc()
            if stored:
                proto.write(with_hbh(stored, msg.hbh))
            else:  # the first copy is still being processed: answer when it is done
                first = self._inflight.get(key)
                if first is not None:
                    self._spawn(self._answer_later(proto, first, msg.hbh))
            return
        if proto.inflight >= self.max_pending:
            _count_answer(Rc.TOO_BUSY)
            proto.write(answer_for(msg, self.local, Rc.TOO_BUSY, error=True,
                                   text="too many requests in flight"))
            return
        self.dedup.begin(key, time.monotonic())
        proto.inflight += 1
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        self._spawn(self._handle(proto, msg, key, fut))

    async def _answer_later(self, proto: DiameterProtocol, first: asyncio.Future[bytes],
                            hbh: int) -> None:
        with contextlib.suppress(Exception):
            proto.write(with_hbh(await asyncio.shield(first), hbh))

    async def _handle(self, proto: DiameterProtocol, msg: c.Message, key: tuple[str, str, int],
                      fut: asyncio.Future[bytes]) -> None:
        keep = True
        started = time.monotonic()
        try:
            answer = await self.agent.handle(msg, proto)
        except MessageError as exc:
            answer = error_answer(msg, self.local, exc)
        except ChargingBusy as exc:
            keep = False  # a retry must be processed, not replayed
            answer = answer_for(msg, self.local, Rc.TOO_BUSY, error=True, text=str(exc))
        except ChargingPaused as exc:  # e.g. no room for CDRs: the server raised an alarm
            keep = False
            answer = answer_for(msg, self.local, Rc.UNABLE_TO_COMPLY, text=str(exc))
        except ChargingUnavailable as exc:
            keep = False
            log.error("diameter_store_error", error=str(exc))
            answer = answer_for(msg, self.local, Rc.UNABLE_TO_COMPLY, text="store error")
        except Exception:
            keep = False
            log.exception("diameter_handler_failed", hbh=msg.hbh, command=msg.code)
            answer = answer_for(msg, self.local, Rc.UNABLE_TO_COMPLY, text="internal error")
        finally:
            proto.inflight -= 1
            self._inflight.pop(key, None)
        if keep:
            self.dedup.finish(key, answer)
        else:
            self.dedup.forget(key)
        fut.set_result(answer)
        _count_answer(_result_code(answer))
        _SECONDS.observe(time.monotonic() - started)
        proto.write(answer)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- server-initiated -----------------------------------------------------------------

    async def reauthorize(self, session_id: str) -> int | None:
        """Send a RAR for a live session; the RAA Result-Code, or None when the session
        or its peer is gone. RAA 5002 drops the session."""
        sess = self.agent.sessions.get(session_id)
        if sess is None:
            return None
        return await self._notify("rar", sess)

    async def abort_session(self, session_id: str) -> int | None:
        """Send an ASR for a live session (fraud block, subscriber blocked)."""
        sess = self.agent.sessions.get(session_id)
        if sess is None:
            return None
        return await self._notify("asr", sess)

    async def _notify(self, kind: str, sess: GySession) -> int | None:
        proto = sess.peer
        if not isinstance(proto, DiameterProtocol) or proto.conn.state is not State.OPEN:
            return None
        sess.notified = kind
        if kind == "rar":
            code, body = Cmd.RAR, self.agent.rar_body(sess)
        else:
            code, body = Cmd.ASR, self.agent.asr_body(sess)
        try:
            ans = await proto.request(code, c.App.CREDIT_CONTROL, body, self.tx_timeout_s)
        except (TimeoutError, ConnectionError) as exc:
            log.warning("diameter_notify_failed", kind=kind, session=sess.session_id,
                        error=str(exc) or type(exc).__name__)
            sess.notified = ""  # try again on the next sweep
            return None
        rc_avp = ans.find(A.RESULT_CODE)
        rc = rc_avp.u32 if rc_avp is not None and len(rc_avp.data) == 4 else 0
        metrics.DIAMETER_NOTIFICATIONS.labels(kind=kind, result=str(rc)).inc()
        log.info("diameter_notify", kind=kind, session=sess.session_id, result=rc)
        if rc == Rc.UNKNOWN_SESSION_ID or (kind == "asr" and rc == Rc.SUCCESS):
            await self.agent.release_session(sess.session_id)
        return rc

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                await self.sweep()
            except Exception as exc:  # a store hiccup must not end the sweeps
                log.warning("diameter_sweep_failed", error=str(exc))

    async def sweep(self, limit: int = SWEEP_LIMIT) -> None:
        """One pass over (up to ``limit``) live sessions, in chunks with the event loop
        free in between: a pass over 20,000 sessions costs ~100 ms of store reads, which
        in one piece would hold up every answer that long."""
        todo = min(limit, len(self.agent.sessions))
        while todo > 0:
            n = min(SWEEP_CHUNK, todo)
            for kind, sess in self.agent.sweep(limit=n):
                self._spawn(self._notify(kind, sess))
            todo -= n
            await asyncio.sleep(0)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, host: str, port: int, *, reuse_port: bool = False
                    ) -> tuple[str, int]:
        """Listen; with ``reuse_port`` other worker processes share the port."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: DiameterProtocol(self), host, port,
                                               reuse_address=True, reuse_port=reuse_port,
                                               backlog=1024)
        self._loops = [loop.create_task(self._sweep_loop())]
        sock = self.server.sockets[0].getsockname()
        log.info("diameter_listening", address=f"{sock[0]}:{sock[1]}",
                 origin_host=self.local.origin_host)
        return str(sock[0]), int(sock[1])

    async def close(self, timeout: float = 5.0) -> None:
        """Stop intake, answer what is in flight, send DPR (REBOOTING) to open peers."""
        for t in self._loops:
            t.cancel()
        if self.server is not None:
            self.server.close()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for proto in list(self.connections):
            proto.apply(proto.conn.disconnect())
        deadline = time.monotonic() + min(timeout, 2.0)
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for proto in list(self.connections):
            if proto.transport is not None:
                proto.transport.close()


_ANSWER_COUNTERS: dict[int, Any] = {}


_SECONDS = metrics.REQUEST_SECONDS.labels("diameter")


def _refused(reason: str) -> None:
    metrics.DIAMETER_REFUSED.labels(reason).inc()


def _count_answer(rc: int) -> None:
    counter = _ANSWER_COUNTERS.get(rc)
    if counter is None:
        counter = _ANSWER_COUNTERS[rc] = metrics.DIAMETER_ANSWERS.labels(result=str(rc))
    counter.inc()


def _result_code(answer: bytes) -> int:
    """Result-Code of an answer we built (top-level AVP headers scanned, nothing copied)."""
    pos, end = c.HEADER_LEN, len(answer)
    while pos + 12 <= end:
        code = int.from_bytes(answer[pos:pos + 4], "big")
        length = int.from_bytes(answer[pos + 5:pos + 8], "big")
        if length < 8:
            return 0
        if code == A.RESULT_CODE and length == 12 and not answer[pos + 4] & c.AVP_V:
            return int.from_bytes(answer[pos + 8:pos + 12], "big")
        pos += (length + 3) & ~3
    return 0


async def start_diameter(server: Any) -> DiameterNode:
    """``ocs serve`` starter for the ``[diameter]`` section."""
    cfg = server.cfg.diameter
    host, port = parse_listen(cfg.listen)
    addresses = (host,) if host not in ("0.0.0.0", "::", "") else ("127.0.0.1",)
    local = LocalNode(origin_host=cfg.origin_host, origin_realm=cfg.origin_realm,
                      host_addresses=addresses,
                      origin_state_id=server.origin_state_id,
                      allowed_peers=tuple(cfg.allowed_peers),
                      relay_peers=tuple(cfg.relay_peers))
    settings = GySettings(origin_host=cfg.origin_host, origin_realm=cfg.origin_realm,
                          validity_s=cfg.default_validity_s,
                          quota_threshold_percent=cfg.quota_threshold_percent,
                          quota_holding_s=cfg.quota_holding_s,
                          final_unit_action=cfg.final_unit_action,
                          redirect_url=cfg.redirect_url,
                          currency=server.cfg.node.currency)
    agent = GyAgent(server.charging, settings)
    node = DiameterNode(agent, local, watchdog_s=cfg.watchdog_s, tx_timeout_s=cfg.tx_timeout_s,
                        dedup_window_s=cfg.dedup_window_s,
                        max_pending_per_peer=cfg.max_pending_per_peer,
                        sweep_interval_s=server.cfg.charging.reaper_interval_s,
                        max_connections=cfg.max_connections, cer_timeout_s=cfg.cer_timeout_s,
                        max_message=cfg.max_message_bytes,
                        write_buffer_bytes=cfg.write_buffer_kb * 1024,
                        write_stall_s=cfg.write_stall_s)
    node.address = await node.start(  # type: ignore[attr-defined]
        host, port, reuse_port=server.reuse_port)
    server.diameter = node
    return node
