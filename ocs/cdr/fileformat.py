"""The CDR CSV file format (Contract: a header row, then one row per committed charge)."""

from __future__ import annotations

import datetime as dt
import re
import time

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
    "allowance_units",
    "characters",
    "slice",
    "dnn",
    "plan_version",
)

HEADER = ",".join(COLUMNS) + "\n"

SESSION_RESULTS = frozenset({"interim", "final", "capped", "expired"})
"""``result`` of a session's reports (priced on the session's running total); the others:
``event``, ``refund``, ``rerate`` (a re-rating adjustment)."""

FIRST_COLUMNS = 23
"""Columns of the files written before the 5G ones (slice, dnn) and then plan_version
were added at the end: readers take all three widths."""


def header_ok(header: list[str] | None) -> bool:
    """A CDR file's header: ours, or that of an older release (a prefix of ours)."""
    if header is None:
        return False
    known = min(len(header), len(COLUMNS))
    return known >= FIRST_COLUMNS and tuple(header[:known]) == COLUMNS[:known]


_iso_cache: dict[int, str] = {}


def iso_utc(ts: int) -> str:
    """``2026-11-18T12:00:00Z``; memoised, since a file's rows share few distinct seconds."""
    s = _iso_cache.get(ts)
    if s is None:
        if len(_iso_cache) > 65536:
            _iso_cache.clear()
        s = _iso_cache[ts] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    return s


def parse_iso_utc(text: str) -> int:
    return int(dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
               .timestamp())


_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


def _field(value: str) -> str:
    if _NEEDS_QUOTES.search(value) is None:
        return value
    return '"' + value.replace('"', '""') + '"'


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
        str(r.allowance_units),
        str(r.characters),
        _field(r.slice),
        _field(r.dnn),
        str(r.plan_version),
    )) + "\n"
