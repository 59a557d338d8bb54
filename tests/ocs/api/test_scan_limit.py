"""Scans of every CDR file (KPIs, usage) one at a time: concurrent callers are told to come
back (503 + Retry-After) instead of stacking DuckDB scans against charging's cores."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
from pathlib import Path

import httpx
from tests_support import OCS, admin_healthy, free_tcp_port, init_server, serving

from sim.billing_cmd import generate_period


def test_a_second_scan_meanwhile_is_refused_not_queued(tmp_path: Path) -> None:
    port, admin = free_tcp_port(), free_tcp_port()
    cfg = init_server(tmp_path, f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
                                f'[api]\nlisten = "127.0.0.1:{port}"\n')
    generate_period(tmp_path / "data" / "cdr", 1_500_000,
                    [f"4178{i:07d}" for i in range(1000)])  # ~1 s of DuckDB a report
    token = json.loads(subprocess.run(
        [OCS, "api", "token", "create", "--role", "noc", "--config", str(cfg), "--json"],
        capture_output=True, text=True, check=True).stdout)["token"]
    headers = {"Authorization": f"Bearer {token}"}

    def report(_i: int) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{port}/api/v1/kpis", params={
            "period": "2026-10"}, headers=headers, timeout=120)

    with serving(cfg, tmp_path, lambda: admin_healthy(admin)):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(report, range(4)))
        codes = sorted(r.status_code for r in answers)
        assert codes[0] == 200 and codes[-1] == 503, codes
        busy = next(r for r in answers if r.status_code == 503)
        assert busy.headers["retry-after"] == "2"
        assert busy.headers["content-type"].startswith("application/problem+json")
        done = next(r for r in answers if r.status_code == 200).json()
        assert done["rows"] == 1_500_000
        assert report(0).status_code == 200  # once it is over, the next one runs
