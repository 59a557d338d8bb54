"""``python -m sim.opcost``: the writer's CPU per engine operation, without the store's
fsync: N operations inside one write transaction, the minimum over several samples.

Throughput figures on a shared machine swing by tens of percent between runs; this one
isolates what a change to an operation costs (run it on the code before and after,
alternating). Operations: reserve + final commit of a session, an interim commit, an SMS
debit.
"""

from __future__ import annotations

import argparse
import calendar
import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import CommitRequest, DebitRequest, IdKind, ReserveRequest
from ocs.provisioning import NewSubscriber, op_add_subscriber, op_load_plans
from ocs.rating.plans import Service, load_plans_file
from ocs.store import Store

T = calendar.timegm((2026, 11, 18, 12, 0, 0))  # a weekday, peak time
IDS = ((IdKind.MSISDN, "41790000001"),)


def _all(op: Callable[[Any, Any], Any], requests: list[Any], tx: Any) -> None:
    for r in requests:
        op(tx, r)


def measure(n: int, samples: int, plans: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        store = Store(d, map_size_mb=2048)
        store.run_write(op_load_plans(load_plans_file(plans)))
        store.run_write(op_add_subscriber(NewSubscriber(msisdn="41790000001",
                                                        plan_id="prepaid-basic",
                                                        balance="1000000.00")))
        eng = ChargingEngine(store, None, EngineSettings(node="opcost"))
        out: dict[str, list[float]] = {"reserve + final commit": [], "interim commit": [],
                                       "sms debit": []}
        for rep in range(samples):
            def cycle(tx: object, rep: int = rep) -> None:
                for i in range(n):
                    sid = f"s{rep}-{i}"
                    eng.op_reserve(tx, ReserveRequest(  # type: ignore[arg-type]
                        request_key=f"r{sid}".encode(), session_id=sid, subscriber=IDS,
                        service=Service.DATA, units=10**6, rating_group=10, now=T))
                    eng.op_commit(tx, CommitRequest(  # type: ignore[arg-type]
                        request_key=f"c{sid}".encode(), session_id=sid,
                        service=Service.DATA, rating_group=10, used_units=1000, final=True,
                        now=T + 1))

            t0 = time.perf_counter()
            store.run_write(cycle)
            out["reserve + final commit"].append((time.perf_counter() - t0) / n)
            sid = f"i{rep}"
            eng.reserve_sync(ReserveRequest(request_key=f"ri{rep}".encode(), session_id=sid,
                                            subscriber=IDS, service=Service.DATA,
                                            units=10**6, rating_group=10, now=T))
            commits = [CommitRequest(request_key=f"ci{rep}-{i}".encode(), session_id=sid,
                                     service=Service.DATA, rating_group=10, used_units=1000,
                                     next_units=0, now=T + i) for i in range(n)]
            t0 = time.perf_counter()
            store.run_write(functools.partial(_all, eng.op_commit, commits))
            out["interim commit"].append((time.perf_counter() - t0) / n)
            debits = [DebitRequest(request_key=f"d{rep}-{i}".encode(), subscriber=IDS,
                                   service=Service.SMS, units=1, destination="4179", now=T)
                      for i in range(n)]
            t0 = time.perf_counter()
            store.run_write(functools.partial(_all, eng.op_debit, debits))
            out["sms debit"].append((time.perf_counter() - t0) / n)
        store.close()
    return {k: min(v) * 1e6 for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m sim.opcost", description=__doc__)
    p.add_argument("--ops", type=int, default=1000, help="operations per sample")
    p.add_argument("--samples", type=int, default=15)
    p.add_argument("--plans", type=Path, default=Path("config/plans.toml"))
    args = p.parse_args()
    for name, us in measure(args.ops, args.samples, args.plans).items():
        print(f"{name:24} {us:8.1f} us")


if __name__ == "__main__":
    main()
