"""Rate decks: CSV rows as a plan's rates for one service, every row checked, nothing
applied unless the whole file is valid; a new import replaces the service's deck."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests_support import CONFIG_DIR, WEDNESDAY_NOON, plans_by_id

from ocs.rating.deck import read_deck, with_deck
from ocs.rating.engine import UsageContext, rate_usage
from ocs.rating.plans import PlanError, Service, compile_plan, load_plans_file

BASIC_TABLE = next(t for t in load_plans_file(CONFIG_DIR / "plans.toml").plans
                   if t["id"] == "prepaid-basic")
ZONES = {"EU", "NA"}


def deck(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "deck.csv"
    p.write_text(text)
    return p


def test_a_deck_prices_by_longest_prefix_beside_the_plans_own_rates(tmp_path: Path) -> None:
    rows = read_deck(deck(tmp_path, "prefix,price,first_increment_s,increment_s,connect_fee\n"
                          "49,0.30,60,60,0\n4930,0.20,30,6,0.05\n44,0.25,1,1,\n"),
                     Service.VOICE, BASIC_TABLE, known_zones=ZONES)
    assert [r["id"] for r in rows] == ["deck-voice-49", "deck-voice-4930", "deck-voice-44"]
    plan = compile_plan(with_deck(BASIC_TABLE, Service.VOICE, rows), known_zones=ZONES)
    own = {r.id for r in plans_by_id()["prepaid-basic"].rates}
    assert own <= {r.id for r in plan.rates}  # hand-written rates stay

    def rate(dest: str, units: int = 61) -> tuple[str, int]:
        r = rate_usage(plan, UsageContext(service=Service.VOICE, at=WEDNESDAY_NOON,
                                          destination=dest), units)
        assert r is not None
        return r.rate.id, r.charge

    # 61 s at 0.20/min in 30 s + 6 s blocks = 66 s = 0.22 + 0.05 connect fee
    assert rate("4930123456") == ("deck-voice-4930", 270_000)
    assert rate("4989123456") == ("deck-voice-49", 600_000)  # 61 s -> 120 s at 0.30
    assert rate("41441234567")[0] == "voice-national"  # the plan's own rate
    assert rate("33123456")[0] == "voice-international"


def test_a_new_import_replaces_the_services_deck_only(tmp_path: Path) -> None:
    first = read_deck(deck(tmp_path, "prefix,price\n49,0.3\n44,0.2\n"), Service.VOICE,
                      BASIC_TABLE, known_zones=ZONES)
    table = with_deck(BASIC_TABLE, Service.VOICE, first)
    sms = read_deck(deck(tmp_path, "prefix,price\n49,0.09\n"), Service.SMS, table,
                    known_zones=ZONES)
    table = with_deck(table, Service.SMS, sms)
    second = read_deck(deck(tmp_path, "prefix,price\n33,0.1\n"), Service.VOICE, table,
                       known_zones=ZONES)
    ids = [r["id"] for r in with_deck(table, Service.VOICE, second)["rates"]]
    assert "deck-voice-33" in ids and "deck-voice-49" not in ids and "deck-sms-49" in ids
    assert len(ids) == len(BASIC_TABLE["rates"]) + 2


@pytest.mark.parametrize(("text", "error"), [
    ("", r"deck.csv:1: empty file"),
    ("prefix,cost\n49,1\n", r"deck.csv:1: unknown column 'cost'"),
    ("price\n1\n", r"deck.csv:1: the header has no 'prefix' column"),
    ("prefix,price,prefix\n1,2,3\n", r"deck.csv:1: a column is named twice"),
    ("prefix,price\n49,0.3\n44\n", r"deck.csv:3: expected 2 fields, got 1"),
    ("prefix,price\n49,0.3\n+44,0.2\n", r"deck.csv:3: prefix: expected E.164 digits"),
    ("prefix,price\n4" + "1" * 15 + ",0.3\n", r"deck.csv:2: prefix: .*at most 15"),
    ("prefix,price\n49,0.3\n44,0.1234567\n", r"deck.csv:3: price: "),
    ("prefix,price\n49,-1\n", r"deck.csv:2: price: "),
    ("prefix,price,first_increment_s\n49,0.3,x\n",
     r"deck.csv:2: first_increment_s: expected a whole number"),
    ("prefix,price,zone\n49,0.3,MARS\n", r"deck.csv:2: zones\[0\]: unknown zone 'MARS'"),
    ("prefix,price,band\n49,0.3,night\n", r"deck.csv:2: bands\[0\]: unknown band 'night'"),
    ("prefix,price\n49,0.3\n49,0.4\n", r"deck.csv:3: the same rate as line 2"),
    ("prefix,price\n", r"deck.csv: no rates"),
])
def test_bad_files_name_the_line_and_column(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(PlanError, match=error):
        read_deck(deck(tmp_path, text), Service.VOICE, BASIC_TABLE, known_zones=ZONES)


def test_zones_bands_and_ids_make_distinct_rates(tmp_path: Path) -> None:
    rows = read_deck(deck(tmp_path, "prefix,price,zone,band,id\n49,0.3,,,\n49,0.2,,weekend,\n"
                          "49,0.9,EU,,\n49,1.0,EU,,eu-premium\n"),
                     Service.VOICE, BASIC_TABLE, known_zones=ZONES)
    assert [r["id"] for r in rows] == ["deck-voice-49", "deck-voice-49-weekend",
                                       "deck-voice-49-EU", "deck-voice-eu-premium"]
    compile_plan(with_deck(BASIC_TABLE, Service.VOICE, rows), known_zones=ZONES)


def test_increments_only_for_timed_services(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"deck\.csv:2: increment_s: only voice"):
        read_deck(deck(tmp_path, "prefix,price,increment_s\n49,0.1,6\n"), Service.SMS,
                  BASIC_TABLE, known_zones=ZONES)
