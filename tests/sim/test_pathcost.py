"""``python -m sim.pathcost``: every path charges what it should, and callgrind counts it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests_support import CONFIG_DIR, REPO, require_tool

from sim.pathcost import PATHS


@pytest.mark.parametrize("path", PATHS)
def test_each_path_runs_its_requests_and_charges_exactly(path: str) -> None:
    out = subprocess.run([sys.executable, "-m", "sim.pathcost", "--run", path, "--ops", "7",
                          "--plans", str(CONFIG_DIR / "plans.toml")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_a_path_that_charges_otherwise_fails_loudly(tmp_path: Path) -> None:
    """The money check inside the child is live: the same requests at twice the data
    rate are refused as a measurement."""
    plans = (CONFIG_DIR / "plans.toml").read_text()
    assert plans.count('price = "0.0100"') >= 1
    (tmp_path / "plans.toml").write_text(plans.replace('price = "0.0100"',
                                                       'price = "0.0200"', 1))
    out = subprocess.run([sys.executable, "-m", "sim.pathcost", "--run", "commit", "--ops",
                          "5", "--plans", str(tmp_path / "plans.toml")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "commit: 5 requests charged 100 micro, not 50" in out.stderr


def test_counts_instructions_per_request() -> None:
    require_tool("valgrind")
    out = subprocess.run([sys.executable, "-m", "sim.pathcost", "commit", "--ops", "40",
                          "--plans", str(CONFIG_DIR / "plans.toml")], cwd=REPO,
                         capture_output=True, text=True, timeout=600, check=True)
    name, figure, *_ = out.stdout.split()
    assert name == "commit" and 50_000 < int(figure.replace(",", "")) < 5_000_000
