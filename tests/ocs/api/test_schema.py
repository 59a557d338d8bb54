"""Every route of the OpenAPI document, exercised by schemathesis (property-based: valid
and invalid parameters and bodies) against ``ocs serve``: no answer is a 500, every error
is a problem document, and the money in the store adds up afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from tests_support import OCS, admin_healthy, free_tcp_port, init_server, serving

ST = str(Path(sys.executable).parent / "schemathesis")


def _cli(cfg: Path, *args: str) -> str:
    p = subprocess.run([OCS, *args, "--config", str(cfg)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_on_any_route(tmp_path: Path) -> None:
    port, admin = free_tcp_port(), free_tcp_port()
    cfg = init_server(tmp_path, f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
                                f'[api]\nlisten = "127.0.0.1:{port}"\n')
    for i in range(3):
        _cli(cfg, "subscriber", "add", "--msisdn", f"4917000000{i:02d}", "--plan",
             "prepaid-basic", "--balance", "5.00")
    token = json.loads(_cli(cfg, "api", "token", "create", "--role", "admin",
                            "--json"))["token"]
    # existing resources for the path parameters (else most cases only reach a 404)
    (tmp_path / "schemathesis.toml").write_text(
        '[parameters]\n"path.msisdn" = "491700000001"\n"path.plan_id" = "prepaid-basic"\n')
    with serving(cfg, tmp_path, lambda: admin_healthy(admin)):
        p = subprocess.run(
            [ST, "run", f"http://127.0.0.1:{port}/api/v1/openapi.json",
             "--checks", "not_a_server_error,content_type_conformance",
             "-H", f"Authorization: Bearer {token}", "--max-examples", "30",
             "--phases", "examples,coverage,fuzzing", "--seed", "7", "--workers", "2",
             "--request-timeout", "20", "--suppress-health-check", "all"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:]
        print(p.stdout[-3000:])
        listed = json.loads(_cli(cfg, "subscriber", "list", "--json"))
    log = (tmp_path / "serve.log").read_text()
    assert '"api_error"' not in log
    # whatever was created and topped up, the ledger and the balances agree
    for s in listed:
        hist = json.loads(_cli(cfg, "subscriber", "history", s["msisdn"], "--json"))
        credited = sum(Decimal(h["amount"]) for h in hist)
        assert credited == Decimal(s["balance"]), (s, hist)
