"""The config read against the plans at start-up (``ocs.sanity``), and the warning line
``ocs serve`` logs for it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests_support import free_udp_port, init_server, plans_by_id, serving

from ocs.config import Config, RadiusClient, RadiusConfig, SmppAccount, SmppConfig
from ocs.sanity import findings


def test_radius_without_a_rating_group_against_group_scoped_rates() -> None:
    plans = plans_by_id()
    cfg = Config(radius=RadiusConfig(clients=(RadiusClient(address="127.0.0.1", secret="s"),)))
    [line] = findings(cfg, plans)
    assert "RADIUS data sessions (rated with no rating group)" in line
    assert "plan(s) prepaid-basic are" in line  # the others have a data rate for any group
    assert "set [radius] rating_group to a group their data rates price (10" in line
    ok = Config(radius=RadiusConfig(clients=(RadiusClient(address="127.0.0.1", secret="s"),),
                                    rating_group=10))
    assert findings(ok, plans) == []
    odd = Config(radius=RadiusConfig(clients=(RadiusClient(address="127.0.0.1", secret="s"),),
                                     rating_group=77))
    assert "rated under rating group 77" in findings(odd, plans)[0]


def test_other_findings() -> None:
    plans = plans_by_id()
    assert findings(Config(), {}) == [
        "no plans are loaded: every charge is refused; load some with 'ocs plan load FILE'"]
    no_clients = findings(Config(radius=RadiusConfig(rating_group=10)), plans)
    assert any("[[radius.clients]]" in f for f in no_clients)
    smpp = findings(Config(smpp=SmppConfig(accounts=(SmppAccount(system_id="e",
                                                                 password="p"),))), plans)
    assert any("[[smpp.routes]]" in f for f in smpp)
    assert any("plan(s) wifi-hourly" in f and "sms rate" in f for f in smpp)


def test_serve_logs_one_warning_line_per_finding(tmp_path: Path) -> None:
    cfg = init_server(tmp_path, f"""
[radius]
auth_listen = "127.0.0.1:{free_udp_port()}"
acct_listen = "127.0.0.1:{free_udp_port()}"
[[radius.clients]]
address = "127.0.0.1"
secret = "testing123"
[admin]
enabled = false
""")
    with serving(cfg, tmp_path, "radius_listening"):
        time.sleep(0.2)
    lines = [json.loads(ln) for ln in (tmp_path / "serve.log").read_text().splitlines()
             if '"config_sanity"' in ln]
    assert len(lines) == 1 and lines[0]["level"] == "warning"
    assert "[radius] rating_group" in lines[0]["problem"]
