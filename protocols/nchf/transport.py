"""asyncio adapter for the CHF: HTTP/2 (h2c with prior knowledge, or TLS with ALPN h2)
and HTTP/1.1 on one port, over the sans-IO ``h2`` and ``h11`` state machines.

Thin on purpose: bytes in -> h2/h11 events -> :meth:`ChfAgent.handle` -> bytes out. A
connection is HTTP/2 when it opens with the client preface (``PRI * HTTP/2.0``) or TLS
negotiated ``h2``; anything else is HTTP/1.1. What a hostile or broken client gets:
a malformed frame or request closes its connection (GOAWAY / 400), a body above
``max_body_bytes`` is a 413, streams beyond ``max_streams`` are refused by HTTP/2 itself,
a burst of resets (the "rapid reset" attack) or a request that does not complete within
``request_timeout_s`` closes the connection, and past ``max_connections`` new ones are
closed at once. Every such drop is counted (``ocs_chf_dropped{reason}``).

Notifications (REAUTHORIZATION, ABORT_CHARGING) go out with httpx: HTTP/2 with prior
knowledge to ``http://`` notify URIs (what an SBI consumer serves), falling back to
HTTP/1.1 for a consumer that does not speak it; ALPN over ``https://``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11
import httpx
import structlog

from ocs import metrics
from ocs.config import parse_listen
from protocols.nchf.agent import ChfAgent, ChfSession, ChfSettings, HttpAnswer
from protocols.nchf.messages import PROBLEM_JSON, problem

log = structlog.get_logger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SWEEP_LIMIT = 20_000
SWEEP_CHUNK = 256


_SECONDS = metrics.REQUEST_SECONDS.labels("nchf")


def _drop(reason: str) -> None:
    metrics.CHF_DROPPED.labels(reason).inc()


class _Stream:
    __slots__ = ("body", "ctype", "method", "path", "started")

    def __init__(self, method: str, path: str, ctype: str, started: float):
        self.method = method
        self.path = path
        self.ctype = ctype
        self.body = bytearray()
        self.started = started


def _json_type(ctype: str) -> bool:
    media = ctype.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                           and media.endswith("+json"))


class ChfProtocol(asyncio.Protocol):
    """One client connection, HTTP/2 or HTTP/1.1."""

    def __init__(self, server: ChfServer):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.h2: h2.connection.H2Connection | None = None
        self.h1: h11.Connection | None = None
        self._sniff = b""
        self.streams: dict[int, _Stream] = {}
        self._pending: dict[int, bytes] = {}
        """HTTP/2 answer bodies waiting for the client's flow-control window."""
        self.inflight = 0
        self.buffered = 0
        self.resets: list[float] = []
        self.last_activity = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._h1_request: _Stream | None = None
        self._h1_busy = False
        self._write_paused = False
        self.closed = False

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        srv = self.server
        if len(srv.connections) >= srv.max_connections:
            _drop("max_connections")
            transport.close()
            self.closed = True
            return
        self.transport = transport  # type: ignore[assignment]
        srv.connections.add(self)
        ssl_obj = transport.get_extra_info("ssl_object")
        if ssl_obj is not None:
            proto = ssl_obj.selected_alpn_protocol()
            if proto == "h2":
                self._start_h2(b"")
            else:
                self._start_h1(b"")
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self.streams.clear()
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if self.h2 is not None:
            self._h2_data(data)
        elif self.h1 is not None:
            self._h1_data(data)
        else:
            self._sniff += data
            n = min(len(self._sniff), len(PREFACE))
            if self._sniff[:n] != PREFACE[:n]:
                self._start_h1(self._sniff)
            elif len(self._sniff) >= len(PREFACE):
                self._start_h2(self._sniff)

    def pause_writing(self) -> None:
        self._write_paused = True  # the client does not read: stop taking work
        self._reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._reading()

    def _reading(self) -> None:
        """Read while the client reads our answers and no HTTP/1.1 request is waiting
        for its answer (h11 would buffer whatever came meanwhile)."""
        if self.transport is None or self.closed:
            return
        if self._write_paused or self._h1_busy:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    # -- timers -----------------------------------------------------------------------

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(1.0, self._tick)

    def _tick(self) -> None:
        if self.closed:
            return
        now = time.monotonic()
        srv = self.server
        late = [s for s in self.streams.values() if now - s.started > srv.request_timeout_s]
        if self._h1_request is not None and now - self._h1_request.started > (
                srv.request_timeout_s):
            late.append(self._h1_request)
        if late:
            _drop("request_timeout")
            self._abort(h2.errors.ErrorCodes.CANCEL)
            return
        if (not self.inflight and not self.streams and self._h1_request is None
                and now - self.last_activity > srv.idle_timeout_s):
            _drop("idle")
            self._abort(h2.errors.ErrorCodes.NO_ERROR)
            return
        self._arm()

    def _abort(self, code: int) -> None:
        if self.h2 is not None:
            with contextlib.suppress(Exception):
                self.h2.close_connection(error_code=code)
                self._flush()
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    # -- HTTP/2 -----------------------------------------------------------------------

    def _start_h2(self, data: bytes) -> None:
        srv = self.server
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: srv.max_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16384,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535,
        })
        conn.initiate_connection()
        self.h2 = conn
        self._flush()
        if data:
            self._h2_data(data)

    def _h2_data(self, data: bytes) -> None:
        conn = self.h2
        assert conn is not None
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            _drop("h2_protocol_error")
            log.info("nchf_h2_protocol_error", error=str(exc)[:200])
            self._abort(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        srv = self.server
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                method = path = ctype = ""
                length = -1
                for name, value in ev.headers or ():
                    if name == b":method":
                        method = value.decode("latin-1")
                    elif name == b":path":
                        path = value.decode("latin-1")
                    elif name == b"content-type":
                        ctype = value.decode("latin-1")
                    elif name == b"content-length":
                        length = int(value) if value.isdigit() else -1
                sid = ev.stream_id
                if length > srv.max_body_bytes:
                    self._answer_h2(sid, HttpAnswer(
                        413, problem(413, "", "body too large"), PROBLEM_JSON))
                    _drop("body_too_large")
                    continue
                self.streams[sid] = _Stream(method, path, ctype, time.monotonic())
            elif isinstance(ev, h2.events.DataReceived):
                sid = ev.stream_id
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                st = self.streams.get(sid)
                if st is None:
                    continue
                st.body += ev.data
                self.buffered += len(ev.data)
                if len(st.body) > srv.max_body_bytes:
                    _drop("body_too_large")
                    self._release_stream(sid)
                    self._answer_h2(sid, HttpAnswer(
                        413, problem(413, "", "body too large"), PROBLEM_JSON))
                elif self.buffered > srv.max_buffered_bytes:
                    _drop("buffered")
                    self._abort(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                    return
            elif isinstance(ev, h2.events.StreamEnded):  # (h2 reports the end once here,
                self._dispatch_h2(ev.stream_id)  # besides on the last headers or data)
            elif isinstance(ev, h2.events.StreamReset):
                self._release_stream(ev.stream_id)
                self._pending.pop(ev.stream_id, None)
                now = time.monotonic()
                self.resets = [t for t in self.resets if now - t < 1.0]
                self.resets.append(now)
                if len(self.resets) > srv.max_resets_per_s:
                    _drop("rapid_reset")
                    self._abort(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                    return
            elif isinstance(ev, h2.events.WindowUpdated):
                self._send_pending()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                if self.transport is not None:
                    self.transport.close()
                self.closed = True
                return
        self._flush()

    def _release_stream(self, sid: int) -> None:
        st = self.streams.pop(sid, None)
        if st is not None:
            self.buffered -= len(st.body)

    def _dispatch_h2(self, sid: int) -> None:
        st = self.streams.get(sid)
        if st is None or st.started == float("inf"):
            return  # answered already (413), or dispatched
        st.started = float("inf")  # complete: no request timeout while it is answered
        body = bytes(st.body)
        self._release_stream(sid)
        st.body = bytearray()  # the agent has its copy
        self.streams[sid] = st  # kept (without its body) until answered or reset
        self._run(st, body, lambda ans: self._answer_h2(sid, ans))

    def _answer_h2(self, sid: int, ans: HttpAnswer) -> None:
        self.streams.pop(sid, None)
        conn = self.h2
        if conn is None or self.closed:
            return
        try:
            conn.send_headers(sid, _headers(ans), end_stream=not ans.body)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return  # reset by the client meanwhile
        if ans.body:
            self._pending[sid] = ans.body
            self._send_pending()
        self._flush()

    def _send_pending(self) -> None:
        conn = self.h2
        if conn is None:
            return
        for sid in list(self._pending):
            body = self._pending[sid]
            try:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                del self._pending[sid]
                continue
            while body and window > 0:
                chunk, body = body[:window], body[window:]
                conn.send_data(sid, chunk, end_stream=not body)
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if body:
                self._pending[sid] = body
            else:
                del self._pending[sid]
        self._flush()

    def _flush(self) -> None:
        if self.h2 is None or self.transport is None:
            return
        out = self.h2.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)

    # -- HTTP/1.1 ---------------------------------------------------------------------

    def _start_h1(self, data: bytes) -> None:
        self.h1 = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
        if data:
            self._h1_data(data)

    def _h1_data(self, data: bytes) -> None:
        assert self.h1 is not None
        try:
            self.h1.receive_data(data)
        except RuntimeError:  # data after the connection was closed
            return
        self._h1_events()

    def _h1_events(self) -> None:
        conn = self.h1
        assert conn is not None
        srv = self.server
        while not self._h1_busy and not self.closed:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as exc:
                _drop("http1_protocol_error")
                self._h1_fail(exc.error_status_hint, str(exc))
                return
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.Request):
                ctype = ""
                length = 0
                for name, value in ev.headers:
                    if name == b"content-type":
                        ctype = value.decode("latin-1")
                    elif name == b"content-length":
                        length = int(value)
                if length > srv.max_body_bytes:
                    _drop("body_too_large")
                    self._h1_fail(413, "body too large")
                    return
                self._h1_request = _Stream(ev.method.decode("latin-1"),
                                           ev.target.decode("latin-1"), ctype, time.monotonic())
            elif isinstance(ev, h11.Data):
                st = self._h1_request
                if st is not None:
                    st.body += ev.data
                    if len(st.body) > srv.max_body_bytes:
                        _drop("body_too_large")
                        self._h1_fail(413, "body too large")
                        return
            elif isinstance(ev, h11.EndOfMessage):
                st = self._h1_request
                self._h1_request = None
                if st is None:
                    continue
                self._h1_busy = True
                self._reading()
                self._run(st, bytes(st.body), self._answer_h1)
                return
            elif isinstance(ev, h11.ConnectionClosed):
                if self.transport is not None:
                    self.transport.close()
                return

    def _h1_fail(self, status: int, detail: str) -> None:
        conn = self.h1
        if conn is not None and conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with contextlib.suppress(h11.LocalProtocolError):
                body = problem(status, "", detail[:200])
                self._h1_write(conn.send(h11.Response(status_code=status, headers=[
                    ("content-type", PROBLEM_JSON), ("content-length", str(len(body))),
                    ("connection", "close")])))
                self._h1_write(conn.send(h11.Data(data=body)))
                self._h1_write(conn.send(h11.EndOfMessage()))
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def _h1_write(self, data: bytes | None) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _answer_h1(self, ans: HttpAnswer) -> None:
        conn = self.h1
        if conn is None or self.closed:
            return
        headers = [(k.encode(), v.encode()) for k, v in _headers(ans)[1:]]
        try:
            self._h1_write(conn.send(h11.Response(status_code=ans.status, headers=headers)))
            if ans.body:
                self._h1_write(conn.send(h11.Data(data=ans.body)))
            self._h1_write(conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            self._abort(0)
            return
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            if self.transport is not None:
                self.transport.close()
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            if self.transport is not None:
                self.transport.close()
            return
        self._h1_busy = False
        self._reading()
        # the next pipelined request on the next loop turn: answered at once (a 415),
        # going on from here would recurse once per request
        asyncio.get_running_loop().call_soon(self._h1_events)

    # -- the agent --------------------------------------------------------------------

    def _run(self, st: _Stream, body: bytes, reply: Any) -> None:
        if st.method == "POST" and st.ctype and not _json_type(st.ctype):
            reply(HttpAnswer(415, problem(415, "", "application/json expected"), PROBLEM_JSON))
            return
        self.inflight += 1
        started = time.monotonic()
        fut = asyncio.ensure_future(self.server.agent.handle(st.method, st.path, body))
        op = "create" if st.path.rstrip("/").endswith("chargingdata") else (
            st.path.rsplit("/", 1)[-1] if st.path.endswith(("/update", "/release")) else "other")

        def done(f: asyncio.Future[HttpAnswer]) -> None:
            self.inflight -= 1
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                log.error("nchf_handler_failed", error=repr(exc)[:300])
                ans = HttpAnswer(500, problem(500, "SYSTEM_FAILURE", "internal error"),
                                 PROBLEM_JSON)
            else:
                ans = f.result()
            metrics.CHF_REQUESTS.labels(op, str(ans.status)).inc()
            _SECONDS.observe(time.monotonic() - started)
            reply(ans)

        fut.add_done_callback(done)


def _headers(ans: HttpAnswer) -> list[tuple[str, str]]:
    h = [(":status", str(ans.status))]
    if ans.content_type:
        h.append(("content-type", ans.content_type))
    if ans.status != 204:  # RFC 9110 §8.6: never in a 204
        h.append(("content-length", str(len(ans.body))))
    if ans.location:
        h.append(("location", ans.location))
    if ans.retry_after:
        h.append(("retry-after", str(ans.retry_after)))
    return h


class Notifier:
    """POSTs ChargingNotifyRequests to consumers, with retries and a bound on how many
    are in flight (past it a notification waits for the next sweep)."""

    def __init__(self, *, retries: int = 3, timeout_s: float = 5.0, max_inflight: int = 256,
                 backoff_s: float = 1.0):
        self.retries = retries
        self.timeout_s = timeout_s
        self.max_inflight = max_inflight
        self.backoff_s = backoff_s
        self.inflight = 0
        self._h2 = httpx.AsyncClient(http1=False, http2=True, timeout=timeout_s,
                                     follow_redirects=False)
        self._h1 = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._https = httpx.AsyncClient(http2=True, timeout=timeout_s, follow_redirects=False)
        self._http1_only: set[str] = set()
        """Consumers (scheme://host:port) that answered HTTP/2 with HTTP/1.1."""

    async def close(self) -> None:
        for c in (self._h2, self._h1, self._https):
            await c.aclose()

    async def _post(self, uri: str, body: bytes) -> int:
        url = httpx.URL(uri)
        origin = f"{url.scheme}://{url.host}:{url.port}"
        headers = {"content-type": "application/json"}
        if url.scheme == "https":
            return (await self._https.post(uri, content=body, headers=headers)).status_code
        if origin not in self._http1_only:
            try:
                return (await self._h2.post(uri, content=body, headers=headers)).status_code
            except httpx.RemoteProtocolError:
                self._http1_only.add(origin)  # an HTTP/1.1 server answered our preface
        return (await self._h1.post(uri, content=body, headers=headers)).status_code

    async def send(self, kind: str, uri: str, body: bytes) -> bool:
        """True when the consumer took it (2xx)."""
        self.inflight += 1
        try:
            delay = self.backoff_s
            for attempt in range(self.retries + 1):
                try:
                    status = await self._post(uri, body)
                except (httpx.HTTPError, OSError, ValueError) as exc:
                    status, error = 0, str(exc) or type(exc).__name__
                else:
                    error = ""
                if 200 <= status < 300:
                    metrics.CHF_NOTIFICATIONS.labels(kind, "delivered").inc()
                    return True
                if 400 <= status < 500 and status not in (408, 429):
                    break  # the consumer refuses it: retrying will not help
                log.info("nchf_notify_retry", kind=kind, attempt=attempt, status=status,
                         error=error[:200])
                if attempt < self.retries:
                    metrics.CHF_NOTIFICATIONS.labels(kind, "retried").inc()
                    await asyncio.sleep(delay)
                    delay *= 2
            metrics.CHF_NOTIFICATIONS.labels(kind, "failed").inc()
            log.warning("nchf_notify_failed", kind=kind)
            return False
        finally:
            self.inflight -= 1


class ChfServer:
    """The CHF: listener, connections, and the notification sweep."""

    def __init__(self, agent: ChfAgent, *, max_connections: int = 1024,
                 max_streams: int = 128, max_body_bytes: int = 65536,
                 max_buffered_bytes: int = 1 << 20, request_timeout_s: float = 10.0,
                 idle_timeout_s: float = 300.0, max_resets_per_s: int = 200,
                 sweep_interval_s: float = 5.0, notifier: Notifier | None = None):
        self.agent = agent
        self.max_connections = max_connections
        self.max_streams = max_streams
        self.max_body_bytes = max_body_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self.request_timeout_s = request_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_resets_per_s = max_resets_per_s
        self.sweep_interval_s = sweep_interval_s
        self.notifier = notifier or Notifier()
        self.connections: set[ChfProtocol] = set()
        self.server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, *, ssl_ctx: ssl.SSLContext | None = None,
                    reuse_port: bool = False) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: ChfProtocol(self), host, port,
                                               ssl=ssl_ctx, reuse_port=reuse_port or None,
                                               backlog=1024)
        sock = self.server.sockets[0].getsockname()
        self.address = (sock[0], sock[1])
        self._loop_task = asyncio.create_task(self._sweep_loop(), name="nchf-sweep")
        log.info("nchf_listening", address=f"{sock[0]}:{sock[1]}",
                 tls=ssl_ctx is not None)
        return self.address

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self.server is not None:
            self.server.close()
        for proto in list(self.connections):
            proto._abort(h2.errors.ErrorCodes.NO_ERROR)
        for t in list(self._tasks):
            t.cancel()
        await self.notifier.close()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                await self.sweep()
            except Exception as exc:  # a store hiccup must not end the sweeps
                log.warning("nchf_sweep_failed", error=str(exc))

    async def sweep(self, limit: int = SWEEP_LIMIT) -> None:
        todo = min(limit, len(self.agent.sessions))
        while todo > 0:
            n = min(SWEEP_CHUNK, todo)
            for kind, sess in self.agent.sweep(limit=n):
                if self.notifier.inflight >= self.notifier.max_inflight:
                    sess.notified = ""  # the next sweep
                    continue
                self._spawn(self.notify(kind, sess))
            todo -= n
            await asyncio.sleep(0)

    async def notify(self, kind: str, sess: ChfSession) -> bool:
        sess.notified = kind
        ok = await self.notifier.send(kind, sess.notify_uri, self.agent.notify_body(kind))
        log.info("nchf_notify", kind=kind, ref=sess.session_id, delivered=ok)
        if not ok:
            sess.notified = ""  # reviewed again on a later sweep
        return ok


def _tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def start_chf(server: Any) -> ChfServer:
    """``ocs serve`` starter for the ``[chf]`` section."""
    cfg = server.cfg.chf
    host, port = parse_listen(cfg.listen)
    ssl_ctx = None
    scheme = "http"
    if cfg.tls_cert and cfg.tls_key:
        ssl_ctx = _tls_context(str(server.cfg.under_data(cfg.tls_cert)),
                               str(server.cfg.under_data(cfg.tls_key)))
        scheme = "https"
    settings = ChfSettings(validity_s=server.cfg.charging.default_validity_s,
                           quota_threshold_percent=cfg.quota_threshold_percent)
    agent = ChfAgent(server.charging, settings)
    node = ChfServer(agent, max_connections=cfg.max_connections, max_streams=cfg.max_streams,
                     max_body_bytes=cfg.max_body_kb * 1024,
                     request_timeout_s=cfg.request_timeout_s,
                     idle_timeout_s=cfg.idle_timeout_s,
                     sweep_interval_s=server.cfg.charging.reaper_interval_s)
    bound = await node.start(host, port, ssl_ctx=ssl_ctx, reuse_port=server.reuse_port)
    if host not in ("", "0.0.0.0", "::"):  # else a path-absolute Location (RFC 9110)
        authority = f"[{host}]:{bound[1]}" if ":" in host else f"{host}:{bound[1]}"
        agent.s = ChfSettings(validity_s=settings.validity_s,
                              quota_threshold_percent=settings.quota_threshold_percent,
                              api_root=f"{scheme}://{authority}")
    server.chf = node
    return node
