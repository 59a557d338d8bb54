"""KPIs of a period over the closed CDR files (DuckDB reading the CSVs) and the store
(fraud cases, alarms): ``ocs report kpis``, ``GET /api/v1/kpis``; and the CDRs of a
period as Parquet for a warehouse (``ocs cdr export``).

DuckDB because it reads many CSV files in parallel and aggregates them in C++ with exact
decimals: money is read as ``DECIMAL(18,6)`` (the files carry six places), never as a
float. Periods are calendar months in UTC by the CDR's ``end_time`` (the billing run uses
each plan's time zone; these are network-wide figures). Only closed files are read
(``ocs cdr flush`` closes the open one).
"""

from __future__ import annotations

import time
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import duckdb

from ocs.billing.run import check_period
from ocs.billing.run import period_bounds as month_bounds
from ocs.cdr.fileformat import COLUMNS, SESSION_RESULTS
from ocs.cdr.query import connect, sql_path
from ocs.cdr.reader import closed_cdr_files
from ocs.fraud.cases import decode_case
from ocs.money import MICRO, format_amount
from ocs.noc import alarms as noc
from ocs.store.env import ALARMS, Store
from ocs.store.tx import StorePort

USAGE_RESULTS = sorted(SESSION_RESULTS | {"event"})
"""Rows that are usage (the others: ``refund``, ``rerate`` move money only)."""
TOP = 10


class KpiError(ValueError):
    """The KPIs or the export cannot be made from these files (none, or DuckDB's error)."""


_GROUPED = ("currency", "usage", "service", "day", "rate_id", "roaming", "dest", "msisdn")
_SETS = (("currency",), ("usage", "service"), ("usage", "day", "service"),
         ("usage", "dest", "rate_id", "service"), ("usage", "roaming"),
         ("usage", "currency", "msisdn"))
_AGGREGATE = (
    "CREATE TEMP TABLE agg AS WITH p AS (SELECT msisdn, service, rate_id, currency, "
    "substr(end_time, 1, 10) AS day, CAST(duration_s AS BIGINT) AS seconds, "
    "CAST(bytes_in AS BIGINT) + CAST(bytes_out AS BIGINT) AS bytes, "
    "CAST(units AS BIGINT) AS units, CAST(charge AS DECIMAL(18, 6)) AS charge, "
    "roaming = '1' AS roaming, result IN $usage AS usage, "
    "service <> 'data' AND coalesce(destination, '') <> '' AS dest "
    "FROM cdr WHERE end_time >= $lo AND end_time < $hi) "
    f"SELECT GROUPING({', '.join(_GROUPED)}) AS g, {', '.join(_GROUPED)}, count(*) AS n, "
    "sum(units) AS units, sum(bytes) AS bytes, sum(seconds) AS seconds, "
    "sum(charge) AS charge FROM p GROUP BY GROUPING SETS ("
    + ", ".join("(" + ", ".join(gs) + ")" for gs in _SETS) + ")")
"""One pass over the files: every figure's groups at once (GROUPING SETS), kept in a
small table (a row per group; the largest set has one per active subscriber)."""


def _mask(grouped: tuple[str, ...]) -> int:
    """GROUPING()'s value for the set of ``grouped`` columns: a bit (first column
    highest) for each column of :data:`_GROUPED` that the set does not group by."""
    bits = 0
    for c in _GROUPED:
        bits = bits << 1 | (c not in grouped)
    return bits


def period_bounds(period: str) -> tuple[int, int]:
    """[start, end) of a ``YYYY-MM`` month in UTC, as Unix seconds."""
    start, end, _days = month_bounds(*check_period(period), "UTC")
    return start, end


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _micro(value: Decimal | None) -> int:
    return int((value or Decimal(0)) * MICRO)


def compute(cdr_dir: Path, store: Store, period: str, *,
            ledger: StorePort | None = None) -> dict[str, Any]:
    """The KPIs of ``period`` (``YYYY-MM``): revenue and usage by service and day, active
    subscribers, ARPU, top destinations, roaming share, fraud cases opened and resolved
    (in ``ledger``, on a cluster; else ``store``), alarms raised and cleared (``store``)
    with their mean time to repair."""
    started = time.perf_counter()
    start, end = period_bounds(period)
    lo, hi = _iso(start), _iso(end)
    files = closed_cdr_files(cdr_dir)
    out: dict[str, Any] = {"period": period, "from": lo, "to": hi, "files": len(files)}
    revenue: dict[str, int] = {}
    active: dict[str, int] = {}
    by_service: list[dict[str, Any]] = []
    daily: list[dict[str, Any]] = []
    top: list[dict[str, Any]] = []
    roaming = {"records": 0, "charge": 0, "all_records": 0, "all_charge": 0}
    rows = 0
    if files:
        con = connect(files)
        try:
            con.execute(_AGGREGATE, {"lo": lo, "hi": hi, "usage": USAGE_RESULTS})
        except duckdb.Error as exc:
            raise KpiError(f"{cdr_dir}: {exc}") from None

        def of(grouped: tuple[str, ...], where: str = "", order: str = "") -> list[Any]:
            cols = ", ".join((*grouped, "n", "units", "bytes", "seconds", "charge"))
            return con.execute(f"SELECT {cols} FROM agg WHERE g = {_mask(grouped)} "
                               + (f"AND {where} " if where else "")
                               + (f"ORDER BY {order}" if order else "")).fetchall()

        for cur, n, _u, _b, _s, total in of(("currency",), order="currency"):
            revenue[cur] = _micro(total)
            rows += int(n)
        for cur, n in con.execute(f"SELECT currency, count(*) FROM agg WHERE g = "
                                  f"{_mask(('usage', 'currency', 'msisdn'))} AND usage "
                                  "GROUP BY currency ORDER BY currency").fetchall():
            active[cur] = int(n)
        for _use, svc, n, units, _b, _s, charge in of(("usage", "service"), "usage",
                                                      "service"):
            by_service.append({"service": svc, "records": int(n), "units": int(units),
                               "charge": format_amount(_micro(charge), 6)})
        for _use, day, svc, n, units, nbytes, secs, charge in of(
                ("usage", "day", "service"), "usage", "day, service"):
            daily.append({"day": day, "service": svc, "records": int(n), "units": int(units),
                          "bytes": int(nbytes), "seconds": int(secs),
                          "charge": format_amount(_micro(charge), 6)})
        ranked = of(("usage", "dest", "rate_id", "service"), "usage AND dest",
                    "charge DESC, n DESC, rate_id")
        for _use, _dest, rate, svc, n, units, _b, _s, charge in ranked[:TOP]:
            top.append({"rate_id": rate or "", "service": svc, "records": int(n),
                        "units": int(units), "charge": format_amount(_micro(charge), 6)})
        for _use, roams, n, _u, _b, _s, charge in of(("usage", "roaming"), "usage"):
            roaming["all_records"] += int(n)
            roaming["all_charge"] += _micro(charge)
            if roams:
                roaming["records"] += int(n)
                roaming["charge"] += _micro(charge)
        con.close()
    out["rows"] = rows
    out["revenue"] = {c: format_amount(v, 6) for c, v in revenue.items()}
    out["active_subscribers"] = sum(active.values())
    out["arpu"] = {c: format_amount(_div(revenue.get(c, 0), n), 6)
                   for c, n in active.items() if n}
    out["by_service"] = by_service
    out["daily"] = daily
    out["top_destinations"] = top
    out["roaming"] = {
        "records": roaming["records"], "charge": format_amount(roaming["charge"], 6),
        "share_records": _share(roaming["records"], roaming["all_records"]),
        "share_charge": _share(roaming["charge"], roaming["all_charge"])}
    out.update(_store_kpis(store, (ledger or store).fraud_cases(), start, end))
    out["seconds"] = round(time.perf_counter() - started, 3)
    return out


def _div(micro: int, n: int) -> int:
    """``micro / n`` rounded half to even, in micro-units."""
    q = (Decimal(micro) / Decimal(n)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    return int(q)


def _share(part: int, whole: int) -> str | None:
    if not whole:
        return None
    return str((Decimal(part) / Decimal(whole)).quantize(Decimal("0.0001"),
                                                         rounding=ROUND_HALF_EVEN))


def _store_kpis(store: Store, cases: list[bytes], start: int, end: int) -> dict[str, Any]:
    opened = resolved = raised = cleared = 0
    repair: list[int] = []
    for v in cases:
        case = decode_case(v)
        opened += start <= case.opened_at < end
        resolved += bool(case.resolved_at) and start <= case.resolved_at < end
    with store.read() as txn:
        for _k, v in txn.cursor(db=store.dbs[ALARMS]):
            a = noc.decode(v)
            raised += start <= a.first_seen < end
            if a.cleared_at and start <= a.cleared_at < end:
                cleared += 1
                repair.append(a.cleared_at - a.first_seen)
    return {"fraud_cases": {"opened": opened, "resolved": resolved},
            "alarms": {"raised": raised, "cleared": cleared,
                       "mttr_s": round(sum(repair) / len(repair), 1) if repair else None}}


def export_parquet(cdr_dir: Path, period: str, out: Path) -> int:
    """The period's CDR rows as one Parquet file with typed columns (times as UTC
    timestamps, money as DECIMAL(18,6)); returns the rows written."""
    start, end = period_bounds(period)
    files = closed_cdr_files(cdr_dir)
    if not files:
        raise KpiError(f"{cdr_dir}: no closed CDR files")
    con = connect(files)
    ints = ("rating_group", "duration_s", "bytes_in", "bytes_out", "units",
            "allowance_units", "characters", "plan_version")
    cols = []
    for c in COLUMNS:
        if c in ints:
            cols.append(f"CAST(NULLIF({c}, '') AS BIGINT) AS {c}")
        elif c in ("start_time", "end_time"):
            cols.append(f"CAST(strptime({c}, '%Y-%m-%dT%H:%M:%SZ') AS TIMESTAMP) AS {c}")
        elif c == "charge":
            cols.append("CAST(charge AS DECIMAL(18, 6)) AS charge")
        elif c == "roaming":
            cols.append("roaming = '1' AS roaming")
        else:
            cols.append(c)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        con.execute(
            f"COPY (SELECT {', '.join(cols)} FROM cdr WHERE end_time >= $lo AND "
            f"end_time < $hi) TO '{sql_path(tmp)}' (FORMAT parquet, COMPRESSION zstd)",
            {"lo": _iso(start), "hi": _iso(end)})
        n = int(con.execute(f"SELECT count(*) FROM read_parquet('{sql_path(tmp)}')")
                .fetchone()[0])  # type: ignore[index]
    except duckdb.Error as exc:
        tmp.unlink(missing_ok=True)
        raise KpiError(f"{cdr_dir}: {exc}") from None
    finally:
        con.close()
    tmp.replace(out)
    return n
