"""The composition root: what ``ocs serve`` is made of, wired in one place.

The core (:mod:`ocs.server`: store, writer, charging, reaper, admin) knows no protocol;
the protocol packages know the core only through :mod:`ocs.charging.api`. This module
imports both and hands the server the listeners of this build, one starter per config
section. ``python -m ocs.app`` is a worker process of ``ocs serve --workers N``
(:mod:`ocs.workers` starts it; worker 0 is ``ocs serve`` itself).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import sys
from typing import Any

import structlog

from ocs import logs, sdnotify
from ocs.config import Config
from ocs.server import Server, Starter
from ocs.workers import READY, stop_with_parent
from protocols.diameter.transport import start_diameter
from protocols.nchf.transport import start_chf
from protocols.radius.transport import start_radius
from protocols.smpp.transport import start_smpp
from protocols.snmp.transport import start_snmp

log = structlog.get_logger(__name__)


async def start_api(server: Server) -> Any:
    """The REST API (imported when configured: Litestar and uvicorn take ~0.4 s to import,
    paid otherwise by every server and worker start)."""
    from ocs.api.server import start_api as start

    return await start(server)


LISTENERS: dict[str, Starter] = {
    "diameter": start_diameter,
    "radius": start_radius,
    "smpp": start_smpp,
    "snmp": start_snmp,
    "chf": start_chf,
    "api": start_api,
}
"""Config section -> the starter of its listener (run when the section is enabled)."""


def build_server(cfg: Config, *, worker: int = 0, workers: int = 1,
                 writer_path: str = "") -> Server:
    """A server with every listener of this build."""
    return Server(cfg, worker=worker, workers=workers, writer_path=writer_path,
                  listeners=LISTENERS)


async def serve(cfg: Config, workers: int = 1) -> None:
    """``ocs serve``: run until SIGTERM / SIGINT, then stop in order. Under systemd
    (``Type=notify``) it says READY=1 once every listener of every worker is bound, pings
    the watchdog from the event loop, and says STOPPING=1 when it begins to stop."""
    sdnotify.take_environment()  # before any worker is started: they must not inherit it
    ping = sdnotify.watchdog_interval()
    server = build_server(cfg, workers=workers)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # a stop asked for while starting waits
        loop.add_signal_handler(sig, server.request_stop)  # for the start, then stops
    loop.add_signal_handler(signal.SIGHUP, _reload, server)
    watchdog: asyncio.Task[None] | None = None
    try:
        await server.start()  # a failed start still stops what it had started
        sdnotify.notify(f"READY=1\nSTATUS=serving, {workers} worker(s)\nMAINPID={os.getpid()}")
        if ping:
            watchdog = asyncio.create_task(_watchdog(ping), name="sd-watchdog")
        await server.wait()
    finally:
        sdnotify.notify("STOPPING=1\nSTATUS=stopping")
        if watchdog is not None:
            watchdog.cancel()
        await server.stop()


def _reload(server: Server) -> None:
    sdnotify.notify("RELOADING=1")
    server.reload()
    sdnotify.notify("READY=1")


async def _watchdog(every_s: float) -> None:
    """WATCHDOG=1 while the event loop turns: a loop stuck for WatchdogSec gets the
    service restarted (Restart=on-failure)."""
    while True:
        sdnotify.notify("WATCHDOG=1")
        await asyncio.sleep(every_s)


def run(cfg: Config, workers: int = 1) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(serve(cfg, workers))
    else:
        uvloop.run(serve(cfg, workers))


# -- a worker process (1..N-1) -------------------------------------------------------------


async def _worker(payload: dict[str, Any]) -> None:
    server = build_server(payload["cfg"], worker=payload["index"],
                          workers=payload["workers"], writer_path=payload["writer_path"])
    server.origin_state_id = payload["origin_state_id"]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    parent = payload["parent_pid"]

    async def watch_parent() -> None:
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != parent:
                log.error("worker_orphaned", parent_pid=parent)
                server.request_stop()
                return

    watcher = asyncio.create_task(watch_parent())
    try:
        await server.start()
        os.write(1, READY)
        await server.wait()
    finally:
        watcher.cancel()
        await server.stop()


def worker_main() -> None:
    stop_with_parent()
    payload = pickle.loads(sys.stdin.buffer.read())  # from worker 0, over a pipe
    if os.getppid() != payload["parent_pid"]:
        return  # worker 0 died before the death signal was set up
    cfg: Config = payload["cfg"]
    logs.configure(cfg.node.log_format)
    structlog.contextvars.bind_contextvars(worker=payload["index"])
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(_worker(payload))
    else:
        uvloop.run(_worker(payload))


if __name__ == "__main__":
    worker_main()
