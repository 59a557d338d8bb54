"""``make bench`` part ``cluster``: the Redis Cluster backend against LMDB on this box.

The same Gy load (closed loop of CCR-U on open sessions, ``ocs-sim diameter``) against:
the bench's LMDB server; one ``ocs serve`` node over a loopback Redis Cluster (3
primaries, 3 replicas, AOF always, WAIT 1); then two such nodes at once. For each: CCR-U
per second, CPU per CCR-U of the OCS process trees and of the six redis-servers, and what
Redis counts itself (``INFO commandstats``: calls and microseconds per call of each
command, so round trips per operation too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sim.context import BenchContext
from sim.registry import bench_part
from sim.report import Report, run_sim
from sim.scaling import free_port, tree_cpu_s

OCS = str(Path(sys.executable).parent / "ocs")
BASE = 41_770_000_000

NODE = """
[node]
name = "{name}"
data_dir = "{data}"
log_format = "json"
workers = 1
[store]
backend = "redis"
[store.redis]
nodes = [{nodes}]
wait_timeout_ms = 2000
[diameter]
listen = "127.0.0.1:{port}"
origin_host = "{name}.test.realm"
origin_realm = "test.realm"
[admin]
listen = "127.0.0.1:{admin}"
[noc]
min_free_disk_mb = 0
"""


def commandstats(cli: str, ports: list[int]) -> dict[str, tuple[int, float]]:
    """Command -> (calls, microseconds) summed over ``ports`` (INFO commandstats)."""
    out: dict[str, tuple[int, float]] = {}
    for port in ports:
        text = subprocess.run([cli, "-p", str(port), "INFO", "commandstats"],
                              capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            if not line.startswith("cmdstat_"):
                continue
            name, _, rest = line[len("cmdstat_"):].partition(":")
            fields = dict(kv.split("=") for kv in rest.split(","))
            calls, usec = out.get(name, (0, 0.0))
            out[name] = (calls + int(fields["calls"]), usec + float(fields["usec"]))
    return out


@contextlib.contextmanager
def serving(cfg: Path, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (cwd / "serve.log").open("ab")
    proc = subprocess.Popen([OCS, "serve", "--config", str(cfg)], cwd=cwd, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while b"server_started" not in (cwd / "serve.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((cwd / "serve.log").read_text())
            time.sleep(0.05)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _load(port: int, sessions: int, updates: int, base: int) -> Report:
    res = run_sim(["diameter", "--server", f"127.0.0.1:{port}", "--realm", "test.realm",
                   "--sessions", str(sessions), "--updates", str(updates), "--window", "256",
                   "--connections", "4", "--terminate", "--msisdn-base", str(base)])
    return Report.from_json(next(d for d in res if d["name"].startswith("CCR-U")))


def _measured(name: str, runs: list[Report], ocs_s: float, redis_s: float | None,
              stats: dict[str, tuple[int, float]] | None) -> Report:
    ops = sum(r.operations for r in runs)
    secs = max(r.seconds for r in runs)
    rep = Report(part="cluster", name=name, operations=ops,
                 errors=sum(r.errors for r in runs), seconds=secs,
                 latencies_ms=runs[0].latencies_ms)
    rep.extra["cpu_us_per_op"] = round(ocs_s / ops * 1e6, 1)
    if redis_s is not None:
        rep.extra["redis_cpu_us_per_op"] = round(redis_s / ops * 1e6, 1)
    if stats:
        per_op = {k: round(c / ops, 2) for k, (c, _u) in sorted(stats.items())
                  if c / ops >= 0.01}
        rep.extra["redis_calls_per_op"] = per_op
        rep.extra["redis_usec_per_call"] = {k: round(u / c, 2) for k, (c, u) in
                                            sorted(stats.items()) if k in per_op}
        rep.extra["redis_cmd_us_per_op"] = round(sum(u for _c, u in stats.values()) / ops, 1)
    return rep


@bench_part("cluster")
async def bench_cluster(ctx: BenchContext) -> list[Report]:
    from sim.core import provision
    from sim.rediscluster import tools

    loop = asyncio.get_running_loop()
    sessions, updates = 500, ctx.scale(20_000)
    server = ctx.server
    assert server.diameter is not None
    provision(server.store, 2 * sessions)
    # this process (the bench's server), its writer and exporter; the generator's process
    # has ended (and left the tree) when the second reading is taken
    c0 = tree_cpu_s(os.getpid())
    lmdb = await loop.run_in_executor(None, _load, server.diameter.address[1], sessions,
                                      updates, BASE)
    reports = [_measured("CCR-U, LMDB, 1 node", [lmdb], tree_cpu_s(os.getpid()) - c0,
                         None, None)]
    found = tools()
    if found is None:
        reports.append(Report(part="cluster", name="Redis Cluster", operations=0,
                              errors=0, seconds=0.0, target="redis-server installed",
                              passed=False))
        return reports
    redis_server, cli = found
    reports += await loop.run_in_executor(None, _redis_runs, ctx.workdir, redis_server, cli,
                                          sessions, updates)
    return reports


def _redis_runs(work: Path, redis_server: str, cli: str, sessions: int,
                updates: int) -> list[Report]:
    from ocs.provisioning import NewSubscriber, op_add_subscriber, op_load_plans
    from ocs.rating.plans import load_plans_file
    from ocs.store.cluster import ClusterStore
    from sim.core import CONFIG_DIR
    from sim.rediscluster import redis_cluster

    out: list[Report] = []
    with redis_cluster(work / "redis", redis_server, cli) as cluster:
        with ClusterStore(cluster.nodes, wait_timeout_ms=2000) as store:
            store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
            for i in range(2 * sessions):
                store.run_write(op_add_subscriber(NewSubscriber(
                    msisdn=str(BASE + i), plan_id="prepaid-basic", balance="1000000.00")))
        nodes = []
        for name in ("bench-a", "bench-b"):
            cwd = work / name
            cwd.mkdir()
            cfg = cwd / "ocs.toml"
            port = free_port()
            cfg.write_text(NODE.format(name=name, data=cwd / "data", port=port,
                                       admin=free_port(),
                                       nodes=", ".join(f'"{n}"' for n in cluster.nodes)))
            subprocess.run([OCS, "init", "--config", str(cfg), "--plans",
                            str(CONFIG_DIR / "plans.toml")], check=True, capture_output=True)
            nodes.append((cfg, cwd, port))
        redis_pids = [p.pid for p in cluster.procs.values()]
        primaries = cluster.primaries()
        with serving(nodes[0][0], nodes[0][1]) as a:
            for one_or_two in (1, 2):
                with contextlib.ExitStack() as stack:
                    procs = [a] + [stack.enter_context(serving(cfg, cwd))
                                   for cfg, cwd, _port in nodes[1:one_or_two]]
                    for port in primaries:
                        cluster.call(port, "CONFIG", "RESETSTAT")
                    o0 = sum(tree_cpu_s(p.pid) for p in procs)
                    r0 = sum(tree_cpu_s(p) for p in redis_pids)
                    runs: list[Report] = []
                    with ThreadPoolExecutor(one_or_two) as pool:
                        futs = [pool.submit(_load, nodes[k][2], sessions // one_or_two,
                                            updates // one_or_two,
                                            BASE + k * sessions)
                                for k in range(one_or_two)]
                        runs = [f.result() for f in futs]
                    o1 = sum(tree_cpu_s(p.pid) for p in procs)
                    r1 = sum(tree_cpu_s(p) for p in redis_pids)
                    out.append(_measured(
                        f"CCR-U, Redis Cluster, {one_or_two} node{'s' * (one_or_two > 1)}",
                        runs, o1 - o0, r1 - r0, commandstats(cli, primaries)))
    return out
