"""The benchmark report files: JSON with every run, PNG plots, the Markdown table."""

from __future__ import annotations

import json
from pathlib import Path

from sim.benchreport import markdown, write_results
from sim.report import Report, Timeline


def test_results_json_plots_and_table(tmp_path: Path) -> None:
    reps = [
        Report.from_latencies("radius", "Interim-Update, window 512", [0.001, 0.002, 0.004],
                              0, 0.5, target="x", passed=True),
        Report("radius", "FreeRADIUS 3.2 (detail), same load", 3, 0, 0.25,
               extra={"cpu_us_per_op": 41.6, "cpu_cores": 0.98}),
        Report("snmp", "ours, 100 traps as fast as sent", 90, 10, 0.1),
        Report("snmp", "snmptrapd, 100 traps as fast as sent", 60, 40, 0.1),
        Report("core", "store size", 0, 0, 0.0, target="<= 1 GiB", passed=False,
               extra={"result": "2 GiB"}),
        Report("diameter", "CCR-U", 30, 0, 3.0,
               extra={"timeline": {"bucket_s": 1.0, "per_s": [10.0, 12.0, 8.0]}}),
    ]
    path = write_results(reps, tmp_path)
    doc = json.loads(path.read_text())
    assert [r["name"] for r in doc["reports"]] == [r.name for r in reps]
    assert doc["reports"][0]["throughput_per_s"] == 6.0
    out = tmp_path / path.stem
    for name in ("throughput.png", "latency.png", "peers.png", "timeline.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    table = (out / "report.md").read_text()
    assert table == markdown(reps, table.split(" on ")[0].removeprefix("Run "))
    assert "| core | store size |  |  |  |  | 0 | 2 GiB | <= 1 GiB | **MISS** |" in table
    assert "| radius | Interim-Update, window 512 | 6 | 2.0 | 4.0 |  | 0 |  | x | PASS |" in table
    # the server's CPU per request (and the cores it kept busy), where measured
    assert "| radius | FreeRADIUS 3.2 (detail), same load | 12 |  |  | 42 (0.98) | 0 |" in table
    # a generator's run carries its window on the shared monotonic clock
    tl = Timeline()
    timed = Report.from_latencies("radius", "x", [0.001], 0, 0.5, tl)
    assert timed.extra["window"] == [round(tl.start, 6), round(tl.start + 0.5, 6)]


def test_timeline_counts_completions_per_second_in_buckets() -> None:
    tl = Timeline()
    t0 = tl.start
    tl.done = [t0 + 0.1, t0 + 0.2, t0 + 0.3, t0 + 10.4, t0 + 29.9, t0 + 30.0]
    s = tl.series(points=3)
    assert s["bucket_s"] == 10.0
    assert s["per_s"] == [0.3, 0.1, 0.1, 0.1]  # 3, 1, 1 (+ the one at exactly 30 s)
    assert Timeline().series() == {"bucket_s": 0.0, "per_s": []}
    short = Timeline()
    short.done = [short.start + 0.01 * i for i in range(10)]
    assert short.series()["bucket_s"] == 0.25  # no bucket shorter than a quarter second
