"""NMS history in the real store: retention, hourly thinning after a day, the latest
sample per element, and the least-squares capacity forecast."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

from ocs.nms.history import DAY, HOUR, IfSample, NmsSample, forecast, latest, record, samples
from ocs.store import Store

T0 = 1_795_000_000 // DAY * DAY  # midnight UTC


def sample(element: str, at: int, util: float | None = 10.0) -> NmsSample:
    return NmsSample(element=element, at=at, cpu_pct=10.0, memory_pct=20.0, health=90,
                     interfaces=(IfSample("eth0", 1.0, 2.0, util, 0.0, True),),
                     history_s=3 * DAY)


def test_retention_thinning_and_latest(tmp_path: Path) -> None:
    store = Store(tmp_path / "d", map_size_mb=64)
    # a poll every 10 minutes for 4 days, two elements
    for t in range(T0, T0 + 4 * DAY, 600):
        store.run_write(lambda tx, t=t: record(tx, sample("a", t)))  # type: ignore[misc]
    store.run_write(lambda tx: record(tx, sample("b", T0 + 5)))
    got = samples(store, "a")
    now = T0 + 4 * DAY - 600
    assert got[0].at >= now - 3 * DAY  # older than history_s: gone
    recent = [s for s in got if s.at >= now - DAY + HOUR]
    older = [s for s in got if s.at < now - DAY - HOUR]
    assert all(b.at - a.at == 600 for a, b in itertools.pairwise(recent))
    hours = [s.at // HOUR for s in older]
    assert len(hours) == len(set(hours))  # one per hour once a day old
    assert len(got) < 3 * 24 + 6 * 24 + 10  # bounded
    assert latest(store, "a") == got[-1] and latest(store, "b") == sample("b", T0 + 5)
    assert latest(store, "c") is None and samples(store, "c") == []
    store.close()


def test_least_squares_forecast() -> None:
    grow = [sample("a", T0 + d * DAY, 50.0 + d) for d in range(10)]  # +1 point a day
    (item,) = forecast(grow, 85.0)
    assert item["growth_pct_per_day"] == 1.0 and item["current_pct"] == 59.0
    day = dt.datetime.fromtimestamp(T0, dt.UTC)
    assert item["crosses_threshold_at"] == (day + dt.timedelta(days=35)).strftime("%Y-%m-%d")
    assert item["full_at"] == (day + dt.timedelta(days=50)).strftime("%Y-%m-%d")
    flat = [sample("a", T0 + d * DAY, 60.0 - d) for d in range(10)]
    (shrinking,) = forecast(flat, 85.0)
    assert shrinking["growth_pct_per_day"] == -1.0 and shrinking["full_at"] is None
    (few,) = forecast(grow[:2], 85.0)
    assert few["growth_pct_per_day"] is None
    over = [sample("a", T0 + d * DAY, 90.0 + d) for d in range(5)]
    assert forecast(over, 85.0)[0]["crosses_threshold_at"] == (
        day + dt.timedelta(days=4)).strftime("%Y-%m-%d")  # already above: the last day
