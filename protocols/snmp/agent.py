"""Maps SNMP notifications to NOC alarm notifications.

The alarm key is (element, resource, alarm type) — never the trap OID — so linkUp clears
the linkDown of the same ifIndex. linkDown of an interface that is administratively
down (ifAdminStatus = 2) is planned: recorded as a warning, not a major alarm.
Unknown traps are kept as indeterminate events, one alarm per trap OID.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ocs.noc.alarms import Notification, Severity
from protocols.snmp.codec import GENERIC_TRAPS, Message

IF_INDEX = "1.3.6.1.2.1.2.2.1.1."
IF_DESCR = "1.3.6.1.2.1.2.2.1.2."
IF_ADMIN_STATUS = "1.3.6.1.2.1.2.2.1.7."
IF_OPER_STATUS = "1.3.6.1.2.1.2.2.1.8."

COLD_START = GENERIC_TRAPS + "1"
WARM_START = GENERIC_TRAPS + "2"
LINK_DOWN = GENERIC_TRAPS + "3"
LINK_UP = GENERIC_TRAPS + "4"
AUTH_FAILURE = GENERIC_TRAPS + "5"

NAMES = {"1.3.6.1.2.1.2.2.1.1": "ifIndex", "1.3.6.1.2.1.2.2.1.2": "ifDescr",
         "1.3.6.1.2.1.2.2.1.7": "ifAdminStatus", "1.3.6.1.2.1.2.2.1.8": "ifOperStatus",
         "1.3.6.1.6.3.1.1.4.1": "snmpTrapOID", "1.3.6.1.2.1.1.3": "sysUpTime"}


def _named(msg: Message) -> dict[str, str]:
    out = {}
    for oid, value in msg.varbinds:
        base, _, index = oid.rpartition(".")
        name = NAMES.get(base)
        out[f"{name}.{index}" if name else oid] = value
    return out


def _if_index(msg: Message) -> str:
    for oid, value in msg.varbinds:
        if oid.startswith(IF_INDEX):
            return value
    for oid, _value in msg.varbinds:  # ifAdminStatus.N / ifOperStatus.N carry the index
        if oid.startswith((IF_ADMIN_STATUS, IF_OPER_STATUS, IF_DESCR)):
            return oid.rsplit(".", 1)[1]
    return ""


@dataclass(frozen=True, slots=True)
class TrapTable:
    """``[[noc.traps]]``: enterprise notification OID -> (mapping, is it the clear)."""

    by_oid: dict[str, tuple[Any, bool]] = field(default_factory=dict)

    @classmethod
    def of(cls, mappings: Iterable[Any]) -> TrapTable:
        table: dict[str, tuple[Any, bool]] = {}
        for m in mappings:
            table[m.oid.strip(".")] = (m, False)
            if m.clear_oid:
                table[m.clear_oid.strip(".")] = (m, True)
        return cls(table)


def _mapped(msg: Message, m: Any, clears: bool, element: str, varbinds: dict[str, str],
            at: int) -> Notification:
    resource = "device"
    if m.resource_varbind:
        prefix = m.resource_varbind.strip(".")
        for oid, value in msg.varbinds:
            if oid == prefix or oid.startswith(prefix + "."):
                resource = f"{prefix}={value}"
                break
    return Notification(element=element, resource=resource, alarm_type=m.alarm_type,
                        probable_cause=m.probable_cause,
                        severity=Severity.CLEARED if clears else m.severity,
                        varbinds=varbinds, at=at, text=m.text)


def to_notification(msg: Message, source: str, at: int,
                    table: TrapTable | None = None) -> Notification:
    element = msg.agent_addr or source
    trap = msg.trap_oid
    varbinds = _named(msg)
    if table is not None:
        hit = table.by_oid.get(trap)
        if hit is not None:
            return _mapped(msg, hit[0], hit[1], element, varbinds, at)
    if trap in (LINK_DOWN, LINK_UP):
        index = _if_index(msg)
        planned = any(o.startswith(IF_ADMIN_STATUS) and v == "2" for o, v in msg.varbinds)
        severity = Severity.CLEARED if trap == LINK_UP else (
            Severity.WARNING if planned else Severity.MAJOR)
        return Notification(element=element, resource=f"ifIndex={index}",
                            alarm_type="communicationsAlarm", probable_cause="lossOfSignal",
                            severity=severity, varbinds=varbinds, at=at,
                            text="administratively down" if planned else "")
    if trap in (COLD_START, WARM_START):
        cause = "coldStart" if trap == COLD_START else "warmStart"
        return Notification(element=element, resource="device", alarm_type="equipmentAlarm",
                            probable_cause=cause, severity=Severity.WARNING,
                            varbinds=varbinds, at=at, text=f"device {cause}")
    if trap == AUTH_FAILURE:
        return Notification(element=element, resource="snmp",
                            alarm_type="securityServiceOrMechanismViolation",
                            probable_cause="authenticationFailure", severity=Severity.MINOR,
                            varbinds=varbinds, at=at)
    return Notification(element=element, resource=trap or "unknown", alarm_type="other",
                        probable_cause="other", severity=Severity.INDETERMINATE,
                        varbinds=varbinds, at=at, text=f"trap {trap}")


@dataclass(slots=True)
class _Rate:
    window_start: float
    count: int = 0
    storming: bool = False
    last_over: float = 0.0
    suppressed: int = 0
    peak: int = 0


class StormControl:
    """Per-element trap storm control: above ``rate`` notifications in a second an
    element is in a storm; its notifications are only counted until it has stayed at or
    below the rate for ``hold_s``. Pure: the caller passes the time."""

    def __init__(self, rate: int, hold_s: float):
        self.rate = rate
        self.hold_s = hold_s
        self.elements: dict[str, _Rate] = {}

    def admit(self, element: str, now: float) -> tuple[bool, str | None]:
        """(process this notification?, "start" when a storm just began)."""
        if self.rate <= 0:
            return True, None
        r = self.elements.get(element)
        if r is None:
            r = self.elements[element] = _Rate(window_start=now)
        if now - r.window_start >= 1.0:
            r.window_start, r.count = now, 0
        r.count += 1
        r.peak = max(r.peak, r.count)
        if r.count > self.rate:
            r.last_over = now
            if not r.storming:
                r.storming = True
                r.suppressed = 1
                return False, "start"
        if r.storming:
            r.suppressed += 1
            return False, None
        return True, None

    def ended(self, now: float) -> list[tuple[str, int, int]]:
        """Elements whose storm is over: (element, notifications suppressed, peak per s).
        Also forgets quiet elements."""
        out = []
        for element, r in list(self.elements.items()):
            if r.storming and now - r.last_over >= self.hold_s:
                out.append((element, r.suppressed, r.peak))
                r.storming, r.suppressed, r.peak = False, 0, 0
            elif not r.storming and now - r.window_start > max(self.hold_s, 60.0):
                del self.elements[element]
        return out


def storm_notification(element: str, at: int, *, started: bool, rate: int,
                       suppressed: int = 0, peak: int = 0) -> Notification:
    """The summary alarm of a trap storm (raised at its start, cleared at its end)."""
    if started:
        return Notification(element=element, resource="notifications",
                            alarm_type="qualityOfServiceAlarm",
                            probable_cause="thresholdCrossed", severity=Severity.MAJOR,
                            varbinds={"threshold_per_s": str(rate)}, at=at,
                            text=f"trap storm: more than {rate} notifications/s; "
                                 "individual notifications suppressed")
    return Notification(element=element, resource="notifications",
                        alarm_type="qualityOfServiceAlarm", probable_cause="thresholdCrossed",
                        severity=Severity.CLEARED, at=at,
                        varbinds={"suppressed": str(suppressed), "peak_per_s": str(peak)},
                        text=f"trap storm over: {suppressed} notifications suppressed")
