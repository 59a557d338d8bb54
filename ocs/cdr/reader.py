"""Streaming reader of closed CDR files for batch jobs (billing, fraud scan, explain).

Constant memory whatever the file size; every row is checked and a bad one raises
:class:`CdrFormatError` naming the file and line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ocs.cdr.fileformat import FIRST_COLUMNS, header_ok, parse_iso_utc
from ocs.money import MoneyError, parse_amount
from ocs.store.env import CDR_JOURNAL, META, META_CDR_EXPORT, Store, pack_u64
from ocs.store.records import CdrRecord, dec_cdr, dec_export_state


class CdrFormatError(ValueError):
    """A malformed CDR file; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class CdrRow:
    """One CDR as read back from a file, with where it came from."""

    file: str
    line: int
    record: CdrRecord


def _int(v: str, name: str) -> int:
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"{name}: {v!r} is not an integer") from None


def record_of(row: Sequence[str], *, fiveg: bool = True, versioned: bool = True,
              ) -> CdrRecord:
    """A CDR from the cells of its row (a file of a release before the 5G columns, or
    before ``plan_version``, has fewer)."""
    return CdrRecord(
        record_id=row[0],
        session_id=row[1],
        msisdn=row[2],
        imsi=row[3],
        service=row[4],
        rating_group=_int(row[5], "rating_group") if row[5] else None,
        destination=row[6],
        start_time=parse_iso_utc(row[7]),
        end_time=parse_iso_utc(row[8]),
        duration_s=_int(row[9], "duration_s"),
        bytes_in=_int(row[10], "bytes_in"),
        bytes_out=_int(row[11], "bytes_out"),
        units=_int(row[12], "units"),
        charge=parse_amount(row[13], allow_negative=True, field="charge"),
        currency=row[14],
        plan_id=row[15],
        rate_id=row[16],
        roaming=row[17] == "1",
        visited_network=row[18],
        protocol=row[19],
        result=row[20],
        allowance_units=_int(row[21], "allowance_units"),
        characters=_int(row[22], "characters"),
        slice=row[23] if fiveg else "",
        dnn=row[24] if fiveg else "",
        plan_version=_int(row[25], "plan_version") if versioned else 0,
    )


def read_cdr_file(path: str | Path) -> Iterator[CdrRow]:
    p = Path(path)
    line = 1
    try:
        for row in _read(p):
            line = row.line
            yield row
    except UnicodeDecodeError:
        raise CdrFormatError(f"{p}:{line + 1}: not UTF-8 text") from None
    except csv.Error as exc:
        raise CdrFormatError(f"{p}:{line + 1}: {exc}") from None


def _read(p: Path) -> Iterator[CdrRow]:
    with p.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or not header_ok(header):
            raise CdrFormatError(f"{p}:1: not a CDR file (unexpected header)")
        width = len(header)
        fiveg = width >= FIRST_COLUMNS + 2  # files written before slice, dnn lack them
        versioned = width >= FIRST_COLUMNS + 3  # ...and before plan_version
        for row in reader:
            line = reader.line_num
            if len(row) != width:
                raise CdrFormatError(f"{p}:{line}: expected {width} fields, got {len(row)}")
            try:
                rec = record_of(row, fiveg=fiveg, versioned=versioned)
            except (ValueError, MoneyError) as exc:
                raise CdrFormatError(f"{p}:{line}: {exc}") from None
            yield CdrRow(p.name, line, rec)
        if f.tell() and not _ends_with_newline(p):
            raise CdrFormatError(f"{p}:{reader.line_num}: truncated (no final newline)")


def _ends_with_newline(p: Path) -> bool:
    with p.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def read_cdr_files(paths: Iterable[str | Path]) -> Iterator[CdrRow]:
    for p in paths:
        yield from read_cdr_file(p)


def closed_cdr_files(cdr_dir: str | Path) -> list[Path]:
    """Closed files in name order (the name carries the UTC start and the sequence)."""
    return sorted(Path(cdr_dir).glob("cdr_*.csv"))


def every_record(cdr_dir: str | Path, store: Store) -> Iterator[CdrRecord]:
    """Every CDR in journal order: the closed files', then the journal's from the open
    file's first on (the rows of closed files may still be there, not yet trimmed)."""
    for row in read_cdr_files(closed_cdr_files(cdr_dir)):
        yield row.record
    yield from journal_records(store)


def journal_records(store: Store) -> Iterator[CdrRecord]:
    """The CDRs not in a closed file yet (the open file's, and any not exported)."""
    raw = store.get(META, META_CDR_EXPORT)
    first = dec_export_state.decode(raw).first_seq if raw is not None else 1
    with store.read() as txn, txn.cursor(db=store.dbs[CDR_JOURNAL]) as cur:
        if cur.set_range(pack_u64(first)):
            for _k, v in cur:
                yield dec_cdr.decode(v)
