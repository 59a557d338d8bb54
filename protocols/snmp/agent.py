"""Maps SNMP notifications to NOC alarm notifications.

The alarm key is (element, resource, alarm type) — never the trap OID — so linkUp clears
the linkDown of the same ifIndex. linkDown of an interface that is administratively
down (ifAdminStatus = 2) is planned: recorded as a warning, not a major alarm.
Unknown traps are kept as indeterminate events, one alarm per trap OID.
"""

from __future__ import annotations

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


def to_notification(msg: Message, source: str, at: int) -> Notification:
    element = msg.agent_addr or source
    trap = msg.trap_oid
    varbinds = _named(msg)
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
