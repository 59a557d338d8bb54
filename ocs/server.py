"""``ocs serve``: the event loop with the admin endpoint, reaper and protocol listeners,
plus two child processes: the group-commit writer and the CDR exporter. With several
workers (``ocs.workers``) this is worker 0; the others run the listeners only and
attach to its writer.

The writer and the exporter run as processes because py-lmdb releases the GIL around
every LMDB call: a busy second thread would make each of those calls wait for the GIL.
The event loop itself only reads the store (LMDB readers never block).

Shutdown on SIGTERM/SIGINT is an explicit sequence: stop intake (close listeners) ->
wait for the answers of operations already sent to the writer -> stop the writer ->
the exporter drains the journal and closes the CDR file -> close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import platform
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from ocs import build_version, logs, metrics, sanity
from ocs.admin import AdminServer
from ocs.cdr.exportproc import ExporterProcess
from ocs.charging.engine import ChargingEngine, EngineSettings, settings_data
from ocs.charging.model import ExpireRequest, TrimRequest
from ocs.charging.service import EngineChargingService, count_operation
from ocs.config import (
    Config,
    ConfigError,
    config_changes,
    load_config,
    parse_listen,
    with_reloaded,
)
from ocs.noc.alarms import ExpireAlarms, Limits, Notification, Severity, TrimAlarms
from ocs.noc.service import AlarmService
from ocs.store import Overloaded, Store, StoreError, WriterStopped
from ocs.store.env import CDR_JOURNAL, META, META_CDR_EXPORT, META_CDR_SEQ, SMS_DUE, unpack_u64
from ocs.store.records import dec_export_state
from ocs.store.tx import StorePort
from ocs.workers import WorkerPool
from ocs.writerproc import process_writer

log = structlog.get_logger(__name__)


Starter = Callable[["Server"], Awaitable[Any]]
"""Starts one protocol's listener for the server; returns an object with ``async close()``
(and sets the server's attribute of that protocol: ``diameter``, ``radius`` ...)."""


def boot_id() -> int:
    """Stable for the process lifetime, different after a restart (time + pid): the
    node's Diameter Origin-State-Id, the same in every worker."""
    return (int(time.time()) ^ (os.getpid() << 20)) & 0xFFFFFFFF


def _listen(address: tuple[Any, ...]) -> str:
    host, port = str(address[0]), int(address[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bound_config(server: Server) -> Config:
    """The server's config with every listen address replaced by the one it bound."""
    cfg = server.cfg
    changes: dict[str, Any] = {}
    if server.diameter is not None and cfg.diameter is not None:
        changes["diameter"] = dataclasses.replace(
            cfg.diameter, listen=_listen(server.diameter.address))
    if server.radius is not None and cfg.radius is not None:
        changes["radius"] = dataclasses.replace(
            cfg.radius, auth_listen=_listen(server.radius.address("auth")),
            acct_listen=_listen(server.radius.address("acct")))
    if server.smpp is not None and cfg.smpp is not None and server.smpp.server is not None:
        changes["smpp"] = dataclasses.replace(
            cfg.smpp, listen=_listen(server.smpp.server.sockets[0].getsockname()))
    if server.chf is not None and cfg.chf is not None and server.chf.address is not None:
        changes["chf"] = dataclasses.replace(cfg.chf, listen=_listen(server.chf.address))
    return dataclasses.replace(cfg, **changes)


def engine_settings(cfg: Config) -> EngineSettings:
    return EngineSettings(
        node=cfg.node.name,
        home_networks=frozenset(cfg.node.home_networks),
        default_data_grant_bytes=cfg.charging.default_data_grant_bytes,
        default_voice_grant_s=cfg.charging.default_voice_grant_s,
        default_validity_s=cfg.charging.default_validity_s,
        fraud=dataclasses.asdict(cfg.fraud) if cfg.fraud.enabled else None,
        max_usage_bytes=cfg.charging.max_usage_bytes,
        max_usage_seconds=cfg.charging.max_usage_seconds,
        max_usage_events=cfg.charging.max_usage_events,
    )


class Server:
    def __init__(self, cfg: Config, *, worker: int = 0, workers: int = 1,
                 writer_path: str = "", listeners: Mapping[str, Starter] | None = None):
        """``listeners``: the starter of each protocol section's listener (the
        composition root, :mod:`ocs.app`, gives those of this build); none: a server
        with its core only (store, writer, charging, reaper, admin)."""
        self.cfg = cfg
        self.listeners: Mapping[str, Starter] = listeners or {}
        self.worker = worker
        """0 for the process ``ocs serve`` started; 1..N-1 for the others (ocs.workers)."""
        self.workers = workers
        self.origin_state_id = 0
        """Diameter Origin-State-Id of this node (the same in every worker); 0 = own."""
        self.pool: Any = None
        self._run_dir = ""
        if self.primary and workers > 1:
            # The one writer process takes the other workers' operations on a Unix socket
            # (the store has one write lock, so one writer makes the biggest batches), in
            # DATA_DIR/run/ (0700), or a private temp directory when that path would be too
            # long for a socket address.
            run = cfg.data_dir / "run" / "writer"
            if len(str(run / "writer.sock")) <= 100:
                shutil.rmtree(run, ignore_errors=True)
                run.mkdir(mode=0o700, parents=True)
                self._run_dir = str(run)
            else:
                self._run_dir = tempfile.mkdtemp(prefix="ocs-")
            writer_path = os.path.join(self._run_dir, "writer.sock")
        self.writer_path = writer_path
        self.store = Store(cfg.data_dir, map_size_mb=cfg.store.map_size_mb, create=False)
        if self.store.migrated:
            log.info("store_migrated", change=self.store.migrated)
        settings = engine_settings(cfg)
        log_format = "json" if cfg.node.log_format == "auto" else cfg.node.log_format
        self.writer = process_writer(
            settings,
            alarm_limits=Limits(per_element=cfg.noc.max_alarms_per_element,
                                total=cfg.noc.max_active_alarms),
            data_dir=str(cfg.data_dir),
            map_size_mb=cfg.store.map_size_mb,
            max_ops=cfg.store.commit_max_ops,
            max_delay_ms=cfg.store.commit_max_delay_ms,
            queue_size=cfg.store.queue_size,
            log_format=log_format,
            on_batch=self._on_batch,
            on_result=count_operation,
            listen=writer_path if self.primary else "",
            attach="" if self.primary else writer_path,
        )
        self.ledger: StorePort = self.store
        """Where subscribers, plans and balances are: this node's LMDB store, or the Redis
        Cluster the nodes share (``[store] backend = "redis"``)."""
        self.cluster: Any = None
        self._redis_seen = (0, 0, 0)
        if cfg.store.backend == "redis":
            from ocs.store.cluster import ClusterStore
            from ocs.store.cluster_loop import ClusterBackend

            self.cluster = self.ledger = ClusterStore.from_config(cfg)
            # one process of the cluster looks at every slot (what stopped nodes left),
            # every 10 s; another takes over within 30 s of it dying
            self.cluster.lease_name = f"{cfg.node.name}:{worker}"
            self.cluster.full_scan_s, self.cluster.lease_ttl_s = 10.0, 30.0
            self.engine = ChargingEngine(self.ledger, None, settings)
            self.cluster_ops = ClusterBackend(self.cluster, self.engine,
                                              on_result=count_operation,
                                              max_running=cfg.store.queue_size)
            self.engine.backend = self.cluster_ops
        else:
            self.engine = ChargingEngine(self.store, None, settings, backend=self.writer)
        self.charging = EngineChargingService(self.engine)
        """What the protocol agents charge through (:mod:`ocs.charging.api`)."""
        self.alarms = AlarmService(self.writer, committed=self._alarm_committed,
                                   raised=self._alarm_raised)
        """Where the health checks, the SNMP trap receiver and the NMS raise and clear
        alarms."""
        self.remediator: Any = None
        self._stop_warming: Callable[[], None] | None = None
        """Auto-remediation of raised alarms on NMS elements (worker 0)."""
        self.exporter = None if not self.primary else ExporterProcess({
            "data_dir": str(cfg.data_dir),
            "map_size_mb": cfg.store.map_size_mb,
            "cdr_dir": str(cfg.under_data(cfg.cdr.dir)),
            "node": cfg.node.name,
            "rotate_s": cfg.cdr.rotate_s,
            "rotate_records": cfg.cdr.rotate_records,
            "interval_s": cfg.cdr.export_interval_s,
            "log_format": log_format,
            "parent_pid": os.getpid(),
            "alarm_dir": str(cfg.under_data(cfg.noc.stream_dir)),
            "alarm_rotate_s": cfg.noc.rotate_s,
            "alarm_rotate_records": cfg.noc.rotate_records,
            "hooks": [dataclasses.asdict(h) for h in cfg.noc.hooks],
        })
        self._slowest_commit_s = 0.0
        self._health_mark = (0, 0)
        self._last_trim = 0.0
        self._expire_after = 0
        """Where the expiry of indeterminate alarms goes on (alarm id)."""
        self.cdr_problem = ""
        """Why CDR files cannot be written ("" = fine); /healthz says degraded meanwhile."""
        self.admin = AdminServer(self.health, before_scrape=self._update_gauges)
        self.admin_address: tuple[str, int] | None = None
        self._listeners: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.started_at = time.time()
        self.diameter: Any = None
        self.radius: Any = None
        self.smpp: Any = None
        self.snmp: Any = None
        self.chf: Any = None
        self.api: Any = None
        self.nms: Any = None
        """The NMS poller (worker 0, when ``[[nms.elements]]`` are configured)."""

    @property
    def primary(self) -> bool:
        """Worker 0: it owns what exists once per node (admin, exporter, reaper, SNMP)."""
        return self.worker == 0

    @property
    def reuse_port(self) -> bool:
        """Listeners share their ports with other workers (SO_REUSEPORT)."""
        return self.workers > 1

    def _on_batch(self, ops: int, commit_s: float, batch_s: float) -> None:
        metrics.on_batch(ops, commit_s, batch_s)
        self._slowest_commit_s = max(self._slowest_commit_s, commit_s)

    def check_cdr_room(self) -> tuple[int, bool]:
        """(MiB free for CDR files, full?); pauses or resumes new charging to match."""
        cdr_dir = self.cfg.under_data(self.cfg.cdr.dir)
        cdr_free_mb = shutil.disk_usage(cdr_dir if cdr_dir.exists() else self.cfg.data_dir
                                        ).free // 2**20
        cdr_full = cdr_free_mb < self.cfg.cdr.min_free_mb
        paused = "no room for CDR files" if cdr_full else ""
        if paused != self.engine.paused:
            (log.error if paused else log.info)(
                "charging_paused" if paused else "charging_resumed", reason=paused,
                cdr_free_mb=cdr_free_mb)
            self.engine.paused = paused
        return cdr_free_mb, cdr_full

    def check_cdr_dir(self) -> str:
        """Why CDR files cannot be written now ("" = they can): a file is created and
        removed in the CDR directory (an immutable or read-only directory, a full inode
        table or a vanished mount all show here, before the exporter trips on them)."""
        d = self.cfg.under_data(self.cfg.cdr.dir)
        probe = d / f".write-probe-{os.getpid()}"
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            problem = f"{d}: {exc.strerror or exc}"
        else:
            problem = ""
        if problem != self.cdr_problem:
            (log.error if problem else log.info)(
                "cdr_dir_unwritable" if problem else "cdr_dir_writable", problem=problem)
            self.cdr_problem = problem
        return problem

    async def check_health(self, now: int) -> list[str]:
        """The server's own threshold alarms, through the same alarm model."""
        noc = self.cfg.noc
        free_mb = shutil.disk_usage(self.cfg.data_dir).free // 2**20
        cdr_free_mb, cdr_full = self.check_cdr_room()
        cdr_problem = self.check_cdr_dir()
        slowest_ms = self._slowest_commit_s * 1000
        self._slowest_commit_s = 0.0
        ops, failed = self.writer.ops, self.writer.failed
        d_ops, d_failed = ops - self._health_mark[0], failed - self._health_mark[1]
        rate = d_failed / (d_ops + d_failed) if d_ops + d_failed else 0.0
        checks = [
            ("disk", "environmentalAlarm", "storageCapacityProblem",
             free_mb < noc.min_free_disk_mb, Severity.MAJOR,
             f"{free_mb} MiB free on the data disk (threshold {noc.min_free_disk_mb} MiB)",
             {"free_mb": str(free_mb)}),
            ("store-commit", "qualityOfServiceAlarm", "thresholdCrossed",
             slowest_ms > noc.max_commit_ms, Severity.MINOR,
             f"slowest group commit {slowest_ms:.1f} ms (threshold {noc.max_commit_ms} ms)",
             {"commit_ms": f"{slowest_ms:.1f}"}),
            ("cdr", "environmentalAlarm", "storageCapacityProblem", cdr_full,
             Severity.CRITICAL,
             f"{cdr_free_mb} MiB free for CDR files (threshold {self.cfg.cdr.min_free_mb} "
             "MiB): new charging refused", {"free_mb": str(cdr_free_mb)}),
            ("cdr-dir", "processingErrorAlarm", "fileError", bool(cdr_problem),
             Severity.CRITICAL,
             f"CDR files cannot be written ({cdr_problem}): charges are kept in the "
             "journal until they can", {"problem": cdr_problem}),
            ("charging", "processingErrorAlarm", "thresholdCrossed",
             rate > noc.max_error_rate and d_failed >= 10, Severity.MAJOR,
             f"{d_failed} of {d_ops + d_failed} charging operations failed "
             f"({rate:.1%}, threshold {noc.max_error_rate:.1%})",
             {"failed": str(d_failed), "operations": str(d_ops + d_failed)}),
        ]
        outcomes = []
        for resource, kind, cause, bad, severity, text, varbinds in checks:
            n = Notification(element=self.cfg.node.name, resource=resource, alarm_type=kind,
                             probable_cause=cause,
                             severity=severity if bad else Severity.CLEARED,
                             varbinds=varbinds, text=text, at=now)
            outcome = await self.alarms.notify(n)
            if outcome != "clear_unmatched":
                outcomes.append(f"{resource}:{outcome}")
        self._health_mark = (ops, failed)  # only once the interval's alarms are recorded
        if noc.history_days and time.monotonic() - self._last_trim >= 600:
            self._last_trim = time.monotonic()
            trimmed = await self.alarms.trim(TrimAlarms(before=now - noc.history_days * 86400))
            if trimmed:
                log.info("alarm_history_trimmed", alarms=trimmed)
        if noc.indeterminate_expire_s:
            # a slice of the alarms every interval; the position is carried along
            done = await self.alarms.expire(ExpireAlarms(
                before=now - noc.indeterminate_expire_s, at=now, after=self._expire_after))
            self._expire_after = done.next_after
            if done.cleared:
                log.info("alarms_expired", alarms=done.cleared)
        self._update_gauges()
        return outcomes

    async def _health_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if self.primary:
                    await self.check_health(int(time.time()))
                else:
                    self.check_cdr_room()
            except (Overloaded, WriterStopped, StoreError, OSError) as exc:
                log.warning("health_check_skipped", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.cfg.noc.health_interval_s)

    def health(self) -> dict[str, Any]:
        exporter_alive = self.exporter is not None and self.exporter.alive
        ok = (self.writer.alive and (exporter_alive or not self.primary)
              and not self._stopping.is_set())
        alive = 1 + (self.pool.alive if self.pool is not None else 0)
        self._update_gauges()
        return {
            "status": "unavailable" if not ok else "ok" if (
                alive == self.workers and not self.cdr_problem) else "degraded",
            "node": self.cfg.node.name,
            "workers": self.workers,
            "workers_alive": alive,
            "worker_restarts": self.pool.restarts if self.pool is not None else 0,
            "writer_alive": self.writer.alive,
            "exporter_alive": exporter_alive,
            "queue_depth": self.writer.queued,
            "batches": self.writer.batches,
            "ops": self.writer.ops,
            "writer_restarts": self.writer.restarts,
            "uptime_s": int(time.time() - self.started_at),
            **({"cdr_problem": self.cdr_problem} if self.cdr_problem else {}),
        }

    def _update_gauges(self) -> None:
        if self.cluster is not None:
            self._redis_counters()
        metrics.STORE_QUEUE.set(self.writer.queued)
        metrics.STORE_SIZE.set(self.store.size_bytes())
        with self.store.read() as txn:
            seq = txn.get(META_CDR_SEQ, db=self.store.dbs[META])
            raw = txn.get(META_CDR_EXPORT, db=self.store.dbs[META])
            journal = txn.stat(self.store.dbs[CDR_JOURNAL])["entries"]
        written = dec_export_state.decode(raw).written_seq if raw is not None else 0
        metrics.CDR_PENDING.set((unpack_u64(seq) if seq else 0) - written)
        metrics.CDR_JOURNAL.set(journal)
        metrics.SMPP_QUEUE.set(self.cluster.sms_queued if self.cluster is not None
                               else self.store.stat(SMS_DUE)["entries"])

    def _redis_counters(self) -> None:
        """The Redis backend's counters, what they grew by since the last scrape."""
        assert self.cluster is not None
        now = (self.cluster.round_trips, self.cluster_ops.batches, self.cluster.conflicts)
        for counter, seen, value in zip((metrics.REDIS_EXCHANGES, metrics.REDIS_WRITE_BATCHES,
                                         metrics.REDIS_CONFLICTS), self._redis_seen, now,
                                        strict=True):
            if value > seen:
                counter.inc(value - seen)
        self._redis_seen = now

    async def start(self) -> None:
        metrics.BUILD_INFO.labels(build_version(), platform.python_version()).set(1)
        self._stop_warming = self.engine.plans.start_warming(self.ledger)
        await self.writer.start()
        if self.exporter is not None:
            await self.exporter.start()
        if self.primary and not self.origin_state_id:
            self.origin_state_id = boot_id()
        if self.primary:
            for problem in sanity.findings(self.cfg,
                                           self.engine.plans.in_store(self.ledger).plans):
                log.warning("config_sanity", problem=problem, config=self.cfg.source)
        for section in ("diameter", "radius", "smpp", "snmp", "chf", "api"):
            sec = getattr(self.cfg, section)
            if sec is None or not sec.enabled or (section in ("snmp", "api")
                                                  and not self.primary):
                continue
            starter = self.listeners.get(section)
            if starter is None:
                log.warning("listener_not_in_this_build", section=section)
                continue
            self._listeners.append(await starter(self))
        # Move everything allocated at start-up out of the collector's way and make young
        # collections rarer: the hot paths allocate many short-lived objects, and a full
        # collection walking the session tables would stall every answer.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        if self.primary or self.cluster is not None:
            # on a cluster every worker reaps and drains what it wrote (each knows the
            # slots it wrote to; claims make each row and expiry handled once)
            self._tasks.append(asyncio.create_task(self._reaper_loop(), name="reaper"))
        if self.cluster is not None:
            self._tasks.append(asyncio.create_task(self._drain_loop(), name="cdr-drain"))
        if self.primary and self.cfg.nms is not None and self.cfg.nms.enabled:
            from ocs.nms.poller import Poller
            from ocs.nms.service import NmsMonitor

            users = {u.name: u for u in self.cfg.snmp.v3_users} if self.cfg.snmp else {}
            self.nms = NmsMonitor(self.cfg.nms, self.alarms, Poller(
                timeout_s=self.cfg.nms.timeout_s, retries=self.cfg.nms.retries,
                v3_users=users), record=lambda s: self.writer.submit("nms_record", s))
            self.nms.start()
            from ocs.nms.remediate import Remediator, descr_index

            self.remediator = Remediator(self.cfg.nms, if_index=descr_index(self.nms))
            log.info("nms_polling", elements=len(self.cfg.nms.elements),
                     interval_s=self.cfg.nms.poll_interval_s)
        self._tasks.append(asyncio.create_task(self._health_loop(), name="health"))
        if self.primary and self.workers > 1:
            self.pool = WorkerPool(bound_config(self), self.workers,
                                   origin_state_id=self.origin_state_id,
                                   writer_path=self.writer_path,
                                   on_exit=metrics.process_ended)
            await self.pool.start()
        # last: /healthz says ok once every worker listens
        if self.primary and self.cfg.admin.enabled:
            host, port = parse_listen(self.cfg.admin.listen)
            self.admin_address = await self.admin.start(host, port)
            log.info("admin_listening",
                     address=f"{self.admin_address[0]}:{self.admin_address[1]}")
        log.info("server_started", node=self.cfg.node.name, data_dir=str(self.cfg.data_dir),
                 writer_pid=self.writer.pid, worker=self.worker, workers=self.workers)

    async def _reaper_loop(self) -> None:
        interval = self.cfg.charging.reaper_interval_s
        retention = self.cfg.store.answer_retention_s
        while not self._stopping.is_set():
            try:
                await self.reap(int(time.time()), retention)
            except (Overloaded, WriterStopped, StoreError) as exc:
                log.warning("reaper_skipped", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    async def _cluster_flush(self, flushed: int) -> int:
        """``ocs cdr flush`` on any node asks every node to close its open CDR file: done
        here once this node's journal has what it drained (the CLI waits for every node
        heard from lately to report it done)."""
        from ocs.cdr.export import CdrExporter
        from ocs.cdr.outbox import drain

        wanted = await asyncio.to_thread(self.cluster.flush_wanted)
        if wanted > flushed:
            # again: the request may have come while the drain before it was under way
            await asyncio.to_thread(drain, self.cluster, self.store, self.cfg.node.name)
            res = await asyncio.to_thread(CdrExporter.of(self.cfg, self.store).flush,
                                          int(time.time()))
            log.info("cdr_flush_asked", request=wanted, closed=list(res.closed),
                     rows=res.rows)
            flushed = wanted
        await asyncio.to_thread(self.cluster.node_report, self.cfg.node.name, flushed)
        return flushed

    async def _drain_loop(self) -> None:
        """The cluster's CDR outboxes into this node's journal (ocs.cdr.outbox), first
        finishing what this node claimed before it stopped; the exporter makes files."""
        from ocs.cdr.outbox import drain

        recover = True
        flushed = 0
        while not self._stopping.is_set():
            try:
                n = await asyncio.to_thread(drain, self.cluster, self.store,
                                            self.cfg.node.name, recover=recover)
                recover = False
                if n:
                    log.debug("cdrs_drained", rows=n)
                if self.primary:  # (its exporter writes the node's files)
                    flushed = await self._cluster_flush(flushed)
            except StoreError as exc:
                recover = True  # what it claimed before the error is finished next time
                log.warning("cdr_drain_skipped", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.cfg.cdr.export_interval_s)

    async def reap(self, now: int, retention: int) -> int:
        """Settle expired reservations and forget answers past their retention."""
        if self.cluster is not None:  # network reads: off the event loop
            due = await asyncio.to_thread(self.engine.expired_reservations, now)
        else:
            due = self.engine.expired_reservations(now)
        futs = [self.engine.submit("expire", ExpireRequest(key=key, expires_at=exp, now=now))
                for key, exp in due]
        expired = sum(1 for ok in await asyncio.gather(*futs) if ok)
        if expired:
            metrics.RESERVATIONS_EXPIRED.inc(expired)
            log.info("reservations_expired", count=expired)
        trim = TrimRequest(before=now - retention)
        while await self.engine.submit("trim_answers", trim) >= trim.limit:
            pass
        return expired

    def _alarm_raised(self, n: Any) -> None:
        if self.remediator is not None:
            self.remediator.offer(n)

    def _alarm_committed(self) -> None:
        if self.exporter is not None:
            self.exporter.wake()

    def reload(self) -> list[str]:
        """SIGHUP: read the config file again and apply what a running server can take
        (:data:`ocs.config.RELOADABLE`: the listeners' peers and accounts, charging and
        fraud settings — in the writer process too —, NOC and NMS settings, the log
        level) without dropping a session, bind or connection; the rest is logged as
        needing a restart. A file
        that does not load changes nothing (one line naming the problem). Worker 0
        passes the signal on to the other workers, which read the same file. Returns the
        keys applied."""
        try:
            new = load_config(self.cfg.source).with_data_dir(str(self.cfg.data_dir))
        except ConfigError as exc:
            log.error("config_reload_failed", config=self.cfg.source, error=str(exc),
                      kept="the running config")
            return []
        applied, restart = config_changes(self.cfg, new)
        if restart and self.primary:
            log.warning("config_reload_needs_restart", config=self.cfg.source,
                        keys=restart)
        self.cfg = with_reloaded(self.cfg, new, applied)
        logs.set_level(self.cfg.node.log_level)
        if any(k.startswith(("charging.", "fraud.")) or k == "node.home_networks"
               for k in applied):
            settings = engine_settings(self.cfg)
            self.engine.reconfigure(settings)  # this process's reads (plausibility limits)
            if self.primary:  # the writer's copy, which charges (one writer for all)
                self._background(self.engine.submit("reconfigure", settings_data(settings)),
                                 "engine settings")
        if self.primary and any(k in ("noc.max_alarms_per_element", "noc.max_active_alarms")
                                for k in applied):
            self._background(self.alarms.set_limits(Limits(
                per_element=self.cfg.noc.max_alarms_per_element,
                total=self.cfg.noc.max_active_alarms)), "alarm limits")
        if self.nms is not None and self.cfg.nms is not None:
            self.nms.reconfigure(self.cfg.nms)
            if self.remediator is not None:
                self.remediator.cfg = self.cfg.nms
        for listener in self._listeners:
            reconfigure = getattr(listener, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(self.cfg)
        if self.pool is not None:
            self.pool.cfg = bound_config(self)  # workers started again later get it too
            self.pool.signal(signal.SIGHUP)
        log.info("config_reloaded", config=self.cfg.source, applied=applied,
                 worker=self.worker)
        return applied

    def _background(self, work: Awaitable[Any], what: str) -> None:
        async def run() -> None:
            try:
                await work
            except Exception as exc:  # the writer busy or gone: say so; a SIGHUP retries
                log.error("config_reload_incomplete", what=what, error=str(exc))

        self._tasks.append(asyncio.create_task(run(), name=f"reload-{what}"))

    def request_stop(self) -> None:
        self._stopping.set()
        if self.pool is not None:  # a worker ending now (the same SIGTERM) is not restarted
            self.pool.stopping = True

    async def wait(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        self._stopping.set()
        if self.nms is not None:
            await self.nms.stop()
        for lst in self._listeners:
            with contextlib.suppress(Exception):
                await lst.close()
        await self.admin.close()
        if self.pool is not None:  # their last CDRs must be in before the exporter ends
            await self.pool.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.cluster is not None:
            await self.cluster_ops.close()  # the operations under way get their answers
            if self.primary:  # (the exporter closes its file below: no flush waits for us)
                with contextlib.suppress(StoreError):
                    await asyncio.to_thread(self.cluster.node_gone, self.cfg.node.name)
            self.cluster.close()
        await self.writer.stop()
        if self._stop_warming is not None:
            self._stop_warming()
        code = await self.exporter.stop() if self.exporter is not None else None
        if self._run_dir:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        log.info("server_stopped", ops=self.writer.ops, batches=self.writer.batches,
                 exporter_exit=code)
        self.store.close()
