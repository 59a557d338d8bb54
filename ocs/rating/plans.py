"""Plans, rates, time bands and roaming zones: the Contract's plans schema.

``parse_plans_document`` validates a TOML document (every amount a decimal string,
unknown keys are errors naming the key) into frozen dataclasses. The validated tables
are what the store keeps; :func:`compile_plan` turns one into a :class:`Plan`.
"""

from __future__ import annotations

import re
import tomllib
import zoneinfo
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from ocs.money import MoneyError, parse_amount
from ocs.rating.trie import PrefixTrie


class PlanError(ValueError):
    """A plans file problem, naming the file and the key."""


class Service(StrEnum):
    DATA = "data"
    VOICE = "voice"
    SMS = "sms"
    MMS = "mms"
    TIME = "time"
    """Connected time of an access session (WiFi hotspot, BNG), rated by the second."""


SERVICE_OF: dict[str, Service] = {s.value: s for s in Service}
"""A stored service name -> its Service (a dict lookup: ``Service(name)`` goes through
the enum machinery, a measurable cost on the writer's hot path)."""

TIMED = frozenset({Service.VOICE, Service.TIME})
"""Services measured in seconds with first-increment / increment blocks."""


class Mode(StrEnum):
    PREPAID = "prepaid"
    POSTPAID = "postpaid"


UNIT_SIZES: dict[Service, dict[str, int]] = {
    Service.DATA: {
        "B": 1,
        "KB": 1000,
        "MB": 1000**2,
        "GB": 1000**3,
        "KiB": 1024,
        "MiB": 1024**2,
        "GiB": 1024**3,
    },
    Service.VOICE: {"minute": 60, "second": 1},
    Service.SMS: {"message": 1},
    Service.MMS: {"message": 1},
    Service.TIME: {"hour": 3600, "minute": 60, "second": 1},
}

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HHMM = re.compile(r"^(\d\d):(\d\d)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Band:
    id: str
    days: frozenset[int]  # 0 = Monday; empty = every day
    from_min: int
    to_min: int  # exclusive; 1440 = end of day

    def contains(self, weekday: int, minute_of_day: int) -> bool:
        if self.days and weekday not in self.days:
            return False
        if self.from_min <= self.to_min:
            return self.from_min <= minute_of_day < self.to_min
        return minute_of_day >= self.from_min or minute_of_day < self.to_min  # wraps midnight


@dataclass(frozen=True, slots=True, kw_only=True)
class Rate:
    id: str
    service: Service
    price: int  # micro-units per unit
    unit: str
    unit_size: int  # bytes, seconds or messages per unit
    rating_groups: frozenset[int] | None  # None = any
    prefix: str
    first_increment_s: int
    increment_s: int
    connect_fee: int
    zones: frozenset[str]  # empty = home only; "*" = any roaming
    bands: tuple[str, ...]  # empty = all times
    order: int  # position in the plan, to break ties deterministically
    slices: frozenset[str] = frozenset()
    """5G S-NSSAIs it prices, "SST" (any SD) or "SST-SD" (SD lower-case hex); empty = any."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Allowances:
    data_bytes: int = 0
    voice_seconds: int = 0
    sms: int = 0

    def for_service(self, service: Service) -> int:
        if service is Service.DATA:
            return self.data_bytes
        if service is Service.VOICE:
            return self.voice_seconds
        if service is Service.SMS:
            return self.sms
        return 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    id: str
    name: str
    mode: Mode
    currency: str
    monthly_fee: int
    timezone: str
    zero_rated_groups: frozenset[int]
    allowances: Allowances
    rates: tuple[Rate, ...]
    bands: dict[str, Band]
    tz: zoneinfo.ZoneInfo
    tries: dict[Service, PrefixTrie[tuple[Rate, ...]]]
    version: int = 0
    """Which load of the plan this is (``ocs plan history``); 0 = not from the store."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Zone:
    id: str
    networks: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PlansDocument:
    plans: tuple[dict[str, Any], ...]
    """Validated plan tables (as loaded; what the store keeps)."""
    zones: tuple[Zone, ...]


# -- validation helpers ------------------------------------------------------------------


def _err(where: str, msg: str) -> PlanError:
    return PlanError(f"{where}: {msg}")


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise _err(f"{where}.{key}", "unknown key")


def _str(table: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    if key not in table:
        if default is None:
            raise _err(f"{where}.{key}", "required key is missing")
        return default
    v = table[key]
    if not isinstance(v, str):
        raise _err(f"{where}.{key}", f"expected a string, got {v!r}")
    return v


def _int(table: dict[str, Any], key: str, where: str, default: int, minimum: int = 0) -> int:
    v = table.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _err(f"{where}.{key}", f"expected an integer, got {v!r}")
    if v < minimum:
        raise _err(f"{where}.{key}", f"must be >= {minimum}, got {v}")
    return v


def _money(table: dict[str, Any], key: str, where: str, default: str = "0") -> int:
    v = table.get(key, default)
    if not isinstance(v, str):
        raise _err(f"{where}.{key}", f"amounts are decimal strings, got {v!r}")
    try:
        return parse_amount(v, field=f"{where}.{key}")
    except MoneyError as exc:
        raise PlanError(str(exc)) from exc


_SLICE = re.compile(r"^(\d{1,3})(?:-([0-9A-Fa-f]{6}))?$")


def _slice(text: str, where: str) -> str:
    """A slice as rates name it: "SST" (0-255) or "SST-SD" (six hex digits), normalised
    to the form the CHF reports (no leading zeros, SD lower case)."""
    m = _SLICE.match(text)
    if m is None or int(m.group(1)) > 255:
        raise _err(where, f"{text!r} is not an S-NSSAI (\"SST\" 0-255 or \"SST-SD\", SD 6 hex "
                          "digits)")
    sst = str(int(m.group(1)))
    return f"{sst}-{m.group(2).lower()}" if m.group(2) else sst


def normalise_slice(text: str) -> str:
    """An S-NSSAI as rating compares it ("SST" or "SST-SD"); PlanError if it is not one."""
    return _slice(text, "slice")


def slice_rank(rate_slices: frozenset[str], event_slice: str) -> int:
    """How a rate's slices match an event's: 2 = its exact SST-SD, 1 = its SST, 0 = the
    rate names none; -1 = no match."""
    if not rate_slices:
        return 0
    if not event_slice:
        return -1
    if event_slice in rate_slices:
        return 2 if "-" in event_slice else 1
    sst = event_slice.split("-", 1)[0]
    return 1 if sst != event_slice and sst in rate_slices else -1


def _id(table: dict[str, Any], where: str) -> str:
    v = _str(table, "id", where)
    if not _ID_RE.match(v):
        raise _err(f"{where}.id", f"{v!r} is not a valid id (letters, digits, . _ -)")
    return v


def _list(table: dict[str, Any], key: str, where: str, item: type) -> list[Any] | None:
    if key not in table:
        return None
    v = table[key]
    if not isinstance(v, list):
        raise _err(f"{where}.{key}", f"expected a list, got {v!r}")
    for i, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, item):
            raise _err(f"{where}.{key}[{i}]", f"expected {item.__name__}, got {x!r}")
    return v


def _hhmm(value: str, where: str) -> int:
    m = _HHMM.match(value)
    if not m:
        raise _err(where, f"expected HH:MM, got {value!r}")
    h, mi = int(m.group(1)), int(m.group(2))
    if mi >= 60 or h > 24 or (h == 24 and mi):
        raise _err(where, f"{value!r} is not a time of day")
    return h * 60 + mi


# -- documents ---------------------------------------------------------------------------

_PLAN_KEYS = {
    "id",
    "name",
    "mode",
    "currency",
    "monthly_fee",
    "timezone",
    "zero_rated_groups",
    "allowances",
    "rates",
    "bands",
}
_RATE_KEYS = {
    "id",
    "service",
    "price",
    "unit",
    "rating_groups",
    "prefix",
    "first_increment_s",
    "increment_s",
    "connect_fee",
    "zones",
    "bands",
    "slices",
}
_BAND_KEYS = {"id", "days", "from", "to"}
_ALLOWANCE_KEYS = {"data_bytes", "voice_seconds", "sms"}


def parse_plans_document(text: str, source: str, known_zones: set[str] | None = None) -> (
    PlansDocument
):
    """Validate a plans TOML document; raises :class:`PlanError` naming file and key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{source}: invalid TOML: {exc}") from exc
    _check_keys(raw, {"plans", "zones"}, source)
    zones: list[Zone] = []
    seen_zone: set[str] = set()
    zl = raw.get("zones", [])
    if not isinstance(zl, list):
        raise _err(f"{source}: zones", "expected an array of tables [[zones]]")
    for i, z in enumerate(zl):
        where = f"{source}: zones[{i}]"
        if not isinstance(z, dict):
            raise _err(where, "expected a table")
        _check_keys(z, {"id", "networks"}, where)
        zid = _id(z, where)
        if zid == "*":
            raise _err(f"{where}.id", "'*' is reserved")
        if zid in seen_zone:
            raise _err(f"{where}.id", f"duplicate zone {zid!r}")
        seen_zone.add(zid)
        nets = _list(z, "networks", where, str) or []
        for j, n in enumerate(nets):
            if not (n.isascii() and n.isdigit() and len(n) in (5, 6)):
                raise _err(f"{where}.networks[{j}]", f"{n!r} is not an MCC-MNC")
        zones.append(Zone(id=zid, networks=tuple(nets)))
    all_zones = seen_zone | (known_zones or set())
    pl = raw.get("plans", [])
    if not isinstance(pl, list):
        raise _err(f"{source}: plans", "expected an array of tables [[plans]]")
    seen_plan: set[str] = set()
    plans: list[dict[str, Any]] = []
    for i, p in enumerate(pl):
        where = f"{source}: plans[{i}]"
        if not isinstance(p, dict):
            raise _err(where, "expected a table")
        pid = _id(p, where)
        if pid in seen_plan:
            raise _err(f"{where}.id", f"duplicate plan {pid!r}")
        seen_plan.add(pid)
        compile_plan(p, where=where, known_zones=all_zones)  # validates every key
        plans.append(p)
    return PlansDocument(plans=tuple(plans), zones=tuple(zones))


def load_plans_file(path: str | Path, known_zones: set[str] | None = None) -> PlansDocument:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(f"{p}: not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise PlanError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    return parse_plans_document(text, str(p), known_zones)


def compile_plan(
    table: dict[str, Any], *, where: str = "plan", known_zones: set[str] | None = None,
    version: int = 0,
) -> Plan:
    """Validate one plan table and build its rating structures (tries per service)."""
    _check_keys(table, _PLAN_KEYS, where)
    pid = _id(table, where)
    mode_s = _str(table, "mode", where, "prepaid")
    try:
        mode = Mode(mode_s)
    except ValueError as exc:
        raise _err(f"{where}.mode", f"expected prepaid or postpaid, got {mode_s!r}") from exc
    currency = _str(table, "currency", where, "EUR")
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise _err(f"{where}.currency", f"expected an ISO 4217 code, got {currency!r}")
    tzname = _str(table, "timezone", where, "UTC")
    try:
        tz = zoneinfo.ZoneInfo(tzname)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise _err(f"{where}.timezone", f"unknown time zone {tzname!r}") from exc
    zrg = _list(table, "zero_rated_groups", where, int) or []
    allowances_t = table.get("allowances", {})
    if not isinstance(allowances_t, dict):
        raise _err(f"{where}.allowances", "expected a table")
    _check_keys(allowances_t, _ALLOWANCE_KEYS, f"{where}.allowances")
    allowances = Allowances(
        data_bytes=_int(allowances_t, "data_bytes", f"{where}.allowances", 0),
        voice_seconds=_int(allowances_t, "voice_seconds", f"{where}.allowances", 0),
        sms=_int(allowances_t, "sms", f"{where}.allowances", 0),
    )
    bands: dict[str, Band] = {}
    bl = table.get("bands", [])
    if not isinstance(bl, list):
        raise _err(f"{where}.bands", "expected an array of tables")
    for i, b in enumerate(bl):
        bw = f"{where}.bands[{i}]"
        if not isinstance(b, dict):
            raise _err(bw, "expected a table")
        _check_keys(b, _BAND_KEYS, bw)
        bid = _id(b, bw)
        if bid in bands:
            raise _err(f"{bw}.id", f"duplicate band {bid!r}")
        days = _list(b, "days", bw, str) or []
        day_idx: set[int] = set()
        for j, d in enumerate(days):
            if d.lower() not in DAYS:
                raise _err(f"{bw}.days[{j}]", f"expected one of {', '.join(DAYS)}, got {d!r}")
            day_idx.add(DAYS.index(d.lower()))
        f = _hhmm(_str(b, "from", bw, "00:00"), f"{bw}.from")
        t = _hhmm(_str(b, "to", bw, "24:00"), f"{bw}.to")
        if f == t:
            raise _err(f"{bw}.to", "band is empty (from == to)")
        bands[bid] = Band(id=bid, days=frozenset(day_idx), from_min=f, to_min=t)
    rates: list[Rate] = []
    rl = table.get("rates", [])
    if not isinstance(rl, list):
        raise _err(f"{where}.rates", "expected an array of tables [[plans.rates]]")
    seen_rate: set[str] = set()
    for i, r in enumerate(rl):
        rw = f"{where}.rates[{i}]"
        rate = compile_rate(r, rw, order=i, bands=bands, known_zones=known_zones)
        if rate.id in seen_rate:
            raise _err(f"{rw}.id", f"duplicate rate {rate.id!r}")
        seen_rate.add(rate.id)
        rates.append(rate)
    tries: dict[Service, PrefixTrie[tuple[Rate, ...]]] = {}
    for svc in Service:
        by_prefix: dict[str, list[Rate]] = {}
        for rate in rates:
            if rate.service is svc:
                by_prefix.setdefault(rate.prefix, []).append(rate)
        trie: PrefixTrie[tuple[Rate, ...]] = PrefixTrie()
        for prefix, group in by_prefix.items():
            trie.insert(prefix, tuple(group))
        tries[svc] = trie
    return Plan(
        id=pid,
        name=_str(table, "name", where, pid),
        mode=mode,
        currency=currency,
        monthly_fee=_money(table, "monthly_fee", where),
        timezone=tzname,
        zero_rated_groups=frozenset(zrg),
        allowances=allowances,
        rates=tuple(rates),
        bands=bands,
        tz=tz,
        tries=tries,
        version=version,
    )


_DEFAULT_UNIT = {"data": "MB", "voice": "minute", "sms": "message", "mms": "message",
                 "time": "minute"}


def compile_rate(r: Any, rw: str, *, order: int, bands: dict[str, Band] | set[str],
                 known_zones: set[str] | None) -> Rate:
    """Validate one rate table (``rw`` names it in errors) into a :class:`Rate`."""
    if not isinstance(r, dict):
        raise _err(rw, "expected a table")
    _check_keys(r, _RATE_KEYS, rw)
    rid = _id(r, rw)
    svc_s = _str(r, "service", rw)
    try:
        svc = Service(svc_s)
    except ValueError as exc:
        raise _err(f"{rw}.service",
                   f"expected data, voice, sms, mms or time, got {svc_s!r}") from exc
    unit = _str(r, "unit", rw, _DEFAULT_UNIT[svc.value])
    sizes = UNIT_SIZES[svc]
    if unit not in sizes:
        raise _err(f"{rw}.unit", f"for {svc.value} expected one of {', '.join(sizes)}")
    rgs = _list(r, "rating_groups", rw, int)
    prefix = _str(r, "prefix", rw, "")
    if prefix and not (prefix.isascii() and prefix.isdigit() and len(prefix) <= 15):
        raise _err(f"{rw}.prefix", f"expected E.164 digits (at most 15), got {prefix!r}")
    first = _int(r, "first_increment_s", rw, 1 if svc in TIMED else 0)
    inc = _int(r, "increment_s", rw, 1, minimum=1)
    zones = _list(r, "zones", rw, str) or []
    for j, z in enumerate(zones):
        if z != "*" and known_zones is not None and z not in known_zones:
            raise _err(f"{rw}.zones[{j}]", f"unknown zone {z!r}")
    rbands = _list(r, "bands", rw, str) or []
    for j, bname in enumerate(rbands):
        if bname not in bands:
            raise _err(f"{rw}.bands[{j}]", f"unknown band {bname!r}")
    slices = [_slice(x, f"{rw}.slices[{j}]")
              for j, x in enumerate(_list(r, "slices", rw, str) or [])]
    if slices and svc is not Service.DATA:
        raise _err(f"{rw}.slices", "only data rates price 5G slices")
    return Rate(
        id=rid,
        service=svc,
        price=_money(r, "price", rw),
        unit=unit,
        unit_size=sizes[unit],
        rating_groups=frozenset(rgs) if rgs is not None else None,
        prefix=prefix,
        first_increment_s=first,
        increment_s=inc,
        connect_fee=_money(r, "connect_fee", rw),
        zones=frozenset(zones),
        bands=tuple(rbands),
        order=order,
        slices=frozenset(slices),
    )
