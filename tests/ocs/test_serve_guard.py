"""``ocs serve`` guards its data directory: one server per directory (a second one leaves
with one line and touches nothing), and everything it writes is the owner's only."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from tests_support import admin_healthy, free_tcp_port, init_server, serving

OCS = str(Path(sys.executable).parent / "ocs")

SECTIONS = """
[cdr]
export_interval_s = 0.2
[noc]
[[noc.hooks]]
url = "http://127.0.0.1:9/hook-secret-token"
severities = ["critical"]
[admin]
listen = "127.0.0.1:{admin}"
"""


def _ocs(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OCS, *args, "--config", str(cfg)], capture_output=True, text=True,
                          timeout=60)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def test_second_server_on_the_same_data_dir_leaves_and_touches_nothing(tmp_path: Path) -> None:
    admin = free_tcp_port()
    cfg = init_server(tmp_path, SECTIONS.format(admin=admin))
    data = tmp_path / "data"
    with serving(cfg, tmp_path, lambda: admin_healthy(admin), args=("--workers", "2")):
        before = sorted(p.name for p in (data / "run").iterdir())
        metrics_files = sorted(p.name for p in (data / "run" / "metrics").iterdir())
        assert "writer" in before and metrics_files
        t0 = time.monotonic()
        second = _ocs(cfg, "serve", "--workers", "2")
        assert time.monotonic() - t0 < 10
        assert second.returncode != 0
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another 'ocs serve'" in lines[0], second.stderr
        assert sorted(p.name for p in (data / "run").iterdir()) == before
        assert sorted(p.name for p in (data / "run" / "metrics").iterdir()) == metrics_files
        assert admin_healthy(admin)
        assert _ocs(cfg, "subscriber", "add", "--msisdn", "41790000001", "--plan",
                    "prepaid-basic", "--balance", "1.00").returncode == 0


def test_files_are_the_owners_only_and_hooks_stay_off_the_command_line(
        tmp_path: Path) -> None:
    admin = free_tcp_port()
    cfg = init_server(tmp_path, SECTIONS.format(admin=admin))
    data = tmp_path / "data"
    data.chmod(0o755)  # as an older version left it
    with serving(cfg, tmp_path, lambda: admin_healthy(admin), args=("--workers", "2")) as proc:
        assert _ocs(cfg, "subscriber", "add", "--msisdn", "41790000001", "--plan",
                    "prepaid-basic", "--balance", "1.00").returncode == 0
        ch = _ocs(cfg, "charge", "41790000001", "--service", "sms", "--destination", "4179",
                  "--json")
        assert ch.returncode == 0 and json.loads(ch.stdout)["charged"] == "0.0500"
        assert _ocs(cfg, "cdr", "flush").returncode == 0
        for pid in [proc.pid, *_children(proc.pid)]:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert b"hook-secret-token" not in cmdline, cmdline
        files = [p for p in data.rglob("*") if not p.is_socket()]
        assert any(p.name.endswith(".csv") for p in files)
        assert any(p.parent.name == "metrics" for p in files)
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for p in files:
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode & 0o077 == 0, f"{p}: {oct(mode)}"
    assert os.path.exists(data / "ocs.lmdb")
