"""Child process for the crash test: charges as fast as it can through the group-commit
writer and prints each request key once its answer arrived (i.e. after the commit)."""

from __future__ import annotations

import asyncio
import sys

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import DebitRequest, IdKind
from ocs.rating.plans import Service
from ocs.store import Store, Writer


async def main(data_dir: str, subs: list[str]) -> None:
    store = Store(data_dir, map_size_mb=64)
    writer = Writer(store, max_ops=64, max_delay_ms=2)
    writer.start()
    eng = ChargingEngine(store, writer, EngineSettings(node="crash"))
    out = sys.stdout
    sem = asyncio.Semaphore(200)
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        try:
            sub = subs[i % len(subs)]
            d = await eng.submit("debit", DebitRequest(
                request_key=b"k%08d" % i, subscriber=((IdKind.MSISDN, sub),),
                service=Service.SMS, destination="4179"))
            out.write(f"{i} {int(d.ok)}\n")
            out.flush()
        finally:
            sem.release()

    for i in range(1_000_000):  # runs until the parent kills it
        await sem.acquire()
        t = asyncio.create_task(one(i))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
