"""``ocs-sim api``: REST API load (GET a subscriber, POST a top-up with a fresh reference)
and the ``api`` part of ``make bench``: the API at a fixed rate while the Diameter part's
charging load runs, against the same load without it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TYPE_CHECKING, Any

from sim.registry import bench_part, command
from sim.report import Report, finish, paced, run_sim

if TYPE_CHECKING:
    from sim.context import BenchContext

TOPUP_EVERY = 5
"""One request in five is a top-up (a write); the others read a subscriber."""


class _Conn:
    """One keep-alive HTTP/1.1 connection, a request at a time: bytes composed by hand and
    only the status line and Content-Length read back (httpx cost ~2 ms of CPU a request
    here: the generator, not the server, set the pace)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def request(self, head: bytes, body: bytes = b"") -> int:
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return int(status_line.split(b" ", 2)[1])


async def run_load(url: str, token: str, msisdns: list[str], *, requests: int, rate: float,
                   connections: int, run_id: str) -> list[Report]:
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    pool: asyncio.Queue[_Conn] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(_Conn(*await asyncio.open_connection(host, int(port))))
    common = f"Host: {host}\r\nAuthorization: Bearer {token}\r\n"
    reads: list[float] = []
    writes: list[float] = []
    errors = [0, 0]

    async def one(n: int) -> float | None:
        msisdn = msisdns[n % len(msisdns)]
        write = n % TOPUP_EVERY == 0
        conn = await pool.get()
        t0 = time.perf_counter()
        try:
            if write:
                body = (f'{{"amount": "0.01", "reference": "{run_id}-{n}"}}').encode()
                status = await conn.request((
                    f"POST /api/v1/subscribers/{msisdn}/topups HTTP/1.1\r\n{common}"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    "\r\n").encode(), body)
                ok = status == 201
            else:
                status = await conn.request(
                    f"GET /api/v1/subscribers/{msisdn} HTTP/1.1\r\n{common}\r\n".encode())
                ok = status == 200
            pool.put_nowait(conn)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            ok = False
            conn.writer.close()
            pool.put_nowait(_Conn(*await asyncio.open_connection(host, int(port))))
        took = time.perf_counter() - t0
        if not ok:
            errors[write] += 1
            return None
        (writes if write else reads).append(took)
        return took

    _lat, seconds, timeline = await paced(requests, asyncio.Semaphore(connections), rate, one)
    while not pool.empty():
        pool.get_nowait().writer.close()
    return [
        Report.from_latencies("api", f"GET /subscribers/{{msisdn}} at {rate:g}/s (all)",
                              reads, errors[0], seconds, timeline),
        Report.from_latencies("api", "POST /subscribers/{msisdn}/topups", writes, errors[1],
                              seconds),
    ]


@command("api", "REST API load: GET subscribers and POST top-ups at a rate")
class ApiCommand:
    @staticmethod
    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default="http://127.0.0.1:8088")
        p.add_argument("--token", required=True, help="a care or admin token")
        p.add_argument("--subscribers", type=int, default=1000)
        p.add_argument("--msisdn-base", type=int, default=41770000000)
        p.add_argument("--requests", type=int, default=5000)
        p.add_argument("--rate", type=float, default=500.0, help="requests per second")
        p.add_argument("--connections", type=int, default=16)
        p.add_argument("--json", action="store_true")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        msisdns = [str(args.msisdn_base + i) for i in range(args.subscribers)]
        import uvloop

        reports = uvloop.run(run_load(args.url, args.token, msisdns, requests=args.requests,
                                       rate=args.rate, connections=args.connections,
                                       run_id=f"sim-{time.time_ns():x}"))
        return finish(reports, "ocs-sim api", args.json, args.url)


@bench_part("api")
async def bench_api(ctx: BenchContext) -> list[Report]:
    from ocs.api.tokens import new_token, op_create
    from sim.core import provision

    server = ctx.server
    if server.diameter is None or server.api is None:
        raise RuntimeError("the bench server has no Diameter or API listener")
    host, port = server.diameter.address
    api_host, api_port = server.api.address
    sessions = 5000
    provision(server.store, sessions)
    token = new_token()
    server.store.run_write(op_create(token, "care", name="bench"))
    loop = asyncio.get_running_loop()
    seconds = ctx.scale_s(20.0)
    rate = 500.0

    def diameter(updates: int) -> Report:
        res = run_sim(["diameter", "--server", f"{host}:{port}", "--realm", "test.realm",
                       "--sessions", str(sessions), "--updates", str(updates), "--window",
                       "1024", "--connections", "8", "--terminate"])
        return Report.from_json(next(d for d in res if d["name"].startswith("CCR-U")))

    def api() -> list[dict[str, Any]]:
        return run_sim(["api", "--url", f"http://{api_host}:{api_port}", "--token", token,
                        "--subscribers", str(sessions), "--requests", str(int(rate * seconds)),
                        "--rate", str(rate)])

    # the charging load alone, long enough to overlap the API run below
    warm = await loop.run_in_executor(None, diameter, ctx.scale(20_000))
    updates = max(ctx.scale(20_000), int(warm.throughput * seconds))
    alone = await loop.run_in_executor(None, diameter, updates)
    both_d, both_a = await asyncio.gather(loop.run_in_executor(None, diameter, updates),
                                          loop.run_in_executor(None, api))
    drop = 1 - both_d.throughput / alone.throughput if alone.throughput else 1.0
    alone.name = "CCR-U closed loop, alone"
    both_d.name = f"CCR-U closed loop, API busy at {rate:g}/s"
    both_d.target = "charging throughput drop <= 5 %"
    both_d.passed = drop <= 0.05 and both_d.errors == 0
    both_d.extra["result"] = f"{drop * 100:+.1f} % drop" if drop >= 0 else \
        f"{-drop * 100:.1f} % more"
    reports = [alone, both_d]
    for d in both_a:
        r = Report.from_json(d)
        if r.name.startswith("GET"):
            r.target = f">= {rate * 0.95:g} req/s with charging busy, 0 errors"
            total = sum(x["operations"] for x in both_a)
            r.extra["result"] = f"{total / r.seconds:,.0f} API req/s (reads and writes)"
            r.passed = total / r.seconds >= rate * 0.95 and all(
                x["errors"] == 0 for x in both_a)
        reports.append(r)
    return reports
