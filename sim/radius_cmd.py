"""``ocs-sim radius``: RADIUS accounting load (Start, then Interim-Updates) over UDP,
and the ``radius`` part of ``make bench``.

The generator drives the production codec in the NAS role. Each session reports
cumulative counters that grow by ``--bytes`` per Interim-Update; every reply's Response
Authenticator is checked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import time
from typing import TYPE_CHECKING, Any

from protocols.radius.codec import (
    AcctStatus,
    Attr,
    Code,
    attr,
    encode_request,
    response_authenticator_ok,
)
from protocols.radius.codec import decode as decode_packet
from sim.cpumeter import CpuSampler, attach
from sim.registry import bench_part, command
from sim.report import Report, Timeline, finish, run_sim

if TYPE_CHECKING:
    from sim.context import BenchContext


class _Socket(asyncio.DatagramProtocol):
    """One UDP socket with up to 256 requests in flight (the Identifier space)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[int, tuple[asyncio.Future[bytes], bytes]] = {}
        self.free = list(range(256))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) >= 20:
            entry = self.waiting.pop(data[1], None)
            if entry is not None and not entry[0].done():
                entry[0].set_result(data)


class RadiusLoad:
    def __init__(self, host: str, port: int, secret: bytes, *, sockets: int = 16,
                 timeout_s: float = 3.0):
        self.addr = (host, port)
        self.secret = secret
        self.n_sockets = sockets
        self.timeout_s = timeout_s
        self.socks: list[_Socket] = []
        self.errors = 0
        self.bad_replies = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.n_sockets):
            t, proto = await loop.create_datagram_endpoint(_Socket, remote_addr=self.addr)
            raw_sock = t.get_extra_info("socket")
            if raw_sock is not None:
                with contextlib.suppress(OSError):
                    raw_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.socks.append(proto)

    def close(self) -> None:
        for s in self.socks:
            if s.transport is not None:
                s.transport.close()

    async def request(self, attrs: list[tuple[int, bytes]], sock_index: int) -> float | None:
        """Send one Accounting-Request; seconds until its verified reply, None on error."""
        sock = self.socks[sock_index % len(self.socks)]
        while not sock.free:
            await asyncio.sleep(0.0005)
        ident = sock.free.pop()
        raw = encode_request(Code.ACCOUNTING_REQUEST, ident, self.secret, attrs)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        sock.waiting[ident] = (fut, raw[4:20])
        t0 = time.perf_counter()
        assert sock.transport is not None
        try:
            for _attempt in range(2):
                sock.transport.sendto(raw)
                try:
                    data = await asyncio.wait_for(asyncio.shield(fut), self.timeout_s)
                except TimeoutError:
                    continue
                elapsed = time.perf_counter() - t0
                rep = decode_packet(data)
                if rep.code != Code.ACCOUNTING_RESPONSE or not response_authenticator_ok(
                        rep, raw[4:20], self.secret):
                    self.bad_replies += 1
                    return None
                return elapsed
            self.errors += 1
            return None
        finally:
            sock.waiting.pop(ident, None)
            sock.free.insert(0, ident)

    @staticmethod
    def session_attrs(status: AcctStatus, i: int, total: int, msisdn: str,
                      run: str = "") -> list[tuple[int, bytes]]:
        attrs = [attr(Attr.ACCT_STATUS_TYPE, status),
                 attr(Attr.ACCT_SESSION_ID, f"sim-{run}-{i}"),
                 attr(Attr.CALLING_STATION_ID, msisdn),
                 attr(Attr.NAS_IP_ADDRESS, b"\x7f\x00\x00\x01")]
        if status != AcctStatus.START:
            attrs += [attr(Attr.ACCT_INPUT_OCTETS, total & 0xFFFFFFFF),
                      attr(Attr.ACCT_INPUT_GIGAWORDS, total >> 32),
                      attr(Attr.ACCT_OUTPUT_OCTETS, 0)]
        return attrs


async def run_load(host: str, port: int, secret: bytes, msisdns: list[str], *,
                   interims: int, window: int, rate: float | None,
                   step_bytes: int) -> tuple[Report, Report]:
    load = RadiusLoad(host, port, secret)
    await load.open()
    sessions = len(msisdns)
    sem = asyncio.Semaphore(window)

    async def one(attrs: list[tuple[int, bytes]], i: int, lat: list[float],
                  timeline: Timeline) -> None:
        try:
            r = await load.request(attrs, i)
            if r is not None:
                lat.append(r)
                timeline.mark()
        finally:
            sem.release()

    timelines: list[Timeline] = []

    async def phase(items: list[list[tuple[int, bytes]]]) -> tuple[list[float], float]:
        lat: list[float] = []
        tasks = []
        timeline = Timeline()
        timelines.append(timeline)
        start = time.perf_counter()
        for n, attrs in enumerate(items):
            if rate:
                due = start + n / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await sem.acquire()
            tasks.append(asyncio.ensure_future(one(attrs, n, lat, timeline)))
        await asyncio.gather(*tasks)
        return lat, time.perf_counter() - start

    run = f"{time.time_ns():x}"
    starts = [RadiusLoad.session_attrs(AcctStatus.START, i, 0, m, run)
              for i, m in enumerate(msisdns)]
    lat_s, secs_s = await phase(starts)
    err0 = load.errors + load.bad_replies
    interim_items = [
        RadiusLoad.session_attrs(AcctStatus.INTERIM_UPDATE, n % sessions,
                                 step_bytes * (n // sessions + 1), msisdns[n % sessions], run)
        for n in range(interims)
    ]
    lat_i, secs_i = await phase(interim_items)
    load.close()
    name = f"Interim-Update @ {rate:g}/s" if rate else f"Interim-Update, window {window}"
    return (
        Report.from_latencies("radius", f"Start x{sessions}", lat_s, err0, secs_s,
                              timelines[0]),
        Report.from_latencies("radius", name, lat_i,
                              load.errors + load.bad_replies - err0, secs_i, timelines[1]),
    )


@command("radius", "RADIUS accounting load: Start, then Interim-Updates")
class RadiusCommand:
    @staticmethod
    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", default="127.0.0.1:1813", help="accounting HOST:PORT")
        p.add_argument("--secret", default="testing123")
        p.add_argument("--sessions", type=int, default=1000)
        p.add_argument("--msisdn-base", type=int, default=41770000000,
                       help="Calling-Station-Id of session i is base + i")
        p.add_argument("--interims", type=int, default=20_000)
        p.add_argument("--window", type=int, default=512, help="requests in flight")
        p.add_argument("--rate", type=float, help="Interim-Updates per second (open loop)")
        p.add_argument("--bytes", type=int, default=100_000, help="bytes per interim")
        p.add_argument("--json", action="store_true")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        host, _, port = args.server.rpartition(":")
        msisdns = [str(args.msisdn_base + i) for i in range(args.sessions)]
        coro = run_load(host, int(port), args.secret.encode(), msisdns,
                        interims=args.interims, window=args.window, rate=args.rate,
                        step_bytes=args.bytes)
        try:
            import uvloop

            reports = list(uvloop.run(coro))
        except ImportError:  # pragma: no cover
            reports = list(asyncio.run(coro))
        return finish(reports, "ocs-sim radius", args.json, args.server)


def _sim(host: str, port: int, n_sessions: int, interims: int, extra: list[str]) -> list[
        dict[str, Any]]:
    return run_sim(["radius", "--server", f"{host}:{port}", "--sessions", str(n_sessions),
                    "--interims", str(interims), *extra], timeout=600)


def _free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@bench_part("radius")
async def bench_radius(ctx: BenchContext) -> list[Report]:
    from sim.core import provision

    server = ctx.server
    listener = server.radius
    if listener is None:
        raise RuntimeError("the bench server has no RADIUS listener")
    host, port = listener.address("acct")
    sessions = 2000
    provision(server.store, sessions)  # MSISDNs 4177xxxxxxx, matching --msisdn-base
    loop = asyncio.get_running_loop()
    interims = ctx.scale(60_000)
    closed = await loop.run_in_executor(None, _sim, host, port, sessions, interims,
                                        ["--window", "512"])
    ours = Report.from_json(closed[1])
    reports = [Report.from_json(closed[0]), ours]
    # FreeRADIUS 3.2 with its detail module, same generator, same run
    from sim.peers import PeerUnavailable, freeradius

    try:
        fr_dir = ctx.workdir / "freeradius"
        fr_dir.mkdir()
        auth_port, acct_port = _free_udp_port(), _free_udp_port()
        fr_pids: list[int] = []
        with freeradius(fr_dir, auth_port, acct_port, fr_pids):
            fr_cpu = CpuSampler(lambda: fr_pids).start()
            fr = await loop.run_in_executor(None, _sim, "127.0.0.1", acct_port, sessions,
                                            interims, ["--window", "512"])
            fr_cpu.stop()
        peer = Report.from_json(fr[1])
        peer.part, peer.name = "radius", "FreeRADIUS 3.2 (detail), same load"
        peer.extra["peer"] = True
        attach([peer], fr_cpu, peers=True)
        reports.append(peer)
        ratio = ours.throughput / peer.throughput if peer.throughput else 0.0
        ours.target = ">= 0.5x FreeRADIUS"
        ours.passed = ratio >= 0.5
        ours.extra["result"] = f"{ratio:.2f}x FreeRADIUS"
    except PeerUnavailable as exc:
        ours.extra["result"] = f"no FreeRADIUS: {exc}"[:60]
    half = max(1000.0, ours.throughput / 2)
    opened = await loop.run_in_executor(
        None, _sim, host, port, sessions, int(half * ctx.scale_s(5.0)),
        ["--rate", f"{half:.0f}"])
    rep = Report.from_json(opened[1], target="p99 <= 10 ms at half load")
    rep.passed = rep.latencies_ms.get("p99", 1e9) <= 10.0
    reports.append(rep)
    return reports
