"""``ocs-sim nchf`` against ``ocs serve``: every answer as expected, every charge exact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests_support import OCS, free_tcp_port, init_server, serving

from ocs.store import Store
from sim.core import provision


def test_sim_pdu_sessions_are_charged_exactly_at_the_slice_rate(tmp_path: Path) -> None:
    port = free_tcp_port()
    cfg = init_server(tmp_path, f"""
[chf]
listen = "127.0.0.1:{port}"
[admin]
enabled = false
""")
    store = Store(tmp_path / "data")
    provision(store, 20, balance="1.00")
    store.close()
    with serving(cfg, tmp_path, "nchf_listening"):
        p = subprocess.run([sys.executable, "-m", "sim.cli", "nchf", "--server",
                            f"127.0.0.1:{port}", "--sessions", "20", "--updates", "200",
                            "--release", "--sst", "2", "--json", "--connections", "2"],
                           capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    reports = json.loads(p.stdout)
    assert [(r["name"], r["operations"], r["errors"]) for r in reports] == [
        ("create x20", 20, 0), ("update, window 256, 2 conn", 200, 0), ("release x20", 20, 0)]
    for i in (0, 19):
        show = subprocess.run([OCS, "subscriber", "show", f"41770{i:06d}", "--json", "--config",
                               str(cfg)], check=True, capture_output=True, text=True).stdout
        s = json.loads(show)
        # 10 updates + the release of 100 kB each at URLLC's 0.05 EUR/MB
        assert (s["balance"], s["reserved"]) == ("0.9450", "0.0000"), s


def test_a_generator_against_a_dead_port_exits_1_with_one_line() -> None:
    p = subprocess.run([sys.executable, "-m", "sim.cli", "radius", "--server",
                        f"127.0.0.1:{free_tcp_port()}", "--sessions", "2", "--interims", "2",
                        "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        p.stderr.strip()] and "no answer from 127.0.0.1:" in p.stderr
