"""The CDR directory on a small tmpfs fills up under ``ocs serve``: a critical alarm, new
charging refused with "unable to comply" (Diameter 5012) instead of losing records, and
everything back — charging, the alarm cleared, every CDR written — once there is room."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from tests_support import OCS, free_tcp_port, init_server, serving

from ocs.store import Store
from protocols.diameter.codec import Cmd
from sim.core import provision
from sim.diameter_cmd import GyLoad, result_codes


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        if os.environ.get("OCS_REQUIRE_INTEROP") == "1":
            pytest.fail(f"cannot mount a tmpfs for the disk-full test: {p.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")


async def debits(port: int, first: int, count: int) -> list[int]:
    load = GyLoad("127.0.0.1", port, connections=1, realm="test.realm")
    await load.open()
    codes = []
    for i in range(first, first + count):
        ans = await load._send(load.conns[0], Cmd.CCR, 4, load.ccr(
            f"full;{i}", 4, 0, "41770000000", event_units=1))
        codes.append(result_codes(ans)[0])
    load.close()
    return codes


def test_cdr_disk_full_pauses_charging_and_recovers(tmp_path: Path) -> None:
    cdr = tmp_path / "cdr"
    _mount_tmpfs(cdr, "4m")
    try:
        port = free_tcp_port()
        cfg = init_server(tmp_path, f"""
[diameter]
listen = "127.0.0.1:{port}"
origin_host = "ocs.test.realm"
origin_realm = "test.realm"
[cdr]
dir = "{cdr}"
export_interval_s = 0.1
min_free_mb = 1
[noc]
health_interval_s = 0.2
min_free_disk_mb = 0
[admin]
enabled = false
""", name="full")
        with Store(tmp_path / "data") as store:
            provision(store, 1, balance="100.00")

        def alarms() -> list[dict[str, object]]:
            out = subprocess.run([OCS, "alarms", "list", "--json", "--config", str(cfg)],
                                 check=True, capture_output=True, text=True).stdout
            return [a for a in json.loads(out) if a["resource"] == "cdr"]

        def wait(pred) -> None:  # type: ignore[no-untyped-def]
            deadline = time.monotonic() + 15
            while not pred():
                assert time.monotonic() < deadline, alarms()
                time.sleep(0.1)

        filler = cdr / "filler"
        with serving(cfg, tmp_path, "diameter_listening"):
            assert asyncio.run(debits(port, 0, 5)) == [2001] * 5
            # fill the CDR file system, leaving less than the 1 MiB threshold
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k", "count=60"],
                           check=True, capture_output=True)
            wait(lambda: any(a["perceived_severity"] == "critical" for a in alarms()))
            refused = asyncio.run(debits(port, 5, 5))
            assert refused == [5012] * 5  # unable to comply: nothing charged, nothing lost
            filler.unlink()
            wait(lambda: all(a["perceived_severity"] == "cleared" for a in alarms()))
            assert asyncio.run(debits(port, 10, 5)) == [2001] * 5
        show = json.loads(subprocess.run([OCS, "subscriber", "show", "41770000000", "--json",
                                          "--config", str(cfg)], check=True,
                                         capture_output=True, text=True).stdout)
        assert show["balance"] == "98.5000"  # 10 SMS at 0.15, the refused five not charged
        rows = [line for f in sorted(cdr.glob("cdr_full_*.csv"))
                for line in f.read_text().splitlines()[1:]]
        assert sorted(r.split(",")[1] for r in rows) == sorted(
            [f"full;{i}" for i in range(5)] + [f"full;{i}" for i in range(10, 15)])
    finally:
        subprocess.run(["umount", str(cdr)], capture_output=True)
