"""The bench's line tailer: when each ifIndex first shows up in a growing file."""

from __future__ import annotations

import time
from pathlib import Path

from sim.snmp_cmd import LineTail


def test_line_tail_sees_new_lines_only(tmp_path: Path) -> None:
    old = tmp_path / "a.jsonl"
    old.write_text('{"resource":"ifIndex=1"}\n')  # there before: not ours
    sent = [time.perf_counter(), time.perf_counter()]
    with LineTail(tmp_path, r'"resource":"ifIndex=(\d+)"') as tail:
        with (tmp_path / "b.part").open("a") as f:
            f.write('{"resource":"ifIndex=2"}\n{"resource":"ifIn')
            f.flush()
            time.sleep(0.05)
            f.write('dex=1"}\n')
        deadline = time.monotonic() + 5
        while len(tail.seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert set(tail.seen) == {1, 2}
    lat = tail.latencies(sent)
    assert len(lat) == 2 and all(0 < x < 5 for x in lat)
    assert tail.seen[1] > tail.seen[2]  # the split line counted once it was whole
