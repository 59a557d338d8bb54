"""One subscriber's CDRs picked out by DuckDB, against our own CSV reader as the oracle,
over files of every width (a quoted session id with a comma and a quote too)."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

from ocs.cdr.fileformat import COLUMNS, FIRST_COLUMNS, HEADER, format_row
from ocs.cdr.query import subscriber_records
from ocs.cdr.reader import read_cdr_files
from ocs.store.records import CdrRecord


def make(n: int, rng: random.Random) -> CdrRecord:
    data = rng.random() < 0.5
    return CdrRecord(
        record_id=f"ocs-1-{n}", session_id=rng.choice([f"s{n}", f's,"{n}"']),
        msisdn=rng.choice(["41790000001", "41790000002", "41790000003"]), imsi="",
        service="data" if data else "voice", rating_group=10 if data else None,
        destination="" if data else "41441234567", start_time=1_790_000_000 + n,
        end_time=1_790_000_000 + n + rng.randrange(0, 5), duration_s=rng.randrange(100),
        bytes_in=rng.randrange(10**6), bytes_out=rng.randrange(10**6),
        units=rng.randrange(10**6), charge=rng.randrange(-10**6, 10**7), currency="EUR",
        plan_id="p", rate_id="r", roaming=rng.random() < 0.2, visited_network="",
        protocol="diameter", result=rng.choice(["final", "event", "refund", "rerate"]),
        allowance_units=rng.randrange(3), characters=rng.randrange(3),
        slice=rng.choice(["", "1-000001"]), dnn=rng.choice(["", "internet"]),
        plan_version=rng.randrange(1, 4))


def test_subscriber_records_are_the_reader_s(tmp_path: Path) -> None:
    rng = random.Random(3)
    cdr = tmp_path / "cdr"
    cdr.mkdir()
    n = 0
    for i, width in enumerate((FIRST_COLUMNS, FIRST_COLUMNS + 2, len(COLUMNS), len(COLUMNS))):
        recs = [make(n + k, rng) for k in range(300)]
        n += 300
        lines = [format_row(r) for r in recs]
        if width < len(COLUMNS):  # an older release's file: its first columns only
            def cut(line: str, w: int = width) -> str:
                cells = next(csv.reader([line]))[:w]
                out = io.StringIO()
                csv.writer(out, lineterminator="\n").writerow(cells)
                return out.getvalue()

            lines = [cut(x) for x in lines]
            header = ",".join(COLUMNS[:width]) + "\n"
        else:
            header = HEADER
        (cdr / f"cdr_ocs-1_2026110{i}T000000Z_00000{i}.csv").write_text(header + "".join(lines))
    files = sorted(cdr.glob("*.csv"))
    for msisdn in ("41790000001", "41790000002", "41799999999"):
        want = sorted((row.record for row in read_cdr_files(files)
                       if row.record.msisdn == msisdn),
                      key=lambda r: (r.end_time, r.record_id))
        got = subscriber_records(cdr, msisdn)
        assert len(got) == len(want)
        assert sorted(got, key=lambda r: (r.end_time, r.record_id)) == want
    assert subscriber_records(tmp_path / "none", "41790000001") == []
