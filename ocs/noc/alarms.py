"""The alarm model (ITU-T X.733 fields) and its store operations.

One alarm per (element, resource, alarm type): the notification's OID or raise/clear
state is never part of the key, so a clear (linkUp) finds the raise (linkDown) it ends.
A raise on an active alarm is a repeat (``count`` + 1, severity and varbinds updated).
``flap_count`` raise/clear transitions within ``flap_window_s`` mark the alarm flapping:
its stream events carry ``flapping`` and notification hooks are told once. Every change
appends a JSON line to the alarm journal in the same transaction; the exporter turns the
journal into the stream files, rotated like CDRs.
"""

from __future__ import annotations

import json
from enum import StrEnum

import msgspec

from ocs.store.env import (
    ALARM_JOURNAL,
    ALARM_KEYS,
    ALARMS,
    META,
    META_ALARM_SEQ,
    META_ALARM_STREAM_SEQ,
    pack_u64,
    unpack_u64,
)
from ocs.store.tx import Tx


class Severity(StrEnum):
    """ItuPerceivedSeverity names (the MIB's numbers are not ordered by urgency)."""

    CLEARED = "cleared"
    INDETERMINATE = "indeterminate"
    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"


ALARM_TYPES = frozenset({
    "other", "communicationsAlarm", "qualityOfServiceAlarm", "processingErrorAlarm",
    "equipmentAlarm", "environmentalAlarm", "integrityViolation", "operationalViolation",
    "physicalViolation", "securityServiceOrMechanismViolation", "timeDomainViolation"})


class Alarm(msgspec.Struct, kw_only=True):
    alarm_id: int
    element: str
    resource: str
    alarm_type: str
    probable_cause: str
    perceived_severity: str
    first_seen: int
    last_seen: int
    count: int = 1
    acknowledged: bool = False
    acknowledged_at: int = 0
    cleared_at: int = 0
    varbinds: dict[str, str] = {}
    additional_text: str = ""
    flapping: bool = False
    transitions: list[int] = []
    """Times of recent raise/clear transitions (flap detection)."""

    @property
    def active(self) -> bool:
        return not self.cleared_at


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """What a source reports: a raise (any severity but cleared) or a clear."""

    element: str
    resource: str = ""
    alarm_type: str = "other"
    probable_cause: str = "other"
    severity: str = Severity.INDETERMINATE
    varbinds: dict[str, str] = {}
    text: str = ""
    at: int = 0
    flap_count: int = 5
    flap_window_s: int = 300


class OperatorAction(msgspec.Struct, frozen=True, kw_only=True):
    alarm_id: int
    action: str  # ack | clear
    at: int
    user: str = ""


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Alarm)


def alarm_key(element: str, resource: str, alarm_type: str) -> bytes:
    return f"{element}\0{resource}\0{alarm_type}".encode()


def load(tx: Tx, alarm_id: int) -> Alarm | None:
    raw = tx.get(ALARMS, pack_u64(alarm_id))
    return _dec.decode(raw) if raw is not None else None


def decode(raw: bytes) -> Alarm:
    return _dec.decode(raw)


def to_json(a: Alarm) -> dict[str, object]:
    """The Contract's `alarms list --json` shape (plus flapping)."""
    return {
        "alarm_id": a.alarm_id,
        "element": a.element,
        "resource": a.resource,
        "alarm_type": a.alarm_type,
        "probable_cause": a.probable_cause,
        "perceived_severity": a.perceived_severity,
        "first_seen": a.first_seen,
        "last_seen": a.last_seen,
        "count": a.count,
        "acknowledged": a.acknowledged,
        "cleared_at": a.cleared_at or None,
        "varbinds": a.varbinds,
        "additional_text": a.additional_text,
        "flapping": a.flapping,
    }


def _save(tx: Tx, a: Alarm) -> None:
    tx.put(ALARMS, pack_u64(a.alarm_id), _enc.encode(a))


def _stream(tx: Tx, event: str, a: Alarm, at: int, **extra: object) -> None:
    raw = tx.get(META, META_ALARM_STREAM_SEQ)
    seq = (unpack_u64(raw) if raw else 0) + 1
    line = {"seq": seq, "event": event, "at": at, **to_json(a), **extra}
    tx.put(ALARM_JOURNAL, pack_u64(seq), json.dumps(line, separators=(",", ":")).encode())
    tx.put(META, META_ALARM_STREAM_SEQ, pack_u64(seq))


def _flap(a: Alarm, n: Notification, at: int) -> bool:
    """Record a transition; True when the alarm just started flapping."""
    window = [t for t in a.transitions if t > at - n.flap_window_s]
    window.append(at)
    a.transitions = window[-(n.flap_count + 1):]
    if not a.flapping and len(window) >= n.flap_count:
        a.flapping = True
        return True
    if a.flapping and len(window) < 2:
        a.flapping = False  # quiet for a whole window: no longer flapping
    return False


LIMIT_RESOURCE = "active-alarm-limit"
"""Resource of the summary alarm that stands for the raises an element's cap held back."""
GLOBAL_ELEMENT = "*"
"""Element of the summary alarm of the node-wide cap."""
_ACTIVE = b"\x01active\x00"
"""ALARM_KEYS prefix of the active-alarm counts: + element, or + nothing (all)."""


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Caps on active alarms (0 = none): per element, and over all elements."""

    per_element: int = 0
    total: int = 0


def active_count(tx: Tx, element: str | None) -> int:
    raw = tx.get(ALARM_KEYS, _ACTIVE + (element.encode() if element is not None else b""))
    return unpack_u64(raw) if raw else 0


def _count_active(tx: Tx, element: str, delta: int) -> None:
    for key in (_ACTIVE + element.encode(), _ACTIVE):
        raw = tx.get(ALARM_KEYS, key)
        n = max(0, (unpack_u64(raw) if raw else 0) + delta)
        if n:
            tx.put(ALARM_KEYS, key, pack_u64(n))
        else:
            tx.delete(ALARM_KEYS, key)


def _limited(tx: Tx, n: Notification, limits: Limits) -> tuple[str, Alarm | None] | None:
    """When a new alarm would pass a cap: the cap's summary alarm is raised (or repeated)
    instead, and the outcome is "capped"."""
    if n.resource == LIMIT_RESOURCE:
        return None
    for element, cap, counted in ((n.element, limits.per_element, n.element),
                                  (GLOBAL_ELEMENT, limits.total, None)):
        if cap and active_count(tx, counted) >= cap:
            notify(tx, Notification(
                element=element, resource=LIMIT_RESOURCE, alarm_type="qualityOfServiceAlarm",
                probable_cause="thresholdCrossed", severity=Severity.MAJOR, at=n.at,
                varbinds={"limit": str(cap), "last_element": n.element,
                          "last_resource": n.resource[:200]},
                text=f"{cap} active alarms: further raises are counted here"))
            return "capped", None
    return None


def _after_clear(tx: Tx, a: Alarm, at: int, limits: Limits) -> None:
    """One active alarm fewer; the cap's summary alarm clears once below the cap."""
    if a.resource == LIMIT_RESOURCE:
        return
    _count_active(tx, a.element, -1)
    for element, cap, counted in ((a.element, limits.per_element, a.element),
                                  (GLOBAL_ELEMENT, limits.total, None)):
        if cap and active_count(tx, counted) < cap:
            raw = tx.get(ALARM_KEYS, alarm_key(element, LIMIT_RESOURCE,
                                               "qualityOfServiceAlarm"))
            summary = load(tx, unpack_u64(raw)) if raw is not None else None
            if summary is not None and summary.active:
                notify(tx, Notification(element=element, resource=LIMIT_RESOURCE,
                                        alarm_type="qualityOfServiceAlarm",
                                        severity=Severity.CLEARED, at=at))


def notify(tx: Tx, n: Notification, limits: Limits | None = None) -> tuple[str, Alarm | None]:
    """Apply one notification. Returns (what happened, the alarm): raise | repeat |
    clear | clear_unmatched | capped (a new alarm held back by ``limits``: the cap's
    summary alarm counts it)."""
    if n.alarm_type not in ALARM_TYPES:
        raise ValueError(f"unknown alarm type {n.alarm_type!r}")
    limits = limits or Limits()
    key = alarm_key(n.element, n.resource, n.alarm_type)
    raw_id = tx.get(ALARM_KEYS, key)
    current = load(tx, unpack_u64(raw_id)) if raw_id is not None else None
    at = n.at
    if n.severity == Severity.CLEARED:
        if current is None or not current.active:
            return "clear_unmatched", current
        current.cleared_at = at
        current.last_seen = at
        current.perceived_severity = Severity.CLEARED
        current.varbinds = {**current.varbinds, **n.varbinds}
        started = _flap(current, n, at)
        _save(tx, current)
        _stream(tx, "clear", current, at, duration_s=at - current.first_seen)
        if started:
            _stream(tx, "flapping", current, at)
        _after_clear(tx, current, at, limits)
        return "clear", current
    if current is not None and current.active:
        current.count += 1
        current.last_seen = at
        current.perceived_severity = n.severity
        current.varbinds = {**current.varbinds, **n.varbinds}
        if n.text:
            current.additional_text = n.text
        _save(tx, current)
        _stream(tx, "update", current, at)
        return "repeat", current
    # a new alarm, or the same problem back after a clear (a transition for flapping)
    held = _limited(tx, n, limits)
    if held is not None:
        return held
    raw = tx.get(META, META_ALARM_SEQ)
    alarm_id = (unpack_u64(raw) if raw else 0) + 1
    tx.put(META, META_ALARM_SEQ, pack_u64(alarm_id))
    a = Alarm(alarm_id=alarm_id, element=n.element, resource=n.resource,
              alarm_type=n.alarm_type, probable_cause=n.probable_cause,
              perceived_severity=n.severity, first_seen=at, last_seen=at,
              varbinds=dict(n.varbinds), additional_text=n.text,
              transitions=list(current.transitions) if current is not None else [],
              flapping=current.flapping if current is not None else False)
    started = _flap(a, n, at) if current is not None else False
    _save(tx, a)
    tx.put(ALARM_KEYS, key, pack_u64(alarm_id))
    if a.resource != LIMIT_RESOURCE:
        _count_active(tx, a.element, 1)
    _stream(tx, "raise", a, at)
    if started:
        _stream(tx, "flapping", a, at)
    return "raise", a


class TrimAlarms(msgspec.Struct, frozen=True, kw_only=True):
    """Delete alarms cleared before ``before`` (history retention)."""

    before: int
    limit: int = 2000


def trim(tx: Tx, req: TrimAlarms) -> int:
    """Delete up to ``limit`` cleared alarms whose clear is older than ``req.before``.
    Alarm ids grow with time, so the scan stops at the first alarm first seen after
    ``before``; old alarms that are still active are kept (and skipped)."""
    n = 0
    for k, raw in tx.scan(ALARMS, limit=req.limit * 4):
        a = _dec.decode(raw)
        if a.first_seen >= req.before:
            break
        if a.active or a.cleared_at >= req.before:
            continue
        tx.delete(ALARMS, k)
        key = alarm_key(a.element, a.resource, a.alarm_type)
        if tx.get(ALARM_KEYS, key) == k:
            tx.delete(ALARM_KEYS, key)
        n += 1
        if n >= req.limit:
            break
    return n


def operator(tx: Tx, act: OperatorAction) -> Alarm:
    a = load(tx, act.alarm_id)
    if a is None:
        raise ValueError(f"no alarm {act.alarm_id}")
    if act.action == "ack":
        if a.acknowledged:
            return a
        a.acknowledged = True
        a.acknowledged_at = act.at
        _save(tx, a)
        _stream(tx, "ack", a, act.at, user=act.user)
    elif act.action == "clear":
        if not a.active:
            return a
        a.cleared_at = act.at
        a.perceived_severity = Severity.CLEARED
        _save(tx, a)
        _stream(tx, "clear", a, act.at, user=act.user, duration_s=act.at - a.first_seen)
        _after_clear(tx, a, act.at, Limits())  # the count; the caps are the server's
    else:
        raise ValueError(f"unknown action {act.action!r}")
    return a


class ExpireAlarms(msgspec.Struct, frozen=True, kw_only=True):
    """Clear active indeterminate alarms not seen since ``before``, scanning at most
    ``limit`` alarms from id ``after`` on (the caller carries the position along)."""

    before: int
    at: int
    after: int = 0
    limit: int = 5000
    limits: Limits = Limits()


class Expired(msgspec.Struct, frozen=True, kw_only=True):
    cleared: int
    next_after: int
    """Where the next call goes on (0: the scan reached the end and starts over)."""


def expire(tx: Tx, req: ExpireAlarms) -> Expired:
    """Indeterminate alarms (unknown traps) have no clearing notification: they clear
    themselves once nothing has repeated them for the configured time."""
    cleared = seen = 0
    last = req.after
    for k, raw in tx.scan(ALARMS, pack_u64(req.after + 1), limit=req.limit):
        seen += 1
        last = unpack_u64(k)
        a = _dec.decode(raw)
        if (a.active and a.perceived_severity == Severity.INDETERMINATE
                and a.last_seen < req.before):
            a.cleared_at = req.at
            a.perceived_severity = Severity.CLEARED
            _save(tx, a)
            _stream(tx, "clear", a, req.at, reason="expired",
                    duration_s=req.at - a.first_seen)
            _after_clear(tx, a, req.at, req.limits)
            cleared += 1
    return Expired(cleared=cleared, next_after=last if seen >= req.limit else 0)


def stream_line(raw: bytes) -> bytes:
    return raw + b"\n"
