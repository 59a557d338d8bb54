"""Auto-remediation against a real element: a linkDown trap from an NMS element makes
``ocs serve`` SET ifAdminStatus up on it (snmpd records the SET) and run a command with
the alarm in its environment; repeats do nothing, a new raise within the cooldown is
counted, not acted on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from nms_support import Element, iface
from tests_support import (
    admin_healthy,
    free_tcp_port,
    free_udp_port,
    init_server,
    metric,
    require_tool,
    serving,
)

LINK_DOWN, LINK_UP = "1.3.6.1.6.3.1.1.5.3", "1.3.6.1.6.3.1.1.5.4"
IF = "1.3.6.1.2.1.2.2.1"


def test_link_down_trap_is_remediated(tmp_path: Path) -> None:
    snmptrap = require_tool("snmptrap")
    (tmp_path / "el").mkdir()
    el = Element(tmp_path / "el", ifaces={"1": iface("eth0"), "2": iface("eth1", admin=2,
                                                                            oper=2)})
    trap_port, admin = free_udp_port(), free_tcp_port()
    out = tmp_path / "exec.json"
    script = tmp_path / "record.py"
    script.write_text("import json, os, sys\n"
                      "env = {k: v for k, v in os.environ.items() if k.startswith('OCS_ALARM_')}\n"
                      "json.dump(env, open(sys.argv[1], 'w'))\n")
    cfg = init_server(tmp_path, f"""
[snmp]
trap_listen = "127.0.0.1:{trap_port}"
communities = ["public"]
[nms]
poll_interval_s = 3600
[[nms.elements]]
id = "rtr-1"
address = "{el.address}"
community = "private"
[[nms.remediations]]
alarm_type = "linkDown"
action = "set_admin_up"
[[nms.remediations]]
alarm_type = "communicationsAlarm"
action = "exec"
command = ["{sys.executable}", "{script}", "{out}"]
[admin]
listen = "127.0.0.1:{admin}"
""")

    def trap(kind: str, index: int) -> None:
        subprocess.run([snmptrap, "-v", "2c", "-c", "public", "-On", f"127.0.0.1:{trap_port}",
                        "", kind, f"{IF}.1.{index}", "i", str(index), f"{IF}.7.{index}", "i",
                        "2", f"{IF}.8.{index}", "i", "2"], check=True, capture_output=True,
                       timeout=30, env={**os.environ, "MIBS": ""})

    def wait(cond: object, what: str) -> None:
        deadline = time.monotonic() + 15
        while not cond():  # type: ignore[operator]
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    try:
        with serving(cfg, tmp_path, lambda: admin_healthy(admin), args=("--workers", "1")):
            trap(LINK_DOWN, 2)
            wait(lambda: el.read().get("sets"), "the SET")
            state = el.read()
            assert state["sets"] == [["1.3.6.1.2.1.2.2.1.7.2", 1]]
            assert state["ifaces"]["2"]["admin"] == 1
            wait(out.exists, "the command")
            time.sleep(0.2)
            got = json.loads(out.read_text())
            assert got == {"OCS_ALARM_ELEMENT": "127.0.0.1", "OCS_ALARM_RESOURCE": "ifIndex=2",
                           "OCS_ALARM_TYPE": "communicationsAlarm",
                           "OCS_ALARM_CAUSE": "lossOfSignal", "OCS_ALARM_SEVERITY": "warning"}
            wait(lambda: metric(admin, "ocs_nms_remediations_total", outcome="done") == 2,
                 "both counted")
            trap(LINK_DOWN, 2)  # a repeat of the same alarm: nothing
            trap(LINK_UP, 2)
            trap(LINK_DOWN, 2)  # raised again within the cooldown: counted, not acted on
            wait(lambda: metric(admin, "ocs_nms_remediations_total", outcome="cooldown") == 2,
                 "cooldown")
            assert el.read()["sets"] == [["1.3.6.1.2.1.2.2.1.7.2", 1]]
            assert metric(admin, "ocs_nms_remediations_total", outcome="done") == 2
    finally:
        el.stop()
