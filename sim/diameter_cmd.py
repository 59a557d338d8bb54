"""``ocs-sim diameter``: Gy load over pipelined TCP connections, and the ``diameter``
part of ``make bench``.

The generator uses the production codec in the client role: CER on each connection, then
sessions of CCR-Initial, CCR-Update (one MSCC: used + requested octets) and optionally
CCR-Termination, or CCR-Event direct debits. Every answer is matched by Hop-by-Hop id
and its Result-Code checked (2001 at command and MSCC level counts as success).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from typing import TYPE_CHECKING, Any

from protocols.diameter import codec as c
from protocols.diameter.codec import A, Cmd
from sim.registry import bench_part, command
from sim.report import Report, Timeline, finish, paced, run_sim

if TYPE_CHECKING:
    from sim.context import BenchContext

ORIGIN = b"sim.localdomain"


class _Conn(asyncio.Protocol):
    def __init__(self, realm: bytes) -> None:
        self.realm = realm
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        while len(buf) - pos >= 20:
            n = (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]
            if len(buf) - pos < n:
                break
            msg = bytes(buf[pos:pos + n])
            pos += n
            hbh = int.from_bytes(msg[12:16], "big")
            fut = self.waiting.pop(hbh, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            elif msg[4] & 0x80:  # a request from the server (DWR, RAR): answer 2001
                self._answer(msg)
        del buf[:pos]

    def _answer(self, req: bytes) -> None:
        code = int.from_bytes(req[5:8], "big")
        app = int.from_bytes(req[8:12], "big")
        body = c.u32(A.RESULT_CODE, 2001) + c.octets(A.ORIGIN_HOST, ORIGIN) + c.octets(
            A.ORIGIN_REALM, self.realm)
        m = c.decode(req)
        sid = m.find(A.SESSION_ID)
        if sid is not None:
            body = sid.encode() + body
        if self.transport is not None:
            self.transport.write(c.encode_message(code, 0, app, m.hbh, m.e2e, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("closed"))
        self.waiting.clear()


def result_codes(answer: bytes) -> tuple[int, list[int]]:
    """(command Result-Code, MSCC Result-Codes) of an answer."""
    m = c.decode(answer)
    rc = m.find(A.RESULT_CODE)
    inner = []
    for g in m.find_all(A.MULTIPLE_SERVICES_CREDIT_CONTROL):
        a = c.find(g.group(), A.RESULT_CODE)
        if a is not None:
            inner.append(a.u32)
    return (rc.u32 if rc is not None else 0), inner


class GyLoad:
    def __init__(self, host: str, port: int, *, connections: int = 4, rating_group: int = 10,
                 timeout_s: float = 10.0, realm: str = "localdomain"):
        self.addr = (host, port)
        self.realm = realm.encode()
        self.n = connections
        self.rg = rating_group
        self.timeout_s = timeout_s
        self.conns: list[_Conn] = []
        self.hbh = random.getrandbits(31)
        self.e2e = random.getrandbits(31)
        self.errors = 0
        self.result_counts: dict[int, int] = {}

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.n):
            _, conn = await loop.create_connection(lambda: _Conn(self.realm), *self.addr)
            self.conns.append(conn)
            cer = b"".join([
                c.octets(A.ORIGIN_HOST, ORIGIN), c.octets(A.ORIGIN_REALM, self.realm),
                c.address(A.HOST_IP_ADDRESS, "127.0.0.1"), c.u32(A.VENDOR_ID, 0),
                c.utf8(A.PRODUCT_NAME, "ocs-sim", flags=0), c.u32(A.AUTH_APPLICATION_ID, 4)])
            ans = await self._send(conn, Cmd.CER, 0, cer)
            rc, _ = result_codes(ans)
            if rc != 2001:
                raise ConnectionError(f"CEA {rc}")

    def close(self) -> None:
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()

    async def _send(self, conn: _Conn, code: int, app: int, body: bytes) -> bytes:
        if conn.lost:
            raise ConnectionError("connection closed")
        self.hbh = (self.hbh + 1) & 0xFFFFFFFF
        self.e2e = (self.e2e + 1) & 0xFFFFFFFF
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        conn.waiting[self.hbh] = fut
        assert conn.transport is not None
        conn.transport.write(c.encode_message(code, c.FLAG_R | c.FLAG_P, app, self.hbh,
                                              self.e2e, body))
        return await asyncio.wait_for(fut, self.timeout_s)

    def ccr(self, sid: str, kind: int, number: int, msisdn: str, *, used: int = 0,
            requested: int | None = None, event_units: int = 0, context: str = "",
            mscc: bytes | None = None) -> bytes:
        """A CCR body; ``mscc`` (an encoded MSCC) replaces the octet one built here."""
        parts = [
            c.utf8(A.SESSION_ID, sid), c.octets(A.ORIGIN_HOST, ORIGIN),
            c.octets(A.ORIGIN_REALM, self.realm), c.octets(A.DESTINATION_REALM, self.realm),
            c.u32(A.AUTH_APPLICATION_ID, 4),
            c.utf8(A.SERVICE_CONTEXT_ID, context or (
                "32274@3gpp.org" if kind == 4 else "32251@3gpp.org")),
            c.u32(A.CC_REQUEST_TYPE, kind), c.u32(A.CC_REQUEST_NUMBER, number),
            c.grouped(A.SUBSCRIPTION_ID, c.u32(A.SUBSCRIPTION_ID_TYPE, 0),
                      c.utf8(A.SUBSCRIPTION_ID_DATA, msisdn)),
        ]
        if mscc is not None:
            parts.append(mscc)
        elif kind == 4:
            parts.append(c.u32(A.REQUESTED_ACTION, 0))
            parts.append(c.grouped(A.MULTIPLE_SERVICES_CREDIT_CONTROL, c.grouped(
                A.REQUESTED_SERVICE_UNIT, c.u64(A.CC_SERVICE_SPECIFIC_UNITS, event_units))))
        else:
            parts.append(c.u32(A.MULTIPLE_SERVICES_INDICATOR, 1))
            inner = [c.u32(A.RATING_GROUP, self.rg)]
            if requested is not None:
                inner.append(c.grouped(A.REQUESTED_SERVICE_UNIT,
                                       c.u64(A.CC_TOTAL_OCTETS, requested)))
            if kind != 1:
                inner.append(c.grouped(A.USED_SERVICE_UNIT, c.u64(A.CC_TOTAL_OCTETS, used)))
            parts.append(c.grouped(A.MULTIPLE_SERVICES_CREDIT_CONTROL, *inner))
        return b"".join(parts)

    async def request(self, body: bytes, i: int) -> float | None:
        """One CCR on connection i % N; seconds until a successful CCA, None otherwise."""
        conn = self.conns[i % len(self.conns)]
        t0 = time.perf_counter()
        try:
            ans = await self._send(conn, Cmd.CCR, 4, body)
        except (TimeoutError, ConnectionError):
            self.errors += 1
            return None
        elapsed = time.perf_counter() - t0
        rc, inner = result_codes(ans)
        self.result_counts[rc] = self.result_counts.get(rc, 0) + 1
        if rc != 2001 or any(x != 2001 for x in inner):
            self.errors += 1
            return None
        return elapsed


async def run_load(host: str, port: int, msisdns: list[str], *, updates: int, window: int,
                   rate: float | None, connections: int, used: int, requested: int,
                   terminate: bool, events: int, run_id: str, realm: str = "localdomain",
                   rating_group: int = 10) -> list[Report]:
    load = GyLoad(host, port, connections=connections, realm=realm, rating_group=rating_group)
    await load.open()
    sem = asyncio.Semaphore(window)
    sessions = len(msisdns)
    timeline = Timeline()

    async def phase(count: int, make: Any, phase_rate: float | None) -> tuple[list[float],
                                                                            float, int]:
        nonlocal timeline
        err0 = load.errors
        lat, secs, timeline = await paced(count, sem, phase_rate,
                                          lambda n: load.request(make(n), n))
        return lat, secs, load.errors - err0

    def sid(i: int) -> str:
        return f"{ORIGIN.decode()};{run_id};{i}"

    reports = []
    numbers = [0] * sessions
    if sessions:
        lat, secs, err = await phase(sessions, lambda n: load.ccr(
            sid(n), 1, 0, msisdns[n], requested=requested), None)
        reports.append(Report.from_latencies("diameter", f"CCR-I x{sessions}", lat, err, secs,
                                                timeline))

    def update(n: int) -> bytes:
        i = n % sessions
        numbers[i] += 1
        return load.ccr(sid(i), 2, numbers[i], msisdns[i], used=used, requested=requested)

    if updates and sessions:
        lat, secs, err = await phase(updates, update, rate)
        name = (f"CCR-U @ {rate:g}/s" if rate else f"CCR-U, window {window}") + (
            f", {connections} conn")
        reports.append(Report.from_latencies("diameter", name, lat, err, secs,
                                                timeline))
    if terminate and sessions:
        lat, secs, err = await phase(sessions, lambda n: load.ccr(
            sid(n), 3, numbers[n] + 1, msisdns[n], used=used), None)
        reports.append(Report.from_latencies("diameter", f"CCR-T x{sessions}", lat, err, secs,
                                                timeline))
    if events:
        lat, secs, err = await phase(events, lambda n: load.ccr(
            f"{ORIGIN.decode()};{run_id};e{n}", 4, 0, msisdns[n % len(msisdns)],
            event_units=1), rate)
        reports.append(Report.from_latencies("diameter", "CCR-E direct debit", lat, err, secs,
                                                timeline))
    for r in reports:
        r.extra["result_codes"] = dict(sorted(load.result_counts.items()))
    load.close()
    return reports


@command("diameter", "Gy load: CER, then CCR-I / CCR-U... / CCR-T sessions or CCR-E events")
class DiameterCommand:
    @staticmethod
    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", default="127.0.0.1:3868", help="HOST:PORT")
        p.add_argument("--realm", default="localdomain",
                       help="Destination-Realm (the server's origin_realm) and ours")
        p.add_argument("--rating-group", type=int, default=10)
        p.add_argument("--sessions", type=int, default=1000)
        p.add_argument("--msisdn-base", type=int, default=41770000000,
                       help="Subscription-Id (E.164) of session i is base + i")
        p.add_argument("--updates", type=int, default=20_000, help="CCR-U to send")
        p.add_argument("--events", type=int, default=0, help="CCR-E direct debits to send")
        p.add_argument("--terminate", action="store_true", help="end each session with CCR-T")
        p.add_argument("--connections", type=int, default=4)
        p.add_argument("--window", type=int, default=512, help="requests in flight")
        p.add_argument("--rate", type=float, help="CCR-U (or CCR-E) per second (open loop)")
        p.add_argument("--used", type=int, default=100_000, help="octets reported per CCR-U")
        p.add_argument("--requested", type=int, default=1_000_000, help="octets requested")
        p.add_argument("--json", action="store_true")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import gc

        gc.freeze()
        gc.set_threshold(50_000, 20, 100)  # short-lived objects only: collect rarely
        host, _, port = args.server.rpartition(":")
        msisdns = [str(args.msisdn_base + i) for i in range(args.sessions)]
        coro = run_load(host, int(port), msisdns, updates=args.updates, window=args.window,
                        rate=args.rate, connections=args.connections, used=args.used,
                        requested=args.requested, terminate=args.terminate,
                        events=args.events, run_id=f"{time.time_ns():x}", realm=args.realm,
                        rating_group=args.rating_group)
        try:
            import uvloop

            reports = uvloop.run(coro)
        except ImportError:  # pragma: no cover
            reports = asyncio.run(coro)
        return finish(reports, "ocs-sim diameter", args.json, args.server)


def _sim(host: str, port: int, args: list[str]) -> list[dict[str, Any]]:
    return run_sim(["diameter", "--server", f"{host}:{port}", "--realm", "test.realm", *args])


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@bench_part("diameter")
async def bench_diameter(ctx: BenchContext) -> list[Report]:
    from sim.core import provision

    server = ctx.server
    node = server.diameter
    if node is None:
        raise RuntimeError("the bench server has no Diameter listener")
    host, port = node.address
    sessions = 5000
    provision(server.store, max(sessions, 100_000))
    loop = asyncio.get_running_loop()
    updates = ctx.scale(100_000)
    closed = await loop.run_in_executor(None, _sim, host, port, [
        "--sessions", str(sessions), "--updates", str(updates), "--window", "1024",
        "--connections", "8", "--terminate"])
    reports = [Report.from_json(d) for d in closed]
    upd = next(r for r in reports if r.name.startswith("CCR-U"))
    upd.target = ">= 20,000 CCR/s, 0 errors"
    upd.passed = upd.throughput >= 20_000 and upd.errors == 0
    from sim.core_cmd import fraud_overhead

    async def again() -> Report:
        res = await loop.run_in_executor(None, _sim, host, port, [
            "--sessions", str(sessions), "--updates", str(ctx.scale(30_000)), "--window",
            "1024", "--connections", "8", "--terminate"])
        return Report.from_json(next(d for d in res if d["name"].startswith("CCR-U")))

    reports.extend(await fraud_overhead(ctx, again, "CCR-U"))
    # open loop at 10,000 CCR/s (the target) and at half that, each for a bounded time
    for rate in (10_000, 5_000):
        opened = await loop.run_in_executor(None, _sim, host, port, [
            "--sessions", str(sessions), "--updates", str(int(rate * ctx.scale_s(10.0))),
            "--rate", str(rate), "--window", "4096", "--connections", "8", "--terminate"])
        rep = Report.from_json(next(d for d in opened if d["name"].startswith("CCR-U")))
        if rate == 10_000:
            rep.target = "p99 <= 10 ms at 10,000/s, 0 errors"
            rep.passed = rep.latencies_ms.get("p99", 1e9) <= 10.0 and rep.errors == 0
        reports.append(rep)
    # 100,000 concurrent sessions held: RSS growth of the server process
    held = ctx.scale(100_000)
    before = _rss_mb()
    res = await loop.run_in_executor(None, _sim, host, port, [
        "--sessions", str(held), "--updates", "0", "--window", "2048", "--connections", "8"])
    grown = _rss_mb() - before
    hold = Report.from_json(res[0], target="RSS growth <= 500 MB")
    hold.name = f"{held:,} sessions held (CCR-I)"
    hold.extra["result"] = f"+{grown:.0f} MB RSS, {len(node.agent.sessions):,} live"
    hold.passed = grown <= 500 and hold.errors == 0 and len(node.agent.sessions) >= held
    reports.append(hold)
    return reports
