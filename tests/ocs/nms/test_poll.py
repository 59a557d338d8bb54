"""The NMS against a real element (net-snmp snmpd, tests/nms_support.py): exact figures
from the poller, and in ``ocs serve`` threshold and reachability alarms raised and
cleared, figures on /metrics, the ``ocs nms`` commands."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from nms_support import Element, iface
from tests_support import OCS, admin_healthy, free_tcp_port, init_server, metric, serving

from ocs.nms.derive import derive
from ocs.nms.history import latest
from ocs.nms.poller import Poller, Unreachable
from ocs.store import Store


def test_the_poller_reads_a_real_agent_exactly(tmp_path: Path) -> None:
    el = Element(tmp_path, cpu=[40, 60], ifaces={
        "1": iface("eth0", in_octets=10**12, out_octets=5, in_pkts=10**6),
        "2": iface("eth1", oper=2, speed=10_000)})
    ticks = itertools.count(100, 10)  # the polls are 10 s apart for the rates
    try:
        async def run() -> Any:
            p = Poller(timeout_s=1.0, retries=1)
            try:
                a = await p.poll(el.address, clock=lambda: float(next(ticks)))
                el.state["ifaces"]["1"].update(in_octets=10**12 + 125_000_000,
                                               in_pkts=10**6 + 990, in_errors=10)
                el.write()
                b = await p.poll(el.address, clock=lambda: float(next(ticks)))
                return a, b
            finally:
                p.close()

        a, b = asyncio.run(run())
    finally:
        el.stop()
    assert a.cpu_loads == (40, 60) and a.mem_size > 0 and 0 < a.mem_used < a.mem_size
    assert [(i.descr, i.admin_up, i.oper_up, i.hc, i.speed_mbps) for i in a.interfaces] == [
        ("eth0", True, True, True, 1000), ("eth1", True, False, True, 10_000)]
    f = derive(a, b)
    eth0 = f.interfaces[0]
    assert (eth0.in_mbps, eth0.utilization_pct, eth0.packet_loss_pct) == (100.0, 10.0, 1.0)
    assert f.cpu_pct == 50.0

    async def dead() -> None:
        p = Poller(timeout_s=0.3, retries=0)
        try:
            await p.poll(el.address)
        finally:
            p.close()

    with pytest.raises(Unreachable):
        asyncio.run(dead())


def _alarms(cfg: Path, cwd: Path) -> list[dict[str, Any]]:
    out = subprocess.run([OCS, "alarms", "list", "--json", "--config", str(cfg)], cwd=cwd,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return list(json.loads(out))


def _wait(cond: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_serve_raises_and_clears_alarms_from_polls(tmp_path: Path) -> None:
    (tmp_path / "el").mkdir()
    el = Element(tmp_path / "el",
                 cpu=[20, 20], ifaces={"1": iface("eth0"), "2": iface("eth1")})
    admin = free_tcp_port()
    cfg = init_server(tmp_path, f"""
[nms]
poll_interval_s = 0.5
timeout_s = 0.5
retries = 0
[[nms.elements]]
id = "bts-001"
type = "base_station"
address = "{el.address}"
community = "public"
[admin]
listen = "127.0.0.1:{admin}"
""")
    try:
        with serving(cfg, tmp_path, lambda: admin_healthy(admin), args=("--workers", "1")):
            _wait(lambda: metric(admin, "ocs_nms_reachable", element="bts-001") == 1,
                  "first poll")
            assert metric(admin, "ocs_nms_cpu_pct", element="bts-001") == 20.0
            # CPU above 90 and a link down: a critical and a major alarm
            el.state["cpu"] = [95, 97]
            el.state["ifaces"]["2"]["oper"] = 2
            el.write()

            def active() -> dict[str, dict[str, Any]]:
                return {a["resource"]: a for a in _alarms(cfg, tmp_path)
                        if a["element"] == "bts-001" and a["cleared_at"] is None}

            def having(*keys: str) -> dict[str, dict[str, Any]] | None:
                now = active()
                return now if set(keys) <= now.keys() else None

            got = _wait(lambda: having("cpu", "eth1/link"), "threshold alarms")
            assert got["cpu"]["perceived_severity"] == "critical"
            assert got["cpu"]["probable_cause"] == "cpuCyclesLimitExceeded"
            assert got["eth1/link"]["alarm_type"] == "communicationsAlarm"
            assert metric(admin, "ocs_nms_health", element="bts-001") < 70
            # back to normal: both clear
            el.state["cpu"] = [30, 30]
            el.state["ifaces"]["2"]["oper"] = 1
            el.write()
            _wait(lambda: not active(), "threshold alarms cleared")
            # the agent goes away: a communicationsAlarm; it comes back: cleared
            el.stop()
            got = _wait(lambda: having("snmp-agent"), "unreachable alarm")
            assert got["snmp-agent"]["probable_cause"] == "communicationsSubsystemFailure"
            el.start()
            _wait(lambda: "snmp-agent" not in active(), "reachable again")
            assert metric(admin, "ocs_nms_polls_total", outcome="unreachable") >= 1
        # what the server stored: the last poll's health, explained; the forecast
        healthy = json.loads(subprocess.run(
            [OCS, "nms", "health", "bts-001", "--json", "--config", str(cfg)], cwd=tmp_path,
            capture_output=True, text=True, check=True).stdout)
        parts = {c["component"]: c for c in healthy["components"]}
        assert parts["cpu"]["value"] == 30.0 and parts["cpu"]["score"] == 100.0
        assert parts["links"]["score"] == 100.0  # both up again
        assert healthy["health"] == round(sum(c["points"] for c in parts.values()))
        with Store(tmp_path / "data", create=False) as store:
            stored = latest(store, "bts-001")
        assert stored is not None and healthy["health"] == stored.health  # as the server saw
        fc = json.loads(subprocess.run(
            [OCS, "nms", "forecast", "bts-001", "--json", "--config", str(cfg)],
            cwd=tmp_path, capture_output=True, text=True, check=True).stdout)
        assert fc["samples"] >= 3 and {i["interface"] for i in fc["interfaces"]} == {
            "eth0", "eth1"}
        assert all(i["full_at"] is None for i in fc["interfaces"])  # idle links: no growth
        # the CLI polls it directly
        listed = json.loads(subprocess.run(
            [OCS, "nms", "elements", "--json", "--config", str(cfg)], cwd=tmp_path,
            capture_output=True, text=True, check=True).stdout)
        assert listed == [{"id": "bts-001", "type": "base_station", "address": el.address,
                           "auth": "v2c", "capacity_mbps": 0}]
        el.state["cpu"] = [92, 96]
        el.write()
        polled = json.loads(subprocess.run(
            [OCS, "nms", "poll", "bts-001", "--interval", "0.5", "--json", "--config",
             str(cfg)], cwd=tmp_path, capture_output=True, text=True, check=True).stdout)
        assert polled["cpu_pct"] == 94.0 and polled["above_thresholds"] == ["cpu"]
        assert {c["component"] for c in polled["components"]} == {
            "cpu", "memory", "capacity", "packet_loss", "links"}
    finally:
        el.stop()
    el.stop()
    gone = subprocess.run([OCS, "nms", "poll", "bts-001", "--config", str(cfg)],
                          cwd=tmp_path, capture_output=True, text=True)
    assert gone.returncode == 1 and "bts-001" in gone.stderr
