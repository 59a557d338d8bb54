"""The closed CDR files as one table, read by DuckDB (in parallel, in C++): for the KPI
report, the Parquet export and one subscriber's history.

Every column is read as text as written (files of older releases, without the last
columns, read them as NULL), then typed where used: money as ``DECIMAL(18,6)`` in SQL or
through :func:`ocs.cdr.reader.record_of` in Python, never as a float.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ocs.cdr.fileformat import COLUMNS, header_ok
from ocs.cdr.reader import CdrFormatError, closed_cdr_files, record_of
from ocs.store.records import CdrRecord

if TYPE_CHECKING:
    import duckdb

MEMORY_LIMIT = "512MB"
"""DuckDB's buffers and hash tables at most (it spills beyond): 10M rows read in ~7 s
with a peak RSS of ~620 MB here, where an unlimited DuckDB took 1.5 GB."""


def sql_path(p: Path) -> str:
    """``p`` inside single quotes in SQL."""
    return str(p).replace("'", "''")


def check_headers(files: list[Path]) -> None:
    for f in files:
        with f.open(encoding="utf-8", newline="") as fh:
            first = fh.readline().rstrip("\r\n").split(",")
        if not header_ok(first):
            raise CdrFormatError(f"{f}:1: not a CDR file (header)")


def connect(files: list[Path]) -> duckdb.DuckDBPyConnection:
    """A connection with the view ``cdr`` over ``files`` (their headers checked)."""
    import duckdb  # imported when used: every `ocs` command imports this module

    check_headers(files)
    con = duckdb.connect(":memory:", config={
        "threads": os.cpu_count() or 2, "memory_limit": MEMORY_LIMIT,
        "temp_directory": tempfile.gettempdir()})  # (not ".tmp" under the server's cwd)
    con.execute("SET enable_progress_bar = false")  # (it draws one on a terminal)
    names = ", ".join(f"'{sql_path(f)}'" for f in files)
    con.execute(f"CREATE VIEW cdr AS SELECT * FROM read_csv([{names}], header = true, "
                "union_by_name = true, all_varchar = true, quote = '\"', escape = '\"', "
                "strict_mode = true)")
    return con


def subscriber_records(cdr_dir: Path, msisdn: str) -> list[CdrRecord]:
    """One subscriber's CDRs in the closed files, by end time (then record id)."""
    files = closed_cdr_files(cdr_dir)
    if not files:
        return []
    con = connect(files)
    import duckdb

    try:
        rows = con.execute(f"SELECT {', '.join(COLUMNS)} FROM cdr WHERE msisdn = $m "
                           "ORDER BY end_time, record_id", {"m": msisdn}).fetchall()
    except duckdb.Error as exc:
        raise CdrFormatError(f"{cdr_dir}: {exc}") from None
    finally:
        con.close()
    try:
        return [record_of(["" if v is None else v for v in r], versioned=r[25] is not None)
                for r in rows]
    except ValueError as exc:
        raise CdrFormatError(f"{cdr_dir}: a row of {msisdn}: {exc}") from None
