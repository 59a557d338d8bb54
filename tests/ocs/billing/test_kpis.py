"""KPIs over a known CDR set, checked exactly; the Parquet export read back with its
types."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest

from ocs.billing.kpis import compute, export_parquet, period_bounds
from ocs.cdr.fileformat import COLUMNS, FIRST_COLUMNS, HEADER, format_row
from ocs.cdr.reader import CdrFormatError
from ocs.fraud.cases import Case
from ocs.noc import alarms as noc
from ocs.store import Store
from ocs.store.env import FRAUD_CASES, pack_u64
from ocs.store.records import CdrRecord, encode
from ocs.store.tx import Tx

NOV = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp())
DAY = 86_400


def rec(n: int, *, msisdn: str = "41790000001", service: str = "data", at: int = NOV,
        charge: int = 0, units: int = 0, result: str = "final", destination: str = "",
        rate_id: str = "data-home", roaming: bool = False, currency: str = "EUR",
        bytes_in: int = 0, bytes_out: int = 0, duration_s: int = 0) -> CdrRecord:
    return CdrRecord(record_id=f"ocs-1-{n}", session_id=f"s{n}", msisdn=msisdn,
                     imsi="", service=service, rating_group=10 if service == "data" else None,
                     destination=destination, start_time=at - duration_s, end_time=at,
                     duration_s=duration_s, bytes_in=bytes_in, bytes_out=bytes_out,
                     units=units, charge=charge, currency=currency, plan_id="p",
                     rate_id=rate_id, roaming=roaming, visited_network="", protocol="diameter",
                     result=result)


def write(cdr: Path, name: str, records: list[CdrRecord], *, columns: int = len(COLUMNS),
          ) -> None:
    cdr.mkdir(exist_ok=True)
    if columns == len(COLUMNS):
        text = HEADER + "".join(format_row(r) for r in records)
    else:  # a file of an older release: the first columns only
        text = ",".join(COLUMNS[:columns]) + "\n" + "".join(
            ",".join(format_row(r).rstrip("\n").split(",")[:columns]) + "\n"
            for r in records)
    (cdr / name).write_text(text)


@pytest.fixture
def cdr(tmp_path: Path) -> Path:
    d = tmp_path / "cdr"
    write(d, "cdr_ocs-1_20261031T230000Z_000001.csv", [
        rec(1, at=NOV - 1, charge=9_000_000, units=1),  # October: not counted
        rec(2, at=NOV + 10, charge=1_250_000, units=125_000_000, bytes_in=100_000_000,
            bytes_out=25_000_000, result="interim"),
        rec(3, at=NOV + 20, charge=250_000, units=25_000_000, bytes_in=25_000_000,
            result="final"),
    ])
    write(d, "cdr_ocs-1_20261101T000000Z_000002.csv", [
        rec(4, msisdn="41790000002", service="voice", at=NOV + DAY + 5, charge=2_500_000,
            units=61, duration_s=61, destination="41900123456", rate_id="voice-premium",
            result="event"),
        rec(5, msisdn="41790000002", service="voice", at=NOV + DAY + 9, charge=100_000,
            units=60, duration_s=60, destination="41791234567", rate_id="voice-home",
            result="event"),
        rec(6, msisdn="41790000003", service="sms", at=NOV + DAY + 50, charge=300_000,
            units=1, destination="4915112345678", rate_id="sms-intl", roaming=True,
            result="event"),
        rec(7, msisdn="41790000002", service="voice", at=NOV + 2 * DAY, charge=-100_000,
            result="refund", rate_id="voice-home"),
        rec(8, msisdn="41790000003", service="sms", at=NOV + 3 * DAY, charge=50_000,
            result="rerate", rate_id=""),
    ])
    # a file of a release before the 5G columns (23 columns)
    write(d, "cdr_ocs-1_20261102T000000Z_000003.csv", [
        rec(9, msisdn="41790000004", service="data", at=NOV + 2 * DAY, charge=1_000_001,
            units=10, bytes_out=10, roaming=True, currency="CHF"),
    ], columns=FIRST_COLUMNS)
    write(d, "cdr_ocs-1_20261201T000000Z_000004.csv", [
        rec(10, at=NOV + 30 * DAY, charge=7_000_000, units=1),  # December
    ])
    (d / "cdr_ocs-1_20261201T000500Z_000005.csv.part").write_text(HEADER + format_row(
        rec(11, at=NOV + 5, charge=5_000_000)))  # open: not read
    return d


def test_kpis_of_a_known_cdr_set_are_exact(cdr: Path, store: Store) -> None:
    # alarms: one raised 31 Oct 23:50 and cleared 1 Nov 00:10 (1,200 s); one raised and
    # cleared in November after 300 s; one raised and still active
    for element, up, down in (("bts-1", NOV - 600, NOV + 600), ("bts-2", NOV + 100,
                                                              NOV + 400),
                              ("bts-3", NOV + 200, 0)):
        store.run_write(lambda tx, e=element, t=up: noc.notify(tx, noc.Notification(
            element=e, alarm_type="communicationsAlarm", severity="major", at=t)))
        if down:
            store.run_write(lambda tx, e=element, t=down: noc.notify(tx, noc.Notification(
                element=e, alarm_type="communicationsAlarm", severity="cleared", at=t)))
    cases = [Case(case_id=case_id, msisdn="41790000003", opened_at=opened,
                  updated_at=opened, decision="review", score=50,
                  status="resolved" if resolved else "open", resolved_at=resolved)
             for case_id, opened, resolved in ((1, NOV - 5, NOV + 5), (2, NOV + 5, 0),
                                               (3, NOV + 6, NOV + 7))]

    def put_cases(tx: Tx) -> None:
        for c in cases:
            tx.put(FRAUD_CASES, pack_u64(c.case_id), encode(c))

    store.run_write(put_cases)
    k = compute(cdr, store, "2026-11")
    assert (k["from"], k["to"], k["files"]) == ("2026-11-01T00:00:00Z",
                                                "2026-12-01T00:00:00Z", 4)
    assert k["rows"] == 8
    # 1.25 + 0.25 + 2.50 + 0.10 + 0.30 - 0.10 + 0.05 = 4.35 EUR; 1.000001 CHF
    assert k["revenue"] == {"CHF": "1.000001", "EUR": "4.350000"}
    assert k["active_subscribers"] == 4  # 41790000001..3 in EUR, 41790000004 in CHF
    assert k["arpu"] == {"CHF": "1.000001", "EUR": "1.450000"}  # 4.35 / 3
    assert k["by_service"] == [
        {"service": "data", "records": 3, "units": 150_000_010, "charge": "2.500001"},
        {"service": "sms", "records": 1, "units": 1, "charge": "0.300000"},
        {"service": "voice", "records": 2, "units": 121, "charge": "2.600000"}]
    assert k["daily"] == [
        {"day": "2026-11-01", "service": "data", "records": 2, "units": 150_000_000,
         "bytes": 150_000_000, "seconds": 0, "charge": "1.500000"},
        {"day": "2026-11-02", "service": "sms", "records": 1, "units": 1, "bytes": 0,
         "seconds": 0, "charge": "0.300000"},
        {"day": "2026-11-02", "service": "voice", "records": 2, "units": 121, "bytes": 0,
         "seconds": 121, "charge": "2.600000"},
        {"day": "2026-11-03", "service": "data", "records": 1, "units": 10, "bytes": 10,
         "seconds": 0, "charge": "1.000001"}]
    assert k["top_destinations"] == [
        {"rate_id": "voice-premium", "service": "voice", "records": 1, "units": 61,
         "charge": "2.500000"},
        {"rate_id": "sms-intl", "service": "sms", "records": 1, "units": 1,
         "charge": "0.300000"},
        {"rate_id": "voice-home", "service": "voice", "records": 1, "units": 60,
         "charge": "0.100000"}]
    # roaming: the SMS (0.30) and the CHF data row (1.000001) of 6 usage rows (5.400001)
    assert k["roaming"] == {"records": 2, "charge": "1.300001", "share_records": "0.3333",
                            "share_charge": "0.2407"}
    assert k["fraud_cases"] == {"opened": 2, "resolved": 2}
    assert k["alarms"] == {"raised": 2, "cleared": 2, "mttr_s": 750.0}  # (1200 + 300) / 2


def test_an_empty_period_and_bad_input(cdr: Path, store: Store, tmp_path: Path) -> None:
    k = compute(cdr, store, "2025-01")
    assert (k["rows"], k["revenue"], k["active_subscribers"], k["arpu"], k["daily"],
            k["roaming"]["share_records"]) == (0, {}, 0, {}, [], None)
    assert compute(tmp_path / "none", store, "2026-11")["files"] == 0
    with pytest.raises(Exception, match="period"):
        period_bounds("2026-13")
    (cdr / "cdr_ocs-1_20261103T000000Z_000009.csv").write_text("a,b\n1,2\n")
    with pytest.raises(CdrFormatError, match="header"):
        compute(cdr, store, "2026-11")


def test_parquet_export_has_the_period_s_rows_typed(cdr: Path, tmp_path: Path) -> None:
    out = tmp_path / "nov.parquet"
    assert export_parquet(cdr, "2026-11", out) == 8
    con = duckdb.connect()
    got = con.execute(
        f"SELECT record_id, charge, end_time, roaming, slice FROM read_parquet('{out}') "
        "ORDER BY record_id").fetchall()
    assert [r[0] for r in got] == [f"ocs-1-{n}" for n in range(2, 10)]
    charges = {r[0]: str(r[1]) for r in got}
    assert charges["ocs-1-7"] == "-0.100000" and charges["ocs-1-9"] == "1.000001"
    assert got[0][2] == dt.datetime(2026, 11, 1, 0, 0, 10)
    assert {r[0] for r in got if r[3]} == {"ocs-1-6", "ocs-1-9"}
    assert got[-1][4] is None  # the older file has no slice column
    types = dict(con.execute(f"DESCRIBE SELECT * FROM read_parquet('{out}')")
                 .fetchall()[i][:2] for i in range(len(COLUMNS)))
    assert types["charge"] == "DECIMAL(18,6)" and types["units"] == "BIGINT"
