"""``ocs-sim core`` and the ``core`` part of ``make bench``."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import IdKind
from ocs.provisioning import import_subscribers
from ocs.rating.trie import PrefixTrie
from ocs.store import Store
from sim.core import (
    CoreLoad,
    CoreResult,
    open_engine,
    provision,
    run_closed_loop,
    run_open_loop,
)
from sim.registry import bench_part, command
from sim.report import Report, dump_json, print_table

if TYPE_CHECKING:
    from sim.context import BenchContext


def _report(name: str, r: CoreResult, **kw: Any) -> Report:
    rep = Report.from_latencies("core", name, r.latencies, r.errors, r.seconds, **kw)
    rep.extra["avg_batch"] = round(r.ops / max(1, r.batches), 1)
    return rep


@command("core", "durable charging operations through the engine and group commit")
class CoreCommand:
    @staticmethod
    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="store to use (default: a fresh temp dir)")
        p.add_argument("--subscribers", type=int, default=10_000)
        p.add_argument("--ops", type=int, default=60_000, help="closed loop: operations")
        p.add_argument("--concurrency", type=int, default=2000)
        p.add_argument("--rate", type=float, help="open loop: operations per second")
        p.add_argument("--seconds", type=float, default=5.0, help="open loop: duration")
        p.add_argument("--commit-max-ops", type=int, default=256)
        p.add_argument("--commit-max-delay-ms", type=float, default=1.0)
        p.add_argument("--json", action="store_true")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        tmp = None
        if args.data_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="ocs-sim-")
            data = Path(tmp.name)
        else:
            data = Path(args.data_dir)
        store, writer, eng = open_engine(data, max_ops=args.commit_max_ops,
                                         max_delay_ms=args.commit_max_delay_ms)
        try:
            msisdns = provision(store, args.subscribers)
            load = CoreLoad(eng, msisdns)
            if args.rate:
                res = _run(run_open_loop(load, args.rate, args.seconds))
                rep = _report(f"open loop {args.rate:g}/s", res)
            else:
                res = _run(run_closed_loop(load, args.ops, args.concurrency))
                rep = _report(f"closed loop x{args.concurrency}", res)
        finally:
            writer.stop()
            store.close()
            if tmp is not None:
                tmp.cleanup()
        if args.json:
            sys.stdout.write(dump_json([rep]) + "\n")
        else:
            print_table([rep], "ocs-sim core")
        return 0


def _run(coro: Coroutine[Any, Any, CoreResult]) -> CoreResult:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)


# -- make bench, part core ------------------------------------------------------------------


@bench_part("core")
async def bench_core(ctx: BenchContext) -> list[Report]:
    reports: list[Report] = []
    server = ctx.server
    eng = server.engine
    msisdns = provision(server.store, 10_000)
    load = CoreLoad(eng, msisdns, seed=2)
    await run_closed_loop(load, 5_000, 500)  # warm-up
    r = await run_closed_loop(load, ctx.scale(120_000), 2000)
    rep = _report("durable ops, closed loop", r, target=">= 40000 ops/s")
    rep.passed = rep.throughput >= 40_000
    reports.append(rep)
    reports.extend(await fraud_overhead(ctx, lambda: run_closed_loop(
        load, ctx.scale(40_000), 2000), "durable ops, closed loop"))
    for rate, target in ((20_000, 5.0), (10_000, None)):
        r = await run_open_loop(load, rate, ctx.scale_s(5.0))
        rep = _report(f"submit->durable @ {rate // 1000}k/s", r,
                      target=f"p99 <= {target:g} ms" if target else "")
        if target:
            rep.passed = rep.latencies_ms["p99"] <= target
        reports.append(rep)
    reports.append(await asyncio.get_running_loop().run_in_executor(
        None, bench_fraud_rules, ctx.workdir, ctx.scale(100_000)))
    reports.extend(_bench_trie())
    reports.extend(await asyncio.get_running_loop().run_in_executor(
        None, _bench_million, ctx.workdir, ctx.scale(1_000_000)))
    return reports


async def fraud_overhead(ctx: BenchContext, again: Any, name: str, rounds: int = 3
                         ) -> list[Report]:
    """The rules' cost: the same load alternately with the fraud rules off and on,
    ``rounds`` times, so that drift (a growing store, a warming cache) weighs on both
    sides alike. Reports the 'off' runs merged, with the cost in throughput."""
    eng = ctx.server.engine
    if not ctx.server.cfg.fraud.enabled:
        return []

    async def once() -> Report:
        r = await again()
        return r if isinstance(r, Report) else _report(name, r)

    on: list[Report] = []
    off: list[Report] = []
    try:
        for _ in range(rounds):
            await eng.submit("fraud_rules", False)
            off.append(await once())
            await eng.submit("fraud_rules", True)
            on.append(await once())
    finally:
        await eng.submit("fraud_rules", True)

    def rate(rs: list[Report]) -> float:
        return sum(r.operations for r in rs) / sum(r.seconds for r in rs)

    cost = 1 - rate(on) / rate(off)
    rep = Report(off[0].part, f"{name}: fraud rules on vs off, {rounds} rounds each",
                 sum(r.operations for r in on), sum(r.errors for r in on),
                 sum(r.seconds for r in on), target="fraud rules cost <= 10%",
                 passed=cost <= 0.10,
                 extra={"result": f"on {rate(on):,.0f}/s, off {rate(off):,.0f}/s: "
                                  f"cost {cost:.1%}"})
    return [rep]


def bench_fraud_rules(workdir: Path, events: int = 100_000) -> Report:
    """Average cost of the fraud rules per rated event, as the engine runs them: each event
    reads a subscriber's balance record, runs the rules on the state inside it and writes
    the record back, in write transactions of 1,000 events. The same loop without the
    rules (records without state) is subtracted: what remains is the rules' own cost,
    state encoding included."""
    from ocs.fraud import cases
    from ocs.fraud.rules import Event, FraudSettings
    from ocs.store.env import BALANCES
    from ocs.store.records import Balance, Subscriber, dec_balance, encode

    cfg = FraudSettings(high_risk_prefixes=("882", "883", "979", "41900"))
    subs = [Subscriber(msisdn=f"4175{i:07d}", plan_id="prepaid-basic", mode="prepaid",
                       currency="EUR") for i in range(1000)]
    rng = random.Random(5)
    evs = [Event(kind=rng.choice(("start", "usage", "end", "event")), at=1_790_000_000 + i,
                 local_hour=12, service=rng.choice(("voice", "data", "sms")),
                 session_id=f"s{i % 5000}", units=60, charge=10_000, session_total=120,
                 destination=f"41{rng.randrange(10**9):09d}") for i in range(events)]

    def loop(store: Store, rules: bool) -> float:
        t0 = time.perf_counter()
        for start in range(0, events, 1000):
            def op(tx: Any, start: int = start) -> None:
                for i in range(start, min(start + 1000, events)):
                    sub = subs[i % 1000]
                    key = sub.msisdn.encode()
                    raw = tx.get(BALANCES, key)
                    bal = dec_balance.decode(raw) if raw is not None else Balance()
                    if rules:
                        cases.check(tx, cfg, sub, evs[i], bal)
                    tx.put(BALANCES, key, encode(bal))
            store.run_write(op)
        return time.perf_counter() - t0

    with Store(workdir / "fraud-off", map_size_mb=512) as plain:
        base = loop(plain, False)
    with Store(workdir / "fraud-on", map_size_mb=512) as store:
        secs = loop(store, True)
    per_event_us = max(0.0, secs - base) / events * 1e6
    return Report("core", "fraud rules per rated event (marginal, in the txn)", events, 0,
                  secs, target="<= 20 us average", passed=per_event_us <= 20,
                  extra={"result": f"{per_event_us:.1f} us/event"})


def _bench_trie() -> list[Report]:
    rng = random.Random(7)
    prefixes = [str(rng.randrange(10**3, 10**9)) for _ in range(100_000)]
    t0 = time.perf_counter()
    trie: PrefixTrie[str] = PrefixTrie()
    for p in prefixes:
        trie.insert(p, p)
    load_s = time.perf_counter() - t0
    keys = [str(rng.randrange(10**10, 10**12)) for _ in range(100_000)]
    lat: list[float] = []
    perf = time.perf_counter
    for k in keys:
        t = perf()
        trie.longest(k)
        lat.append(perf() - t)
    load = Report("core", "trie: load 100k prefixes", 100_000, 0, load_s,
                  target="< 2 s", passed=load_s < 2.0, extra={"result": f"{load_s:.2f} s"})
    match = Report.from_latencies("core", "trie: longest-prefix match", lat, 0, sum(lat),
                                  target="< 0.020 ms")
    match.passed = match.latencies_ms["p99"] < 0.020
    return [load, match]


def _bench_million(workdir: Path, count: int) -> list[Report]:
    data = workdir / "million"
    csv = workdir / "million.csv"
    with csv.open("w") as f:
        f.write("msisdn,plan,imsi,username,balance\n")
        for i in range(count):
            f.write(f"4176{i:07d},prepaid-basic,22802{i:010d},u{i}@example.net,10.00\n")
    from ocs.provisioning import op_load_plans
    from ocs.rating.plans import load_plans_file
    from sim.core import CONFIG_DIR

    reports: list[Report] = []
    with Store(data, map_size_mb=4096) as store:
        store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
        t0 = time.perf_counter()
        n = import_subscribers(store, csv)
        import_s = time.perf_counter() - t0
        reports.append(Report("core", f"import {n:,} subscribers", n, 0, import_s,
                              target="<= 60 s", passed=import_s <= 60 and n == count,
                              extra={"result": f"{import_s:.1f} s"}))
        eng = ChargingEngine(store, None, _settings())
        rng = random.Random(3)
        lat: list[float] = []
        perf = time.perf_counter
        for _ in range(100_000):
            i = rng.randrange(count)
            ids = ((IdKind.IMSI, f"22802{i:010d}"),) if i % 2 else (
                (IdKind.MSISDN, f"4176{i:07d}"),)
            t = perf()
            sub = eng.find_subscriber_now(ids)
            lat.append(perf() - t)
            assert sub is not None
        rep = Report.from_latencies("core", "subscriber lookup (msisdn/imsi)", lat, 0, sum(lat),
                                    target="p99 <= 0.050 ms")
        rep.passed = rep.latencies_ms["p99"] <= 0.050
        reports.append(rep)
    size = (data / "ocs.lmdb").stat().st_size
    reports.append(Report("core", f"store size, {count:,} subscribers", 0, 0, 0.0,
                          target="<= 1 GiB", passed=size <= 1 << 30,
                          extra={"result": f"{size / 2**20:.0f} MiB"}))
    csv.unlink()
    return reports


def _settings() -> EngineSettings:
    return EngineSettings(node="bench")
