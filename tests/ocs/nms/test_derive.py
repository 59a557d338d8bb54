"""NMS figures from polls, exactly: counter wraps and resets, restarts, utilisation,
packet loss, thresholds with hysteresis, and the explained health score."""

from __future__ import annotations

import pytest

from ocs.nms.derive import (
    WRAP32,
    Figures,
    IfFigures,
    Interface,
    Limits,
    Poll,
    delta,
    derive,
    health,
    thresholds,
)


def ifc(octets_in: int, octets_out: int = 0, *, hc: bool = True, pkts: int = 0, err: int = 0,
        disc: int = 0, speed: int = 100, admin: bool = True, oper: bool = True,
        index: int = 1) -> Interface:
    return Interface(index=index, descr=f"eth{index}", admin_up=admin, oper_up=oper,
                     in_octets=octets_in, out_octets=octets_out, hc=hc, in_packets=pkts,
                     in_errors=err, in_discards=disc, speed_mbps=speed)


def poll(at: float, *ifs: Interface, uptime: int = 1000, cpu: tuple[int, ...] = (10, 30),
         used: int = 1, size: int = 4) -> Poll:
    return Poll(at=at, uptime_cs=uptime, cpu_loads=cpu, mem_used=used, mem_size=size,
                interfaces=ifs)


def test_counters() -> None:
    assert delta(10, 25, 32) == 15
    assert delta(WRAP32 - 5, 10, 32) == 15  # a 32-bit counter wrapped once
    assert delta(100, 10, 64) is None  # a 64-bit counter going back is a reset


def test_rates_utilisation_and_loss() -> None:
    a = poll(100.0, ifc(0, 0, pkts=0))
    b = poll(110.0, ifc(62_500_000, 12_500_000, pkts=980, err=15, disc=5))  # 10 s later
    f = derive(a, b)
    (i,) = f.interfaces
    assert (i.in_mbps, i.out_mbps) == (50.0, 10.0)
    assert i.utilization_pct == 50.0  # 50 of ifHighSpeed 100
    assert i.packet_loss_pct == 2.0  # 20 of 1000
    assert derive(a, b, capacity_mbps=200).interfaces[0].utilization_pct == 25.0
    assert (f.cpu_pct, f.memory_pct) == (20.0, 25.0)
    # 32-bit counters wrap between the polls
    a32 = poll(0.0, ifc(WRAP32 - 1_250_000, hc=False))
    b32 = poll(1.0, ifc(1_250_000, hc=False))
    assert derive(a32, b32).interfaces[0].in_mbps == 20.0


def test_no_rates_first_time_after_a_restart_or_a_reset() -> None:
    a = poll(0.0, ifc(5_000_000), uptime=5000)
    assert derive(None, a).interfaces[0].in_mbps is None
    restarted = derive(a, poll(10.0, ifc(10), uptime=200))
    assert restarted.restarted and restarted.interfaces[0].in_mbps is None
    reset = derive(a, poll(10.0, ifc(10), uptime=6000))  # a 64-bit counter went back
    assert not reset.restarted and reset.interfaces[0].in_mbps is None


def fig(cpu: float | None = 10.0, util: float | None = 10.0, loss: float | None = 0.0,
        oper: bool = True, admin: bool = True) -> Figures:
    return Figures(cpu, 50.0, (IfFigures(1, "eth1", admin, oper, 1.0, 1.0, util, loss),))


@pytest.mark.parametrize(("value", "active", "expect"), [
    (90.0, frozenset(), []),  # at the line: not above it
    (90.1, frozenset(), ["cpu:critical"]),
    (90.1, frozenset({"cpu"}), []),  # already raised
    (86.0, frozenset({"cpu"}), []),  # below the line but inside the 5 % band: no flap
    (85.5, frozenset({"cpu"}), ["cpu:cleared"]),
])
def test_thresholds_have_hysteresis(value: float, active: frozenset[str],
                                    expect: list[str]) -> None:
    got = thresholds(fig(cpu=value), Limits(), active)
    assert [f"{c.resource}:{c.severity}" for c in got] == expect


def test_interface_thresholds_and_links() -> None:
    got = thresholds(fig(util=86.0, loss=1.5, oper=False), Limits(), frozenset())
    assert sorted(f"{c.resource}:{c.severity}" for c in got) == [
        "eth1/capacity:major", "eth1/link:major", "eth1/packet-loss:major"]
    cleared = thresholds(fig(), Limits(), frozenset({"eth1/link", "eth1/capacity"}))
    assert sorted(f"{c.resource}:{c.severity}" for c in cleared) == [
        "eth1/capacity:cleared", "eth1/link:cleared"]
    # an interface switched off on purpose is not watched; unknown figures change nothing
    assert thresholds(fig(util=99.0, oper=False, admin=False), Limits(), frozenset()) == []
    assert thresholds(fig(cpu=None, util=None, loss=None), Limits(),
                      frozenset({"cpu"})) == []


def test_health_score_explains_itself() -> None:
    score, parts = health(fig(cpu=45.0, util=85.0 * 0.75, loss=0.0), Limits())
    by = {p["component"]: p for p in parts}
    assert by["cpu"]["score"] == 100.0  # up to half the limit
    assert by["capacity"]["score"] == 50.0  # halfway from half the limit to the limit
    assert by["links"]["score"] == 100.0
    assert score == round(sum(float(p["points"]) for p in parts))  # type: ignore[arg-type]
    assert score == 83  # 15 points lost on capacity, 2.2 on memory (50 % of a 90 limit)
    assert health(fig(cpu=99.0, oper=False), Limits())[0] == 58  # CPU 0, links 0, memory
    assert sum(float(p["weight"]) for p in parts) == pytest.approx(1.0)  # type: ignore[arg-type]
