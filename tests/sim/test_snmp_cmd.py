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


def test_line_tail_follows_a_file_renamed_as_it_closes(tmp_path: Path) -> None:
    """A stream file renamed .part -> .jsonl is the same file: read on from where it
    was, not again from the start (which, for a big file, stalled the tailer and showed
    as stream latency)."""
    part = tmp_path / "s.part"
    with LineTail(tmp_path, r'"resource":"ifIndex=(\d+)"') as tail:
        part.write_text("".join(f'{{"resource":"ifIndex={i}"}}\n' for i in range(1, 1001)))
        deadline = time.monotonic() + 5
        while len(tail.seen) < 1000 and time.monotonic() < deadline:
            time.sleep(0.01)
        part.rename(tmp_path / "s.jsonl")
        with (tmp_path / "s.jsonl").open("a") as f:
            f.write('{"resource":"ifIndex=1001"}\n')
        while len(tail.seen) < 1001 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
    assert len(tail.seen) == 1001
    assert tail.lines == 1001
