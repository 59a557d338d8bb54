"""A common load report: throughput, latency percentiles, errors; JSON and a table."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any


def run_sim(args: list[str], timeout: float = 900) -> list[dict[str, Any]]:
    """Run ``ocs-sim ARGS --json`` in a process of its own (the bench parts' generators)
    and return its reports as JSON dicts (``Report.from_json`` reads one)."""
    p = subprocess.run([sys.executable, "-m", "sim.cli", *args, "--json"],
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"ocs-sim {args[0]} failed: {p.stderr.strip()[-500:]}")
    result: list[dict[str, Any]] = json.loads(p.stdout)
    return result

class Timeline:
    """When each operation of one run completed, for the throughput-over-time plot."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.done: list[float] = []

    def mark(self) -> None:
        self.done.append(time.perf_counter())

    def series(self, points: int = 60) -> dict[str, Any]:
        """Completions per second in at most ``points`` equal buckets from the start."""
        if not self.done:
            return {"bucket_s": 0.0, "per_s": []}
        span = max(self.done) - self.start
        bucket = max(0.25, span / points)
        counts = [0] * (int(span / bucket) + 1)
        for t in self.done:
            counts[min(len(counts) - 1, int((t - self.start) / bucket))] += 1
        return {"bucket_s": round(bucket, 4), "per_s": [round(c / bucket, 1) for c in counts]}


async def paced(count: int, window: asyncio.Semaphore, rate: float | None,
                one: Callable[[int], Awaitable[float | None]]) -> tuple[list[float], float,
                                                                         Timeline]:
    """Run ``one(n)`` for n in 0..count-1 (its latency, or None for an error), at most
    ``window`` in flight, as fast as answered or open loop at ``rate`` a second.
    Returns (latencies, seconds, timeline)."""
    lat: list[float] = []
    timeline = Timeline()

    async def run(n: int) -> None:
        try:
            r = await one(n)
            if r is not None:
                lat.append(r)
                timeline.mark()
        finally:
            window.release()

    tasks = []
    start = time.perf_counter()
    for n in range(count):
        if rate:
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await window.acquire()
        tasks.append(asyncio.ensure_future(run(n)))
    await asyncio.gather(*tasks)
    return lat, time.perf_counter() - start, timeline


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (p in 0..100)."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


@dataclass(slots=True)
class Report:
    part: str
    name: str
    operations: int
    errors: int
    seconds: float
    latencies_ms: dict[str, float] = field(default_factory=dict)
    target: str = ""
    passed: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.operations / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def from_latencies(cls, part: str, name: str, latencies_s: list[float], errors: int,
                       seconds: float, timeline: Timeline | None = None, **kw: Any) -> Report:
        lat = sorted(latencies_s)
        pct = {f"p{p:g}": percentile(lat, p) * 1000 for p in (50, 90, 99, 99.9)}
        if lat:
            pct["max"] = lat[-1] * 1000
        r = cls(part=part, name=name, operations=len(lat) + errors, errors=errors,
                seconds=seconds, latencies_ms=pct, **kw)
        if timeline is not None:
            r.extra["timeline"] = timeline.series()
            # the run's span on CLOCK_MONOTONIC (perf_counter, the same in every process):
            # the bench reads the server's CPU over it
            r.extra["window"] = [round(timeline.start, 6), round(timeline.start + seconds, 6)]
        return r

    @classmethod
    def from_json(cls, d: dict[str, Any], **overrides: Any) -> Report:
        """A report back from ``to_json`` (a generator's ``--json`` output, a results
        file); ``overrides`` replace fields (part, name, target, passed, extra ...)."""
        fields = {"part": d["part"], "name": d["name"], "operations": d["operations"],
                  "errors": d["errors"], "seconds": d["seconds"],
                  "latencies_ms": d["latencies_ms"], "target": d.get("target", ""),
                  "passed": d.get("passed"), "extra": dict(d.get("extra", {}))}
        fields.update(overrides)
        return cls(**fields)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["throughput_per_s"] = round(self.throughput, 1)
        return d


def cpu_per_op(r: Report) -> str:
    """The CPU per operation of the server's processes (or the peer's), with the cores
    they kept busy: "96 (0.95)"; "" when not measured."""
    us = r.extra.get("cpu_us_per_op")
    if us is None:
        return ""
    return f"{us:,.0f} ({r.extra.get('cpu_cores', 0):.2f})"


def finish(reports: list[Report], title: str, as_json: bool, target: str) -> int:
    """Print a generator's reports; the exit status: 1 with one line on stderr when the
    target answered nothing at all (a dead port, a wrong secret), else 0."""
    if as_json:
        sys.stdout.write(dump_json(reports) + "\n")
    else:
        print_table(reports, title)
    sent = sum(r.operations for r in reports)
    if sent and all(r.errors == r.operations for r in reports):
        sys.stderr.write(f"{title}: no answer from {target} ({sent} requests, all failed)\n")
        return 1
    return 0


def print_table(reports: list[Report], title: str = "ocs benchmark") -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in ("part", "benchmark", "ops", "errors", "ops/s", "p50 ms", "p99 ms",
                "p99.9 ms", "CPU us/op", "result", "target", "verdict"):
        t.add_column(col, justify="right" if col in ("ops", "errors", "ops/s", "CPU us/op")
                     else "left")
    for r in reports:
        lat = r.latencies_ms
        result = r.extra.get("result", "")
        t.add_row(
            r.part,
            r.name,
            str(r.operations),
            str(r.errors),
            f"{r.throughput:,.0f}" if r.seconds else "",
            f"{lat['p50']:.3f}" if "p50" in lat else "",
            f"{lat['p99']:.3f}" if "p99" in lat else "",
            f"{lat['p99.9']:.3f}" if "p99.9" in lat else "",
            cpu_per_op(r),
            str(result),
            r.target,
            "" if r.passed is None else ("PASS" if r.passed else "MISS"),
        )
    Console(width=200).print(t)


def dump_json(reports: list[Report]) -> str:
    return json.dumps([r.to_json() for r in reports], indent=2)
