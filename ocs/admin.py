"""The admin HTTP endpoint: ``/healthz`` and Prometheus ``/metrics``.

A few lines of HTTP/1.1 on asyncio streams; one request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ocs.metrics import exposition_registry

_MAX_REQUEST = 8192


class AdminServer:
    def __init__(self, health: Callable[[], dict[str, Any]], *,
                 before_scrape: Callable[[], None] | None = None):
        self._health = health
        self._before_scrape = before_scrape
        """Brings the gauges read from the store (file size, queues, CDR backlog) up to
        date: a scrape sees now, not the last /healthz."""
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, host, port)
        sock = self._server.sockets[0].getsockname()
        return str(sock[0]), int(sock[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            writer.close()
            return
        if len(head) > _MAX_REQUEST:
            writer.close()
            return
        parts = head.split(b"\r\n", 1)[0].split()
        method = parts[0] if parts else b""
        path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
        if method not in (b"GET", b"HEAD"):
            status, ctype, body = "405 Method Not Allowed", "text/plain", b"method not allowed\n"
        elif path == b"/metrics":
            if self._before_scrape is not None:
                with contextlib.suppress(Exception):  # a store hiccup: the last values
                    self._before_scrape()
            body = generate_latest(exposition_registry())
            status, ctype = "200 OK", CONTENT_TYPE_LATEST
        elif path == b"/healthz":
            health = self._health()
            ok = health.get("status") in ("ok", "degraded")  # degraded: a worker restarts
            status = "200 OK" if ok else "503 Service Unavailable"
            ctype, body = "application/json", json.dumps(health).encode() + b"\n"
        else:
            status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
        hdr = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            writer.write(hdr if method == b"HEAD" else hdr + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
