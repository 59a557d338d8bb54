"""The CDR CSV file format (Contract: a header row, then one row per committed charge)."""

from __future__ import annotations

import datetime as dt

from ocs.money import format_amount
from ocs.store.records import CdrRecord

COLUMNS = (
    "record_id",
    "session_id",
    "msisdn",
    "imsi",
    "service",
    "rating_group",
    "destination",
    "start_time",
    "end_time",
    "duration_s",
    "bytes_in",
    "bytes_out",
    "units",
    "charge",
    "currency",
    "plan_id",
    "rate_id",
    "roaming",
    "visited_network",
    "protocol",
    "result",
)

HEADER = ",".join(COLUMNS) + "\n"


def iso_utc(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso_utc(text: str) -> int:
    return int(dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
               .timestamp())


def _field(value: str) -> str:
    if any(c in value for c in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


def format_row(r: CdrRecord) -> str:
    return ",".join((
        _field(r.record_id),
        _field(r.session_id),
        r.msisdn,
        r.imsi,
        r.service,
        "" if r.rating_group is None else str(r.rating_group),
        _field(r.destination),
        iso_utc(r.start_time),
        iso_utc(r.end_time),
        str(r.duration_s),
        str(r.bytes_in),
        str(r.bytes_out),
        str(r.units),
        format_amount(r.charge, 6),
        r.currency,
        _field(r.plan_id),
        _field(r.rate_id),
        "1" if r.roaming else "0",
        r.visited_network,
        _field(r.protocol),
        _field(r.result),
    )) + "\n"
