"""Nchf ChargingDataRequest bodies for the CHF tests."""

from __future__ import annotations

import json
from typing import Any

BASE = "/nchf-convergedcharging/v3/chargingdata"


def usage(rg: int, ask: int | None = None, *used: int, rel15: bool = False,
          up_down: tuple[int, int] | None = None) -> dict[str, Any]:
    """One multipleUnitUsage: ``ask`` bytes requested (None: no requestedUnit), ``used``
    one usedUnitContainer each (totalVolume), ``up_down`` one more as uplink/downlink."""
    u: dict[str, Any] = {"ratingGroup": rg}
    if ask is not None:
        u["requestedUnit"] = {"totalVolume": ask} if ask else {}
    containers: list[dict[str, Any]] = [
        {"localSequenceNumber": i + 1, "totalVolume": v} for i, v in enumerate(used)]
    if up_down is not None:
        containers.append({"localSequenceNumber": len(containers) + 1,
                           "uplinkVolume": up_down[0], "downlinkVolume": up_down[1]})
    if containers:
        u["UsedUnitContainer" if rel15 else "usedUnitContainer"] = containers
    return u


def request(isn: int, *usages: dict[str, Any], sub: str | None = "imsi-228010000000001",
            notify: str | None = None, sst: int | None = None, sd: str | None = None,
            dnn: str = "internet", stamp: str = "2026-11-18T12:00:00Z",
            gpsi: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "nfConsumerIdentification": {"nodeFunctionality": "SMF", "nFName": "smf-1"},
        "invocationTimeStamp": stamp,
        "invocationSequenceNumber": isn,
    }
    if sub is not None:
        body["subscriberIdentifier"] = sub
    if notify is not None:
        body["notifyUri"] = notify
    if usages:
        body["multipleUnitUsage"] = list(usages)
    pdu: dict[str, Any] = {"pduSessionID": 5, "dnnId": dnn}
    if sst is not None:
        snssai: dict[str, Any] = {"sst": sst}
        if sd is not None:
            snssai["sd"] = sd
        pdu["networkSlicingInfo"] = {"sNSSAI": snssai}
    info: dict[str, Any] = {"chargingId": 7, "pduSessionInformation": pdu}
    if gpsi is not None:
        info["userInformation"] = {"servedGPSI": gpsi}
    body["pDUSessionChargingInformation"] = info
    body.update(extra)
    return json.dumps(body).encode()
