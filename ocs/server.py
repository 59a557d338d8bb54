"""``ocs serve``: store, writer, CDR exporter, reaper, admin endpoint, listeners.

Shutdown on SIGTERM/SIGINT is an explicit sequence: stop intake (close listeners) ->
drain the writer (everything queued is committed and answered) -> export the journal
and close the CDR file -> close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import time
from typing import Any

import structlog

from ocs import listeners, metrics
from ocs.admin import AdminServer
from ocs.cdr.export import CdrExporter, ExportBusy
from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.config import Config, parse_listen
from ocs.store import Overloaded, Store, Tx, Writer, WriterStopped

log = structlog.get_logger(__name__)


def engine_settings(cfg: Config) -> EngineSettings:
    return EngineSettings(
        node=cfg.node.name,
        home_networks=frozenset(cfg.node.home_networks),
        default_data_grant_bytes=cfg.charging.default_data_grant_bytes,
        default_voice_grant_s=cfg.charging.default_voice_grant_s,
        default_validity_s=cfg.charging.default_validity_s,
    )


class Server:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.store = Store(cfg.data_dir, map_size_mb=cfg.store.map_size_mb, create=False)
        self.writer = Writer(
            self.store,
            max_ops=cfg.store.commit_max_ops,
            max_delay_ms=cfg.store.commit_max_delay_ms,
            queue_size=cfg.store.queue_size,
            on_batch=metrics.on_batch,
        )
        self.engine = ChargingEngine(self.store, self.writer, engine_settings(cfg))
        self.exporter = CdrExporter(
            self.store,
            cfg.under_data(cfg.cdr.dir),
            cfg.node.name,
            rotate_s=cfg.cdr.rotate_s,
            rotate_records=cfg.cdr.rotate_records,
        )
        self.admin = AdminServer(self.health)
        self.admin_address: tuple[str, int] | None = None
        self._listeners: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.started_at = time.time()

    def health(self) -> dict[str, Any]:
        alive = self.writer._thread is not None and self.writer._thread.is_alive()
        return {
            "status": "ok" if alive and not self._stopping.is_set() else "unavailable",
            "node": self.cfg.node.name,
            "writer_alive": alive,
            "queue_depth": self.writer.queued,
            "batches": self.writer.batches,
            "ops": self.writer.ops,
            "uptime_s": int(time.time() - self.started_at),
        }

    async def start(self) -> None:
        self.writer.start()
        if self.cfg.admin.enabled:
            host, port = parse_listen(self.cfg.admin.listen)
            self.admin_address = await self.admin.start(host, port)
            log.info("admin_listening", address=f"{self.admin_address[0]}:{self.admin_address[1]}")
        for section in ("diameter", "radius", "smpp", "snmp"):
            sec = getattr(self.cfg, section)
            if sec is None or not sec.enabled:
                continue
            starter = listeners.STARTERS.get(section)
            if starter is None:
                log.warning("listener_not_in_this_build", section=section)
                continue
            self._listeners.append(await starter(self))
        self._tasks.append(asyncio.create_task(self._export_loop(), name="cdr-export"))
        self._tasks.append(asyncio.create_task(self._reaper_loop(), name="reaper"))
        log.info("server_started", node=self.cfg.node.name, data_dir=str(self.cfg.data_dir))

    async def _export_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.cfg.cdr.export_interval_s
        while not self._stopping.is_set():
            await self._export_once(loop)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    async def _export_once(self, loop: asyncio.AbstractEventLoop, force: bool = False) -> None:
        try:
            res = await loop.run_in_executor(
                None, lambda: self.exporter.run_once(int(time.time()), force_close=force,
                                                     wait=force))
        except ExportBusy:
            return
        except OSError as exc:  # e.g. disk full: the journal keeps every record; retry later
            metrics.EXPORT_ERRORS.inc()
            log.error("cdr_export_failed", error=str(exc))
            return
        metrics.CDR_ROWS.inc(res.rows)
        metrics.CDR_FILES.inc(len(res.closed))
        metrics.STORE_QUEUE.set(self.writer.queued)
        metrics.STORE_SIZE.set(self.store.size_bytes())

    async def _reaper_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.cfg.charging.reaper_interval_s
        retention = self.cfg.store.answer_retention_s
        while not self._stopping.is_set():
            with contextlib.suppress(Overloaded, WriterStopped):
                await self.reap(loop, int(time.time()), retention)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    async def reap(self, loop: asyncio.AbstractEventLoop, now: int, retention: int) -> int:
        due = await loop.run_in_executor(None, self.engine.expired_reservations, now)
        engine = self.engine

        def expire(key: bytes, expires_at: int) -> asyncio.Future[bool]:
            return self.writer.submit(lambda tx: engine.op_expire(tx, key, expires_at, now))

        futs = [expire(key, exp) for key, exp in due]
        expired = sum(1 for ok in await asyncio.gather(*futs) if ok)
        if expired:
            metrics.RESERVATIONS_EXPIRED.inc(expired)
            log.info("reservations_expired", count=expired)
        def trim(tx: Tx) -> int:
            return engine.op_trim_answers(tx, now - retention)

        while await self.writer.submit(trim) >= 2000:
            pass
        return expired

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        self._stopping.set()
        for lst in self._listeners:
            with contextlib.suppress(Exception):
                await lst.close()
        await self.admin.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.writer.stop)
        await self._export_once(loop, force=True)
        free = shutil.disk_usage(self.cfg.data_dir).free
        log.info("server_stopped", ops=self.writer.ops, batches=self.writer.batches,
                 disk_free_bytes=free)
        self.store.close()


async def serve(cfg: Config) -> None:
    server = Server(cfg)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    try:
        await server.wait()
    finally:
        await server.stop()


def run(cfg: Config) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(serve(cfg))
    else:
        uvloop.run(serve(cfg))
