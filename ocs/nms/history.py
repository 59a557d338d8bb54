"""NMS history in the store: one sample per element and poll, kept ``history_days``,
thinned to one per hour once a day old (bounded: elements x (a day of polls + 24 a day
for the rest)); and the capacity forecast read from it.

The forecast is an ordinary least-squares line through each interface's utilisation
over the history (numpy): with a week or two of hourly points it is steady, explainable
("grows 0.8 points a day") and needs no tuning — Holt's linear trend weights recent
points more but needs smoothing parameters nobody can justify per interface; a
least-squares line over a window that is itself bounded (``history_days``) already
follows a changing trend.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from ocs.store.env import NMS, Store, pack_u64
from ocs.store.tx import Tx

DAY = 86400
HOUR = 3600
MAX_TRIM = 1000
"""Entries one record operation deletes at most (the rest go with the next ones)."""


class IfSample(msgspec.Struct, array_like=True, frozen=True):
    descr: str
    in_mbps: float | None
    out_mbps: float | None
    utilization_pct: float | None
    packet_loss_pct: float | None
    oper_up: bool
    admin_up: bool = True


class NmsSample(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    element: str
    at: int
    cpu_pct: float | None
    memory_pct: float | None
    health: int
    interfaces: tuple[IfSample, ...] = ()
    history_s: int = 7 * DAY
    """How long samples of this element are kept (``nms.history_days``)."""


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(NmsSample)


def _key(element: str, at: int) -> bytes:
    return element.encode() + b"\x00" + pack_u64(max(0, at))


def record(tx: Tx, s: NmsSample) -> bool:
    """Store a sample; drop what is past the history, thin the hour leaving the day."""
    tx.put(NMS, _key(s.element, s.at), _enc.encode(s))
    prefix = s.element.encode() + b"\x00"
    for k, _v in tx.scan(NMS, prefix, _key(s.element, s.at - s.history_s), limit=MAX_TRIM):
        tx.delete(NMS, k)
    start = (s.at - DAY) // HOUR * HOUR - HOUR
    for hour in (start, start + HOUR):
        entries = list(tx.scan(NMS, _key(s.element, hour), _key(s.element, hour + HOUR)))
        for k, _v in entries[1:]:
            tx.delete(NMS, k)
    return True


def samples(store: Store, element: str, since: int = 0) -> list[NmsSample]:
    prefix = element.encode() + b"\x00"
    out: list[NmsSample] = []
    with store.read() as txn, txn.cursor(db=store.dbs[NMS]) as cur:
        if not cur.set_range(_key(element, since)):
            return out
        for k, v in cur:
            if not bytes(k).startswith(prefix):
                break
            out.append(_dec.decode(v))
    return out


def latest(store: Store, element: str) -> NmsSample | None:
    prefix = element.encode() + b"\x00"
    with store.read() as txn, txn.cursor(db=store.dbs[NMS]) as cur:
        if not cur.set_range(prefix + b"\xff" * 8):
            if not cur.last():
                return None
        elif not cur.prev():
            return None
        k = bytes(cur.key())
        if not k.startswith(prefix):
            return None
        return _dec.decode(cur.value())


def forecast(history: list[NmsSample], threshold_pct: float,
             min_points: int = 3) -> list[dict[str, Any]]:
    """Per interface: the least-squares growth of utilisation per day over the history,
    and when it crosses ``threshold_pct`` and 100 % (UTC dates; None when not growing or
    too few points)."""
    import numpy as np

    series: dict[str, list[tuple[int, float]]] = {}
    for s in history:
        for i in s.interfaces:
            if i.utilization_pct is not None:
                series.setdefault(i.descr, []).append((s.at, i.utilization_pct))
    out: list[dict[str, Any]] = []
    for descr, points in sorted(series.items()):
        item: dict[str, Any] = {"interface": descr, "points": len(points),
                                "current_pct": round(points[-1][1], 2),
                                "growth_pct_per_day": None, "crosses_threshold_at": None,
                                "full_at": None, "threshold_pct": threshold_pct}
        if len(points) >= min_points and points[-1][0] > points[0][0]:
            t = np.array([p[0] for p in points], dtype=np.float64) / DAY
            u = np.array([p[1] for p in points], dtype=np.float64)
            slope, intercept = np.polyfit(t, u, 1)
            item["growth_pct_per_day"] = round(float(slope), 4)
            if slope > 0:
                now = t[-1]
                fitted = slope * now + intercept
                for key, level in (("crosses_threshold_at", threshold_pct), ("full_at", 100.0)):
                    day = now if fitted >= level else (level - intercept) / slope
                    item[key] = dt.datetime.fromtimestamp(float(day) * DAY, dt.UTC).strftime(
                        "%Y-%m-%d")
        out.append(item)
    return out
