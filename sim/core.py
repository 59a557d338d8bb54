"""Core load: durable charging operations straight through the engine and group commit.

No wire protocol is involved: this measures the store, the writer and the engine, the
part every protocol shares. Each "session" is reserve -> commit(final), interleaved with
direct debits, spread over many subscribers.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocs.charging.engine import ChargingEngine, EngineSettings, ThreadBackend
from ocs.charging.model import CommitRequest, DebitRequest, IdKind, ReserveRequest
from ocs.provisioning import NewSubscriber, op_load_plans, prepare_subscriber
from ocs.rating.plans import Service, load_plans_file
from ocs.store import Overloaded, Store, Tx, Writer
from ocs.store.env import BALANCES, SUBSCRIBERS
from ocs.store.records import encode

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


@dataclass(frozen=True, slots=True)
class CoreResult:
    latencies: list[float]
    errors: int
    seconds: float
    batches: int
    ops: int


def provision(store: Store, count: int, balance: str = "1000000.00",
              plans_file: Path | None = None) -> list[str]:
    """Load the demo plans and ``count`` prepaid subscribers (fast path, no passwords)."""
    doc = load_plans_file(plans_file or CONFIG_DIR / "plans.toml")
    store.run_write(op_load_plans(doc))
    plans = {p["id"]: p for p in doc.plans}
    msisdns = [f"4177{i:07d}" for i in range(count)]
    now = int(time.time())
    for start in range(0, count, 20_000):
        chunk = msisdns[start:start + 20_000]

        def op(tx: Tx, chunk: list[str] = chunk) -> None:
            for m in chunk:
                sub, bal = prepare_subscriber(
                    NewSubscriber(msisdn=m, plan_id="prepaid-basic", balance=balance), plans,
                    now)
                tx.put(SUBSCRIBERS, m.encode(), encode(sub))
                tx.put(BALANCES, m.encode(), encode(bal))

        store.run_write(op)
    return msisdns


class CoreLoad:
    def __init__(self, engine: ChargingEngine, msisdns: list[str], seed: int = 1):
        self.engine = engine
        self.msisdns = msisdns
        self.rng = random.Random(seed)
        self.seq = 0
        self._session = ""

    def next_op(self) -> Callable[[], asyncio.Future[Any]]:
        """The next operation, as a thunk that submits it (reserve/commit/debit mix)."""
        self.seq += 1
        n = self.seq
        submit = self.engine.submit
        kind = n % 3
        # sessions: op n (kind 1) reserves, op n+1 (kind 2) commits the same session
        if kind == 1:
            m = self.msisdns[self.rng.randrange(len(self.msisdns))]
            self._session = f"bs{n}"
            req: Any = ReserveRequest(request_key=b"r%d" % n, session_id=self._session,
                                      subscriber=((IdKind.MSISDN, m),), service=Service.DATA,
                                      units=1_000_000, rating_group=10)
            return lambda: submit("reserve", req)
        if kind == 2:
            req = CommitRequest(request_key=b"c%d" % n, session_id=self._session,
                                service=Service.DATA, rating_group=10, used_units=750_000,
                                final=True)
            return lambda: submit("commit", req)
        m = self.msisdns[self.rng.randrange(len(self.msisdns))]
        req = DebitRequest(request_key=b"d%d" % n, subscriber=((IdKind.MSISDN, m),),
                           service=Service.SMS, destination="4179")
        return lambda: submit("debit", req)


def _counts(engine: ChargingEngine) -> tuple[int, int]:
    b = engine.backend
    w: Any = b.writer if isinstance(b, ThreadBackend) else b
    return int(w.batches), int(w.ops)


async def run_closed_loop(load: CoreLoad, total: int, concurrency: int) -> CoreResult:
    """As fast as possible with ``concurrency`` operations in flight."""
    latencies: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)
    done = asyncio.Event()
    remaining = total
    perf = time.perf_counter

    def finished(t0: float, fut: asyncio.Future[object]) -> None:
        nonlocal errors, remaining
        sem.release()
        if fut.exception() is not None or not getattr(fut.result(), "ok", True):
            errors += 1
        else:
            latencies.append(perf() - t0)
        remaining -= 1
        if remaining == 0:
            done.set()

    b0, o0 = _counts(load.engine)
    start = perf()
    for _ in range(total):
        await sem.acquire()
        t0 = perf()
        fut = load.next_op()()
        fut.add_done_callback(functools.partial(finished, t0))
    await done.wait()
    b1, o1 = _counts(load.engine)
    return CoreResult(latencies, errors, perf() - start, b1 - b0, o1 - o0)


async def run_open_loop(load: CoreLoad, rate: float, seconds: float) -> CoreResult:
    """Submit at a fixed ``rate`` regardless of answers; latency is submit -> durable."""
    latencies: list[float] = []
    errors = 0
    outstanding = 0
    done = asyncio.Event()
    perf = time.perf_counter
    total = int(rate * seconds)
    sent = 0

    def finished(t0: float, fut: asyncio.Future[object]) -> None:
        nonlocal errors, outstanding
        outstanding -= 1
        if fut.exception() is not None or not getattr(fut.result(), "ok", True):
            errors += 1
        else:
            latencies.append(perf() - t0)
        if sent == total and outstanding == 0:
            done.set()

    b0, o0 = _counts(load.engine)
    start = perf()
    while sent < total:
        due = int((perf() - start) * rate) + 1
        burst = min(due, total) - sent
        for _ in range(burst):
            t0 = perf()
            sent += 1
            try:
                fut = load.next_op()()
            except Overloaded:  # a protocol answers busy here; the bench counts an error
                errors += 1
                continue
            outstanding += 1
            fut.add_done_callback(functools.partial(finished, t0))
        await asyncio.sleep(0.0005)
    if outstanding:
        await done.wait()
    b1, o1 = _counts(load.engine)
    return CoreResult(latencies, errors, perf() - start, b1 - b0, o1 - o0)


def open_engine(data_dir: Path, *, max_ops: int = 256, max_delay_ms: float = 1.0) -> tuple[
        Store, Writer, ChargingEngine]:
    store = Store(data_dir, map_size_mb=4096)
    writer = Writer(store, max_ops=max_ops, max_delay_ms=max_delay_ms)
    writer.start()
    return store, writer, ChargingEngine(store, writer, EngineSettings(node="bench"))
