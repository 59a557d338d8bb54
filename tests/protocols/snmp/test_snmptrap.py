"""Interop: net-snmp snmptrap / snmpinform against ``ocs serve``; alarms via the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests_support import free_udp_port, require_tool, serving

OCS = str(Path(sys.executable).parent / "ocs")
CONFIG = """
[node]
name = "nm"
data_dir = "{data}"
log_format = "json"
[snmp]
trap_listen = "127.0.0.1:{port}"
communities = ["public"]
[noc]
min_free_disk_mb = 0
[admin]
enabled = false
"""
LINK_DOWN, LINK_UP = "1.3.6.1.6.3.1.1.5.3", "1.3.6.1.6.3.1.1.5.4"
IF_INDEX, IF_ADMIN, IF_OPER = "1.3.6.1.2.1.2.2.1.1", "1.3.6.1.2.1.2.2.1.7", "1.3.6.1.2.1.2.2.1.8"


class Nms:
    def __init__(self, cwd: Path, cfg: Path, port: int):
        self.cwd, self.cfg, self.port = cwd, cfg, port

    def alarms(self) -> list[dict[str, object]]:
        p = subprocess.run([OCS, "alarms", "list", "--json", "--config", str(self.cfg)],
                           cwd=self.cwd, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return list(json.loads(p.stdout))

    def trap(self, *args: str, version: str = "2c", community: str = "public") -> None:
        cmd = [require_tool("snmptrap"), "-v", version, "-c", community, "-On",
               f"127.0.0.1:{self.port}", *args]
        subprocess.run(cmd, check=True, capture_output=True, timeout=30,
                       env={**os.environ, "MIBS": ""})

    def wait(self, pred, timeout: float = 10.0):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = pred(self.alarms())
            if got:
                return got
            time.sleep(0.1)
        raise AssertionError(f"timed out; alarms: {self.alarms()}")


@pytest.fixture(scope="module")
def nms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nms]:
    require_tool("snmptrap")
    cwd = tmp_path_factory.mktemp("nms")
    port = free_udp_port()
    cfg = cwd / "nm.toml"
    cfg.write_text(CONFIG.format(data=cwd / "data", port=port))
    plans = Path(__file__).resolve().parents[3] / "config" / "plans.toml"
    subprocess.run([OCS, "init", "--config", str(cfg), "--plans", str(plans)], check=True,
                   capture_output=True)
    with serving(cfg, cwd, "snmp_listening"):
        yield Nms(cwd, cfg, port)


def test_v2c_link_down_then_up_is_one_cleared_alarm(nms: Nms) -> None:
    vbs = [f"{IF_INDEX}.3", "i", "3", f"{IF_ADMIN}.3", "i", "1", f"{IF_OPER}.3", "i", "2"]
    nms.trap("", LINK_DOWN, *vbs)
    (a,) = nms.wait(lambda al: [x for x in al if x["resource"] == "ifIndex=3"])
    assert (a["element"], a["alarm_type"], a["probable_cause"], a["perceived_severity"]) == (
        "127.0.0.1", "communicationsAlarm", "lossOfSignal", "major")
    assert a["varbinds"]["ifIndex.3"] == "3" and a["cleared_at"] is None
    nms.trap("", LINK_DOWN, *vbs)
    nms.wait(lambda al: [x for x in al if x["resource"] == "ifIndex=3" and x["count"] == 2])
    nms.trap("", LINK_UP, f"{IF_INDEX}.3", "i", "3")
    (a,) = nms.wait(lambda al: [x for x in al if x["resource"] == "ifIndex=3"
                                and x["cleared_at"] is not None])
    assert a["perceived_severity"] == "cleared" and a["count"] == 2


def test_v1_trap_translated(nms: Nms) -> None:
    # enterprise, agent-addr 10.1.1.1, generic 2 (linkDown), specific 0, uptime
    nms.trap("1.3.6.1.4.1.8072", "10.1.1.1", "2", "0", "", f"{IF_INDEX}.5", "i", "5",
             version="1")
    (a,) = nms.wait(lambda al: [x for x in al if x["element"] == "10.1.1.1"])
    assert a["resource"] == "ifIndex=5" and a["perceived_severity"] == "major"


def test_inform_is_answered_and_wrong_community_dropped(nms: Nms) -> None:
    p = subprocess.run([require_tool("snmpinform"), "-v", "2c", "-c", "public", "-r", "1",
                        "-t", "3", f"127.0.0.1:{nms.port}", "", "1.3.6.1.6.3.1.1.5.1"],
                       capture_output=True, text=True, timeout=30, env={**os.environ,
                                                                          "MIBS": ""})
    assert p.returncode == 0, p.stderr  # snmpinform exits 0 only when it got the Response
    nms.wait(lambda al: [x for x in al if x["probable_cause"] == "coldStart"])
    before = len(nms.alarms())
    nms.trap("", "1.3.6.1.6.3.1.1.5.1", community="private")
    time.sleep(0.5)
    assert len(nms.alarms()) == before


def test_a_trap_is_in_the_alarm_stream_at_once(tmp_path: Path) -> None:
    """The stream writer is woken by each committed alarm: a trap's line is in
    DATA_DIR/alarms in milliseconds, not at the next export interval (5 s here)."""
    require_tool("snmptrap")
    port = free_udp_port()
    cfg = tmp_path / "nm.toml"
    cfg.write_text(CONFIG.format(data=tmp_path / "data", port=port)
                   + "[cdr]\nexport_interval_s = 5.0\n")
    plans = Path(__file__).resolve().parents[3] / "config" / "plans.toml"
    subprocess.run([OCS, "init", "--config", str(cfg), "--plans", str(plans)], check=True,
                   capture_output=True)
    with serving(cfg, tmp_path, "snmp_listening"):
        n = Nms(tmp_path, cfg, port)
        time.sleep(1.0)  # past the exporter's first round
        waits = []
        for idx in range(21, 26):
            sent = time.monotonic()
            n.trap("", LINK_DOWN, f"{IF_INDEX}.{idx}", "i", str(idx))
            needle = f"ifIndex={idx}".encode()
            while not any(needle in p.read_bytes()
                          for p in (tmp_path / "data" / "alarms").glob("*")):
                assert time.monotonic() - sent < 4.0, "not in the stream before the interval"
                time.sleep(0.005)
            waits.append(time.monotonic() - sent)
    assert max(waits) < 1.0, waits  # snmptrap's own start-up is most of it
