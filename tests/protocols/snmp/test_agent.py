"""Trap mapping ([[noc.traps]]) and per-element storm control: pure, then end to end."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests_support import free_udp_port, init_server, serving

from ocs.config import TrapMapping
from protocols.snmp.agent import StormControl, TrapTable, to_notification
from protocols.snmp.codec import decode, encode_trap_v2c

OCS = str(Path(sys.executable).parent / "ocs")
PSU_FAIL, PSU_OK = "1.3.6.1.4.1.9999.0.1", "1.3.6.1.4.1.9999.0.2"
PSU_INDEX = "1.3.6.1.4.1.9999.1.1"
TABLE = TrapTable.of([TrapMapping(oid=PSU_FAIL, clear_oid=PSU_OK, alarm_type="equipmentAlarm",
                                  probable_cause="powerProblem", severity="critical",
                                  resource_varbind=PSU_INDEX, text="PSU failed")])


def trap(oid: str, *varbinds: tuple[str, int | str]) -> bytes:
    return encode_trap_v2c(b"public", 1, 100, oid, list(varbinds))


def test_mapped_enterprise_trap_and_its_clear() -> None:
    raise_ = to_notification(decode(trap(PSU_FAIL, (f"{PSU_INDEX}.0", 2))), "10.0.0.1", 5,
                             TABLE)
    assert (raise_.element, raise_.resource, raise_.alarm_type, raise_.probable_cause,
            raise_.severity, raise_.text) == ("10.0.0.1", f"{PSU_INDEX}=2", "equipmentAlarm",
                                              "powerProblem", "critical", "PSU failed")
    clear = to_notification(decode(trap(PSU_OK, (f"{PSU_INDEX}.0", 2))), "10.0.0.1", 6, TABLE)
    assert (clear.resource, clear.alarm_type, clear.severity) == (
        f"{PSU_INDEX}=2", "equipmentAlarm", "cleared")
    other = to_notification(decode(trap("1.3.6.1.4.1.9999.0.7")), "10.0.0.1", 6, TABLE)
    assert (other.alarm_type, other.severity) == ("other", "indeterminate")  # kept as an event


def test_storm_control_per_element() -> None:
    sc = StormControl(rate=5, hold_s=2.0)
    got = [sc.admit("a", 0.01 * i) for i in range(8)]
    assert got[:5] == [(True, None)] * 5
    assert got[5] == (False, "start") and got[6:] == [(False, None)] * 2
    assert sc.admit("b", 0.1) == (True, None)  # another element is unaffected
    assert sc.ended(1.0) == []
    assert sc.admit("a", 1.5) == (False, None)  # still within the hold time
    assert sc.ended(2.2) == [("a", 4, 8)]
    assert sc.admit("a", 2.3) == (True, None)
    assert StormControl(0, 1).admit("x", 0) == (True, None)  # off


def test_storm_summary_alarm_and_mapping_end_to_end(tmp_path: Path) -> None:
    port = free_udp_port()
    cfg = init_server(tmp_path, f"""
[snmp]
trap_listen = "127.0.0.1:{port}"
[noc]
min_free_disk_mb = 0
storm_rate = 50
storm_hold_s = 1.0
[[noc.traps]]
oid = "{PSU_FAIL}"
clear_oid = "{PSU_OK}"
alarm_type = "equipmentAlarm"
probable_cause = "powerProblem"
severity = "critical"
resource_varbind = "{PSU_INDEX}"
[admin]
enabled = false
""", name="nm")

    def alarms() -> list[dict[str, object]]:
        out = subprocess.run([OCS, "alarms", "list", "--json", "--config", str(cfg)],
                             check=True, capture_output=True, text=True).stdout
        return list(json.loads(out))

    def wait(pred) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = alarms()
            if pred(got):
                return got
            time.sleep(0.1)
        raise AssertionError(alarms())

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with serving(cfg, tmp_path, "snmp_listening"):
        s.sendto(trap(PSU_FAIL, (f"{PSU_INDEX}.0", 1)), ("127.0.0.1", port))
        wait(lambda a: any(x["perceived_severity"] == "critical" for x in a))
        s.sendto(trap(PSU_OK, (f"{PSU_INDEX}.0", 1)), ("127.0.0.1", port))
        wait(lambda a: all(x["perceived_severity"] == "cleared" for x in a))
        for i in range(300):  # a storm of link flaps within a fraction of a second
            s.sendto(trap("1.3.6.1.6.3.1.1.5.3", ("1.3.6.1.2.1.2.2.1.1.5", i % 5 + 1)),
                     ("127.0.0.1", port))
        got = wait(lambda a: any(x["resource"] == "notifications" and
                                 x["perceived_severity"] == "cleared" for x in a))
        storm = next(x for x in got if x["resource"] == "notifications")
        assert storm["alarm_type"] == "qualityOfServiceAlarm"
        suppressed = int(storm["varbinds"]["suppressed"])  # type: ignore[index]
        links = [x for x in got if str(x["resource"]).startswith("ifIndex")]
        assert sum(int(x["count"]) for x in links) + suppressed == 300  # type: ignore[misc]
        assert suppressed >= 250
    s.close()
