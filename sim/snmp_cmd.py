"""``ocs-sim snmp``: v2c trap load — bursts at a rate, link flaps across many interfaces —
and the ``snmp`` part of ``make bench`` (net-snmp snmptrapd side by side)."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocols.snmp.codec import encode_trap_v2c
from sim.registry import bench_part, command
from sim.report import Report, dump_json, percentile, print_table

if TYPE_CHECKING:
    from sim.context import BenchContext

LINK_DOWN, LINK_UP = "1.3.6.1.6.3.1.1.5.3", "1.3.6.1.6.3.1.1.5.4"
IF_INDEX = "1.3.6.1.2.1.2.2.1.1."


def send_traps(host: str, port: int, count: int, rate: float | None, *,
               community: str = "public", interfaces: int = 1000,
               sent: list[float] | None = None) -> float:
    """Link flaps over ``interfaces`` ifIndexes (down, then up, ...); returns seconds.
    ``sent``: gets the perf_counter time each trap left (trap n has ifIndex n + 1 while
    ``interfaces`` >= ``count``)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with_buf = 4 << 20
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, with_buf)
    packets = []
    for n in range(min(count, max(20_000, interfaces))):
        idx = n % interfaces + 1
        trap = LINK_DOWN if (n // interfaces) % 2 == 0 else LINK_UP
        packets.append(encode_trap_v2c(community.encode(), n + 1, n, trap,
                                       [(f"{IF_INDEX}{idx}", idx)]))
    start = time.perf_counter()
    for n in range(count):
        if rate and n % 100 == 0:
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        s.sendto(packets[n % len(packets)], (host, port))
        if sent is not None:
            sent.append(time.perf_counter())
    s.close()
    return time.perf_counter() - start


async def send_v3(host: str, port: int, count: int, rate: float | None, *, user: str,
                  auth_key: str, priv_key: str, auth_protocol: str = "SHA",
                  priv_protocol: str = "AES", engine_id: str = "", inform: bool = False,
                  interfaces: int = 1000, concurrency: int = 32) -> tuple[float, int]:
    """SNMPv3 link flaps through pysnmp (authPriv / authNoPriv). TRAPs are sent with our
    own engine ID ``engine_id`` (the receiver must know it); INFORMs discover the
    receiver's. Returns (seconds, errors)."""
    from pysnmp.hlapi.v3arch.asyncio import (
        ContextData,
        NotificationType,
        ObjectIdentity,
        SnmpEngine,
        UdpTransportTarget,
        UsmUserData,
        send_notification,
    )
    from pysnmp.proto.rfc1902 import Integer32, OctetString

    from protocols.snmp.usm import AUTH, PRIV

    eng = SnmpEngine(OctetString(hexValue=engine_id.removeprefix("0x"))) if engine_id else (
        SnmpEngine())
    target = await UdpTransportTarget.create((host, port), timeout=3, retries=1)
    auth = UsmUserData(user, auth_key or None, priv_key or None,
                       authProtocol=AUTH[auth_protocol.upper()] if auth_key else AUTH[""],
                       privProtocol=PRIV[priv_protocol.upper()] if priv_key else PRIV[""])
    errors = 0
    sem = asyncio.Semaphore(concurrency)

    async def one(n: int) -> None:
        nonlocal errors
        idx = n % interfaces + 1
        trap = LINK_DOWN if (n // interfaces) % 2 == 0 else LINK_UP
        nt = NotificationType(ObjectIdentity(trap)).add_varbinds(
            (f"{IF_INDEX}{idx}", Integer32(idx)))
        try:
            err, status, _i, _vb = await send_notification(
                eng, auth, target, ContextData(), "inform" if inform else "trap", nt)
            if err or (status and int(status)):
                errors += 1
        finally:
            sem.release()

    start = time.perf_counter()
    tasks = []
    for n in range(count):
        if rate:
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await sem.acquire()
        tasks.append(asyncio.ensure_future(one(n)))
    await asyncio.gather(*tasks)
    eng.close_dispatcher()
    return time.perf_counter() - start, errors


@command("snmp", "SNMP trap load: link flaps over many interfaces at a rate (v2c, or v3 USM)")
class SnmpCommand:
    @staticmethod
    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", default="127.0.0.1:1162")
        p.add_argument("--community", default="public")
        p.add_argument("--traps", type=int, default=20_000)
        p.add_argument("--rate", type=float, help="traps per second (default: as fast as possible)")
        p.add_argument("--interfaces", type=int, default=1000)
        p.add_argument("--v3-user", help="send SNMPv3 (USM) as this user instead of v2c")
        p.add_argument("--auth-protocol", default="SHA")
        p.add_argument("--auth-key", default="")
        p.add_argument("--priv-protocol", default="AES")
        p.add_argument("--priv-key", default="")
        p.add_argument("--engine-id", default="8000000001020304",
                       help="our engine ID (hex) for v3 TRAPs")
        p.add_argument("--inform", action="store_true", help="v3 INFORMs (acknowledged)")
        p.add_argument("--json", action="store_true")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        host, _, port = args.server.rpartition(":")
        if args.v3_user:
            secs, errors = asyncio.run(send_v3(
                host, int(port), args.traps, args.rate, user=args.v3_user,
                auth_key=args.auth_key, priv_key=args.priv_key,
                auth_protocol=args.auth_protocol, priv_protocol=args.priv_protocol,
                engine_id=args.engine_id, inform=args.inform, interfaces=args.interfaces))
            kind = "v3 informs acknowledged" if args.inform else "v3 traps sent"
            rep = Report("snmp", kind, args.traps, errors, secs)
        else:
            secs = send_traps(host, int(port), args.traps, args.rate,
                              community=args.community, interfaces=args.interfaces)
            rep = Report("snmp", "traps sent", args.traps, 0, secs)
        if args.json:
            sys.stdout.write(dump_json([rep]) + "\n")
        else:
            print_table([rep], "ocs-sim snmp")
        return 0


def _start_snmptrapd(workdir: Path) -> tuple[subprocess.Popen[bytes], int, Path] | None:
    """net-snmp's snmptrapd logging every trap to ``workdir/snmptrapd.log``, on a free
    loopback port, ready (None when it is not installed)."""
    binary = shutil.which("snmptrapd")
    if binary is None:
        return None
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    conf = workdir / "snmptrapd.conf"
    # the same 8 MiB receive buffer our receiver asks for: net-snmp's library token
    # serverRecvBuf, directed at the library with "[snmp]" (snmptrapd -C reads no
    # snmp.conf; a bare serverRecvBuf line in snmptrapd.conf is not applied: `ss -uam`
    # showed rb212992 without the prefix, rb8388608 with it)
    conf.write_text("disableAuthorization yes\n[snmp] serverRecvBuf 8388608\n")
    log = workdir / "snmptrapd.log"
    proc = subprocess.Popen([binary, "-f", "-n", "-C", "-c", str(conf), "-Lf", str(log),
                             f"udp:127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env={"MIBS": "", "PATH": "/usr/bin", "SNMPCONFPATH": str(workdir)})
    time.sleep(1.0)
    return proc, port, log


def _snmptrapd_rate(count: int, rate: float | None, workdir: Path) -> Report | None:
    started = _start_snmptrapd(workdir)
    if started is None:
        return None
    proc, port, log = started
    try:
        secs = send_traps("127.0.0.1", port, count, rate)
        # let it finish what it buffered: wait until the log stops growing (max 60 s)
        last, deadline = -1, time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(1.0)
            size = log.stat().st_size if log.exists() else 0
            if size == last:
                break
            last = size
    finally:
        proc.terminate()
        proc.wait(10)
    # one snmpTrapOID varbind per logged trap
    got = log.read_text(errors="replace").count("3.6.1.6.3.1.1.4.1.0 = OID") if log.exists() \
        else 0
    return Report("snmp", f"snmptrapd (file log), {count:,} traps offered", got, count - got,
                  secs, extra={"result": f"{got:,} logged"})


class LineTail:
    """Watches the files of a directory (or one file) grow, every millisecond, and notes
    when each ifIndex first appears in a new line (``pattern``'s group 1): how long a trap
    takes to be a line in a file a NOC tool tails. Files are followed by inode, so one
    renamed when it closes (``.part`` -> ``.jsonl``) is not read again from the start."""

    def __init__(self, where: Path, pattern: str):
        import re
        import threading

        self.where = where
        self.pattern = re.compile(pattern.encode())
        self.seen: dict[int, float] = {}
        self.lines = 0
        """Lines read (each once, renamed or not)."""
        self._offsets: dict[int, int] = {}  # by inode
        self._partial: dict[int, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LineTail:
        for f in self._files():  # what is there already is not ours
            st = f.stat()
            self._offsets[st.st_ino] = st.st_size
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _files(self) -> list[Path]:
        if self.where.is_dir():
            return sorted(self.where.iterdir())
        return [self.where] if self.where.exists() else []

    def _run(self) -> None:
        while not self._stop.is_set():
            for f in self._files():
                try:
                    with f.open("rb") as fh:
                        ino = os.fstat(fh.fileno()).st_ino
                        fh.seek(self._offsets.get(ino, 0))
                        data = fh.read()
                except OSError:
                    continue  # renamed (.part -> .jsonl) between listing and reading
                if not data:
                    continue
                now = time.perf_counter()
                self._offsets[ino] = self._offsets.get(ino, 0) + len(data)
                data = self._partial.pop(ino, b"") + data
                lines = data.split(b"\n")
                self._partial[ino] = lines.pop()
                self.lines += len(lines)
                for line in lines:
                    m = self.pattern.search(line)
                    if m is not None:
                        self.seen.setdefault(int(m.group(1)), now)
            time.sleep(0.001)

    def latencies(self, sent: list[float]) -> list[float]:
        return latencies(self.seen, sent)


def latencies(seen: dict[int, float], sent: list[float]) -> list[float]:
    """Per trap (ifIndex n + 1 = trap n): seen - sent, for the traps seen, sorted."""
    return sorted(seen[n + 1] - t for n, t in enumerate(sent) if n + 1 in seen)


def tail_main() -> None:
    """``python -c 'from sim.snmp_cmd import tail_main; tail_main()' WHERE PATTERN``: a
    :class:`LineTail` in a process of its own (not sharing the GIL with the server it
    measures); prints ``ready``, runs until a line on stdin, then prints what it saw as
    JSON {ifIndex: perf_counter time} (CLOCK_MONOTONIC: comparable across processes)."""
    import json

    with LineTail(Path(sys.argv[1]), sys.argv[2]) as tail:
        print("ready", flush=True)
        sys.stdin.readline()
    print(json.dumps(tail.seen), flush=True)


def _tailed(where: Path, pattern: str, send: Any) -> tuple[list[float], int, float]:
    """Run ``send(sent)`` while a tailer process watches ``where``: (latencies, lines seen,
    seconds sending)."""
    import json

    proc = subprocess.Popen([sys.executable, "-c", "from sim.snmp_cmd import tail_main; "
                             "tail_main()", str(where), pattern], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        sent: list[float] = []
        secs = send(sent)
        time.sleep(3.0)  # the last lines
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        seen = {int(k): v for k, v in json.loads(proc.stdout.readline()).items()}
    finally:
        proc.kill()
        proc.wait()
    return latencies(seen, sent), len(seen), secs


def _stream_latency(host: str, port: int, stream_dir: Path, count: int,
                    rate: float) -> tuple[list[float], int, float]:
    time.sleep(2.0)  # the earlier runs' lines are out (the exporter's interval is 1 s)
    return _tailed(stream_dir, r'"resource":"ifIndex=(\d+)"', lambda sent: send_traps(
        host, port, count, rate, interfaces=count, sent=sent))


def _snmptrapd_latency(count: int, rate: float, workdir: Path) -> Report | None:
    """snmptrapd logging to a file, tailed the same way as our stream."""
    started = _start_snmptrapd(workdir)
    if started is None:
        return None
    proc, port, log = started
    try:
        log.touch()
        # (with MIBS="" it logs iso.3.6.1.2.1.2.2.1.1.N = INTEGER: N)
        lat, _seen, secs = _tailed(log, r"3\.6\.1\.2\.1\.2\.2\.1\.1\.(\d+) = ",
                                   lambda sent: send_traps("127.0.0.1", port, count, rate,
                                                           interfaces=count, sent=sent))
    finally:
        proc.terminate()
        proc.wait(10)
    return Report("snmp", f"snmptrapd: trap -> line in its log @ {rate:,.0f}/s", len(lat),
                  count - len(lat), secs,
                  latencies_ms={f"p{p:g}": percentile(lat, p) * 1000 for p in (50, 90, 99,
                                                                              99.9)})


@bench_part("snmp")
async def bench_snmp(ctx: BenchContext) -> list[Report]:
    import asyncio

    server = ctx.server
    if server.snmp is None:
        raise RuntimeError("the bench server has no SNMP listener")
    receiver = server.snmp.receiver
    host, port = server.snmp.transport.get_extra_info("sockname")[:2]
    loop = asyncio.get_running_loop()
    reports: list[Report] = []
    for label, rate, seconds in (("sustained", 5000.0, 10.0), ("storm", 10000.0, 30.0)):
        count = int(rate * ctx.scale_s(seconds))
        receiver.latencies = []
        before = receiver.counters["received"]
        secs = await loop.run_in_executor(None, send_traps, host, port, count, rate)
        deadline = time.perf_counter() + 30
        while len(receiver.latencies) < receiver.counters["received"] - before and (
                time.perf_counter() < deadline):
            await asyncio.sleep(0.1)
        lat = sorted(receiver.latencies)
        got = len(lat)
        target = "p99 <= 100 ms" if label == "sustained" else "p99 < 1 s"
        rep = Report("snmp", f"v2c traps -> alarms, {label} @ {rate:,.0f}/s", got,
                     count - got, secs, target=target,
                     latencies_ms={f"p{p:g}": percentile(lat, p) * 1000 for p in (50, 90, 99,
                                                                                  99.9)},
                     extra={"result": f"{got:,}/{count:,} taken"})
        limit = 100.0 if label == "sustained" else 1000.0
        rep.passed = got == count and rep.latencies_ms["p99"] <= limit
        reports.append(rep)
        receiver.latencies = None
    # trap -> line in the alarm stream (DATA_DIR/alarms), each trap a new alarm, beside
    # snmptrapd's trap -> line in its log, the same offered load
    count = int(5000 * ctx.scale_s(10.0))
    stream_dir = server.cfg.under_data(server.cfg.noc.stream_dir)
    lat, seen, secs = await loop.run_in_executor(None, _stream_latency, host, port, stream_dir,
                                                 count, 5000.0)
    line = Report("snmp", "trap -> line in the alarm stream @ 5,000/s", len(lat),
                  count - len(lat), secs, target="p99 <= 50 ms",
                  latencies_ms={f"p{p:g}": percentile(lat, p) * 1000 for p in (50, 90, 99,
                                                                              99.9)},
                  extra={"result": f"{seen:,}/{count:,} lines"})
    line.passed = len(lat) == count and line.latencies_ms["p99"] <= 50.0
    reports.append(line)
    with tempfile.TemporaryDirectory() as d:
        trapd = await loop.run_in_executor(None, _snmptrapd_latency, count, 5000.0, Path(d))
    if trapd is not None:
        reports.append(trapd)
    with tempfile.TemporaryDirectory() as d:
        peer = await loop.run_in_executor(None, _snmptrapd_rate, int(5000 * ctx.scale_s(10.0)),
                                          5000.0, Path(d))
    if peer is not None:
        reports.append(peer)
    # intake at the generator's full speed: what each side takes of the same offered load
    count = ctx.scale(100_000)
    before = receiver.counters["received"]
    secs = await loop.run_in_executor(None, send_traps, host, port, count, None)
    await asyncio.sleep(3.0)
    ours = receiver.counters["received"] - before
    full = Report("snmp", f"ours, {count:,} traps as fast as sent", ours, count - ours, secs,
                  extra={"result": f"{ours:,} taken"})
    reports.append(full)
    with tempfile.TemporaryDirectory() as d:
        fast = await loop.run_in_executor(None, _snmptrapd_rate, count, None, Path(d))
    if fast is not None:
        fast.name = f"snmptrapd, {count:,} traps as fast as sent"
        ratio = ours / fast.operations if fast.operations else 0.0
        full.extra["result"] = f"{ours:,} taken, {ratio:.2f}x snmptrapd"
        reports.append(fast)
    return reports


