"""``ocs serve --workers N``: several event-loop processes behind the same ports.

Worker 0 is the process ``ocs serve`` started. It binds every listener with
SO_REUSEPORT, then starts workers 1..N-1 (``python -m ocs.app``) on the very
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
from typing import Any

import structlog

from ocs.config import Config

log = structlog.get_logger(__name__)

READY = b"ready\n"
WORKER_PROGRAM = "ocs.app"
"""What a worker process runs (``python -m``): the composition root's worker main."""
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

    def signal(self, sig: int) -> None:
        """Send ``sig`` to every running worker (SIGHUP: reload the config)."""
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    async def _spawn(self, w: _Worker) -> None:
        w.ready = asyncio.Event()
        payload = pickle.dumps({"cfg": self.cfg, "index": w.index, "workers": self.count,
                                "origin_state_id": self.origin_state_id,
                                "writer_path": self.writer_path,
                                "parent_pid": os.getpid()})
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", WORKER_PROGRAM, stdin=asyncio.subprocess.PIPE,
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


def stop_with_parent() -> None:
    """Ask the kernel for SIGTERM when worker 0 dies (even by SIGKILL), so a worker never
    keeps serving on its own; polling the parent PID covers other systems."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
