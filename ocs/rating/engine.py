"""Rating as pure functions: (plan, usage, time, context) -> charge, with an explanation.

Rounding happens here and only here: a charge is ``connect_fee + ceil(billed_units *
price / unit_size)`` in micro-units, where voice seconds are first rounded up to the
first increment and then to whole increments. Sessions are priced cumulatively (the
charge for a report is cost(total after) - cost(total before)), so interim reports never
round up twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from ocs.money import ceil_div
from ocs.rating.plans import TIMED, Plan, Rate, Service, slice_rank

UTC = dt.UTC


class PriceTerms(Protocol):
    @property
    def service(self) -> str: ...
    @property
    def price(self) -> int: ...
    @property
    def unit_size(self) -> int: ...
    @property
    def first_increment_s(self) -> int: ...
    @property
    def increment_s(self) -> int: ...
    @property
    def connect_fee(self) -> int: ...


class UsageContext(NamedTuple):
    """What is being rated (a tuple: it is built once per charging operation)."""

    service: Service
    at: int
    """Event time, seconds since the epoch (UTC)."""
    rating_group: int | None = None
    destination: str = ""
    zone: str | None = None
    """Roaming zone id of the visited network, or None when it is in no zone."""
    roaming: bool = False
    slice: str = ""
    """5G S-NSSAI of the PDU session ("SST" or "SST-SD"); "" = none (4G, RADIUS)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rated:
    rate: Rate
    units: int
    billed_units: int
    charge: int

    def explain(self) -> str:
        r = self.rate
        parts = [f"rate {r.id}: {self.units} {r.service.value} units"]
        if self.billed_units != self.units:
            parts.append(
                f"rounded to {self.billed_units}s ({r.first_increment_s}s first, "
                f"then {r.increment_s}s blocks)"
            )
        parts.append(f"at {r.price} micro per {r.unit}")
        if r.connect_fee:
            parts.append(f"+ connect fee {r.connect_fee} micro")
        parts.append(f"= {self.charge} micro (rounded up to 1 micro)")
        return ", ".join(parts)


def billed_units(terms: PriceTerms, units: int) -> int:
    """Units after block rounding (voice: first increment, then increments)."""
    if units <= 0:
        return 0
    if terms.service not in TIMED:
        return units
    first = terms.first_increment_s
    inc = terms.increment_s
    if units <= first:
        return first
    return first + ceil_div(units - first, inc) * inc


def cost(terms: PriceTerms, units: int) -> int:
    """Micro-units owed for ``units`` (bytes, seconds, messages) of usage in total."""
    if units <= 0:
        return 0
    return terms.connect_fee + ceil_div(billed_units(terms, units) * terms.price, terms.unit_size)


def max_units(terms: PriceTerms, money: int, cap: int) -> int:
    """The most units (<= cap) whose total cost fits in ``money``."""
    if cap <= 0 or money < 0:
        return 0
    if terms.price == 0:
        return cap if money >= terms.connect_fee else 0
    budget = money - terms.connect_fee
    if budget < 0:
        return 0
    # ceil(b * price / size) <= budget  <=>  b <= budget * size / price
    billed = (budget * terms.unit_size) // terms.price
    if terms.service in TIMED:
        first, inc = terms.first_increment_s, terms.increment_s
        if billed < first or billed <= 0:
            return 0
        units = first + ((billed - first) // inc) * inc
    else:
        units = billed
    return min(units, cap)


def local_time(plan: Plan, at: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(at, tz=plan.tz)


_cycle_cache: dict[tuple[str, int], str] = {}


def cycle_of(plan: Plan, at: int) -> str:
    """The billing cycle (calendar month in the plan's time zone) holding ``at``.

    Cached per quarter hour: every time zone offset is a multiple of 15 minutes, so a
    month boundary never falls inside one.
    """
    key = (plan.timezone, at // 900)
    cycle = _cycle_cache.get(key)
    if cycle is None:
        t = local_time(plan, at)
        cycle = f"{t.year:04d}-{t.month:02d}"
        if len(_cycle_cache) > 4096:
            _cycle_cache.clear()
        _cycle_cache[key] = cycle
    return cycle


def is_zero_rated(plan: Plan, ctx: UsageContext) -> bool:
    return ctx.rating_group is not None and ctx.rating_group in plan.zero_rated_groups


Trace = list[tuple[Rate, str, tuple[int, ...] | None]]
"""What :func:`select_rate` saw of each rate whose prefix matched: (rate, why it was
left out or "", its specificity key when it matched)."""


def select_rate(plan: Plan, ctx: UsageContext, trace: Trace | None = None) -> Rate | None:
    """The most specific rate of the service matching the event, or None.

    Specificity: a named zone over ``*``, then the longest prefix, then a named rating
    group, then a named slice (its SST-SD over its SST alone), then a named band;
    remaining ties go to the rate listed first. ``trace`` (``ocs rate explain``) gets
    every rate looked at, and why it matched or not.
    """
    trie = plan.tries.get(ctx.service)
    if trie is None or not len(trie):
        return None
    local: dt.datetime | None = None
    best: Rate | None = None
    best_key: tuple[int, int, int, int, int, int] | None = None
    for plen, rates in trie.matches(ctx.destination):
        if best is not None and trace is None and not ctx.roaming:
            break  # at home every key starts (0, plen): a shorter prefix cannot win
        for rate in rates:
            if ctx.roaming:
                if ctx.zone is not None and ctx.zone in rate.zones:
                    zrank = 2
                elif "*" in rate.zones:
                    zrank = 1
                else:
                    if trace is not None:
                        trace.append((rate, "home only" if not rate.zones else
                                      f"zones {','.join(sorted(rate.zones))} do not hold "
                                      f"{ctx.zone or 'the visited network'}", None))
                    continue
            else:
                if rate.zones:
                    if trace is not None:
                        trace.append((rate, "roaming only (the event is at home)", None))
                    continue
                zrank = 0
            if rate.rating_groups is not None:
                if ctx.rating_group is None or ctx.rating_group not in rate.rating_groups:
                    if trace is not None:
                        trace.append((rate, f"rating groups {sorted(rate.rating_groups)} do "
                                      f"not hold {ctx.rating_group}", None))
                    continue
                rg_named = 1
            else:
                rg_named = 0
            sl = slice_rank(rate.slices, ctx.slice) if rate.slices else 0
            if sl < 0:
                if trace is not None:
                    trace.append((rate, f"slices {','.join(sorted(rate.slices))} do not "
                                  f"hold {ctx.slice or 'no slice'}", None))
                continue
            if rate.bands:
                if local is None:
                    local = local_time(plan, ctx.at)
                weekday, minute = local.weekday(), local.hour * 60 + local.minute
                if not any(plan.bands[b].contains(weekday, minute) for b in rate.bands):
                    if trace is not None:
                        trace.append((rate, f"bands {','.join(rate.bands)} do not hold "
                                      f"{local:%a %H:%M} ({plan.timezone})", None))
                    continue
                band_named = 1
            else:
                band_named = 0
            key = (zrank, plen, rg_named, sl, band_named, -rate.order)
            if trace is not None:
                trace.append((rate, "", key))
            if best_key is None or key > best_key:
                best, best_key = rate, key
    return best


def rate_usage(plan: Plan, ctx: UsageContext, units: int) -> Rated | None:
    """Price ``units`` of usage in one go (events, price enquiries)."""
    rate = select_rate(plan, ctx)
    if rate is None:
        return None
    return Rated(rate=rate, units=units, billed_units=billed_units(rate, units),
                 charge=cost(rate, units))
