"""The benchmark report: results JSON, PNG plots and a Markdown table.

``make bench`` writes ``bench/results/<UTC date>.json`` and, beside it,
``<UTC date>/`` with ``throughput.png`` (operations per second of every measured run),
``latency.png`` (p50 / p99 per run that measured latency), ``peers.png`` (ours against
FreeRADIUS and snmptrapd in the same run) and ``report.md`` (the table BENCHMARKS.md
keeps).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import platform
from pathlib import Path
from typing import Any

from sim.report import Report, cpu_per_op


def _fmt_rate(r: Report) -> str:
    return f"{r.throughput:,.0f}" if r.seconds > 0 and r.operations else ""


def markdown(reports: list[Report], when: str) -> str:
    lines = [f"Run {when} on {platform.machine()} ({_cores()} cores), "
             f"Python {platform.python_version()}.", "",
             "| part | benchmark | ops/s | p50 ms | p99 ms | CPU us/op (cores) | errors | "
             "result | target | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---|---|---|"]
    for r in reports:
        lat = r.latencies_ms
        p50 = f"{lat['p50']:.1f}" if lat.get("p50") == lat.get("p50") and "p50" in lat else ""
        p99 = f"{lat['p99']:.1f}" if lat.get("p99") == lat.get("p99") and "p99" in lat else ""
        verdict = "" if r.passed is None else ("PASS" if r.passed else "**MISS**")
        lines.append(f"| {r.part} | {r.name} | {_fmt_rate(r)} | {p50} | {p99} | "
                     f"{cpu_per_op(r)} | {r.errors} | "
                     f"{r.extra.get('result', '')} | {r.target} | {verdict} |")
    return "\n".join(lines) + "\n"


def _cores() -> int:
    import os

    return os.cpu_count() or 1


def plots(reports: list[Report], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    made = []
    runs = [r for r in reports if r.seconds > 0 and r.operations and r.part != "billing"]
    if runs:
        fig, ax = plt.subplots(figsize=(10, 0.35 * len(runs) + 1.5))
        ax.barh([f"{r.part}: {r.name}"[:70] for r in runs], [r.throughput for r in runs],
                color=["tab:green" if r.passed else "tab:red" if r.passed is False
                       else "tab:blue" for r in runs])
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("operations per second (log)")
        ax.set_title("Throughput (green: target met, red: missed)")
        fig.tight_layout()
        made.append(out / "throughput.png")
        fig.savefig(made[-1], dpi=100)
        plt.close(fig)
    timed = [r for r in reports if "p99" in r.latencies_ms
             and r.latencies_ms["p99"] == r.latencies_ms["p99"]]
    if timed:
        fig, ax = plt.subplots(figsize=(10, 0.35 * len(timed) + 1.5))
        labels = [f"{r.part}: {r.name}"[:70] for r in timed]
        ys = range(len(timed))
        ax.barh([y - 0.2 for y in ys], [r.latencies_ms["p50"] for r in timed], height=0.4,
                label="p50")
        ax.barh([y + 0.2 for y in ys], [r.latencies_ms["p99"] for r in timed], height=0.4,
                label="p99")
        ax.set_yticks(list(ys), labels)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("milliseconds (log)")
        ax.set_title("Latency percentiles per run")
        ax.legend()
        fig.tight_layout()
        made.append(out / "latency.png")
        fig.savefig(made[-1], dpi=100)
        plt.close(fig)
    made += _timeline_plot(plt, reports, out)
    pairs = _peer_pairs(reports)
    if pairs:
        fig, ax = plt.subplots(figsize=(8, 3))
        names = [p[0] for p in pairs]
        ax.bar([i - 0.2 for i in range(len(pairs))], [p[1] for p in pairs], width=0.4,
               label="ours")
        ax.bar([i + 0.2 for i in range(len(pairs))], [p[2] for p in pairs], width=0.4,
               label="peer")
        ax.set_xticks(range(len(pairs)), names)
        ax.set_ylabel("RADIUS: requests/s; SNMP: traps taken")
        ax.set_title("Ours against the reference peers, same generator, same run")
        ax.legend()
        fig.tight_layout()
        made.append(out / "peers.png")
        fig.savefig(made[-1], dpi=100)
        plt.close(fig)
    return made


def _timeline_plot(plt: Any, reports: list[Report], out: Path) -> list[Path]:
    """Throughput over time: one panel per part, a line per run that kept its timeline."""
    series = [r for r in reports if len(r.extra.get("timeline", {}).get("per_s", [])) >= 3]
    parts = sorted({r.part for r in series})
    if not parts:
        return []
    fig, axes = plt.subplots(len(parts), 1, figsize=(10, 2.6 * len(parts)), squeeze=False)
    for ax, part in zip(axes[:, 0], parts, strict=True):
        for r in series:
            if r.part != part:
                continue
            tl = r.extra["timeline"]
            xs = [(i + 0.5) * tl["bucket_s"] for i in range(len(tl["per_s"]))]
            ax.plot(xs, tl["per_s"], label=r.name[:60], linewidth=1)
        ax.set_title(f"{part}: completions per second over the run", fontsize=9)
        ax.set_ylabel("ops/s")
        ax.legend(fontsize=6, loc="best")
    axes[-1, 0].set_xlabel("seconds since the run started")
    fig.tight_layout()
    path = out / "timeline.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def _peer_pairs(reports: list[Report]) -> list[tuple[str, float, float]]:
    by = {(r.part, r.name): r for r in reports}
    out = []
    ours = by.get(("radius", "Interim-Update, window 512"))
    peer = next((r for (p, n), r in by.items() if p == "radius" and "FreeRADIUS" in n), None)
    if ours and peer:
        out.append(("RADIUS vs FreeRADIUS 3.2", ours.throughput, peer.throughput))
    ours_s = next((r for (p, n), r in by.items() if p == "snmp" and n.startswith("ours,")), None)
    peer_s = next((r for (p, n), r in by.items() if p == "snmp" and n.startswith("snmptrapd,")),
                  None)
    if ours_s and peer_s:  # traps taken out of the same offered burst
        out.append(("SNMP traps taken vs snmptrapd", float(ours_s.operations),
                    float(peer_s.operations)))
    return out


def write_results(reports: list[Report], root: Path) -> Path:
    """Write JSON, plots and report.md under ``root``; returns the JSON path."""
    now = datetime.datetime.now(datetime.UTC)
    stamp = now.strftime("%Y-%m-%dT%H%M%SZ")
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{stamp}.json"
    doc: dict[str, Any] = {"run_at": now.isoformat(timespec="seconds"),
                           "machine": {"cores": _cores(), "arch": platform.machine(),
                                       "python": platform.python_version()},
                           "reports": [r.to_json() for r in reports]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    extra = root / stamp
    with contextlib.suppress(ImportError):  # matplotlib comes with `make bench`; a bare
        plots(reports, extra)  # run goes on without plots
    extra.mkdir(parents=True, exist_ok=True)
    (extra / "report.md").write_text(markdown(reports, now.isoformat(timespec="seconds")))
    return path


def load_results(path: Path) -> list[Report]:
    doc = json.loads(path.read_text())
    return [Report.from_json(d) for d in doc["reports"]]


if __name__ == "__main__":  # python -m sim.benchreport RESULTS.json: redraw its plots
    import sys

    src = Path(sys.argv[1])
    reps = load_results(src)
    plots(reps, src.with_suffix(""))
    when = json.loads(src.read_text())["run_at"]
    (src.with_suffix("") / "report.md").write_text(markdown(reps, when))
