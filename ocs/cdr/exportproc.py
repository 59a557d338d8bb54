"""The CDR exporter as a process of its own (started by ``ocs serve``).

It formats and fsyncs CSV rows, which is Python work that would otherwise compete with
the event loop for the GIL. Its position lives in the store, so it can be killed and
restarted at any point. SIGTERM makes it drain the journal, close the open file and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import structlog

log = structlog.get_logger(__name__)

CONFIRM_EVERY_S = 0.2
"""Rows are in the files at once; fsynced and their position saved at most this often."""
TRIM_IDLE_S = 0.005
"""With closed rows to drop from a journal: how long nothing to export counts as idle."""
TRIM_EVERY_S = 0.1
"""...and a chunk is dropped at least this often even when something always is."""


def child_main(settings_json: str) -> None:
    from ocs import logs
    from ocs.cdr.export import CdrExporter, ExportBusy, JournalExporter
    from ocs.noc.stream import alarm_exporter
    from ocs.store.env import Store

    conf = json.loads(settings_json)
    logs.configure(conf.get("log_format", "json"))
    # Exporting can wait (the journal holds every record); charging cannot.
    with contextlib.suppress(OSError):
        os.nice(5)
    stop = threading.Event()
    def on_term(*_: object) -> None:  # once: a second SIGTERM (the group's, then ours)
        stop.set()  # must not hit the interpreter's shutdown, where it would kill us
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from pathlib import Path

    store = Store(conf["data_dir"], map_size_mb=conf["map_size_mb"], create=False)
    cdrs = CdrExporter(store, Path(conf["cdr_dir"]), conf["node"],
                       rotate_s=conf["rotate_s"], rotate_records=conf["rotate_records"],
                       confirm_every_s=CONFIRM_EVERY_S)
    exporters: list[JournalExporter] = [cdrs]
    from ocs.noc.hooks import Hook, HookDispatcher

    hooks = HookDispatcher([Hook.of(h) for h in conf.get("hooks", [])])
    if conf.get("alarm_dir"):
        exporters.append(alarm_exporter(store, Path(conf["alarm_dir"]), conf["node"],
                                        conf["alarm_rotate_s"], conf["alarm_rotate_records"],
                                        on_line=hooks.offer if hooks.hooks else None,
                                        confirm_every_s=CONFIRM_EVERY_S))
    interval = conf["interval_s"]
    wake = int(conf.get("wake_fd", -1))
    """Readable when the server committed an alarm: the stream gets its line now, not at
    the next interval (trap -> line in milliseconds)."""
    parent = int(conf.get("parent_pid", os.getppid()))  # passed in: the parent may die
    last_trim = time.monotonic()                         # before we get this far
    while not stop.is_set():
        if os.getppid() != parent:  # ocs serve is gone (killed): drain, close, leave
            log.warning("cdr_exporter_orphaned", parent=parent)
            break
        for exporter in exporters:
            try:
                res = exporter.run_once(int(time.time()))
                if res.closed:
                    log.info("journal_export", prefix=exporter.prefix, rows=res.rows,
                             closed=list(res.closed))
            except ExportBusy:
                pass  # `ocs cdr flush` holds the lock right now; the next round catches up
            except OSError as exc:  # e.g. disk full: the journal keeps every record; retry
                log.error("journal_export_failed", prefix=exporter.prefix, error=str(exc))
        # Rows of closed files leave the journal when nothing is waiting to be exported,
        # and at least every TRIM_EVERY_S under a steady stream (so it cannot grow).
        trimming = [e for e in exporters if e.trim_pending]
        now = time.monotonic()
        timeout = min([interval] + [d for e in exporters
                                    if (d := e.confirm_due_in(now)) is not None])
        if trimming and now - last_trim >= TRIM_EVERY_S:
            timeout = 0.0
        elif trimming:
            timeout = min(timeout, TRIM_IDLE_S)
        ready: list[int] = []
        if wake < 0:
            stop.wait(timeout)
        else:
            ready, _w, _x = select.select([wake], [], [], timeout)
            if ready and not os.read(wake, 4096):
                wake = -1  # the server closed its end (it is going): plain intervals
        if trimming and (not ready or time.monotonic() - last_trim >= TRIM_EVERY_S):
            for exporter in trimming:
                try:
                    exporter.trim_step()
                except OSError as exc:
                    log.error("journal_trim_failed", prefix=exporter.prefix, error=str(exc))
            last_trim = time.monotonic()
    failed = False
    for exporter in exporters:
        try:
            res = exporter.flush(int(time.time()))
            log.info("journal_export_final", prefix=exporter.prefix, rows=res.rows,
                     closed=list(res.closed))
        except OSError as exc:
            log.error("journal_export_failed", prefix=exporter.prefix, error=str(exc))
            failed = True
    hooks.close()
    store.close()
    if failed:
        raise SystemExit(1)


class ExporterProcess:
    """Starts, watches (restarts on death) and stops the exporter process."""

    def __init__(self, conf: dict[str, Any]):
        self._conf = conf
        self._proc: subprocess.Popen[bytes] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0
        self._wake_w = -1

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _spawn(self) -> None:
        # The settings (hook URLs and commands among them) go through a pipe, not the
        # command line that every local user can read in /proc.
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._proc = subprocess.Popen([sys.executable, "-m", "ocs.cdr.exportproc"],
                                      stdin=subprocess.PIPE, pass_fds=(r,))
        os.close(r)
        if self._wake_w >= 0:
            os.close(self._wake_w)
        self._wake_w = w
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError), self._proc.stdin:  # it died at once:
            self._proc.stdin.write(json.dumps({**self._conf, "wake_fd": r}).encode())

    def wake(self) -> None:
        """Something was committed to a journal (an alarm): export it now. Never blocks
        (a full pipe already says "wake up")."""
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
                os.write(self._wake_w, b"!")

    async def start(self) -> None:
        self._spawn()
        self._watch = asyncio.get_running_loop().create_task(self._watchdog())

    async def _watchdog(self) -> None:
        while not self._stopping:
            await asyncio.sleep(1.0)
            if self._stopping or self._proc is None:
                return
            code = self._proc.poll()
            if code is not None:
                log.error("cdr_exporter_died", exit_code=code)
                self.restarts += 1
                await asyncio.sleep(min(5.0, 0.2 * self.restarts))
                if not self._stopping:
                    self._spawn()

    async def stop(self, timeout: float = 60.0) -> int | None:
        """Ask for a final drain and close; returns the exit code."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        if self._wake_w >= 0:
            os.close(self._wake_w)
            self._wake_w = -1
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(None, self._proc.wait), timeout)
        except TimeoutError:
            self._proc.kill()
            return self._proc.wait()


if __name__ == "__main__":
    child_main(sys.stdin.read())
