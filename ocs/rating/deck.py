"""Rate decks: a plan's rates for one service from a CSV file (``ocs plan import-rates``).

An interconnect or roaming deck is thousands of prefixes with a price each. The file has
a header row naming its columns — ``prefix`` and ``price`` required; ``first_increment_s``,
``increment_s``, ``connect_fee``, ``zone``, ``band``, ``unit``, ``id`` optional — and one
rate per row. Every row is checked (errors name ``file:line`` and the column) and nothing
is applied unless the whole file is valid. Imported rates are ordinary rates of the plan
with ids ``deck-<service>-<prefix>[-<zone>][-<band>]`` (or ``deck-<service>-<id>``); a new
import for the same service replaces them, the plan's hand-written rates stay, and the
result is a new version of the plan like any other load.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ocs.rating.plans import TIMED, PlanError, Service, compile_rate

COLUMNS = ("prefix", "price", "first_increment_s", "increment_s", "connect_fee", "zone",
           "band", "unit", "id")
REQUIRED = ("prefix", "price")
_INTS = ("first_increment_s", "increment_s")
MAX_ROWS = 2_000_000


def deck_prefix(service: Service) -> str:
    return f"deck-{service.value}-"


def read_deck(path: Path, service: Service, plan: dict[str, Any], *,
              known_zones: set[str] | None,
              progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """The rate tables of a deck file for ``plan`` (its bands; ``known_zones``), each
    row validated as live rating will read it. ``progress`` gets the rows read so far."""
    bands = {b["id"] for b in plan.get("bands", []) if isinstance(b, dict) and "id" in b}
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for line, row in _rows(path):
        table: dict[str, Any] = {"service": service.value}
        for col, value in row.items():
            if value == "":
                continue
            if col == "zone":
                table["zones"] = [value]
            elif col == "band":
                table["bands"] = [value]
            elif col in _INTS:
                if not value.isascii() or not value.isdigit():
                    raise PlanError(f"{path}:{line}: {col}: expected a whole number of "
                                    f"seconds, got {value!r}")
                if service not in TIMED:
                    raise PlanError(f"{path}:{line}: {col}: only voice and time rates "
                                    "have increments")
                table[col] = int(value)
            elif col != "id":
                table[col] = value
        prefix = row.get("prefix", "")
        if prefix and not (prefix.isascii() and prefix.isdigit() and len(prefix) <= 15):
            raise PlanError(f"{path}:{line}: prefix: expected E.164 digits (at most 15), "
                            f"got {prefix!r}")
        own = row.get("id") or "-".join(
            x for x in (table.get("prefix") or "any", row.get("zone"), row.get("band")) if x)
        table["id"] = deck_prefix(service) + own
        where = f"{path}:{line}"
        try:
            compile_rate(table, where, order=0, bands=bands, known_zones=known_zones)
        except PlanError as exc:  # "file:line.price: ..." -> "file:line: price: ..."
            raise PlanError(str(exc).replace(f"{where}.", f"{where}: ", 1)) from None
        first = seen.setdefault(table["id"], line)
        if first != line:
            raise PlanError(f"{where}: the same rate as line {first} (prefix, zone and band"
                            f" {table['id'][len(deck_prefix(service)):]!r}); give it an id")
        out.append(table)
        if progress is not None and len(out) % 10_000 == 0:
            progress(len(out))
    if not out:
        raise PlanError(f"{path}: no rates (a header row, then one row per rate)")
    if progress is not None:
        progress(len(out))
    return out


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise PlanError(f"{path}:1: empty file (a header row is required)")
            names = [h.strip().lower() for h in header]
            for i, name in enumerate(names):
                if name not in COLUMNS:
                    raise PlanError(f"{path}:1: unknown column {header[i]!r} (columns: "
                                    f"{', '.join(COLUMNS)})")
            if len(set(names)) != len(names):
                raise PlanError(f"{path}:1: a column is named twice")
            for col in REQUIRED:
                if col not in names:
                    raise PlanError(f"{path}:1: the header has no {col!r} column")
            for row in reader:
                if reader.line_num > MAX_ROWS + 1:
                    raise PlanError(f"{path}: more than {MAX_ROWS:,} rates")
                if not row or row == [""]:
                    continue
                if len(row) != len(names):
                    raise PlanError(f"{path}:{reader.line_num}: expected {len(names)} "
                                    f"fields, got {len(row)}")
                yield reader.line_num, {n: v.strip() for n, v in zip(names, row, strict=True)}
    except UnicodeDecodeError:
        raise PlanError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise PlanError(f"{path}: {exc}") from None


def with_deck(plan: dict[str, Any], service: Service,
              rates: list[dict[str, Any]]) -> dict[str, Any]:
    """The plan table with its deck for ``service`` replaced by ``rates`` (after the
    hand-written rates). The plan's own rates are valid (stored), each deck rate was
    checked against its bands and the zones as it was read: only the ids are left."""
    mark = deck_prefix(service)
    kept = [r for r in plan.get("rates", []) if not str(r.get("id", "")).startswith(mark)]
    ids = {str(r.get("id")) for r in kept}
    for r in rates:
        if r["id"] in ids:
            raise PlanError(f"rate id {r['id']!r} is already a hand-written rate of the plan")
    return {**plan, "rates": kept + rates}


def export_deck(plan: dict[str, Any], service: Service) -> str:
    """A plan's imported deck for ``service`` as the CSV :func:`read_deck` takes."""
    mark = deck_prefix(service)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in plan.get("rates", []):
        rid = str(r.get("id", ""))
        if not rid.startswith(mark):
            continue
        zone = (r.get("zones") or [""])[0]
        band = (r.get("bands") or [""])[0]
        auto = "-".join(x for x in (r.get("prefix") or "any", zone, band) if x)
        own = rid[len(mark):]
        w.writerow([r.get("prefix", ""), r.get("price", ""), r.get("first_increment_s", ""),
                    r.get("increment_s", ""), r.get("connect_fee", ""), zone, band,
                    r.get("unit", ""), "" if own == auto else own])
    return out.getvalue()
