"""The bench's CPU meter reads a process's CPU over a window another process timed."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from sim.cpumeter import CpuSampler, attach, proc_cpu_s
from sim.report import Report

BURN = """
import json, time
t0 = time.perf_counter()
while time.perf_counter() - t0 < 1.0:
    pass
print(json.dumps([t0, time.perf_counter()]))
"""


def test_the_cpu_a_busy_process_spent_in_its_own_window() -> None:
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    pids: list[int] = [idle.pid]
    sampler = CpuSampler(lambda: pids, interval_s=0.01).start()
    try:
        time.sleep(0.2)
        busy = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE)
        pids.append(busy.pid)
        out, _ = busy.communicate(timeout=30)
        # the busy process is gone: read its window while the sampler still had it
    finally:
        sampler.stop()
        idle.kill()
        idle.wait()
    start, end = json.loads(out)
    # a child's perf_counter is this process's clock (CLOCK_MONOTONIC)
    assert sampler.times[0] < start < end < sampler.times[-1]
    rep = Report("p", "burn", 1000, 0, end - start, extra={"window": [start, end - 0.05]})
    attach([rep], sampler)
    # ~0.95 s of CPU in the window over 1,000 operations: ~950 us each
    assert 700 <= rep.extra["cpu_us_per_op"] <= 1000, rep.extra
    assert 0.7 <= rep.extra["cpu_cores"] <= 1.05
    peer = Report("p", "peer", 10, 0, 1.0, extra={"window": [start, end], "peer": True})
    attach([peer], sampler)
    assert "cpu_us_per_op" not in peer.extra  # a peer's report takes the peer's sampler


def test_a_window_the_samples_do_not_cover_reads_nothing() -> None:
    sampler = CpuSampler(lambda: [0], interval_s=0.01).start()
    time.sleep(0.05)
    sampler.stop()
    assert sampler.between(sampler.times[0] - 1, sampler.times[-1]) is None
    assert sampler.between(sampler.times[0], sampler.times[-1]) == 0.0
    assert proc_cpu_s(0) == 0.0  # no such process: nothing, no error


def test_peak_rss_is_the_commands_own_not_its_parents() -> None:
    """A parent holding 300 MB runs a command that touches 60 MB: the peak is about 60
    MB (wait4's ru_maxrss reports the parent's 300 MB too, from before the exec)."""
    import sys

    from sim.cpumeter import run_peak_rss

    ballast = bytearray(300 << 20)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touched: resident
    secs, peak, code = run_peak_rss([sys.executable, "-c", "b = bytearray(60 << 20); "
                                     "b[::4096] = b'x' * len(b[::4096]); "
                                     "import time; time.sleep(0.5)"])
    assert code == 0 and secs >= 0.5
    assert 60 << 20 <= peak < 200 << 20
    del ballast
