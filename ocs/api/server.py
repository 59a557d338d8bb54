"""The REST API listener of ``ocs serve`` (worker 0): the Litestar app on hypercorn.

Hypercorn runs in the server's own event loop (no signal handlers of its own: the
server's SIGTERM ends it through ``shutdown_trigger``), on a socket bound here so that
a port of 0 gives the address actually bound. Handlers run on a small thread pool
(:data:`THREADS`), so a burst of API requests cannot take every core from charging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import anyio.to_thread
import structlog
from hypercorn.asyncio import serve
from hypercorn.config import Config as HyperConfig

from ocs.api.app import ApiContext, create_app
from ocs.config import parse_listen

log = structlog.get_logger(__name__)

THREADS = 4
"""Handlers at once (each a store read, a CDR file scan or one provisioning write)."""


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
                     max_page=api.max_page)
    app = create_app(ctx, max_body=api.max_body_kb * 1024)
    hc = HyperConfig()
    hc.bind = [f"fd://{sock.detach()}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("ocs.api.http")
    hc.read_timeout = max(1, int(api.request_timeout_s))
    hc.keep_alive_timeout = api.request_timeout_s  # also ends a request's head left half-sent
    hc.graceful_timeout = 3
    hc.include_server_header = False
    anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(app, hc, shutdown_trigger=stop.wait, mode="asgi"),  # type: ignore[arg-type]
        name="api")
    listener = ApiListener((str(address[0]), int(address[1])), task, stop)
    server.api = listener
    log.info("api_listening", address=f"{address[0]}:{address[1]}")
    return listener
