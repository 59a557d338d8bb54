"""``ocs-sim nms``: real snmpd agents polled; every poll answered."""

from __future__ import annotations

import json
import subprocess
import sys

from tests_support import require_tool


def test_sim_polls_real_agents() -> None:
    require_tool("snmpd")
    p = subprocess.run([sys.executable, "-m", "sim.cli", "nms", "--elements", "3", "--rounds",
                        "2", "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    (r,) = json.loads(p.stdout)
    assert (r["operations"], r["errors"]) == (6, 0)
