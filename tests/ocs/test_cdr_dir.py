"""An unwritable CDR directory (``chattr +i``) under a running ``ocs serve``: charging goes
on and nothing is lost, but the operator is told: a critical alarm, /healthz degraded, a
true ``ocs_cdr_pending`` gauge, and ``ocs cdr flush`` fails with one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from tests_support import OCS, admin_get, free_tcp_port, init_server, metric, serving


def _ocs(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OCS, *args, "--config", str(cfg)], capture_output=True, text=True,
                          timeout=60)


def _wait(pred, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _cdr_alarm(cfg: Path) -> str:
    alarms = json.loads(_ocs(cfg, "alarms", "list", "--json").stdout)
    found = [a for a in alarms if a["resource"] == "cdr-dir"]
    return str(found[0]["perceived_severity"]) if found else ""


def test_unwritable_cdr_dir_is_reported_and_nothing_is_lost(tmp_path: Path) -> None:
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.fail("chattr (e2fsprogs) is needed to make a directory immutable")
    admin = free_tcp_port()
    cfg = init_server(tmp_path, f"""
[cdr]
export_interval_s = 0.2
[noc]
health_interval_s = 0.5
min_free_disk_mb = 0
[admin]
listen = "127.0.0.1:{admin}"
""")
    assert _ocs(cfg, "subscriber", "add", "--msisdn", "41790000001", "--plan",
                "prepaid-basic", "--balance", "1.00").returncode == 0
    cdr = tmp_path / "data" / "cdr"

    def healthz() -> dict[str, object]:
        return dict(json.loads(admin_get(admin, "/healthz")))

    with serving(cfg, tmp_path, lambda: healthz()["status"] == "ok"):
        _wait(cdr.exists)
        subprocess.run([chattr, "+i", str(cdr)], check=True)
        try:
            ch = _ocs(cfg, "charge", "41790000001", "--service", "sms", "--destination",
                      "4179", "--json")
            assert ch.returncode == 0 and json.loads(ch.stdout)["charged"] == "0.0500"
            _wait(lambda: _cdr_alarm(cfg) == "critical")
            h = healthz()
            assert h["status"] == "degraded" and "cdr_problem" in h
            _wait(lambda: metric(admin, "ocs_cdr_pending") >= 1)
            flush = _ocs(cfg, "cdr", "flush")
            assert flush.returncode != 0 and "Traceback" not in flush.stderr
            assert len(flush.stderr.strip().splitlines()) == 1, flush.stderr
        finally:
            subprocess.run([chattr, "-i", str(cdr)], check=True)
        _wait(lambda: _cdr_alarm(cfg) == "cleared")
        _wait(lambda: healthz()["status"] == "ok")
        assert _ocs(cfg, "cdr", "flush").returncode == 0
        rows = [r for f in cdr.glob("cdr_*.csv") for r in f.read_text().splitlines()[1:]]
        assert len(rows) == 1 and ",0.050000,EUR," in rows[0]
        _wait(lambda: metric(admin, "ocs_cdr_pending") == 0)
