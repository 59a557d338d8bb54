"""``ocs-sim scenario``: the smoke scenario across Gy, RADIUS, SMPP and SNMP against
``ocs serve``, reconciled (--verify) with the simulator's own prices; and the
reconciliation does catch a difference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests_support import CONFIG_DIR, OCS, free_tcp_port, free_udp_port, serving

from ocs.config import load_config
from sim.scenario import Outcome, balances, load_scenario, verify

SMOKE = Path(__file__).resolve().parents[2] / "sim" / "scenarios" / "smoke.toml"


@pytest.fixture
def server_cfg(tmp_path: Path) -> Path:
    text = (CONFIG_DIR / "ocs.toml").read_text()
    for old, new in (('data_dir = "data"', f'data_dir = "{tmp_path / "data"}"'),
                     ("127.0.0.1:3868", f"127.0.0.1:{free_tcp_port()}"),
                     ("127.0.0.1:1812", f"127.0.0.1:{free_udp_port()}"),
                     ("127.0.0.1:1813", f"127.0.0.1:{free_udp_port()}"),
                     ("127.0.0.1:2775", f"127.0.0.1:{free_tcp_port()}"),
                     ("127.0.0.1:1162", f"127.0.0.1:{free_udp_port()}"),
                     ("127.0.0.1:8086", f"127.0.0.1:{free_tcp_port()}"),
                     ("127.0.0.1:8088", f"127.0.0.1:{free_tcp_port()}"),
                     ('log_format = "auto"', 'log_format = "json"')):
        text = text.replace(old, new)
    text = text.replace('listen = "127.0.0.1:9100"', "enabled = false")
    cfg = tmp_path / "ocs.toml"
    cfg.write_text(text)
    (tmp_path / "plans.toml").write_text((CONFIG_DIR / "plans.toml").read_text())
    subprocess.run([OCS, "init", "--config", str(cfg)], check=True, capture_output=True)
    return cfg


def test_smoke_scenario_reconciles(server_cfg: Path) -> None:
    with serving(server_cfg, server_cfg.parent, "smpp_listening"):
        p = subprocess.run([sys.executable, "-m", "sim.cli", "scenario", str(SMOKE),
                            "--config", str(server_cfg), "--verify", "--json"],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        out = json.loads(p.stdout)
        assert out["differences"] == []
        done = {r["name"].split(": ")[1]: r for r in out["reports"]}
        for kind in ("gy_data", "gy_voice", "radius_data", "smpp_sms"):
            assert done[kind]["errors"] == 0 and done[kind]["operations"] > 10, done[kind]
        assert done["charged events"]["operations"] > 300
        # the reconciliation is not a formality: expect a charge that never happened
        sc = load_scenario(SMOKE)
        cfg = load_config(server_cfg)
        now = balances(server_cfg)
        fake = Outcome()
        fake.expected["41781000007"] = 50_000
        diffs = verify(sc, server_cfg, cfg, now, fake, 2_000_000_000)
    assert "41781000007: balance moved 0.0000, expected 0.0500" in diffs
    assert "41781000007: CDRs charge 0.0000, expected 0.0500" in diffs
