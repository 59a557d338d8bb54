"""Alarm floods against a running ``ocs serve`` with the shipped NOC defaults: 20,000
linkDowns with distinct ifIndex from one source (v2c, community public), and v1 traps that
claim a new agent address each. Storm control (on by default, keyed by the datagram's
source) and the per-element cap keep the active alarms and the store small."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from pyasn1.codec.ber import encoder
from pysnmp.proto import api
from tests_support import OCS, free_udp_port, init_server, serving

from protocols.snmp.codec import encode_trap_v2c

LINK_DOWN = "1.3.6.1.6.3.1.1.5.3"
IF_INDEX = "1.3.6.1.2.1.2.2.1.1"


def _alarms(cfg: Path) -> list[dict[str, object]]:
    p = subprocess.run([OCS, "alarms", "list", "--active", "--json", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60, check=True)
    return list(json.loads(p.stdout))


def _v1_link_down(agent: str, index: int) -> bytes:
    p = api.PROTOCOL_MODULES[api.SNMP_VERSION_1]
    pdu = p.TrapPDU()
    p.apiTrapPDU.set_defaults(pdu)
    p.apiTrapPDU.set_enterprise(pdu, (1, 3, 6, 1, 4, 1, 99999))
    p.apiTrapPDU.set_agent_address(pdu, p.IpAddress(agent))
    p.apiTrapPDU.set_generic_trap(pdu, 2)
    p.apiTrapPDU.set_varbinds(pdu, [((1, 3, 6, 1, 2, 1, 2, 2, 1, 1, index), p.Integer(index))])
    msg = p.Message()
    p.apiMessage.set_defaults(msg)
    p.apiMessage.set_community(msg, "public")
    p.apiMessage.set_pdu(msg, pdu)
    return bytes(encoder.encode(msg))


def _settled(cfg: Path) -> list[dict[str, object]]:
    """The active alarms once they stop changing."""
    last: list[dict[str, object]] = []
    for _ in range(40):
        time.sleep(0.5)
        now = _alarms(cfg)
        if now and len(now) == len(last):
            return now
        last = now
    return last


def test_link_down_flood_and_spoofed_agents_stay_bounded(tmp_path: Path) -> None:
    port = free_udp_port()
    cfg = init_server(tmp_path, f"""
[snmp]
trap_listen = "127.0.0.1:{port}"
[noc]
min_free_disk_mb = 0
[admin]
enabled = false
""")
    data = tmp_path / "data" / "ocs.lmdb"
    with serving(cfg, tmp_path, "snmp_listening"):
        size0 = data.stat().st_size
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        for i in range(1, 20_001):
            s.sendto(encode_trap_v2c(b"public", i, 100, LINK_DOWN,
                                     [(f"{IF_INDEX}.{i}", i)]), ("127.0.0.1", port))
            if i % 500 == 0:
                time.sleep(0.01)
        active = _settled(cfg)
        assert len(active) <= 1000 + 2, len(active)
        storms = [a for a in active if a["resource"] == "notifications"]
        assert [a["element"] for a in storms] == ["127.0.0.1"]
        # v1 traps claiming a new agent address each, from the same source: one storm
        for i in range(1, 3_001):
            s.sendto(_v1_link_down(f"127.9.{i // 250}.{i % 250 + 1}", i), ("127.0.0.1", port))
            if i % 500 == 0:
                time.sleep(0.01)
        after = _settled(cfg)
        spoofed = {a["element"] for a in after if str(a["element"]).startswith("127.9.")}
        assert len(spoofed) <= 600, len(spoofed)  # not one element per forged address
        assert data.stat().st_size - size0 < 16 << 20
