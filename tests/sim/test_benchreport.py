"""The benchmark report files: JSON with every run, PNG plots, the Markdown table."""

from __future__ import annotations

import json
from pathlib import Path

from sim.benchreport import markdown, write_results
from sim.report import Report


def test_results_json_plots_and_table(tmp_path: Path) -> None:
    reps = [
        Report.from_latencies("radius", "Interim-Update, window 512", [0.001, 0.002, 0.004],
                              0, 0.5, target="x", passed=True),
        Report("radius", "FreeRADIUS 3.2 (detail), same load", 3, 0, 0.25),
        Report("snmp", "ours, 100 traps as fast as sent", 90, 10, 0.1),
        Report("snmp", "snmptrapd, 100 traps as fast as sent", 60, 40, 0.1),
        Report("core", "store size", 0, 0, 0.0, target="<= 1 GiB", passed=False,
               extra={"result": "2 GiB"}),
    ]
    path = write_results(reps, tmp_path)
    doc = json.loads(path.read_text())
    assert [r["name"] for r in doc["reports"]] == [r.name for r in reps]
    assert doc["reports"][0]["throughput_per_s"] == 6.0
    out = tmp_path / path.stem
    for name in ("throughput.png", "latency.png", "peers.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    table = (out / "report.md").read_text()
    assert table == markdown(reps, table.split(" on ")[0].removeprefix("Run "))
    assert "| core | store size |  |  |  | 0 | 2 GiB | <= 1 GiB | **MISS** |" in table
    assert "| radius | Interim-Update, window 512 | 6 | 2.0 | 4.0 | 0 |  | x | PASS |" in table
