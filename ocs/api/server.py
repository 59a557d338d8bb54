"""The REST API listener of ``ocs serve`` (worker 0): the Litestar app on uvicorn with
the httptools parser.

uvicorn because it costs half of hypercorn's CPU per request here (0.52 vs 1.0 ms of the
server's CPU per request at 500/s, p99 1.2 vs 20 ms: ``python -m sim.bench api``'s
generator against both). It runs in the server's own event loop, with none of its signal
handlers (the server's SIGTERM ends it), on a socket bound here so that a port of 0 gives
the address actually bound. Slow, bloated or too many clients are cut off
(:func:`_guarded_protocol`, :data:`MAX_CONCURRENCY`). Handlers that scan files or write
run on a small thread pool (:data:`THREADS`), so API calls cannot take every core from
charging.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import anyio.to_thread
import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ocs.api.app import ApiContext, create_app
from ocs.config import parse_listen

log = structlog.get_logger(__name__)

THREADS = 4
"""Handlers at once (each a store read, a CDR file scan or one provisioning write)."""


MAX_CONCURRENCY = 1024
"""Connections and requests at once; beyond, uvicorn answers 503."""
MAX_HEAD = 16 * 1024
"""A request's line and headers at most (the body's limit is ``api.max_body_kb``)."""


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the server's own SIGTERM / SIGINT handlers stay in charge


def _guarded_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with what it lacks against slow or bloated clients:
    a request must arrive whole within ``timeout_s`` of the connection (or of the
    previous answer), and its head within :data:`MAX_HEAD` bytes; else the connection is
    closed."""

    class Guarded(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _head = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._head >= 0:  # every byte so far is a head not complete yet
                self._head += len(data)
                if self._head > MAX_HEAD and not self.transport.is_closing():
                    self.transport.close()

        def on_message_begin(self) -> None:
            self._head = 0
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._head = -1
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request must come whole in time too

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return Guarded


class ApiListener:
    def __init__(self, address: tuple[str, int], task: asyncio.Task[None],
                 stop: asyncio.Event):
        self.address = address
        self._task = task
        self._stop = stop

    async def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self._task, timeout=5)


def bind(listen: str) -> socket.socket:
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=256)


async def start_api(server: Any) -> ApiListener:
    """Start the API for ``server`` (an :class:`ocs.server.Server`); sets ``server.api``."""
    cfg = server.cfg
    api = cfg.api
    sock = bind(api.listen)
    address = sock.getsockname()[:2]
    ctx = ApiContext(cfg=cfg, store=server.store, engine=server.engine,
                     writer=server.writer, max_page=api.max_page, cluster=server.cluster)
    app = create_app(ctx, max_body=api.max_body_kb * 1024)
    userver = _Server(uvicorn.Config(
        app, http=_guarded_protocol(api.request_timeout_s), lifespan="off", log_config=None,
        access_log=False, timeout_keep_alive=max(1, int(api.request_timeout_s)),
        limit_concurrency=MAX_CONCURRENCY, server_header=False, date_header=False))
    stop = asyncio.Event()

    async def run() -> None:
        serving = asyncio.create_task(userver.serve(sockets=[sock]))
        await stop.wait()
        userver.should_exit = True
        await serving

    anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
    task = asyncio.create_task(run(), name="api")
    listener = ApiListener((str(address[0]), int(address[1])), task, stop)
    server.api = listener
    log.info("api_listening", address=f"{address[0]}:{address[1]}")
    return listener
