"""Table-driven rating with exact amounts (micro-units)."""

from __future__ import annotations

import pytest
from tests_support import CONFIG_DIR, SATURDAY_NOON, WEDNESDAY_NOON, plans_by_id

from ocs.rating.engine import (
    UsageContext,
    billed_units,
    cost,
    cycle_of,
    max_units,
    rate_usage,
    select_rate,
)
from ocs.rating.plans import (
    PlanError,
    Service,
    compile_plan,
    load_plans_file,
    parse_plans_document,
)

PLANS = plans_by_id()
BASIC = PLANS["prepaid-basic"]
BIZ = PLANS["postpaid-business"]


def ctx(service: Service, *, at: int = WEDNESDAY_NOON, **kw: object) -> UsageContext:
    return UsageContext(service=service, at=at, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("plan", "context", "units", "rate_id", "charge"),
    [
        # data: 0.01 EUR per MB (10^6 bytes), rounded up to the micro-unit once
        (BASIC, ctx(Service.DATA, rating_group=10), 1_000_000, "data-home", 10_000),
        (BASIC, ctx(Service.DATA, rating_group=10), 1, "data-home", 1),
        (BASIC, ctx(Service.DATA, rating_group=20), 1_500_001, "data-home", 15_001),
        (BASIC, ctx(Service.DATA, rating_group=10), 0, "data-home", 0),
        # voice: 60 s first increment, then 60 s blocks, 0.10/min national
        (BASIC, ctx(Service.VOICE, destination="41441234567"), 1, "voice-national", 100_000),
        (BASIC, ctx(Service.VOICE, destination="41441234567"), 60, "voice-national", 100_000),
        (BASIC, ctx(Service.VOICE, destination="41441234567"), 61, "voice-national", 200_000),
        # weekend band wins over the all-times rate with the same prefix
        (BASIC, ctx(Service.VOICE, at=SATURDAY_NOON, destination="41441234567"), 61,
         "voice-national-weekend", 100_000),
        # longest prefix: premium with connect fee 0.50 + 2.00/min
        (BASIC, ctx(Service.VOICE, destination="41900123456"), 30, "voice-premium", 2_500_000),
        # international: 60 s first, then 30 s blocks at 0.50/min: 61 s -> 90 s -> 0.75
        (BASIC, ctx(Service.VOICE, destination="4915112345678"), 61, "voice-international",
         750_000),
        # roaming: named zone over "*"
        (BASIC, ctx(Service.DATA, rating_group=10, roaming=True, zone="EU"), 2_000_000,
         "data-eu", 100_000),
        (BASIC, ctx(Service.DATA, rating_group=10, roaming=True, zone=None), 1_000_000,
         "data-roaming", 1_000_000),
        (BASIC, ctx(Service.VOICE, roaming=True, zone="EU", destination="41441234567"), 61,
         "voice-roaming", 3_000_000),
        (BASIC, ctx(Service.SMS, destination="41791234567"), 3, "sms-national", 150_000),
        (BASIC, ctx(Service.SMS, destination="4915112345678"), 1, "sms-international",
         150_000),
        (BASIC, ctx(Service.SMS, roaming=True, zone="NA", destination="41791234567"), 1,
         "sms-roaming", 300_000),
        # per-second voice: 0.05/min, 1 s increments: 7 s -> 5833.33.. -> 5834
        (BIZ, ctx(Service.VOICE, destination="41441234567"), 7, "voice-national", 5_834),
    ],
)
def test_rate_table(plan, context, units, rate_id, charge) -> None:  # type: ignore[no-untyped-def]
    rated = rate_usage(plan, context, units)
    assert rated is not None
    assert rated.rate.id == rate_id
    assert rated.charge == charge
    assert rate_id in rated.explain()


def test_rating_group_not_priced_is_none() -> None:
    assert select_rate(BASIC, ctx(Service.DATA, rating_group=30)) is None
    assert select_rate(BASIC, ctx(Service.DATA)) is None


def test_home_only_rate_not_used_when_roaming() -> None:
    rate = select_rate(BASIC, ctx(Service.MMS, roaming=True, zone="EU"))
    assert rate is None


def test_named_rating_group_beats_any() -> None:
    doc = parse_plans_document(
        """
[[plans]]
id = "p"
[[plans.rates]]
id = "any"
service = "data"
price = "1"
[[plans.rates]]
id = "rg7"
service = "data"
price = "2"
rating_groups = [7]
""",
        "t.toml",
    )
    plan = compile_plan(doc.plans[0])
    assert select_rate(plan, ctx(Service.DATA, rating_group=7)).id == "rg7"  # type: ignore[union-attr]
    assert select_rate(plan, ctx(Service.DATA, rating_group=8)).id == "any"  # type: ignore[union-attr]


def test_zone_beats_prefix_length() -> None:
    doc = parse_plans_document(
        """
[[zones]]
id = "EU"
networks = ["26201"]
[[plans]]
id = "p"
[[plans.rates]]
id = "star-long"
service = "voice"
price = "1"
prefix = "4179"
zones = ["*"]
[[plans.rates]]
id = "eu-short"
service = "voice"
price = "2"
prefix = "4"
zones = ["EU"]
""",
        "t.toml",
    )
    plan = compile_plan(doc.plans[0])
    r = select_rate(plan, ctx(Service.VOICE, roaming=True, zone="EU", destination="41791"))
    assert r is not None and r.id == "eu-short"


@pytest.mark.parametrize(
    ("units", "first", "inc", "billed"),
    [(0, 60, 60, 0), (1, 60, 60, 60), (60, 60, 60, 60), (61, 60, 60, 120), (61, 60, 1, 61),
     (61, 30, 6, 66), (5, 0, 10, 10)],
)
def test_voice_blocks(units: int, first: int, inc: int, billed: int) -> None:
    r = select_rate(BASIC, ctx(Service.VOICE, destination="41"))
    assert r is not None
    from dataclasses import replace

    assert billed_units(replace(r, first_increment_s=first, increment_s=inc), units) == billed


def test_max_units_is_inverse_of_cost() -> None:
    data = select_rate(BASIC, ctx(Service.DATA, rating_group=10))
    voice = select_rate(BASIC, ctx(Service.VOICE, destination="41900"))
    assert data is not None and voice is not None
    for money in [0, 1, 9, 10_000, 123_457, 5_000_000]:
        for terms in (data, voice):
            u = max_units(terms, money, 10**12)
            assert cost(terms, u) <= money
            assert cost(terms, u + 1) > money or u == 10**12


def test_cycle_in_plan_timezone() -> None:
    # 2026-11-30 23:30 UTC is already December in Zurich (UTC+1)
    import calendar

    assert cycle_of(BASIC, calendar.timegm((2026, 11, 30, 23, 30, 0))) == "2026-12"
    assert cycle_of(BASIC, calendar.timegm((2026, 11, 30, 22, 30, 0))) == "2026-11"


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ('[[plans]]\nid = "p"\nbogus = 1\n', "plans[0].bogus: unknown key"),
        ('[[plans]]\nid = "p"\nmode = "x"\n', "plans[0].mode"),
        ('[[plans]]\nid = "p"\nmonthly_fee = 1.5\n', "plans[0].monthly_fee"),
        ('[[plans]]\nid = "p"\nmonthly_fee = "1.0000001"\n', "more than 6 decimals"),
        ('[[plans]]\nid = "p"\ntimezone = "Mars/Base"\n', "plans[0].timezone"),
        ('[[plans]]\nid = "p"\n[[plans.rates]]\nid = "r"\nservice = "fax"\n',
         "plans[0].rates[0].service"),
        ('[[plans]]\nid = "p"\n[[plans.rates]]\nid = "r"\nservice = "data"\nunit = "minute"\n',
         "plans[0].rates[0].unit"),
        ('[[plans]]\nid = "p"\n[[plans.rates]]\nid = "r"\nservice = "data"\nzones = ["XX"]\n',
         "plans[0].rates[0].zones[0]: unknown zone"),
        ('[[plans]]\nid = "p"\n[[plans.rates]]\nid = "r"\nservice = "voice"\nprefix = "+41"\n',
         "plans[0].rates[0].prefix"),
        ('[[plans]]\nid = "p"\n[[plans.rates]]\nid = "r"\nservice = "voice"\nbands = ["n"]\n',
         "plans[0].rates[0].bands[0]: unknown band"),
        ('[[plans]]\nid = "p"\n[[plans.bands]]\nid = "b"\nfrom = "25:00"\n',
         "plans[0].bands[0].from"),
        ('[[plans]]\nid = "p"\n[[plans]]\nid = "p"\n', "duplicate plan"),
        ('[[zones]]\nid = "Z"\nnetworks = ["abc"]\n', "zones[0].networks[0]"),
        ('[[plans]]\nid = "p"\n[[plans.rates]]\nid = "r"\nservice = "data"\nslices = ["256"]\n',
         "plans[0].rates[0].slices[0]"),
        ('[[plans]]\nid = "p"\n[[plans.rates]]\nid = "r"\nservice = "data"\n'
         'slices = ["1-00zz01"]\n', "plans[0].rates[0].slices[0]"),
        ('[[plans]]\nid = "p"\n[[plans.rates]]\nid = "r"\nservice = "voice"\nslices = ["1"]\n',
         "plans[0].rates[0].slices: only data rates"),
        ("[[plans]\n", "invalid TOML"),
        ('other = 1\n', "other: unknown key"),
    ],
)
def test_plan_errors_name_the_key(snippet: str, key: str) -> None:
    with pytest.raises(PlanError) as exc:
        parse_plans_document(snippet, "bad.toml")
    assert key in str(exc.value)
    assert str(exc.value).startswith("bad.toml")


@pytest.mark.parametrize(
    ("slice_", "rate_id", "charge"),
    [
        ("", "data-home", 10_000),  # 4G, RADIUS: no slice, the rate naming none
        ("1", "data-home", 10_000),  # eMBB without an SD: no rate names it
        ("1-000002", "data-home", 10_000),
        ("1-000001", "data-embb-video", 5_000),  # SST-SD named exactly
        ("2", "data-urllc", 50_000),  # SST named: any SD of it
        ("2-abcdef", "data-urllc", 50_000),
    ],
)
def test_a_named_slice_is_more_specific_than_none(slice_: str, rate_id: str,
                                                  charge: int) -> None:
    rated = rate_usage(BASIC, ctx(Service.DATA, rating_group=10, slice=slice_), 1_000_000)
    assert rated is not None and (rated.rate.id, rated.charge) == (rate_id, charge)


def test_slice_ranks_below_rating_group_and_sst_sd_above_sst() -> None:
    doc = parse_plans_document(
        '[[plans]]\nid = "p"\n'
        '[[plans.rates]]\nid = "rg"\nservice = "data"\nprice = "1"\nrating_groups = [7]\n'
        '[[plans.rates]]\nid = "sst"\nservice = "data"\nprice = "2"\nslices = ["1"]\n'
        '[[plans.rates]]\nid = "sd"\nservice = "data"\nprice = "3"\nslices = ["001-0000AA"]\n'
        '[[plans.rates]]\nid = "both"\nservice = "data"\nprice = "4"\nrating_groups = [8]\n'
        'slices = ["1"]\n', "t.toml")
    plan = compile_plan(doc.plans[0])
    assert next(r for r in plan.rates if r.id == "sd").slices == {"1-0000aa"}

    def pick(rg: int | None, sl: str) -> str | None:
        r = select_rate(plan, ctx(Service.DATA, rating_group=rg, slice=sl))
        return r.id if r else None

    assert pick(7, "1-0000aa") == "rg"  # a named rating group outranks a named slice
    assert pick(8, "1-0000aa") == "both"
    assert pick(None, "1-0000aa") == "sd"  # SST-SD over SST
    assert pick(None, "1-0000ab") == "sst"
    assert pick(None, "2") is None and pick(None, "") is None


def test_demo_plans_load() -> None:
    doc = load_plans_file(CONFIG_DIR / "plans.toml")
    assert {p["id"] for p in doc.plans} == {"prepaid-basic", "prepaid-data",
                                            "postpaid-business", "wifi-hourly"}
