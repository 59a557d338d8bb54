"""``ocs-sim nchf``: an SMF charging PDU sessions over Nchf_ConvergedCharging (h2c with
prior knowledge), and the ``make bench`` part ``nchf``.

The load generator speaks HTTP/2 with the ``h2`` state machine over asyncio sockets,
several connections with many streams each (what an SMF does); every session is created,
updated ``--updates`` times in total round robin (each update reports ``--used`` bytes
and asks for ``--requested`` more), then released.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import h2.config
import h2.connection
import h2.events

from sim.context import BenchContext
from sim.registry import bench_part, command
from sim.report import Report, Timeline, finish, paced, run_sim

BASE = "/nchf-convergedcharging/v3/chargingdata"


class _H2(asyncio.Protocol):
    """One client connection: requests are streams, answered by futures."""

    def __init__(self, authority: str) -> None:
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.authority = authority.encode()
        self.transport: asyncio.Transport | None = None
        self.waiting: dict[int, tuple[asyncio.Future[tuple[int, bytes, bytes]], list[Any]]] = {}
        self.slots = asyncio.Semaphore(100)
        """Streams in flight (below the CHF's SETTINGS_MAX_CONCURRENT_STREAMS)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for fut, _ in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("closed"))
        self.waiting.clear()

    def _flush(self) -> None:
        if self.transport is not None:
            out = self.conn.data_to_send()
            if out:
                self.transport.write(out)

    def request(self, path: bytes, body: bytes) -> asyncio.Future[tuple[int, bytes, bytes]]:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [
            (b":method", b"POST"), (b":path", path), (b":scheme", b"http"),
            (b":authority", self.authority), (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode())])
        self.conn.send_data(sid, body, end_stream=True)
        fut: asyncio.Future[tuple[int, bytes, bytes]] = (
            asyncio.get_running_loop().create_future())
        self.waiting[sid] = (fut, [0, b"", bytearray()])
        self._flush()
        return fut

    def data_received(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                w = self.waiting.get(ev.stream_id)
                if w is not None:
                    for k, v in ev.headers or ():
                        if k == b":status":
                            w[1][0] = int(v)
                        elif k == b"location":
                            w[1][1] = v
            elif isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                w = self.waiting.get(ev.stream_id)
                if w is not None:
                    w[1][2] += ev.data
            elif isinstance(ev, h2.events.StreamEnded):
                w = self.waiting.pop(ev.stream_id, None)
                if w is not None and not w[0].done():
                    w[0].set_result((w[1][0], w[1][1], bytes(w[1][2])))
            elif isinstance(ev, h2.events.StreamReset):
                w = self.waiting.pop(ev.stream_id, None)
                if w is not None and not w[0].done():
                    w[0].set_exception(ConnectionError(f"reset {ev.error_code}"))
        self._flush()


def body(isn: int, *, sub: str = "", rg: int = 10, requested: int = 0, used: int = 0,
         stamp: str = "", sst: int | None = None, sd: str = "", final: bool = False,
         notify: str = "") -> bytes:
    u: dict[str, Any] = {"ratingGroup": rg}
    if not final:
        u["requestedUnit"] = {"totalVolume": requested}
    if used:
        u["usedUnitContainer"] = [{"localSequenceNumber": isn, "totalVolume": used}]
    doc: dict[str, Any] = {
        "nfConsumerIdentification": {"nodeFunctionality": "SMF", "nFName": "ocs-sim"},
        "invocationTimeStamp": stamp or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "invocationSequenceNumber": isn,
        "multipleUnitUsage": [u],
    }
    if sub:
        doc["subscriberIdentifier"] = sub
    if notify:
        doc["notifyUri"] = notify
    if sst is not None:
        snssai: dict[str, Any] = {"sst": sst}
        if sd:
            snssai["sd"] = sd
        doc["pDUSessionChargingInformation"] = {"pduSessionInformation": {
            "dnnId": "internet", "networkSlicingInfo": {"sNSSAI": snssai}}}
    return json.dumps(doc, separators=(",", ":")).encode()


class NchfLoad:
    def __init__(self, host: str, port: int, connections: int) -> None:
        self.host, self.port, self.n = host, port, connections
        self.conns: list[_H2] = []
        self.errors = 0
        self.statuses: dict[str, int] = {}

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.n):
            _, proto = await loop.create_connection(
                lambda: _H2(f"{self.host}:{self.port}"), self.host, self.port)
            self.conns.append(proto)

    def close(self) -> None:
        for c in self.conns:
            if c.transport is not None:
                c.transport.close()

    async def request(self, i: int, path: bytes, payload: bytes,
                      expect: int) -> tuple[float | None, bytes]:
        conn = self.conns[i % self.n]
        if conn.slots.locked():  # that connection is full: the least busy one
            conn = max(self.conns, key=lambda c: c.slots._value)
        t0 = time.perf_counter()
        async with conn.slots:
            try:
                status, location, answer = await conn.request(path, payload)
            except ConnectionError:
                self.errors += 1
                return None, b""
        elapsed = time.perf_counter() - t0
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if status != expect or (status == 200 and b'"SUCCESS"' not in answer):
            self.errors += 1
            return None, location
        return elapsed, location


async def run_load(host: str, port: int, msisdns: list[str], *, updates: int, window: int,
                   rate: float | None, connections: int, used: int, requested: int,
                   release: bool, run_id: str, sst: int | None, sd: str) -> list[Report]:
    load = NchfLoad(host, port, connections)
    await load.open()
    sem = asyncio.Semaphore(window)
    sessions = len(msisdns)
    refs: list[bytes] = [b""] * sessions
    numbers = [0] * sessions
    timeline = Timeline()

    async def phase(count: int, make: Any, expect: int,
                    phase_rate: float | None) -> tuple[list[float], float, int]:
        nonlocal timeline
        err0 = load.errors

        async def one(n: int) -> float | None:
            i, path, payload = make(n)
            elapsed, location = await load.request(i, path, payload, expect)
            if location:
                refs[i] = location.rsplit(b"/", 1)[-1]
            return elapsed

        lat, secs, timeline = await paced(count, sem, phase_rate, one)
        return lat, secs, load.errors - err0

    reports = []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def create(n: int) -> tuple[int, bytes, bytes]:
        # the run id in the time stamp's place keeps every run's bodies (and refs) apart
        return n, BASE.encode(), body(0, sub=f"msisdn-{msisdns[n]}", requested=requested,
                                      stamp=f"{stamp}#{run_id}", sst=sst, sd=sd)

    lat, secs, err = await phase(sessions, create, 201, None)
    reports.append(Report.from_latencies("nchf", f"create x{sessions}", lat, err, secs,
                                         timeline))

    def update(n: int) -> tuple[int, bytes, bytes]:
        i = n % sessions
        numbers[i] += 1
        return i, f"{BASE}/{refs[i].decode()}/update".encode(), body(
            numbers[i], used=used, requested=requested)

    if updates and sessions:
        lat, secs, err = await phase(updates, update, 200, rate)
        name = (f"update @ {rate:g}/s" if rate else f"update, window {window}") + (
            f", {connections} conn")
        reports.append(Report.from_latencies("nchf", name, lat, err, secs, timeline))
    if release and sessions:
        def rel(n: int) -> tuple[int, bytes, bytes]:
            return n, f"{BASE}/{refs[n].decode()}/release".encode(), body(
                numbers[n] + 1, used=used, final=True)

        lat, secs, err = await phase(sessions, rel, 204, None)
        reports.append(Report.from_latencies("nchf", f"release x{sessions}", lat, err, secs,
                                             timeline))
    for r in reports:
        r.extra["statuses"] = dict(sorted(load.statuses.items()))
    load.close()
    return reports


@command("nchf", "5G SMF load: Nchf create / update... / release over h2c (prior knowledge)")
class NchfCommand:
    @staticmethod
    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", default="127.0.0.1:8086", help="HOST:PORT")
        p.add_argument("--sessions", type=int, default=1000)
        p.add_argument("--msisdn-base", type=int, default=41770000000,
                       help="subscriberIdentifier of session i is msisdn-(base + i)")
        p.add_argument("--updates", type=int, default=20_000, help="updates to send")
        p.add_argument("--release", action="store_true", help="release each session at the end")
        p.add_argument("--connections", type=int, default=4)
        p.add_argument("--window", type=int, default=256, help="requests in flight")
        p.add_argument("--rate", type=float, help="updates per second (open loop)")
        p.add_argument("--used", type=int, default=100_000, help="bytes reported per update")
        p.add_argument("--requested", type=int, default=1_000_000, help="bytes requested")
        p.add_argument("--sst", type=int, help="S-NSSAI SST of the PDU sessions")
        p.add_argument("--sd", default="", help="S-NSSAI SD (6 hex digits)")
        p.add_argument("--json", action="store_true")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import gc

        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        host, _, port = args.server.rpartition(":")
        msisdns = [str(args.msisdn_base + i) for i in range(args.sessions)]
        coro = run_load(host, int(port), msisdns, updates=args.updates, window=args.window,
                        rate=args.rate, connections=args.connections, used=args.used,
                        requested=args.requested, release=args.release,
                        run_id=f"{time.time_ns():x}", sst=args.sst, sd=args.sd)
        try:
            import uvloop

            reports = uvloop.run(coro)
        except ImportError:  # pragma: no cover
            reports = asyncio.run(coro)
        return finish(reports, "ocs-sim nchf", args.json, args.server)


def _sim(host: str, port: int, args: list[str]) -> list[dict[str, Any]]:
    return run_sim(["nchf", "--server", f"{host}:{port}", *args])


@bench_part("nchf")
async def bench_nchf(ctx: BenchContext) -> list[Report]:
    from sim.core import provision

    server = ctx.server
    node = server.chf
    if node is None or node.address is None:
        raise RuntimeError("the bench server has no CHF listener")
    host, port = node.address
    sessions = 2000
    provision(server.store, sessions)
    loop = asyncio.get_running_loop()
    closed = await loop.run_in_executor(None, _sim, host, port, [
        "--sessions", str(sessions), "--updates", str(ctx.scale(60_000)), "--window", "512",
        "--connections", "8", "--release", "--sst", "1"])
    reports = [Report.from_json(d) for d in closed]
    upd = next(r for r in reports if r.name.startswith("update"))
    upd.target = ">= 5,000 updates/s, 0 errors"
    upd.passed = upd.throughput >= 5_000 and upd.errors == 0
    half = max(500, int(upd.throughput / 2))
    opened = await loop.run_in_executor(None, _sim, host, port, [
        "--sessions", str(sessions), "--updates", str(int(half * ctx.scale_s(10.0))),
        "--rate", str(half), "--window", "2048", "--connections", "8", "--release",
        "--sst", "1"])
    rep = Report.from_json(next(d for d in opened if d["name"].startswith("update")))
    rep.target = f"p99 <= 20 ms at half the closed-loop rate ({half:,}/s), 0 errors"
    rep.passed = rep.latencies_ms.get("p99", 1e9) <= 20.0 and rep.errors == 0
    reports.append(rep)
    return reports
