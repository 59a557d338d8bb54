"""SNMPv3 USM: net-snmp snmptrap / snmpinform -v 3 authPriv against ``ocs serve``
(traps from a configured sender engine, informs with our engine authoritative)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests_support import free_udp_port, init_server, require_tool, serving

from protocols.snmp.usm import engine_id_for, next_boots

OCS = str(Path(sys.executable).parent / "ocs")
USER = ["-l", "authPriv", "-a", "SHA", "-A", "authpass123", "-x", "AES", "-X", "privpass123"]
LINK_DOWN, LINK_UP = "1.3.6.1.6.3.1.1.5.3", "1.3.6.1.6.3.1.1.5.4"


def alarms(cfg: Path) -> list[dict[str, object]]:
    p = subprocess.run([OCS, "alarms", "list", "--json", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60, check=True)
    return list(json.loads(p.stdout))


def wait_for(cfg: Path, resource: str, severity: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for a in alarms(cfg):
            if a["resource"] == resource and a["perceived_severity"] == severity:
                return a
        time.sleep(0.1)
    raise AssertionError(alarms(cfg))


def test_v3_auth_priv_trap_and_inform(tmp_path: Path) -> None:
    snmptrap, snmpinform = require_tool("snmptrap"), require_tool("snmpinform")
    port = free_udp_port()
    cfg = init_server(tmp_path, f"""
[snmp]
trap_listen = "127.0.0.1:{port}"
[[snmp.v3_users]]
name = "trapuser"
auth_protocol = "SHA"
auth_key = "authpass123"
priv_protocol = "AES"
priv_key = "privpass123"
engine_id = "0x8000000001020304"
[[snmp.v3_users]]
name = "informuser"
auth_protocol = "SHA"
auth_key = "authpass123"
priv_protocol = "AES"
priv_key = "privpass123"
[noc]
min_free_disk_mb = 0
[admin]
enabled = false
""", name="nm")
    env = {**os.environ, "MIBS": ""}
    target = f"127.0.0.1:{port}"

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)

    with serving(cfg, tmp_path, "snmp_listening"):
        # a TRAP: the sender is authoritative, its engine ID is configured for the user
        p = run(snmptrap, "-v", "3", "-e", "0x8000000001020304", "-u", "trapuser", *USER,
                target, "", LINK_DOWN, "1.3.6.1.2.1.2.2.1.1.7", "i", "7")
        assert p.returncode == 0, p.stderr
        down = wait_for(cfg, "ifIndex=7", "major")
        # an INFORM: engine discovery against our engine, then acknowledged
        p = run(snmpinform, "-v", "3", "-u", "informuser", *USER, "-t", "3", "-r", "1", target,
                "", LINK_UP, "1.3.6.1.2.1.2.2.1.1.7", "i", "7")
        assert p.returncode == 0, p.stderr
        up = wait_for(cfg, "ifIndex=7", "cleared")
        assert up["alarm_id"] == down["alarm_id"]
        # wrong key: a Report, the sender gives up, nothing recorded
        p = run(snmpinform, "-v", "3", "-u", "informuser", "-l", "authPriv", "-a", "SHA", "-A",
                "wrongpass123", "-x", "AES", "-X", "privpass123", "-t", "1", "-r", "0", target,
                "", LINK_DOWN, "1.3.6.1.2.1.2.2.1.1.9", "i", "9")
        assert p.returncode != 0 and "Authentication failure" in p.stderr
        # unknown user; a trap from an engine nobody configured: dropped
        p = run(snmpinform, "-v", "3", "-u", "nobody", *USER, "-t", "1", "-r", "0", target, "",
                LINK_DOWN, "1.3.6.1.2.1.2.2.1.1.10", "i", "10")
        assert p.returncode != 0
        run(snmptrap, "-v", "3", "-e", "0x8000000009090909", "-u", "trapuser", *USER, target,
            "", LINK_DOWN, "1.3.6.1.2.1.2.2.1.1.11", "i", "11")
        # a downgrade: the authPriv user's name at noAuthNoPriv / authNoPriv (RFC 3414 §3.2
        # step 5): dropped, it neither raises nor clears anything
        for level in (["-l", "noAuthNoPriv"], ["-l", "authNoPriv", "-a", "SHA", "-A",
                                                 "authpass123"]):
            for oid, index in ((LINK_DOWN, "12"), (LINK_UP, "7")):
                p = run(snmptrap, "-v", "3", "-e", "0x8000000001020304", "-u", "trapuser",
                        *level, target, "", oid, "1.3.6.1.2.1.2.2.1.1." + index, "i", index)
                assert p.returncode == 0, p.stderr
        time.sleep(1)
        assert {a["resource"] for a in alarms(cfg)} == {"ifIndex=7"}
        assert wait_for(cfg, "ifIndex=7", "cleared")
        # ocs-sim snmp in v3 mode: informs (acknowledged after the durable alarm change)
        p = run(sys.executable, "-m", "sim.cli", "snmp", "--server", target, "--traps", "20",
                "--v3-user", "informuser", "--auth-key", "authpass123", "--priv-key",
                "privpass123", "--inform", "--interfaces", "5", "--json")
        assert p.returncode == 0, p.stderr
        [rep] = json.loads(p.stdout)
        assert (rep["name"], rep["operations"], rep["errors"]) == (
            "v3 informs acknowledged", 20, 0)
        assert sum(int(a["count"]) for a in alarms(cfg)  # type: ignore[call-overload]
                   if a["resource"] != "ifIndex=7") == 10  # two rounds of 5 downs (ups clear)
    assert (tmp_path / "data" / "snmp_engine_boots").read_text().strip() == "1"


def test_engine_id_and_boots(tmp_path: Path) -> None:
    eid = engine_id_for("ocs-1")
    assert eid[:5] == bytes.fromhex("80001f8804") and eid[5:] == b"ocs-1"
    f = tmp_path / "boots"
    assert [next_boots(f), next_boots(f), next_boots(f)] == [1, 2, 3]


def test_fuzz_v3_feed_never_raises() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from ocs.config import SnmpV3User
    from protocols.snmp.usm import V3Receiver

    r = V3Receiver([SnmpV3User(name="u", auth_key="authpass123", priv_key="privpass123")],
                   engine_id=engine_id_for("fz"), boots=1)
    v3_head = bytes.fromhex("3081") + b"\x60" + bytes.fromhex("020103")

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def feed(tail: bytes) -> None:
        for data in (tail, v3_head + tail):
            note, replies, outcome = r.feed(data, ("127.0.0.1", 9))
            assert note is None and isinstance(outcome, str)
            assert all(isinstance(d, bytes) for d, _ in replies)

    feed()
