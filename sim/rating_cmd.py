"""``make bench`` part ``rating``: a 100,000-prefix voice deck imported with the real
``ocs plan import-rates`` (target <= 5 s), the live rate selection over it
(longest-prefix match among the deck and the plan's own rates; target < 20 us), and
re-rating a month of CDRs with ``ocs rerate`` (target >= 200,000 rows/s)."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from sim.context import BenchContext
from sim.registry import bench_part
from sim.report import Report

DECK_ROWS = 100_000


def write_deck(path: Path, rows: int, seed: int = 7) -> list[str]:
    """A deck of ``rows`` distinct prefixes (3-8 digits) with prices and increments."""
    rng = random.Random(seed)
    seen: set[str] = set()
    with path.open("w") as f:
        f.write("prefix,price,first_increment_s,increment_s,connect_fee\n")
        while len(seen) < rows:
            p = str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9))
                                                  for _ in range(rng.randint(2, 7)))
            if p in seen:
                continue
            seen.add(p)
            f.write(f"{p},{rng.randint(1, 99_999) / 100_000:.5f},{rng.choice([1, 30, 60])},"
                    f"{rng.choice([1, 6, 60])},0\n")
    return sorted(seen)


@bench_part("rating")
async def bench_rating(ctx: BenchContext) -> list[Report]:
    from ocs.charging.plans import PlanCache
    from ocs.provisioning import op_load_plans
    from ocs.rating.engine import UsageContext, select_rate
    from ocs.rating.plans import Service, load_plans_file
    from ocs.store import Store
    from sim.core import CONFIG_DIR

    work = ctx.workdir / "rating"
    data = work / "data"
    with Store(data, map_size_mb=2048) as store:
        store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    cfg = work / "ocs.toml"
    cfg.write_text(f'[node]\nname = "bench"\ndata_dir = "{data}"\n')
    rows = ctx.scale(DECK_ROWS)
    deck = work / "deck.csv"
    prefixes = write_deck(deck, rows)
    ocs = str(Path(sys.executable).parent / "ocs")
    t0 = time.perf_counter()
    done = subprocess.run([ocs, "plan", "import-rates", str(deck), "--plan", "prepaid-basic",
                           "--service", "voice", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=300)
    import_s = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"ocs plan import-rates failed: {done.stderr.strip()}")
    imported = Report("rating", f"ocs plan import-rates, {rows:,} prefixes", rows, 0, import_s,
                      target="<= 5 s", passed=import_s <= 5.0,
                      extra={"result": f"{import_s:.2f} s (whole command)"})
    with Store(data, map_size_mb=2048, create=False) as store:
        t0 = time.perf_counter()
        plan = PlanCache().in_store(store).plan_at("prepaid-basic", int(time.time()))
        compile_s = time.perf_counter() - t0
    assert plan is not None and len(plan.rates) > rows
    compiled = Report("rating", f"plan with the deck loaded and compiled ({len(plan.rates):,} "
                      "rates)", 1, 0, compile_s, extra={"result": f"{compile_s:.2f} s"})
    rng = random.Random(11)
    dests = [rng.choice(prefixes) + "".join(str(rng.randint(0, 9)) for _ in range(6))
             if rng.random() < 0.9 else str(rng.randint(10**9, 10**11))
             for _ in range(ctx.scale(200_000))]
    now = int(time.time())
    lat: list[float] = []
    perf = time.perf_counter
    found = 0
    for d in dests:
        c = UsageContext(service=Service.VOICE, at=now, destination=d)
        t = perf()
        rate = select_rate(plan, c)
        lat.append(perf() - t)
        found += rate is not None
    match = Report.from_latencies("rating", f"rate selection over the deck ({len(dests):,} "
                                  "destinations)", lat, 0, sum(lat), target="p99 < 0.020 ms",
                                  extra={"result": f"{found:,} rated"})
    match.passed = match.latencies_ms["p99"] < 0.020
    return [imported, compiled, match, await _bench_rerate(ctx, work, cfg)]


async def _bench_rerate(ctx: BenchContext, work: Path, cfg: Path) -> Report:
    """``ocs rerate --dry-run`` over a month of CDR files (the billing bench's generator):
    rows per second and the peak memory of the whole command."""
    import asyncio

    from sim.billing_cmd import generate_period
    from sim.cpumeter import run_peak_rss

    rows = ctx.scale(10_000_000)
    cdr = work / "data" / "cdr"
    await asyncio.get_running_loop().run_in_executor(
        None, generate_period, cdr, rows, [f"4178{i:07d}" for i in range(5_000)])
    err = work / "rerate.err"
    with err.open("wb") as e:
        secs, peak, code = await asyncio.get_running_loop().run_in_executor(
            None, lambda: run_peak_rss(
                [str(Path(sys.executable).parent / "ocs"), "rerate", "--period", "2026-10",
                 "--dry-run", "--report", str(work / "rerate.csv"), "--config", str(cfg)],
                stderr=e.fileno()))
    if code != 0:
        raise RuntimeError(f"ocs rerate failed: {err.read_text().strip()}")
    rate = rows / secs
    rep = Report("rating", f"ocs rerate --dry-run, {rows:,} CDR rows", rows, 0, secs,
                 target=">= 200,000 rows/s, constant memory", passed=rate >= 200_000,
                 extra={"result": f"{rate:,.0f} rows/s, peak RSS {peak >> 20} MiB"})
    return rep
