"""CDR export: .part -> fsync -> rename -> trim, deterministic across crashes."""

from __future__ import annotations

import csv
import io
import shutil
import time
from pathlib import Path

import msgspec
import pytest
from charging_support import charge_sms, sms_store
from hypothesis import given, settings
from hypothesis import strategies as st
from tests_support import WEDNESDAY_NOON

from ocs.cdr import export as export_mod
from ocs.cdr.export import CdrExporter
from ocs.cdr.fileformat import COLUMNS, HEADER, format_row
from ocs.cdr.reader import CdrFormatError, closed_cdr_files, read_cdr_file
from ocs.store import Store
from ocs.store.env import CDR_JOURNAL
from ocs.store.records import CdrRecord

NOW = WEDNESDAY_NOON


def exporter(store: Store, d: Path, rotate_records: int = 40) -> CdrExporter:
    return CdrExporter(store, d, "n1", rotate_s=300, rotate_records=rotate_records, batch=7)


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if not p.name.startswith(".")}


def test_export_rotates_by_records_and_flush(tmp_path: Path) -> None:
    sms_store(tmp_path / "s", 100)
    with Store(tmp_path / "s") as s:
        ex = exporter(s, tmp_path / "cdr")
        r = ex.run_once(NOW)
        assert r.rows == 100
        assert len(r.closed) == 2  # 40 + 40 closed, 20 in the open .part
        assert ex.pending() == 0
        part = list((tmp_path / "cdr").glob("*.part"))
        assert len(part) == 1
        r2 = ex.flush(NOW + 5)
        assert len(r2.closed) == 1 and r2.rows == 0
        names = [p.name for p in closed_cdr_files(tmp_path / "cdr")]
        assert names == [f"cdr_n1_20261118T120000Z_{i:06d}.csv" for i in range(3)]
        rows = [row.record for p in closed_cdr_files(tmp_path / "cdr")
                for row in read_cdr_file(p)]
        assert [r.record_id for r in rows] == [f"n1-{i}" for i in range(1, 101)]
        assert all(r.charge == 50_000 and r.currency == "EUR" for r in rows)
        assert rows[3].session_id == "sess,3"  # quoted field survives
        # journal trimmed once the rows are in closed files
        with s.read() as txn:
            assert txn.stat(s.dbs[CDR_JOURNAL])["entries"] == 0
        assert list((tmp_path / "cdr").glob("*.part")) == []


def test_rotate_by_time(tmp_path: Path) -> None:
    sms_store(tmp_path / "s", 5)
    with Store(tmp_path / "s") as s:
        ex = exporter(s, tmp_path / "cdr", rotate_records=1000)
        assert ex.run_once(NOW).closed == ()
        assert ex.run_once(NOW + 299).closed == ()
        assert len(ex.run_once(NOW + 300).closed) == 1
        assert ex.run_once(NOW + 900).closed == ()  # nothing new: no empty files


STEPS = ["_save", "replace", "fsync_dir", "append", "_trim"]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("hit", [1, 2, 3, 5])
def test_crash_at_any_step_gives_identical_files(tmp_path: Path, step: str, hit: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sms_store(tmp_path / "ref", 95)
    shutil.copytree(tmp_path / "ref", tmp_path / "crash")
    with Store(tmp_path / "ref") as s:
        exporter(s, tmp_path / "ref_cdr").flush(NOW)
    reference = files(tmp_path / "ref_cdr")
    assert len(reference) == 3

    class Crash(Exception):
        pass

    calls = {"n": 0}

    def crashing(orig):  # type: ignore[no-untyped-def]
        def f(*a, **kw):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == hit:
                raise Crash(step)
            return orig(*a, **kw)

        return f

    with Store(tmp_path / "crash") as s:
        ex = exporter(s, tmp_path / "crash_cdr")
        if step in ("_save", "_trim"):
            monkeypatch.setattr(ex, step, crashing(getattr(ex, step)))
        elif step == "replace":
            monkeypatch.setattr(export_mod.os, "replace", crashing(export_mod.os.replace))
        elif step == "fsync_dir":
            monkeypatch.setattr(export_mod, "_fsync_dir", crashing(export_mod._fsync_dir))
        else:
            monkeypatch.setattr(ex, "_append", crashing(ex._append))
        try:
            ex.flush(NOW)
        except Crash:
            pass
        # a torn write after the last confirmed point, as a crash mid-write leaves it
        for part in (tmp_path / "crash_cdr").glob("*.part"):
            with part.open("ab") as f:
                f.write(b"n1-999,torn")
        monkeypatch.undo()
    with Store(tmp_path / "crash") as s:  # "restart"
        exporter(s, tmp_path / "crash_cdr").flush(NOW)
        with s.read() as txn:
            assert txn.stat(s.dbs[CDR_JOURNAL])["entries"] == 0
    assert files(tmp_path / "crash_cdr") == reference


def test_closed_rows_leave_the_journal_a_chunk_per_transaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sms_store(tmp_path / "s", 50)
    monkeypatch.setattr(export_mod, "TRIM_CHUNK", 4)
    with Store(tmp_path / "s") as s:
        commits = {"n": 0}
        run_write = s.run_write

        def counting(fn):  # type: ignore[no-untyped-def]
            commits["n"] += 1
            return run_write(fn)

        monkeypatch.setattr(s, "run_write", counting)
        ex = exporter(s, tmp_path / "cdr")
        ex.run_once(NOW)  # closes one file of 40 rows
        with s.read() as txn:
            assert txn.stat(s.dbs[CDR_JOURNAL])["entries"] == 10
        assert commits["n"] >= 40 // 4  # the 40 rows went 4 at a time
        rows = [row.record for p in closed_cdr_files(tmp_path / "cdr") for row in
                read_cdr_file(p)]
        assert [r.record_id for r in rows] == [f"n1-{i}" for i in range(1, 41)]


def lazy(store: Store, d: Path, rotate_records: int = 40) -> CdrExporter:
    """As the server's exporter runs: rows confirmed at most every 50 ms."""
    return CdrExporter(store, d, "n1", rotate_s=300, rotate_records=rotate_records, batch=7,
                       confirm_every_s=0.05)


def reference_files(tmp_path: Path, n: int) -> dict[str, bytes]:
    sms_store(tmp_path / "ref", n)
    with Store(tmp_path / "ref") as s:
        exporter(s, tmp_path / "ref_cdr").flush(NOW)
    return files(tmp_path / "ref_cdr")


def test_lazy_rows_are_in_the_file_at_once_and_confirmed_later(tmp_path: Path) -> None:
    sms_store(tmp_path / "s", 30)
    with Store(tmp_path / "s") as s:
        ex = lazy(s, tmp_path / "cdr", rotate_records=1000)
        assert ex.run_once(NOW).rows == 30
        (part,) = (tmp_path / "cdr").glob("*.part")
        assert part.read_bytes().count(b"\n") == 31  # header + 30 rows, readable now
        assert ex.state().written_seq == 0  # not yet confirmed
        due = ex.confirm_due_in(time.monotonic())
        assert due is not None and 0 < due <= 0.05
        assert ex.run_once(NOW).rows == 0 and ex.state().written_seq == 0
        time.sleep(0.06)
        ex.run_once(NOW)
        st = ex.state()
        assert (st.written_seq, st.part_bytes) == (30, part.stat().st_size)
        assert ex.confirm_due_in(time.monotonic()) is None


@pytest.mark.parametrize("torn", [False, True])
def test_lazy_crash_before_confirming_gives_identical_files(tmp_path: Path,
                                                            torn: bool) -> None:
    reference = reference_files(tmp_path, 95)
    sms_store(tmp_path / "s", 95)
    with Store(tmp_path / "s") as s:
        ex = lazy(s, tmp_path / "cdr")
        ex.run_once(NOW)  # two files closed (confirmed), 15 rows written, unconfirmed
        assert ex.state().written_seq == 80 and ex.pending() == 15
        if torn:  # a crash mid-write
            for part in (tmp_path / "cdr").glob("*.part"):
                with part.open("ab") as f:
                    f.write(b"n1-999,torn")
    with Store(tmp_path / "s") as s:  # the restart
        exporter(s, tmp_path / "cdr").flush(NOW)
    assert files(tmp_path / "cdr") == reference


def test_a_flush_between_lazy_rounds_takes_over_and_the_exporter_follows(
        tmp_path: Path) -> None:
    """``ocs cdr flush`` (another process) exports while the server's exporter has rows
    unconfirmed: the exporter sees the stored position moved and goes on from there."""
    reference = reference_files(tmp_path, 95)
    sms_store(tmp_path / "s", 60)
    with Store(tmp_path / "s") as s:
        server = lazy(s, tmp_path / "cdr")
        server.run_once(NOW)  # 40 closed, 20 unconfirmed in the .part
        other = exporter(s, tmp_path / "cdr")
        assert other.flush(NOW).closed  # truncates to confirmed, writes the 20, closes
        charge_sms(s, range(60, 95))
        server.run_once(NOW)
        time.sleep(0.06)
        server.run_once(NOW)
        server.flush(NOW)
        with s.read() as txn:
            assert txn.stat(s.dbs[CDR_JOURNAL])["entries"] == 0
    got = files(tmp_path / "cdr")
    rows = [row.record.record_id for p in closed_cdr_files(tmp_path / "cdr")
            for row in read_cdr_file(p)]
    assert rows == [f"n1-{i}" for i in range(1, 96)]  # each once, in order
    assert list(got.values())[:1] == list(reference.values())[:1]


def test_lazy_close_leaves_trimming_to_trim_step(tmp_path: Path) -> None:
    """Dropping a closed file's rows from the journal does not hold up the next rows:
    the server's exporter does it a chunk at a time between rounds."""
    sms_store(tmp_path / "s", 50)
    with Store(tmp_path / "s") as s:
        ex = lazy(s, tmp_path / "cdr")
        assert len(ex.run_once(NOW).closed) == 1
        def entries() -> int:
            return s.stat(CDR_JOURNAL)["entries"]

        assert entries() == 50 and ex.trim_pending
        assert ex.trim_step(chunk=15) and entries() == 35
        assert ex.trim_step(chunk=15) and entries() == 20
        assert not ex.trim_step(chunk=15) and entries() == 10  # only closed rows go
        assert not ex.trim_pending
        ex.flush(NOW)
        assert entries() == 0 and not ex.trim_pending


def test_lost_part_is_rebuilt_from_journal(tmp_path: Path) -> None:
    sms_store(tmp_path / "s", 30)
    with Store(tmp_path / "s") as s:
        ex = exporter(s, tmp_path / "cdr", rotate_records=1000)
        ex.run_once(NOW)
        part = next((tmp_path / "cdr").glob("*.part"))
        content = part.read_bytes()
        part.write_bytes(content[:50])  # the OS lost the tail
        ex.run_once(NOW + 1)
        assert part.read_bytes() == content


def test_reader_reports_file_and_line(tmp_path: Path) -> None:
    sms_store(tmp_path / "s", 3)
    with Store(tmp_path / "s") as s:
        exporter(s, tmp_path / "cdr").flush(NOW)
    (good,) = closed_cdr_files(tmp_path / "cdr")
    lines = good.read_text().splitlines(keepends=True)
    assert lines[0].rstrip("\n").split(",") == list(COLUMNS)
    bad = tmp_path / "bad.csv"
    bad.write_text(lines[0] + lines[1] + lines[2].replace("0.050000", "0.05x"))
    with pytest.raises(CdrFormatError, match=r"bad.csv:3: .*charge"):
        list(read_cdr_file(bad))
    short = tmp_path / "short.csv"
    short.write_text(lines[0] + lines[1][:40] + "\n")
    with pytest.raises(CdrFormatError, match=r"short.csv:2: expected 26 fields"):
        list(read_cdr_file(short))
    truncated = tmp_path / "trunc.csv"
    truncated.write_text(lines[0] + lines[1].rstrip("\n"))
    with pytest.raises(CdrFormatError, match="truncated"):
        list(read_cdr_file(truncated))
    notcdr = tmp_path / "x.csv"
    notcdr.write_text("a,b\n")
    with pytest.raises(CdrFormatError, match=r"x.csv:1"):
        list(read_cdr_file(notcdr))


def test_reader_takes_files_written_before_the_5g_columns(tmp_path: Path) -> None:
    """Files of the releases before slice and dnn (23 columns) and before plan_version
    (25) still read, as no slice and version 0."""
    sms_store(tmp_path / "s", 2)
    with Store(tmp_path / "s") as s:
        exporter(s, tmp_path / "cdr").flush(NOW)
    (good,) = closed_cdr_files(tmp_path / "cdr")
    rows = list(csv.reader(io.StringIO(good.read_text())))
    assert rows[0][-3:] == ["slice", "dnn", "plan_version"]

    def write(p: Path, rows: list[list[str]]) -> None:
        with p.open("w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)

    new = [r.record for r in read_cdr_file(good)]
    assert all(r.plan_version == 1 for r in new)
    old = tmp_path / "old.csv"
    write(old, [r[:23] for r in rows])
    back = [r.record for r in read_cdr_file(old)]
    assert back == [msgspec.structs.replace(r, plan_version=0) for r in new]
    assert all(r.slice == "" and r.dnn == "" for r in back)
    fiveg = tmp_path / "fiveg.csv"
    write(fiveg, [r[:25] for r in rows])
    assert [r.record for r in read_cdr_file(fiveg)] == [
        msgspec.structs.replace(r, plan_version=0) for r in new]
    mixed = tmp_path / "bad.csv"  # an old header with new rows: a width error, not a guess
    write(mixed, [rows[0][:23], rows[1]])
    with pytest.raises(CdrFormatError, match=r"bad.csv:2: expected 23 fields"):
        list(read_cdr_file(mixed))


text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"),
               max_size=20)


@settings(max_examples=200, deadline=None)
@given(st.builds(
    CdrRecord,
    record_id=text, session_id=text, msisdn=st.from_regex(r"[0-9]{0,15}", fullmatch=True),
    imsi=st.from_regex(r"[0-9]{0,15}", fullmatch=True),
    service=st.sampled_from(["data", "voice", "sms", "mms"]),
    rating_group=st.one_of(st.none(), st.integers(0, 2**32 - 1)), destination=text,
    start_time=st.integers(0, 4_000_000_000), end_time=st.integers(0, 4_000_000_000),
    duration_s=st.integers(0, 10**9), bytes_in=st.integers(0, 2**64),
    bytes_out=st.integers(0, 2**64), units=st.integers(-(2**64), 2**64),
    charge=st.integers(-(10**15), 10**15), currency=st.sampled_from(["EUR", "CHF"]),
    plan_id=text, rate_id=text, roaming=st.booleans(),
    visited_network=st.from_regex(r"([0-9]{5,6})?", fullmatch=True), protocol=text,
    result=text, allowance_units=st.integers(-(2**40), 2**40),
    characters=st.integers(0, 10**6),
    slice=st.sampled_from(["", "1", "2-00ab01", "255-ffffff"]), dnn=text,
    plan_version=st.integers(0, 2**32)))
def test_record_round_trips_through_the_file_format(tmp_path_factory: pytest.TempPathFactory,
                                                    rec: CdrRecord) -> None:
    p = tmp_path_factory.mktemp("rt") / "cdr_x.csv"
    p.write_text(HEADER + format_row(rec), encoding="utf-8", newline="")
    (row,) = list(read_cdr_file(p))
    assert row.record == rec


def test_a_failed_lazy_round_starts_again_from_the_confirmed_position(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A round that fails part way (here: the rename of a file being closed, as on a
    full or read-only disk) leaves the exporter's own position behind: the next round
    takes the stored one and the files come out the same."""
    reference = reference_files(tmp_path, 95)
    sms_store(tmp_path / "s", 60)
    with Store(tmp_path / "s") as s:
        ex = lazy(s, tmp_path / "cdr")
        ex.run_once(NOW)  # 40 closed, 20 written, not confirmed
        charge_sms(s, range(60, 95))

        def no_room(*_a: object, **_k: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(export_mod.os, "replace", no_room)
        with pytest.raises(OSError):
            ex.run_once(NOW)  # rows 61-80 written, the close of the 2nd file fails
        monkeypatch.undo()
        ex.run_once(NOW)
        ex.flush(NOW)
    assert files(tmp_path / "cdr") == reference
