"""CPU per request over a server's processes, for ``make bench``.

A sampler thread reads the CPU time (user + system, every thread) of a set of processes
from ``/proc`` every few milliseconds, stamped with ``CLOCK_MONOTONIC`` — the clock of
``time.perf_counter`` in every process on Linux, so a load generator's own run window
(``Report.extra["window"]``, taken in its process) picks out the server CPU its requests
cost. CPU is counted in clock ticks (10 ms): windows of a few seconds and more read it
to within a percent.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable

from sim.report import Report

_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` has used so far; 0.0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


class CpuSampler:
    """Samples the summed CPU time of ``pids()`` (asked again at every sample: a child
    restarted meanwhile is followed) until :meth:`stop`. A process that goes away takes
    its CPU with it, so keep windows inside one life of each process."""

    def __init__(self, pids: Callable[[], Iterable[int | None]], interval_s: float = 0.02):
        self._pids = pids
        self._interval = interval_s
        self.times: list[float] = []
        self.cpu: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def sample(self) -> None:
        total = sum(proc_cpu_s(p) for p in self._pids() if p)
        self.times.append(time.perf_counter())
        self.cpu.append(total)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def start(self) -> CpuSampler:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _at(self, t: float) -> float:
        """CPU seconds at instant ``t`` (linear between the samples around it)."""
        i = bisect.bisect_left(self.times, t)
        if i <= 0:
            return self.cpu[0]
        if i >= len(self.times):
            return self.cpu[-1]
        t0, t1 = self.times[i - 1], self.times[i]
        c0, c1 = self.cpu[i - 1], self.cpu[i]
        return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)

    def between(self, start: float, end: float) -> float | None:
        """CPU seconds used from ``start`` to ``end``; None when the samples do not
        cover that window."""
        if not self.times or start < self.times[0] or end > self.times[-1] or end <= start:
            return None
        return max(0.0, self._at(end) - self._at(start))


def attach(reports: Iterable[Report], sampler: CpuSampler, *, peers: bool = False) -> None:
    """For each report with a run window: the CPU per operation of the sampled processes
    (``extra["cpu_us_per_op"]``) and the cores they kept busy. Reports of reference peers
    (``extra["peer"]``) are left to a sampler of the peer (``peers=True``)."""
    for r in reports:
        window = r.extra.get("window")
        if not window or bool(r.extra.get("peer")) != peers or not r.operations:
            continue
        used = sampler.between(float(window[0]), float(window[1]))
        if used is None:
            continue
        r.extra["cpu_us_per_op"] = round(used / r.operations * 1e6, 1)
        r.extra["cpu_cores"] = round(used / max(1e-9, window[1] - window[0]), 2)


def run_peak_rss(argv: list[str], *, stdout: int | None = None,
                 stderr: int | None = None) -> tuple[float, int, int]:
    """Run a command to its end: (seconds, peak RSS bytes, exit code). The peak is the
    command's own (``VmHWM`` of its process, sampled until it ends): ``wait4``'s
    ``ru_maxrss`` would also count the memory of the process it was forked from."""
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL if stdout is None else stdout,
                            stderr=stderr)
    peak = 0
    while proc.poll() is None:
        # (OSError: it ended between poll() and open())
        with contextlib.suppress(OSError), open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
                    break
        time.sleep(0.05)
    return time.perf_counter() - t0, peak, proc.returncode
