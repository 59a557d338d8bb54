"""``ocs-sim smpp``: N ESME binds submitting windowed bursts of submit_sm, and the ``smpp``
part of ``make bench``. Drives the production PDU codec in the ESME role."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TYPE_CHECKING, Any

from protocols.smpp.pdu import (
    RESP,
    Bind,
    Cmd,
    Framer,
    Pdu,
    Status,
    Submit,
    encode_bind,
    encode_submit,
)
from sim.registry import bench_part, command
from sim.report import Report, Timeline, finish, run_sim

if TYPE_CHECKING:
    from sim.context import BenchContext


class Esme(asyncio.Protocol):
    def __init__(self) -> None:
        self.framer = Framer()
        self.transport: asyncio.Transport | None = None
        self.waiting: dict[int, asyncio.Future[Pdu]] = {}
        self.seq = 0
        self.receipts = 0
        self.delivered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for pdu in self.framer.feed(data):
            if pdu.command_id & RESP:
                fut = self.waiting.pop(pdu.sequence, None)
                if fut is not None and not fut.done():
                    fut.set_result(pdu)
            elif pdu.command_id == Cmd.ENQUIRE_LINK and self.transport is not None:
                self.transport.write(Pdu(Cmd.ENQUIRE_LINK.resp, 0, pdu.sequence).encode())
            elif pdu.command_id == Cmd.DELIVER_SM and self.transport is not None:
                # esm_class is the 3rd octet after three C-strings; receipts have 0x04
                esm = _esm_class(pdu.body)
                if esm & 0x04:
                    self.receipts += 1
                else:
                    self.delivered += 1
                self.transport.write(Pdu(Cmd.DELIVER_SM.resp, 0, pdu.sequence,
                                         b"\x00").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("SMSC closed the connection"))

    def request(self, cmd: int, body: bytes) -> asyncio.Future[Pdu]:
        self.seq = self.seq % 0x7FFFFFFF + 1
        fut: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
        self.waiting[self.seq] = fut
        assert self.transport is not None
        self.transport.write(Pdu(cmd, 0, self.seq, body).encode())
        return fut


def _esm_class(body: bytes) -> int:
    pos = body.index(b"\x00") + 1 + 2  # service_type, source ton/npi
    pos = body.index(b"\x00", pos) + 1 + 2  # source_addr, dest ton/npi
    pos = body.index(b"\x00", pos) + 1  # destination_addr
    return body[pos]


async def run_load(host: str, port: int, system_id: str, password: str, sources: list[str],
                   destination: str, *, binds: int, messages: int, window: int,
                   rate: float | None, receipts: bool = True) -> Report:
    loop = asyncio.get_running_loop()
    esmes: list[Esme] = []
    for _ in range(binds):
        _t, esme = await loop.create_connection(Esme, host, port)
        resp = await esme.request(Cmd.BIND_TRANSCEIVER, encode_bind(
            Bind(system_id, password, "", 0x34, 0, 0, "")))
        if resp.status != Status.ROK:
            raise RuntimeError(f"bind refused: status 0x{resp.status:x}")
        esmes.append(esme)
    lat: list[float] = []
    errors = 0
    windows = [asyncio.Semaphore(window) for _ in esmes]  # each bind's own window

    async def one(n: int) -> None:
        nonlocal errors
        esme = esmes[n % len(esmes)]
        sem = windows[n % len(esmes)]
        sm = Submit("", 1, 1, sources[n % len(sources)], 1, 1, destination, 0, 0, 0, "", "",
                    1 if receipts else 0, 0, 0, 0, b"load test %d" % n, {})
        t0 = time.perf_counter()
        try:
            resp = await asyncio.wait_for(esme.request(Cmd.SUBMIT_SM, encode_submit(sm)), 10)
            if resp.status == Status.ROK:
                lat.append(time.perf_counter() - t0)
                timeline.mark()
            else:
                errors += 1
        except (TimeoutError, ConnectionError):
            errors += 1
        finally:
            sem.release()

    timeline = Timeline()
    start = time.perf_counter()
    tasks = []
    for n in range(messages):
        if rate:
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await windows[n % len(esmes)].acquire()
        tasks.append(asyncio.ensure_future(one(n)))
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - start
    accepted = len(lat)
    if receipts:  # wait (bounded) for a receipt per accepted message
        deadline = time.perf_counter() + 60
        while (sum(e.receipts for e in esmes) < accepted
               and time.perf_counter() < deadline):
            await asyncio.sleep(0.1)
    got = sum(e.receipts for e in esmes)
    for esme in esmes:
        if esme.transport is not None:
            esme.transport.close()
    name = (f"submit_sm @ {rate:g}/s" if rate else
            f"submit_sm, {binds} transceiver binds x window {window}")
    report = Report.from_latencies("smpp", name, lat, errors, seconds, timeline)
    report.extra["receipts"] = got
    report.extra["result"] = f"receipts {got}/{accepted}"
    return report


@command("smpp", "SMPP submit load: N transmitter binds, windowed submit_sm bursts")
class SmppCommand:
    @staticmethod
    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", default="127.0.0.1:2775")
        p.add_argument("--system-id", default="esme")
        p.add_argument("--password", default="secret")
        p.add_argument("--binds", type=int, default=4)
        p.add_argument("--window", type=int, default=64)
        p.add_argument("--messages", type=int, default=20_000)
        p.add_argument("--rate", type=float, help="submits per second (open loop)")
        p.add_argument("--sources", type=int, default=1000,
                       help="sender MSISDNs: --source-base + 0 .. N-1")
        p.add_argument("--source-base", type=int, default=41770000000)
        p.add_argument("--destination", default="41791234567")
        p.add_argument("--no-receipts", action="store_true",
                       help="registered_delivery 0 (default: ask for a receipt per message)")
        p.add_argument("--json", action="store_true")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        host, _, port = args.server.rpartition(":")
        sources = [str(args.source_base + i) for i in range(args.sources)]
        coro = run_load(host, int(port), args.system_id, args.password, sources,
                        args.destination, binds=args.binds, messages=args.messages,
                        window=args.window, rate=args.rate, receipts=not args.no_receipts)
        try:
            import uvloop

            report = uvloop.run(coro)
        except ImportError:  # pragma: no cover
            report = asyncio.run(coro)
        return finish([report], "ocs-sim smpp", args.json, args.server)


def _sim(host: str, port: int, extra: list[str]) -> dict[str, Any]:
    return run_sim(["smpp", "--server", f"{host}:{port}", *extra], timeout=600)[0]


@bench_part("smpp")
async def bench_smpp(ctx: BenchContext) -> list[Report]:
    from sim.core import provision

    server = ctx.server
    if server.smpp is None:
        raise RuntimeError("the bench server has no SMPP listener")
    host, port = server.smpp.server.sockets[0].getsockname()[:2]
    provision(server.store, 2000)  # senders 4177xxxxxxx, prepaid-basic
    loop = asyncio.get_running_loop()
    messages = str(ctx.scale(40_000))
    closed = await loop.run_in_executor(None, _sim, host, port,
                                        ["--messages", messages, "--sources", "2000"])
    ours = Report.from_json(closed, target=">= 10000/s, receipts for all")
    ours.passed = (ours.throughput >= 10_000
                   and closed["extra"]["receipts"] == ours.operations - ours.errors)
    opened = await loop.run_in_executor(None, _sim, host, port, [
        "--messages", str(int(5000 * ctx.scale_s(5.0))), "--sources", "2000",
        "--rate", "5000"])
    at_5k = Report.from_json(opened, target="p99 <= 20 ms")
    at_5k.passed = at_5k.latencies_ms.get("p99", 1e9) <= 20.0
    return [ours, at_5k]
