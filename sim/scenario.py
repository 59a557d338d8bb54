"""``ocs-sim scenario FILE.toml``: a subscriber population and a traffic mix across
protocols at once, with a rate profile and a bounded duration, against a running
``ocs serve`` (its endpoints come from the same ``--config``).

Traffic kinds: ``gy_data`` (CCR-I, CCR-U..., CCR-T with octets), ``gy_voice`` (IMS
sessions, CC-Time, national destinations), ``radius_data`` (Start, Interim, Stop),
``smpp_sms`` (submit_sm to national numbers), ``snmp_traps`` (link flaps).

``--verify``: the simulator prices what it sent with its own arithmetic from the demo
tariffs (it does not ask the server's rating engine): prepaid-basic data 0.01/MB at home
(0.05/MB roaming in the EU), national voice 0.10/min in 60 s blocks (0.05 at weekends,
Europe/Zurich), national SMS 0.05; postpaid-business usage at home is inside its
allowances (0), its data in the EU 0.002/MB. After the run it compares every
subscriber's balance change (``ocs subscriber list --json``) and the CDR files with that;
any difference is listed and fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import json
import math
import random
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import zoneinfo
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ocs.config import Config, load_config, parse_listen
from ocs.money import format_amount, parse_amount
from sim.registry import bench_part, command
from sim.report import Report, Timeline, print_table

if TYPE_CHECKING:
    from sim.context import BenchContext

KINDS = ("gy_data", "gy_voice", "radius_data", "smpp_sms", "snmp_traps")
MB = 1_000_000
ZURICH = zoneinfo.ZoneInfo("Europe/Zurich")


class ScenarioError(ValueError):
    """A bad scenario file, or a run that cannot start (bind refused, CLI error)."""


@dataclass(frozen=True, slots=True)
class Traffic:
    kind: str
    rate: float
    """Sessions (or events) started per second at the steady rate."""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    duration_s: float
    seed: int
    subscribers: int
    msisdn_base: int
    prepaid_share: float
    roaming_share: float
    heavy_share: float
    balance: str
    traffic: tuple[Traffic, ...]
    ramp_s: float = 0.0
    burst_at_s: float = -1.0
    burst_s: float = 0.0
    burst_factor: float = 1.0

    def rate_factor(self, t: float) -> float:
        f = min(1.0, t / self.ramp_s) if self.ramp_s > 0 else 1.0
        if self.burst_at_s >= 0 and self.burst_at_s <= t < self.burst_at_s + self.burst_s:
            f *= self.burst_factor
        return f


def load_scenario(path: Path) -> Scenario:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from exc
    pop = doc.get("population", {})
    prof = doc.get("profile", {})
    traffic = []
    for i, t in enumerate(doc.get("traffic", [])):
        if t.get("kind") not in KINDS:
            raise ScenarioError(f"{path}: traffic[{i}].kind: one of {', '.join(KINDS)}")
        traffic.append(Traffic(t["kind"], float(t.get("rate", 1))))
    sc = Scenario(
        name=str(doc.get("name", path.stem)), duration_s=float(doc.get("duration_s", 10)),
        seed=int(doc.get("seed", 1)), subscribers=int(pop.get("subscribers", 1000)),
        msisdn_base=int(pop.get("msisdn_base", 41780000000)),
        prepaid_share=float(pop.get("prepaid_share", 0.8)),
        roaming_share=float(pop.get("roaming_share", 0.1)),
        heavy_share=float(pop.get("heavy_share", 0.05)), balance=str(pop.get("balance", "100")),
        traffic=tuple(traffic), ramp_s=float(prof.get("ramp_s", 0)),
        burst_at_s=float(prof.get("burst_at_s", -1)), burst_s=float(prof.get("burst_s", 0)),
        burst_factor=float(prof.get("burst_factor", 1)))
    if not 0 < sc.subscribers <= 1_000_000 or sc.duration_s <= 0 or not sc.traffic:
        raise ScenarioError(f"{path}: need 1..1,000,000 subscribers, a duration and traffic")
    return sc


@dataclass(slots=True)
class Member:
    msisdn: str
    prepaid: bool
    roaming: bool
    heavy: bool


def population(sc: Scenario) -> list[Member]:
    rng = random.Random(sc.seed)
    return [Member(str(sc.msisdn_base + i), rng.random() < sc.prepaid_share,
                   rng.random() < sc.roaming_share, rng.random() < sc.heavy_share)
            for i in range(sc.subscribers)]


# -- the tariffs the simulator knows (its own arithmetic) ------------------------------------

def price_data(m: Member, total_bytes: int, visited: bool) -> int:
    if not m.prepaid:
        # postpaid-business: at home inside the 5 GB allowance; allowances do not apply
        # abroad, where data-eu is 0.002/MB
        return math.ceil(total_bytes * 2_000 / MB) if visited else 0
    per_mb = 50_000 if visited else 10_000
    return math.ceil(total_bytes * per_mb / MB)


def price_voice(m: Member, seconds: int, at: float) -> int:
    if not m.prepaid:
        return 0  # inside the voice allowance
    weekend = datetime.datetime.fromtimestamp(at, ZURICH).weekday() >= 5
    return math.ceil(seconds / 60) * (50_000 if weekend else 100_000)


def price_sms(m: Member) -> int:
    return 50_000 if m.prepaid else 0


# -- the run ---------------------------------------------------------------------------------

@dataclass
class Outcome:
    expected: Counter[str] = field(default_factory=Counter)
    done: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    timelines: dict[str, Timeline] = field(default_factory=lambda: defaultdict(Timeline))
    """Completion times per traffic kind, from the start of the run."""
    charged_events: int = 0


class Runner:
    def __init__(self, sc: Scenario, cfg: Config, run_id: str):
        self.sc, self.cfg, self.run_id = sc, cfg, run_id
        self.members = population(sc)
        self.rng = random.Random(sc.seed + 1)
        heavy = [m for m in self.members if m.heavy]
        self.pick_pool = self.members + heavy * 9  # heavy users: ten times the traffic
        self.out = Outcome()
        self.gy: Any = None
        self.radius: Any = None
        self.esmes: list[Any] = []
        self.windows: list[asyncio.Semaphore] = []
        self.trap_sock: socket.socket | None = None
        self.seq = 0

    def pick(self) -> Member:
        return self.rng.choice(self.pick_pool)

    async def open(self) -> None:
        kinds = {t.kind for t in self.sc.traffic}
        if kinds & {"gy_data", "gy_voice"}:
            from sim.diameter_cmd import GyLoad

            assert self.cfg.diameter is not None, "gy traffic needs [diameter]"
            host, port = parse_listen(self.cfg.diameter.listen)
            self.gy = GyLoad(host, port, connections=4, realm=self.cfg.diameter.origin_realm)
            await self.gy.open()
        if "radius_data" in kinds:
            from sim.radius_cmd import RadiusLoad

            assert self.cfg.radius is not None and self.cfg.radius.clients
            host, port = parse_listen(self.cfg.radius.acct_listen)
            self.radius = RadiusLoad(host, port, self.cfg.radius.clients[0].secret.encode())
            await self.radius.open()
        if "smpp_sms" in kinds:
            from protocols.smpp.pdu import Bind, Cmd, Status, encode_bind
            from sim.smpp_cmd import Esme

            assert self.cfg.smpp is not None and self.cfg.smpp.accounts
            host, port = parse_listen(self.cfg.smpp.listen)
            acct = self.cfg.smpp.accounts[0]
            for _ in range(min(4, acct.max_binds)):  # each bind keeps within the window
                _t, esme = await asyncio.get_running_loop().create_connection(Esme, host, port)
                resp = await esme.request(Cmd.BIND_TRANSCEIVER, encode_bind(
                    Bind(acct.system_id, acct.password, "", 0x34, 0, 0, "")))
                if resp.status != Status.ROK:
                    raise ScenarioError(f"SMPP bind refused: 0x{resp.status:x}")
                self.esmes.append(esme)
                self.windows.append(asyncio.Semaphore(self.cfg.smpp.window))
        if "snmp_traps" in kinds:
            self.trap_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def close(self) -> None:
        for obj in (self.gy, self.radius):
            if obj is not None:
                obj.close()
        for esme in self.esmes:
            if esme.transport is not None:
                esme.transport.close()
        if self.trap_sock is not None:
            self.trap_sock.close()

    async def _timed(self, kind: str, coro: Any) -> Any:
        t0 = time.perf_counter()
        res = await coro
        self.out.latencies[kind].append(time.perf_counter() - t0)
        self.out.timelines[kind].mark()
        return res

    async def _ccr(self, kind: str, body: bytes) -> bool:
        from protocols.diameter.codec import Cmd as DCmd
        from sim.diameter_cmd import result_codes

        self.seq += 1
        try:
            ans = await self._timed(kind, self.gy._send(self.gy.conns[self.seq % 4],
                                                        DCmd.CCR, 4, body))
        except (TimeoutError, ConnectionError):
            return False
        rc, inner = result_codes(ans)
        return rc == 2001 and all(x == 2001 for x in inner)

    async def gy_data(self, n: int) -> None:
        from protocols.diameter import codec as c
        from protocols.diameter.codec import VENDOR_3GPP, A

        m = self.pick()
        sid = f"sim;{self.run_id};d{n}"
        extra = b""
        if m.roaming:
            extra = c.grouped(A.SERVICE_INFORMATION, c.grouped(
                A.PS_INFORMATION, c.utf8(A.TGPP_SGSN_MCC_MNC, "26201", vendor=VENDOR_3GPP),
                vendor=VENDOR_3GPP), vendor=VENDOR_3GPP)
        updates = self.rng.randint(1, 3)
        steps = [self.gy.ccr(sid, 1, 0, m.msisdn, requested=MB) + extra]
        total = 0
        for k in range(updates):
            used = self.rng.randint(1, 9) * 100_000
            total += used
            steps.append(self.gy.ccr(sid, 2, k + 1, m.msisdn, used=used, requested=MB) + extra)
        last = self.rng.randint(0, 9) * 100_000
        total += last
        steps.append(self.gy.ccr(sid, 3, updates + 1, m.msisdn, used=last) + extra)
        for body in steps:
            if not await self._ccr("gy_data", body):
                self.out.errors["gy_data"] += 1
                return
        self.out.expected[m.msisdn] += price_data(m, total, m.roaming)
        self.out.done["gy_data"] += 1
        self.out.charged_events += len(steps)

    async def gy_voice(self, n: int) -> None:
        from protocols.diameter import codec as c
        from protocols.diameter.codec import VENDOR_3GPP, A

        m = self.pick()
        sid = f"sim;{self.run_id};v{n}"
        dest = f"tel:+4144{self.rng.randrange(10**7):07d}"
        ims = c.grouped(A.SERVICE_INFORMATION, c.grouped(
            A.IMS_INFORMATION, c.utf8(A.CALLED_PARTY_ADDRESS, dest, vendor=VENDOR_3GPP),
            vendor=VENDOR_3GPP), vendor=VENDOR_3GPP)
        seconds = self.rng.randint(5, 300)

        def ccr(kind: int, number: int, units: bytes) -> bytes:
            body: bytes = self.gy.ccr(sid, kind, number, m.msisdn, context="32260@3gpp.org",
                                      mscc=c.grouped(A.MULTIPLE_SERVICES_CREDIT_CONTROL, units))
            return body + ims

        start = time.time()
        ok = await self._ccr("gy_voice", ccr(1, 0, c.grouped(
            A.REQUESTED_SERVICE_UNIT, c.u32(A.CC_TIME, 300))))
        ok = ok and await self._ccr("gy_voice", ccr(3, 1, c.grouped(
            A.USED_SERVICE_UNIT, c.u32(A.CC_TIME, seconds))))
        if not ok:
            self.out.errors["gy_voice"] += 1
            return
        self.out.expected[m.msisdn] += price_voice(m, seconds, start)
        self.out.done["gy_voice"] += 1
        self.out.charged_events += 2

    async def radius_data(self, n: int) -> None:
        from protocols.radius.codec import AcctStatus
        from sim.radius_cmd import RadiusLoad

        m = self.pick()
        total = 0
        steps = [RadiusLoad.session_attrs(AcctStatus.START, n, 0, m.msisdn, self.run_id)]
        for _ in range(self.rng.randint(1, 3)):
            total += self.rng.randint(1, 50) * 100_000
            steps.append(RadiusLoad.session_attrs(AcctStatus.INTERIM_UPDATE, n, total,
                                                  m.msisdn, self.run_id))
        total += self.rng.randint(0, 10) * 100_000
        steps.append(RadiusLoad.session_attrs(AcctStatus.STOP, n, total, m.msisdn,
                                              self.run_id))
        for attrs in steps:
            r = await self.radius.request(attrs, n)
            if r is None:
                self.out.errors["radius_data"] += 1
                return
            self.out.latencies["radius_data"].append(r)
            self.out.timelines["radius_data"].mark()
        self.out.expected[m.msisdn] += price_data(m, total, False)
        self.out.done["radius_data"] += 1
        self.out.charged_events += len(steps)

    async def smpp_sms(self, n: int) -> None:
        from protocols.smpp.pdu import Cmd, Status, Submit, encode_submit

        m = self.pick()
        sm = Submit("", 1, 1, m.msisdn, 1, 1, f"4179{self.rng.randrange(10**7):07d}", 0, 0,
                    0, "", "", 0, 0, 0, 0, b"scenario %d" % n, {})
        esme, window = self.esmes[n % len(self.esmes)], self.windows[n % len(self.esmes)]
        try:
            async with window:
                resp = await self._timed("smpp_sms", asyncio.wait_for(
                    esme.request(Cmd.SUBMIT_SM, encode_submit(sm)), 10))
        except (TimeoutError, ConnectionError):
            self.out.errors["smpp_sms"] += 1
            return
        if resp.status != Status.ROK:
            self.out.errors["smpp_sms"] += 1
            return
        self.out.expected[m.msisdn] += price_sms(m)
        self.out.done["smpp_sms"] += 1
        self.out.charged_events += 1

    async def snmp_traps(self, n: int) -> None:
        from protocols.snmp.codec import encode_trap_v2c

        assert self.cfg.snmp is not None and self.trap_sock is not None
        host, port = parse_listen(self.cfg.snmp.trap_listen)
        trap = "1.3.6.1.6.3.1.1.5.3" if n % 2 == 0 else "1.3.6.1.6.3.1.1.5.4"
        idx = (n // 2) % 100 + 1
        self.trap_sock.sendto(encode_trap_v2c(self.cfg.snmp.communities[0].encode(), n + 1, n,
                                              trap, [(f"1.3.6.1.2.1.2.2.1.1.{idx}", idx)]),
                              (host, port))
        self.out.done["snmp_traps"] += 1
        self.out.timelines["snmp_traps"].mark()

    async def drive(self, t: Traffic) -> None:
        fn = getattr(self, t.kind)
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        started = 0.0
        n = 0
        while (now := time.perf_counter() - start) < self.sc.duration_s:
            started += t.rate * self.sc.rate_factor(now) * 0.01
            while n < int(started):
                task = asyncio.ensure_future(fn(n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            await asyncio.sleep(0.01)
        if tasks:
            await asyncio.wait(tasks, timeout=60)

    async def run(self) -> float:
        await self.open()
        for t in self.sc.traffic:  # every timeline starts with the run
            self.out.timelines[t.kind] = Timeline()
        t0 = time.perf_counter()
        try:
            await asyncio.gather(*(self.drive(t) for t in self.sc.traffic))
        finally:
            self.close()
        return time.perf_counter() - t0


# -- provisioning and verification through the CLI --------------------------------------------

def _ocs(config: Path, *args: str) -> str:
    exe = str(Path(sys.executable).parent / "ocs")
    p = subprocess.run([exe, *args, "--config", str(config)], capture_output=True, text=True,
                       timeout=900)
    if p.returncode != 0:
        raise ScenarioError(f"ocs {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def balances(config: Path) -> dict[str, int]:
    return {s["msisdn"]: parse_amount(s["balance"], allow_negative=True)
            for s in json.loads(_ocs(config, "subscriber", "list", "--json"))}


def provision(sc: Scenario, config: Path, workdir: Path) -> int:
    """Import the population (``ocs subscriber import``) unless it is there already."""
    have = balances(config)
    missing = [m for m in population(sc) if m.msisdn not in have]
    if not missing:
        return 0
    path = workdir / f"population-{sc.name}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["msisdn", "plan", "mode", "balance", "credit_limit", "roaming"])
        for m in missing:
            w.writerow([m.msisdn, "prepaid-basic" if m.prepaid else "postpaid-business",
                        "prepaid" if m.prepaid else "postpaid",
                        sc.balance if m.prepaid else "0", "" if m.prepaid else "1000",
                        "true"])
    _ocs(config, "subscriber", "import", str(path), "--no-progress")
    return len(missing)


def verify(sc: Scenario, config: Path, cfg: Config, before: dict[str, int], out: Outcome,
           run_start: float) -> list[str]:
    from ocs.cdr.reader import closed_cdr_files, read_cdr_files

    after = balances(config)
    diffs = []
    for kind, n in sorted(out.errors.items()):
        diffs.append(f"{kind}: {n} requests failed or went unanswered")
    _ocs(config, "cdr", "flush")
    by_cdr: Counter[str] = Counter()
    ours = {m.msisdn for m in population(sc)}
    for row in read_cdr_files(closed_cdr_files(cfg.under_data(cfg.cdr.dir))):
        r = row.record
        if r.msisdn in ours and r.start_time >= int(run_start) - 1:
            by_cdr[r.msisdn] += r.charge
    for msisdn in sorted(ours):
        want = out.expected.get(msisdn, 0)
        got = before.get(msisdn, 0) - after.get(msisdn, 0)
        if got != want:
            diffs.append(f"{msisdn}: balance moved {format_amount(got)}, "
                         f"expected {format_amount(want)}")
        if by_cdr.get(msisdn, 0) != want:
            diffs.append(f"{msisdn}: CDRs charge {format_amount(by_cdr.get(msisdn, 0))}, "
                         f"expected {format_amount(want)}")
    return diffs


def reports(sc: Scenario, out: Outcome, seconds: float) -> list[Report]:
    reps = []
    for t in sc.traffic:
        lat = out.latencies.get(t.kind, [])
        r = Report.from_latencies("scenario", f"{sc.name}: {t.kind}", lat, out.errors[t.kind],
                                  seconds, out.timelines.get(t.kind))
        r.extra["result"] = f"{out.done[t.kind]:,} done"
        r.extra.pop("window", None)  # the server's CPU is the kinds' together: on the total
        reps.append(r)
    total = Report("scenario", f"{sc.name}: charged events", out.charged_events,
                   sum(out.errors.values()), seconds)
    all_lat = sorted(x for k, v in out.latencies.items() if k != "snmp_traps" for x in v)
    if all_lat:
        total.latencies_ms = Report.from_latencies("scenario", "", all_lat, 0,
                                                   seconds).latencies_ms
    charged = [tl for k, tl in out.timelines.items() if k != "snmp_traps"]
    if charged:
        merged = Timeline()
        merged.start = min(tl.start for tl in charged)
        merged.done = [t for tl in charged for t in tl.done]
        total.extra["timeline"] = merged.series()
        total.extra["window"] = [round(merged.start, 6), round(merged.start + seconds, 6)]
    reps.append(total)
    return reps


def main_scenario(path: Path, config: Path, *, verify_run: bool, workdir: Path) -> tuple[
        list[Report], list[str]]:
    sc = load_scenario(path)
    cfg = load_config(config)
    provision(sc, config, workdir)
    before = balances(config)
    run_id = f"{time.time_ns():x}"
    runner = Runner(sc, cfg, run_id)
    run_start = time.time()
    try:
        import uvloop

        seconds = uvloop.run(runner.run())
    except ImportError:  # pragma: no cover
        seconds = asyncio.run(runner.run())
    time.sleep(max(1.0, 2 * cfg.cdr.export_interval_s))  # the exporter's next round
    diffs = verify(sc, config, cfg, before, runner.out, run_start) if verify_run else []
    return reports(sc, runner.out, seconds), diffs


@command("scenario", "a population and a traffic mix across protocols, --verify to reconcile")
class ScenarioCommand:
    @staticmethod
    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="scenario TOML (see sim/scenarios/)")
        p.add_argument("--config", default="config/ocs.toml",
                       help="the running server's config (endpoints, data dir)")
        p.add_argument("--verify", action="store_true",
                       help="reconcile balances and CDR files with the simulator's prices")
        p.add_argument("--json", action="store_true")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        with tempfile.TemporaryDirectory(prefix="ocs-scenario-") as tmp:
            try:
                reps, diffs = main_scenario(Path(args.file), Path(args.config),
                                            verify_run=args.verify, workdir=Path(tmp))
            except ScenarioError as exc:
                sys.stderr.write(f"ocs-sim scenario: {exc}\n")
                return 2
        if args.json:
            sys.stdout.write(json.dumps({"reports": [r.to_json() for r in reps],
                                         "differences": diffs}, indent=2) + "\n")
        else:
            print_table(reps, f"ocs-sim scenario {Path(args.file).stem}")
            if args.verify:
                print("verify: " + ("no differences" if not diffs else
                                    f"{len(diffs)} difference(s)"))
                for d in diffs[:50]:
                    print("  " + d)
        return 1 if diffs else 0


@bench_part("mixed")
async def bench_mixed(ctx: BenchContext) -> list[Report]:
    """The busy-hour scenario (smoke with --quick < 1) against the bench server, every
    protocol at once, reconciled with --verify."""
    from sim.context import with_addresses
    from sim.core import provision as load_plans_and

    server = ctx.server
    load_plans_and(server.store, 1)
    d = server.diameter.address
    r = server.radius.address("acct")
    s = server.smpp.server.sockets[0].getsockname()[:2]
    t = server.snmp.transport.get_extra_info("sockname")[:2]
    cfg = ctx.workdir / "mixed.toml"  # the bench server's own config, with its real ports
    cfg.write_text(with_addresses((ctx.workdir / "ocs.toml").read_text(), {
        ("diameter", "listen"): f"{d[0]}:{d[1]}", ("radius", "acct_listen"): f"{r[0]}:{r[1]}",
        ("smpp", "listen"): f"{s[0]}:{s[1]}", ("snmp", "trap_listen"): f"{t[0]}:{t[1]}"}))
    name = "busy-hour" if ctx.quick >= 1 else "smoke"
    scenario = Path(__file__).with_name("scenarios") / f"{name}.toml"

    def run() -> dict[str, Any]:
        p = subprocess.run([sys.executable, "-m", "sim.cli", "scenario", str(scenario),
                            "--config", str(cfg), "--verify", "--json"],
                           capture_output=True, text=True, timeout=1200)
        if p.returncode not in (0, 1):
            raise RuntimeError(f"ocs-sim scenario failed: {p.stderr.strip()[-500:]}")
        out: dict[str, Any] = json.loads(p.stdout)
        return out

    out = await asyncio.get_running_loop().run_in_executor(None, run)
    reps = []
    for d_ in out["reports"]:
        reps.append(Report.from_json(d_, part="mixed"))
    total = reps[-1]
    diffs = out["differences"]
    total.target = ">= 10,000 events/s, p99 <= 20 ms, 0 reconcile differences"
    total.passed = (total.throughput >= 10_000 and total.latencies_ms.get("p99", 1e9) <= 20
                    and not diffs)
    total.extra["result"] = f"{len(diffs)} reconcile differences"
    return reps
