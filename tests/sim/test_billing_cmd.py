"""The billing bench's CDR generator writes files the readers take (its rows were two,
then three, columns short of the header once CDRs grew the 5G and plan version columns)."""

from __future__ import annotations

from pathlib import Path

from ocs.cdr.reader import read_cdr_file
from sim.billing_cmd import generate_period


def test_generated_files_read_back(tmp_path: Path) -> None:
    generate_period(tmp_path, 3_000, ["41790000001", "41790000002"], rows_per_file=1_000)
    rows = [r.record for p in sorted(tmp_path.glob("*.csv")) for r in read_cdr_file(p)]
    assert len(rows) == 3_000
    assert {r.service for r in rows} == {"voice", "sms", "data"}
    assert sum(r.charge for r in rows) == 1_000 * (50_000 + 50_000 + 3_000)
