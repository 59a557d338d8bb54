"""``make bench``: run every registered benchmark part, each against a freshly started
server on a fresh temp data dir, print one table (and write JSON with ``--json FILE``).

The server runs in this process (store, writer, CDR exporter, reaper, admin endpoint all
live, as under ``ocs serve`` with one worker); parts that need a wire protocol talk to
its listeners over loopback sockets. A fresh server per part keeps one part's leftovers
(100,000 Gy sessions, a grown store) out of the next one's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

from ocs.app import build_server
from ocs.config import load_config
from ocs.server import Server
from sim.catalog import load_all
from sim.context import BenchContext
from sim.cpumeter import CpuSampler, attach
from sim.registry import BENCH_PARTS
from sim.report import Report, dump_json, print_table

CONFIG = """
[node]
name = "bench"
data_dir = "{data}"
log_format = "json"
[admin]
listen = "127.0.0.1:0"
[cdr]
rotate_s = 300
[diameter]
listen = "127.0.0.1:0"
origin_host = "ocs.test.realm"
origin_realm = "test.realm"
[radius]
auth_listen = "127.0.0.1:0"
acct_listen = "127.0.0.1:0"
rating_group = 10
[[radius.clients]]
address = "127.0.0.1"
secret = "testing123"
[smpp]
listen = "127.0.0.1:0"
window = 64
[[smpp.accounts]]
system_id = "esme"
password = "secret"
max_binds = 16
[[smpp.routes]]
prefix = "41"
system_id = "esme"
[chf]
listen = "127.0.0.1:0"
[api]
listen = "127.0.0.1:0"
[snmp]
trap_listen = "127.0.0.1:0"
communities = ["public"]
[noc]
min_free_disk_mb = 0
# the snmp part measures the alarm pipeline at 5,000-10,000 traps/s from one source:
# storm control (on by default) would summarise them instead; each trap of the stream
# latency run raises an alarm of its own: no caps
storm_rate = 0
max_alarms_per_element = 0
max_active_alarms = 0
"""


def server_pids(server: Server) -> tuple[int | None, ...]:
    """The bench server's processes: this one (event loop, reaper, admin), the writer and
    the CDR exporter; the load generators run in processes of their own."""
    exporter = server.exporter.pid if server.exporter is not None else None
    return os.getpid(), server.writer.pid, exporter


async def run(parts: list[str], quick: float) -> list[Report]:
    from ocs import logs

    logs.configure("json", level=40)
    reports: list[Report] = []
    for name in parts:
        with tempfile.TemporaryDirectory(prefix=f"ocs-bench-{name}-") as tmp:
            work = Path(tmp)
            data = work / "data"
            cfg_path = work / "ocs.toml"
            cfg_path.write_text(CONFIG.format(data=data))
            cfg = load_config(cfg_path)
            from ocs.store import Store

            Store(data).close()  # a fresh, empty store (plans loaded by the parts)
            server = build_server(cfg)
            await server.start()
            sampler = CpuSampler(functools.partial(server_pids, server))
            try:
                ctx = BenchContext(workdir=work, server=server, quick=quick)
                t0 = time.perf_counter()
                sampler.start()
                part = await BENCH_PARTS[name].run(ctx)
                sampler.stop()
                attach(part, sampler)
                reports.extend(part)
                sys.stderr.write(f"bench part {name}: {time.perf_counter() - t0:.1f} s\n")
            finally:
                await server.stop()
    return reports


def main(argv: list[str] | None = None) -> int:
    load_all()
    p = argparse.ArgumentParser(prog="python -m sim.bench", description=__doc__)
    p.add_argument("parts", nargs="*", help=f"parts to run (default all: "
                   f"{', '.join(sorted(BENCH_PARTS))})")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--results", metavar="DIR",
                   help="write <UTC date>.json, plots and report.md under DIR "
                        "(make bench: bench/results)")
    p.add_argument("--quick", type=float, default=float(os.environ.get("OCS_BENCH_SCALE", "1")),
                   help="scale sizes and durations (e.g. 0.1 for a smoke run)")
    args = p.parse_args(argv)
    parts = args.parts or sorted(BENCH_PARTS)
    unknown = [x for x in parts if x not in BENCH_PARTS]
    if unknown:
        p.error(f"unknown part(s): {', '.join(unknown)}")
    try:
        import uvloop

        reports = uvloop.run(run(parts, args.quick))
    except ImportError:  # pragma: no cover
        reports = asyncio.run(run(parts, args.quick))
    print_table(reports)
    if args.json:
        Path(args.json).write_text(dump_json(reports) + "\n")
    if args.results:
        from sim.benchreport import write_results

        print(f"results: {write_results(reports, Path(args.results))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
