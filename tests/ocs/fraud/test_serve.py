"""Fraud control end to end: ``ocs serve`` with Diameter and SMPP, python-diameter's Gy
client and smpplib; the operator's side through ``ocs fraud cases``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests_support import OCS, Smsc, free_tcp_port, init_server, serving

CLIENT = Path(__file__).resolve().parents[2] / "protocols" / "diameter" / "gy_client.py"


def test_high_risk_roaming_blocks_and_tears_down(tmp_path: Path) -> None:
    dport, sport = free_tcp_port(), free_tcp_port()
    cfg = init_server(tmp_path, f"""
home_networks = ["22801"]
[charging]
reaper_interval_s = 0.5
[diameter]
listen = "127.0.0.1:{dport}"
origin_host = "ocs.test.realm"
origin_realm = "test.realm"
[smpp]
listen = "127.0.0.1:{sport}"
[[smpp.accounts]]
system_id = "esme"
password = "secret"
[[smpp.routes]]
prefix = "41"
system_id = "esme"
[fraud]
high_risk_networks = ["99901"]
[admin]
enabled = false
""")
    smsc = Smsc(tmp_path, cfg, sport)
    smsc.ocs("subscriber", "add", "--msisdn", "41780000001", "--plan", "prepaid-basic",
             "--balance", "20.00")
    base = {**os.environ, "PEER": "ocs.test.realm", "MSISDN": "41780000001"}
    with serving(cfg, tmp_path, "smpp_listening"):
        home = subprocess.Popen([sys.executable, str(CLIENT), "127.0.0.1", str(dport), "I"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env={**base, "SID": "pgw;home", "RAR_WAIT": "20"})
        try:
            assert home.stdout is not None
            assert home.stdout.readline().startswith("CCA 2001 1 0 [(10, 2001")
            away = subprocess.run([sys.executable, str(CLIENT), "127.0.0.1", str(dport), "I"],
                                  capture_output=True, text=True, timeout=30,
                                  env={**base, "SID": "pgw;away", "VISITED": "99901"})
            assert "CCA 2001 1 0 [(10, 4010" in away.stdout, away.stdout
            # the live home session gets a RAR (its CCR-U will then be refused)
            assert home.stdout.readline().strip() == "SERVER-REQUEST 258"
        finally:
            home.wait(30)
        # SMPP submits from the suspended subscriber are refused
        before = smsc.balance("41780000001")
        esme = smsc.esme()
        try:
            esme.send_message(source_addr="41780000001", destination_addr="41791112233",
                              short_message=b"hi", source_addr_ton=1, dest_addr_ton=1)
            assert esme.read_pdu().status == 0x65  # ESME_RX_P_APPN: rejected by the application
        finally:
            esme.disconnect()
        assert smsc.balance("41780000001") == before
        listed = json.loads(smsc.ocs("fraud", "cases", "list", "--json"))
        [case] = listed
        assert (case["msisdn"], case["action"], case["measure"], case["status"]) == (
            "41780000001", "block", "suspended", "open")
        assert sorted(i["name"] for i in case["indicators"]) == [
            "distant_sessions", "high_risk_network"]
        shown = smsc.ocs("fraud", "cases", "show", str(case["case_id"]))
        assert "high_risk_network" in shown and "99901" in shown
        assert json.loads(smsc.ocs("subscriber", "show", "41780000001", "--json"))[
            "status"] == "suspended"
        out = smsc.ocs("fraud", "cases", "resolve", str(case["case_id"]), "--reinstate",
                       "--note", "customer abroad, confirmed")
        assert "reinstated" in out
        assert json.loads(smsc.ocs("subscriber", "show", "41780000001", "--json"))[
            "status"] == "active"
    bad = subprocess.run([OCS, "fraud", "cases", "resolve", "99", "--config", str(cfg)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no fraud case 99" in bad.stderr
