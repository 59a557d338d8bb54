"""``ocs-sim nms``: a polling load — N net-snmp ``snmpd`` agents on loopback ports (each
serving this host's own IF-MIB and HOST-RESOURCES), polled round after round by the NMS
poller; and the ``make bench`` part ``nms``: elements polled per second, poll latency and
CPU per poll of the poller's process."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from sim.context import BenchContext
from sim.registry import bench_part, command
from sim.report import Report, Timeline, finish


def _free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


class Agents:
    """``count`` snmpd processes (community public), stopped on exit."""

    def __init__(self, count: int, workdir: Path):
        binary = shutil.which("snmpd") or shutil.which("snmpd", path="/usr/sbin:/sbin")
        if binary is None:
            raise RuntimeError("snmpd (net-snmp) is not installed")
        self.addresses: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        for n in range(count):
            port = _free_udp_port()
            conf = workdir / f"snmpd{n}.conf"
            conf.write_text(f"agentAddress udp:127.0.0.1:{port}\nrocommunity public 127.0.0.1\n")
            self.procs.append(subprocess.Popen(
                [binary, "-f", "-Lf", "/dev/null", "-C", "-c", str(conf), "-M", "/nonexistent",
                 "-p", str(workdir / f"snmpd{n}.pid")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.addresses.append(f"127.0.0.1:{port}")
        time.sleep(1.0)

    def __enter__(self) -> Agents:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


async def poll_rounds(addresses: list[str], rounds: int, concurrency: int,
                      timeout_s: float = 2.0) -> Report:
    from ocs.nms.poller import Poller, Unreachable

    poller = Poller(timeout_s=timeout_s, retries=1)
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []
    errors = 0
    timeline = Timeline()

    async def one(address: str) -> None:
        nonlocal errors
        async with sem:
            t0 = time.perf_counter()
            try:
                await poller.poll(address)
            except Unreachable:
                errors += 1
                return
            lat.append(time.perf_counter() - t0)
            timeline.mark()

    start = time.perf_counter()
    try:
        for _ in range(rounds):
            await asyncio.gather(*(one(a) for a in addresses))
    finally:
        poller.close()
    secs = time.perf_counter() - start
    return Report.from_latencies("nms", f"polls of {len(addresses)} elements x {rounds} "
                                 f"rounds, {concurrency} at once", lat, errors, secs,
                                 timeline)


@command("nms", "NMS polling load: N snmpd agents polled round after round")
class NmsCommand:
    @staticmethod
    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("--elements", type=int, default=20, help="snmpd agents to start")
        p.add_argument("--rounds", type=int, default=10)
        p.add_argument("--concurrency", type=int, default=32)
        p.add_argument("--json", action="store_true")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        with tempfile.TemporaryDirectory() as d, Agents(args.elements, Path(d)) as agents:
            report = asyncio.run(poll_rounds(agents.addresses, args.rounds,
                                             args.concurrency))
        return finish([report], "ocs-sim nms", args.json, f"{args.elements} agents")


@bench_part("nms")
async def bench_nms(ctx: BenchContext) -> list[Report]:
    """In the bench server's process, as ``ocs serve`` polls: its CPU per poll."""
    count = 20
    rounds = max(2, ctx.scale(10))
    with tempfile.TemporaryDirectory() as d, Agents(count, Path(d)) as agents:
        rep = await poll_rounds(agents.addresses, rounds, 32)
    rep.target = "every poll answered"
    rep.passed = rep.errors == 0
    return [rep]

