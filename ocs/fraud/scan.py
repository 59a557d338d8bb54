"""Offline anomaly scan over CDR files (``ocs fraud scan --period YYYY-MM``).

Per subscriber and day, from the closed CDR files: calls, minutes, distinct
destinations, share of international calls and of night usage, data volume, SMS count,
roaming. The subscriber-days are scored with scikit-learn's IsolationForest (a fixed
seed: the same files give the same ranking); each subscriber is ranked by their most
anomalous day. The model can be saved and loaded (joblib), so a model fitted on a normal
month can score the next.
"""

from __future__ import annotations

import csv
import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocs.cdr.reader import read_cdr_files

FEATURES = ("calls", "minutes", "distinct_destinations", "international_share",
            "night_share", "data_mb", "sms", "roaming")
NIGHT = range(0, 6)


@dataclass(slots=True)
class _Day:
    calls: int = 0
    seconds: int = 0
    international: int = 0
    night: int = 0
    events: int = 0
    data_bytes: int = 0
    sms: int = 0
    roaming: int = 0
    destinations: set[str] | None = None


def period_bounds(period: str) -> tuple[int, int]:
    """[start, end) of a YYYY-MM period in UTC seconds."""
    try:
        start = datetime.datetime.strptime(period, "%Y-%m").replace(tzinfo=datetime.UTC)
    except ValueError:
        raise ValueError(f"period {period!r}: expected YYYY-MM") from None
    end = (start.replace(year=start.year + 1, month=1) if start.month == 12
           else start.replace(month=start.month + 1))
    return int(start.timestamp()), int(end.timestamp())


def daily_features(files: Iterable[Path], start: int, end: int
                   ) -> tuple[list[tuple[str, str]], list[list[float]]]:
    """(keys (msisdn, day), feature rows) for every subscriber-day with usage."""
    days: dict[tuple[str, int], _Day] = {}
    for row in read_cdr_files(files):
        r = row.record
        if not start <= r.start_time < end or (r.result == "expired" and not r.units) or (
                r.result == "rerate"):  # a re-rating adjustment is money, not usage
            continue
        key = (r.msisdn, r.start_time // 86400)
        d = days.get(key)
        if d is None:
            d = days[key] = _Day(destinations=set())
        d.events += 1
        if (r.start_time % 86400) // 3600 in NIGHT:
            d.night += 1
        if r.roaming:
            d.roaming = 1
        if r.service == "voice":
            d.calls += 1
            d.seconds += r.duration_s
            if r.destination:
                assert d.destinations is not None
                d.destinations.add(r.destination)
                if r.destination[:2] != r.msisdn[:2]:
                    d.international += 1
        elif r.service == "data":
            d.data_bytes += r.units
        elif r.service in ("sms", "mms"):
            d.sms += r.units or 1
            if r.destination:
                assert d.destinations is not None
                d.destinations.add(r.destination)
    keys, rows = [], []
    for (msisdn, day), d in sorted(days.items()):
        keys.append((msisdn, datetime.datetime.fromtimestamp(day * 86400, datetime.UTC)
                     .strftime("%Y-%m-%d")))
        rows.append([float(d.calls), d.seconds / 60.0, float(len(d.destinations or ())),
                     d.international / d.calls if d.calls else 0.0, d.night / d.events,
                     d.data_bytes / 1e6, float(d.sms), float(d.roaming)])
    return keys, rows


@dataclass(frozen=True, slots=True)
class Ranked:
    rank: int
    msisdn: str
    day: str
    score: float
    """IsolationForest anomaly score (higher = more anomalous)."""
    features: tuple[float, ...]


MAX_SAMPLES = 131_072


def fit(rows: list[list[float]], seed: int = 42, trees: int = 100) -> Any:
    """An IsolationForest on the subscriber-days. Each tree sees the whole population (up
    to :data:`MAX_SAMPLES`): with the usual 256-512 point subsamples a subscriber far
    beyond every sampled range (400 calls a day against a normal 1-4) lands in the same
    leaf as the busiest normal ones and is not isolated; measured on the generated
    100,000-subscriber month of the tests, 512 samples ranked injected anomalies 48th to
    226th, the whole population ranks them 1st to 4th."""
    from sklearn.ensemble import IsolationForest

    model = IsolationForest(n_estimators=trees, max_samples=min(MAX_SAMPLES, len(rows)),
                            random_state=seed, n_jobs=1)
    model.fit(rows)
    return model


def rank(model: Any, keys: list[tuple[str, str]], rows: list[list[float]]) -> list[Ranked]:
    """Subscribers by their most anomalous day, most anomalous first."""
    import numpy as np

    scores = -model.score_samples(np.asarray(rows, dtype=np.float64))
    best: dict[str, int] = {}
    for i, (msisdn, _day) in enumerate(keys):
        j = best.get(msisdn)
        if j is None or scores[i] > scores[j]:
            best[msisdn] = i
    order = sorted(best.values(), key=lambda i: (-scores[i], keys[i]))
    return [Ranked(n + 1, keys[i][0], keys[i][1], round(float(scores[i]), 6),
                   tuple(rows[i])) for n, i in enumerate(order)]


def save_model(model: Any, path: Path) -> None:
    import joblib

    joblib.dump({"features": FEATURES, "model": model}, path)


def load_model(path: Path) -> Any:
    import joblib

    blob = joblib.load(path)
    if not isinstance(blob, dict) or tuple(blob.get("features", ())) != FEATURES:
        raise ValueError(f"{path}: not a model saved by this version of ocs fraud scan")
    return blob["model"]


def write_csv(ranked: list[Ranked], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["rank", "msisdn", "day", "score", *FEATURES])
        for r in ranked:
            w.writerow([r.rank, r.msisdn, r.day, f"{r.score:.6f}",
                        *(f"{v:g}" for v in r.features)])
