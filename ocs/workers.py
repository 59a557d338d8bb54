"""``ocs serve --workers N``: several event-loop processes behind the same ports.

Worker 0 is the process ``ocs serve`` started. It binds every listener with
SO_REUSEPORT, then starts workers 1..N-1 (``python -m ocs.workers``) on the very
addresses it bound (so port 0 in the config works too), and the kernel spreads new
connections (Diameter, SMPP) and datagrams (RADIUS, by source address and port) over
the processes. They all send their write operations to worker 0's group-commit writer
process, attached over a Unix socket (``ocs.store.procwriter``): the LMDB store has one
write lock, so one writer process makes the biggest batches, and the ARCHITECTURE
invariants, which hold per transaction, hold across workers.

Only worker 0 runs what must exist once per node: the admin endpoint, the CDR exporter,
the reaper, the NOC health checks and the SNMP trap listener (storm control counts per
network element, and an agent's traps come from a new source port each time, so they
would be spread over workers). Every worker checks the room left for CDR files itself,
so all of them refuse new charging when it runs out.

Worker 0 supervises the others: one that dies is started again (after 1 s, doubling up
to 30 s while it keeps dying); on shutdown it stops them before its own writer and the
exporter, so their last CDRs are in the final file. A worker stops by itself when
worker 0 is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pickle
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import structlog

from ocs.config import Config

if TYPE_CHECKING:
    from ocs.server import Server

log = structlog.get_logger(__name__)

READY = b"ready\n"
START_TIMEOUT_S = 60.0
MAX_BACKOFF_S = 30.0


def cpu_count() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolve(requested: int | None, cfg: Config) -> int:
    """Workers to run: ``--workers``, else ``node.workers``; 0 means one per core."""
    n = requested if requested is not None else cfg.node.workers
    return n if n > 0 else cpu_count()


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
    return dataclasses.replace(cfg, **changes)


@dataclasses.dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class WorkerPool:
    """Worker 0's view of workers 1..N-1: start, supervise, stop."""

    def __init__(self, cfg: Config, count: int, *, origin_state_id: int,
                 writer_path: str = "", on_exit: Any = None):
        self.cfg = cfg
        self.count = count
        self.origin_state_id = origin_state_id
        self.writer_path = writer_path
        self.on_exit = on_exit
        """Called with the pid of a worker that ended (its metrics are then final)."""
        self.workers = [_Worker(i) for i in range(1, count)]
        self.stopping = False
        """Set when the server stops: workers that end are not started again."""
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def alive(self) -> int:
        return sum(1 for w in self.workers
                   if w.proc is not None and w.proc.returncode is None and w.ready.is_set())

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self.workers)

    async def start(self) -> None:
        """Start every worker and wait until each listens (or fail)."""
        for w in self.workers:
            await self._spawn(w)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(w.ready.wait() for w in self.workers)), START_TIMEOUT_S)
        except TimeoutError:
            await self.stop()
            raise RuntimeError("workers did not start in time") from None
        self._tasks += [asyncio.create_task(self._supervise(w), name=f"worker-{w.index}")
                        for w in self.workers]

    async def _spawn(self, w: _Worker) -> None:
        w.ready = asyncio.Event()
        payload = pickle.dumps({"cfg": self.cfg, "index": w.index, "workers": self.count,
                                "origin_state_id": self.origin_state_id,
                                "writer_path": self.writer_path,
                                "parent_pid": os.getpid()})
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ocs.workers", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        assert w.proc.stdin is not None and w.proc.stdout is not None
        w.proc.stdin.write(payload)
        w.proc.stdin.close()
        w.started = time.monotonic()
        proc = w.proc
        reader = proc.stdout
        assert reader is not None

        async def wait_ready() -> None:
            line = await reader.readline()
            if line == READY:
                w.ready.set()
                log.info("worker_started", worker=w.index, pid=proc.pid)

        self._tasks.append(asyncio.create_task(wait_ready()))

    async def _supervise(self, w: _Worker) -> None:
        backoff = 1.0
        while not self.stopping:
            assert w.proc is not None
            code = await w.proc.wait()
            if self.on_exit is not None:
                self.on_exit(w.proc.pid)
            if self.stopping:
                return
            ran = time.monotonic() - w.started
            backoff = 1.0 if ran > 60 else min(MAX_BACKOFF_S, backoff * 2 if w.restarts else 1.0)
            log.error("worker_exited", worker=w.index, pid=w.proc.pid, code=code,
                      restart_in_s=backoff)
            await asyncio.sleep(backoff)
            if self.stopping:
                return
            w.restarts += 1
            from ocs import metrics  # not at the top: `ocs serve` imports this module before
            # it sets up prometheus_client's multiprocess mode

            metrics.WORKER_RESTARTS.inc()
            await self._spawn(w)

    async def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every worker (each drains like a server does), SIGKILL after timeout."""
        self.stopping = True
        procs = [w.proc for w in self.workers
                 if w.proc is not None and w.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        if procs:
            _done, late = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs],
                                             timeout=timeout)
            for p in procs:
                if p.returncode is None:
                    log.error("worker_killed", pid=p.pid)
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            if late:
                await asyncio.wait(late, timeout=5)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for p in procs:
            if self.on_exit is not None:
                self.on_exit(p.pid)


# -- a worker process (1..N-1) -------------------------------------------------------------


async def _worker(payload: dict[str, Any]) -> None:
    from ocs.server import Server

    server = Server(payload["cfg"], worker=payload["index"], workers=payload["workers"],
                    writer_path=payload["writer_path"])
    server.origin_state_id = payload["origin_state_id"]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
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


def _stop_with_parent() -> None:
    """Ask the kernel for SIGTERM when worker 0 dies (even by SIGKILL), so a worker never
    keeps serving on its own; polling the parent PID covers other systems."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG


def main() -> None:
    _stop_with_parent()
    payload = pickle.loads(sys.stdin.buffer.read())  # from worker 0, over a pipe
    if os.getppid() != payload["parent_pid"]:
        return  # worker 0 died before the death signal was set up
    from ocs import logs

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
    main()
