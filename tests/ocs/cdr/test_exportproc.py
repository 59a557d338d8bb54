"""The exporter process as ``ocs serve`` runs it: rows out at once, the journal trimmed
while it runs (between rounds), everything confirmed and trimmed on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from charging_support import charge_sms, sms_store

from ocs.cdr.reader import closed_cdr_files, read_cdr_file
from ocs.store import Store
from ocs.store.env import CDR_JOURNAL


def test_exporter_process_trims_closed_rows_while_running(tmp_path: Path) -> None:
    sms_store(tmp_path / "s", 250)
    conf = {"data_dir": str(tmp_path / "s"), "map_size_mb": 32,
            "cdr_dir": str(tmp_path / "cdr"), "node": "n1", "rotate_s": 3600,
            "rotate_records": 100, "interval_s": 0.2, "log_format": "json",
            "parent_pid": os.getpid()}
    proc = subprocess.Popen([sys.executable, "-m", "ocs.cdr.exportproc"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(conf).encode())
    proc.stdin.close()
    try:
        with Store(tmp_path / "s") as s:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and s.stat(CDR_JOURNAL)["entries"] > 50:
                time.sleep(0.05)
            # two files of 100 closed and their rows gone from the journal; 50 in the .part
            assert s.stat(CDR_JOURNAL)["entries"] == 50
            assert len(closed_cdr_files(tmp_path / "cdr")) == 2
            charge_sms(s, range(250, 260))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with Store(tmp_path / "s") as s:
        assert s.stat(CDR_JOURNAL)["entries"] == 0
    rows = [r.record.record_id for p in closed_cdr_files(tmp_path / "cdr")
            for r in read_cdr_file(p)]
    assert rows == [f"n1-{i}" for i in range(1, 261)]
