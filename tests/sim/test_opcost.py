"""``python -m sim.opcost`` measures each operation on a real store."""

from __future__ import annotations

from tests_support import CONFIG_DIR

from sim.opcost import measure


def test_measures_every_operation() -> None:
    got = measure(20, 2, CONFIG_DIR / "plans.toml")
    assert set(got) == {"reserve + final commit", "interim commit", "sms debit"}
    assert all(0 < us < 100_000 for us in got.values())
