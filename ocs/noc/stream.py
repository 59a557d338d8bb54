"""The alarm stream: the alarm journal exported to JSON Lines files
``DATA_DIR/<noc.stream_dir>/alarms_<node>_<UTC start>_<seq>.jsonl``, rotated like CDRs
(same exporter: .part, fsync, rename, then trim; byte-identical after a crash)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ocs.cdr.export import JournalExporter
from ocs.noc.alarms import stream_line
from ocs.store.env import ALARM_JOURNAL, META_ALARM_EXPORT, Store


def alarm_exporter(store: Store, out_dir: Path, node: str, rotate_s: int,
                   rotate_records: int, on_line: Callable[[bytes], None] | None = None,
                   confirm_every_s: float = 0.0) -> JournalExporter:
    """``on_line`` sees every stream line as it is exported (notification hooks)."""
    fmt = stream_line
    if on_line is not None:
        def fmt(raw: bytes) -> bytes:
            line = stream_line(raw)
            on_line(line)
            return line

    return JournalExporter(store, out_dir, node, rotate_s=rotate_s,
                           rotate_records=rotate_records, journal=ALARM_JOURNAL,
                           state_key=META_ALARM_EXPORT, prefix="alarms", suffix=".jsonl",
                           header=b"", format_record=fmt, confirm_every_s=confirm_every_s)
