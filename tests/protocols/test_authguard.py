"""The password-guessing brake, sans-IO (time is a parameter)."""

from __future__ import annotations

from protocols.authguard import FailureThrottle


def test_free_failures_then_doubling_hold_and_success_clears() -> None:
    g = FailureThrottle(free=3, base_s=1.0, max_s=4.0, window_s=60)
    assert [g.failed("k", t) for t in (0, 1, 2)] == [0.0, 0.0, 0.0]
    assert g.failed("k", 3) == 1.0 and g.held("k", 3.5) == 0.5
    assert g.failed("k", 4) == 2.0 and g.failed("k", 6) == 4.0
    assert g.failed("k", 10) == 4.0  # capped at max_s
    assert g.held("other", 10) == 0.0
    g.succeeded("k")
    assert g.held("k", 10) == 0.0 and len(g) == 0


def test_a_flood_of_new_names_does_not_free_a_held_key() -> None:
    g = FailureThrottle(free=1, base_s=100.0, max_keys=10)
    g.failed("victim", 0)
    assert g.failed("victim", 1) == 100.0  # held until 101
    for i in range(1000):  # the guesser fills the table with names of its own
        g.failed(f"junk{i}", 2)
    assert len(g) <= 11 and g.held("victim", 50) == 51.0
