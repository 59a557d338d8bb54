"""From two polls of an element to what an operator watches: CPU %, memory %, per
interface throughput (Mbit/s), utilisation % and packet loss %; thresholds with
hysteresis; a health score that explains itself. Pure: polls in, figures out.

Counters: 32-bit ones (ifInOctets, ifInErrors, ...) wrap at 2^32 and are taken as having
wrapped once when they go back; a 64-bit one (ifHC*) going back is a reset, and gives no
rate. An agent restart (sysUpTime going back) gives no rates at all for that interval:
every counter starts again from zero.
"""

from __future__ import annotations

from dataclasses import dataclass

WRAP32 = 1 << 32
WRAP64 = 1 << 64
HYSTERESIS = 0.05
"""A raised threshold alarm clears only below the limit minus 5 % of it: a value at the
line does not flap."""


@dataclass(frozen=True, slots=True)
class Interface:
    index: int
    descr: str
    admin_up: bool
    oper_up: bool
    in_octets: int
    out_octets: int
    hc: bool
    """64-bit counters (ifHCInOctets / ifHCOutOctets)."""
    in_packets: int
    in_errors: int
    in_discards: int
    speed_mbps: int
    """ifHighSpeed (0 = unknown)."""


@dataclass(frozen=True, slots=True)
class Poll:
    at: float
    """Seconds (monotonic or wall clock: only differences are used)."""
    uptime_cs: int
    """sysUpTime, hundredths of a second."""
    cpu_loads: tuple[int, ...]
    """hrProcessorLoad, one per CPU (% over the last minute)."""
    mem_used: int
    mem_size: int
    """RAM in bytes (hrStorageRam: used and size times allocation units)."""
    interfaces: tuple[Interface, ...]


@dataclass(frozen=True, slots=True)
class IfFigures:
    index: int
    descr: str
    admin_up: bool
    oper_up: bool
    in_mbps: float | None
    out_mbps: float | None
    utilization_pct: float | None
    """The busier direction over the capacity (the element's ``capacity_mbps``, else
    ifHighSpeed); None without a rate or a capacity."""
    packet_loss_pct: float | None
    """(errors + discards) over everything that came in, over the interval."""


@dataclass(frozen=True, slots=True)
class Figures:
    cpu_pct: float | None
    memory_pct: float | None
    interfaces: tuple[IfFigures, ...]
    restarted: bool = False

    @property
    def capacity_pct(self) -> float | None:
        vals = [i.utilization_pct for i in self.interfaces if i.utilization_pct is not None]
        return max(vals) if vals else None

    @property
    def packet_loss_pct(self) -> float | None:
        vals = [i.packet_loss_pct for i in self.interfaces if i.packet_loss_pct is not None]
        return max(vals) if vals else None


def delta(prev: int, cur: int, bits: int) -> int | None:
    """How far a counter moved; None for a 64-bit counter that went back (a reset)."""
    if cur >= prev:
        return cur - prev
    if bits == 32:
        return cur + WRAP32 - prev
    return None


def derive(prev: Poll | None, cur: Poll, capacity_mbps: int = 0) -> Figures:
    cpu = sum(cur.cpu_loads) / len(cur.cpu_loads) if cur.cpu_loads else None
    mem = 100.0 * cur.mem_used / cur.mem_size if cur.mem_size > 0 else None
    dt = cur.at - prev.at if prev is not None else 0.0
    restarted = prev is not None and cur.uptime_cs < prev.uptime_cs
    before = {i.index: i for i in prev.interfaces} if prev is not None and not restarted else {}
    out: list[IfFigures] = []
    for i in cur.interfaces:
        p = before.get(i.index)
        in_mbps = out_mbps = util = loss = None
        if p is not None and dt > 0 and p.hc == i.hc:
            bits = 64 if i.hc else 32
            d_in, d_out = delta(p.in_octets, i.in_octets, bits), delta(
                p.out_octets, i.out_octets, bits)
            if d_in is not None and d_out is not None:
                in_mbps = d_in * 8 / dt / 1e6
                out_mbps = d_out * 8 / dt / 1e6
                cap = capacity_mbps or i.speed_mbps
                if cap > 0:
                    util = 100.0 * max(in_mbps, out_mbps) / cap
            d_pk = delta(p.in_packets, i.in_packets, bits)
            d_err = delta(p.in_errors, i.in_errors, 32)
            d_dis = delta(p.in_discards, i.in_discards, 32)
            if d_pk is not None and d_err is not None and d_dis is not None:
                total = d_pk + d_err + d_dis
                loss = 100.0 * (d_err + d_dis) / total if total else 0.0
        out.append(IfFigures(i.index, i.descr, i.admin_up, i.oper_up, in_mbps, out_mbps,
                             util, loss))
    return Figures(cpu, mem, tuple(out), restarted)


@dataclass(frozen=True, slots=True)
class Limits:
    cpu_pct: float = 90.0
    memory_pct: float = 90.0
    capacity_pct: float = 85.0
    packet_loss_pct: float = 1.0


@dataclass(frozen=True, slots=True)
class Crossing:
    """A threshold alarm to raise (``severity``) or clear (``severity`` "cleared")."""

    resource: str
    """``cpu``, ``memory``, ``<ifDescr>/capacity``, ``<ifDescr>/packet-loss``,
    ``<ifDescr>/link``."""
    severity: str
    value: float
    limit: float
    text: str


SEVERITY = {"cpu": "critical", "memory": "major", "capacity": "major", "packet-loss": "major",
            "link": "major"}


def thresholds(f: Figures, limits: Limits, active: frozenset[str]) -> list[Crossing]:
    """Crossings now: a raise for a value above its limit not yet raised (``active``),
    a clear for a raised one back below the limit minus the hysteresis. A figure that
    is unknown this time (no rate after a restart) changes nothing."""
    checks: list[tuple[str, str, float | None, float]] = [
        ("cpu", "CPU", f.cpu_pct, limits.cpu_pct),
        ("memory", "memory", f.memory_pct, limits.memory_pct),
    ]
    for i in f.interfaces:
        if not i.admin_up:
            continue  # switched off on purpose: nothing to watch
        checks.append((f"{i.descr}/capacity", f"{i.descr} utilisation", i.utilization_pct,
                       limits.capacity_pct))
        checks.append((f"{i.descr}/packet-loss", f"{i.descr} packet loss", i.packet_loss_pct,
                       limits.packet_loss_pct))
        checks.append((f"{i.descr}/link", f"{i.descr} down (admin up)",
                       0.0 if i.oper_up else 1.0, 0.5))
    out: list[Crossing] = []
    for resource, what, value, limit in checks:
        if value is None:
            continue
        kind = resource.rsplit("/", 1)[-1]
        raised = resource in active
        if not raised and value > limit:
            out.append(Crossing(resource, SEVERITY[kind], value, limit,
                                f"{what} {value:.1f} above {limit:g}"
                                if kind != "link" else what))
        elif raised and value <= limit * (1 - HYSTERESIS):
            out.append(Crossing(resource, "cleared", value, limit,
                                f"{what} back to {value:.1f}" if kind != "link" else
                                f"{resource.rsplit('/', 1)[0]} up again"))
    return out


WEIGHTS = {"cpu": 0.3, "memory": 0.2, "capacity": 0.3, "packet_loss": 0.1, "links": 0.1}


def health(f: Figures, limits: Limits) -> tuple[int, list[dict[str, object]]]:
    """A 0-100 score and its components: each component scores 100 up to half its limit,
    falling linearly to 0 at the limit; links score the share of admin-up interfaces
    that are up. Unknown components count as 100 and say so."""
    def score(value: float | None, limit: float) -> float:
        if value is None:
            return 100.0
        half = limit / 2
        if value <= half:
            return 100.0
        return max(0.0, 100.0 * (limit - value) / half)

    up = [i for i in f.interfaces if i.admin_up]
    links = 100.0 * sum(1 for i in up if i.oper_up) / len(up) if up else None
    parts = [
        ("cpu", f.cpu_pct, limits.cpu_pct, score(f.cpu_pct, limits.cpu_pct)),
        ("memory", f.memory_pct, limits.memory_pct, score(f.memory_pct, limits.memory_pct)),
        ("capacity", f.capacity_pct, limits.capacity_pct,
         score(f.capacity_pct, limits.capacity_pct)),
        ("packet_loss", f.packet_loss_pct, limits.packet_loss_pct,
         score(f.packet_loss_pct, limits.packet_loss_pct)),
        ("links", links, 100.0, 100.0 if links is None else links),
    ]
    total = sum(WEIGHTS[name] * s for name, _v, _l, s in parts)
    explained: list[dict[str, object]] = [
        {"component": name, "value": None if v is None else round(v, 2), "limit": lim,
         "score": round(s, 1), "weight": WEIGHTS[name],
         "points": round(WEIGHTS[name] * s, 1)}
        for name, v, lim, s in parts]
    return round(total), explained
