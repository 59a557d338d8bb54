"""``python -m sim.pathcost``: machine instructions per request on the hot paths, counted
by valgrind (callgrind), for before/after comparisons of small changes.

Wall-clock CPU figures on this shared 2-core machine swing by 25 % between runs of the
same code; an instruction count does not. Each path runs N requests in a child process
under callgrind, once with N and once with none (start-up, imports and set-up cancel
out); the difference over N is what one request costs. Real parts: the protocol codecs
and agents, the charging service and engine on a real LMDB store, each operation in its
own write transaction (no writer process, so no IPC and no group commit).

Paths: ``ccr-u-parse`` (Diameter decode, check, parse_ccr), ``ccr-u`` (that and the Gy
agent, the charging operation and the CCA), ``radius-interim`` (decode, the accounting
agent, the charging operation and the reply), ``commit`` (the engine's interim commit
alone).
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import CommitRequest, IdKind, ReserveRequest
from ocs.charging.service import EngineChargingService
from ocs.config import RadiusClient, RadiusConfig
from ocs.provisioning import NewSubscriber, op_add_subscriber, op_load_plans
from ocs.rating.plans import Service, load_plans_file
from ocs.store import Store
from protocols.diameter import codec as c
from protocols.diameter.codec import A, Cmd
from protocols.diameter.gy import GyAgent, GySettings, parse_ccr
from protocols.radius import codec as rc
from protocols.radius.agent import RadiusAgent

PATHS = ("ccr-u-parse", "ccr-u", "radius-interim", "commit")
T = calendar.timegm((2026, 11, 18, 12, 0, 0))  # a weekday, peak time
MSISDN = "41790000001"
SECRET = b"pathcost"
MAX_OPS = 5000
OPENING = 1_000_000 * 1_000_000
CHARGE = {"ccr-u-parse": 0, "ccr-u": 10, "radius-interim": 20, "commit": 10}
"""Micro-units each request charges (1,000 octets, or 2,000 for RADIUS's in + out, at
0.01 per MB on prepaid-basic)."""


class InlineBackend:
    """Runs each named operation at once in its own write transaction of ``engine``'s
    store, answering with a completed future."""

    def __init__(self, engine: ChargingEngine):
        self.engine = engine

    def submit(self, name: str, req: Any) -> asyncio.Future[Any]:
        op = getattr(self.engine, "op_" + name)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(self.engine.store.run_write(lambda tx: op(tx, req)))
        return fut


def _engine(data: str, plans: Path) -> ChargingEngine:
    store = Store(data, map_size_mb=1024)
    store.run_write(op_load_plans(load_plans_file(plans)))
    store.run_write(op_add_subscriber(NewSubscriber(msisdn=MSISDN, plan_id="prepaid-basic",
                                                    balance=str(OPENING // 1_000_000))))
    engine = ChargingEngine(store, None, EngineSettings(node="pathcost"))
    engine.backend = InlineBackend(engine)
    return engine


def _ccr(kind: int, number: int, used: int) -> bytes:
    units = [c.grouped(A.REQUESTED_SERVICE_UNIT, c.u64(A.CC_TOTAL_OCTETS, 0))]
    if used:
        units.append(c.grouped(A.USED_SERVICE_UNIT, c.u64(A.CC_TOTAL_OCTETS, used)))
    return c.encode_message(Cmd.CCR, c.FLAG_R | c.FLAG_P, c.App.CREDIT_CONTROL, number,
                            number, b"".join([
                                c.utf8(A.SESSION_ID, "pgw.path;1;1"),
                                c.octets(A.ORIGIN_HOST, b"pgw.path"),
                                c.octets(A.ORIGIN_REALM, b"path"),
                                c.octets(A.DESTINATION_REALM, b"ocs.path"),
                                c.u32(A.AUTH_APPLICATION_ID, c.App.CREDIT_CONTROL),
                                c.utf8(A.SERVICE_CONTEXT_ID, "32251@3gpp.org"),
                                c.u32(A.CC_REQUEST_TYPE, kind),
                                c.u32(A.CC_REQUEST_NUMBER, number),
                                c.grouped(A.SUBSCRIPTION_ID, c.u32(A.SUBSCRIPTION_ID_TYPE, 0),
                                          c.utf8(A.SUBSCRIPTION_ID_DATA, MSISDN)),
                                c.grouped(A.MULTIPLE_SERVICES_CREDIT_CONTROL,
                                          c.u32(A.RATING_GROUP, 10), *units),
                            ]))


def _interim(ident: int, total: int) -> bytes:
    return rc.encode_request(rc.Code.ACCOUNTING_REQUEST, ident % 256, SECRET, [
        rc.attr(rc.Attr.ACCT_STATUS_TYPE, rc.AcctStatus.INTERIM_UPDATE if total else
                rc.AcctStatus.START),
        rc.attr(rc.Attr.ACCT_SESSION_ID, "path-1"),
        rc.attr(rc.Attr.NAS_IP_ADDRESS, b"\x7f\x00\x00\x01"),
        rc.attr(rc.Attr.USER_NAME, "path"),
        rc.attr(rc.Attr.CALLING_STATION_ID, MSISDN),
        rc.attr(rc.Attr.ACCT_SESSION_TIME, 60),
        rc.attr(rc.Attr.ACCT_INPUT_OCTETS, total),
        rc.attr(rc.Attr.ACCT_OUTPUT_OCTETS, total)])


async def _run(path: str, n: int, plans: Path) -> None:
    """``n`` requests of ``path`` (the child's side); the set-up is the same for every n."""
    with tempfile.TemporaryDirectory() as data:
        engine = _engine(data, plans)
        service = EngineChargingService(engine)
        if path.startswith("ccr-u"):
            agent = GyAgent(service, GySettings(origin_host="ocs.path", origin_realm="ocs.path"),
                            clock=lambda: float(T))
            await agent.handle(c.decode(_ccr(1, 0, 0)))
            msgs = [_ccr(2, i + 1, 1000) for i in range(MAX_OPS)]
            for raw in msgs[:n]:
                msg = c.decode(raw)
                c.check(msg.avps)
                if path == "ccr-u-parse":
                    parse_ccr(msg)
                else:
                    await agent.handle(msg)
        elif path == "radius-interim":
            cfg = RadiusConfig(clients=(RadiusClient(address="127.0.0.1/32",
                                                     secret=SECRET.decode(), name="path"),),
                               rating_group=10)
            radius = RadiusAgent(service, cfg, clock=lambda: float(T))
            client = radius.client_for("127.0.0.1")
            assert client is not None
            await radius.accounting(client, rc.decode(_interim(0, 0)))
            packets = [_interim(i + 1, 1000 * (i + 1)) for i in range(MAX_OPS)]
            for raw in packets[:n]:
                await radius.accounting(client, rc.decode(raw))
        else:
            ids = ((IdKind.MSISDN, MSISDN),)
            engine.reserve_sync(ReserveRequest(request_key=b"r", session_id="s",
                                               subscriber=ids, service=Service.DATA,
                                               units=10**6, rating_group=10, now=T))
            commits = [CommitRequest(request_key=b"c%d" % i, session_id="s",
                                     service=Service.DATA, rating_group=10, used_units=1000,
                                     next_units=0, now=T + i) for i in range(MAX_OPS)]
            for req in commits[:n]:
                engine.commit_sync(req)
        view = engine.check_balance(((IdKind.MSISDN, MSISDN),), now=T)
        engine.lmdb("pathcost").close()
    charged = OPENING - view.balance if view is not None else -1
    if charged != n * CHARGE[path]:  # the path measured is the one that charges
        raise SystemExit(f"{path}: {n} requests charged {charged} micro, not "
                         f"{n * CHARGE[path]}")


def count(path: str, n: int, plans: Path, valgrind: str) -> int:
    """Instructions of the child running ``n`` requests of ``path``."""
    out = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         "-m", "sim.pathcost", "--run", path, "--ops", str(n), "--plans", str(plans)],
        capture_output=True, text=True, check=True)
    m = re.search(r"Collected : (\d+)", out.stderr)
    if m is None:
        raise RuntimeError(f"callgrind gave no count: {out.stderr[-500:]}")
    return int(m.group(1))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m sim.pathcost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="PATH", help=f"of {', '.join(PATHS)} (all)")
    p.add_argument("--ops", type=int, default=2000, help=f"requests per path (<= {MAX_OPS})")
    p.add_argument("--plans", type=Path, default=Path("config/plans.toml"))
    p.add_argument("--run", choices=PATHS, help=argparse.SUPPRESS)  # the child's side
    args = p.parse_args()
    if args.run is not None:
        asyncio.run(_run(args.run, args.ops, args.plans))
        return
    if not 0 < args.ops <= MAX_OPS:
        p.error(f"--ops must be 1..{MAX_OPS}")
    unknown = set(args.paths) - set(PATHS)
    if unknown:
        p.error(f"unknown path {sorted(unknown)[0]!r}: of {', '.join(PATHS)}")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("valgrind is needed (Debian: apt-get install valgrind)")
    for path in args.paths or PATHS:
        per_op = (count(path, args.ops, args.plans, valgrind)
                  - count(path, 0, args.plans, valgrind)) / args.ops
        print(f"{path:16} {per_op:>10,.0f} instructions per request")


if __name__ == "__main__":
    main()
