"""Nchf_ConvergedCharging bodies (3GPP TS 32.291, API v3): decoding and answers.

Pure: bytes in, typed structs out (or a :class:`BadRequest` naming the offending field
as a JSON path), and answers encoded back to JSON. Only the members the CHF acts on are
declared; every other member of the 3GPP schema is accepted and ignored. Bounds come
from the schema (``Uint32``, ``Uint64``, ``sst`` 0-255, ``sd`` six hex digits) plus our
own caps on list lengths, so a hostile body costs a bounded amount of work.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

import msgspec
from msgspec import Meta

U32 = Annotated[int, Meta(ge=0, le=0xFFFFFFFF)]
U64 = Annotated[int, Meta(ge=0)]
MAX_ITEMS = 64
"""Rating groups per request, containers per rating group (ours, not 3GPP's)."""
Text = Annotated[str, Meta(max_length=512)]

PROBLEM_JSON = "application/problem+json"
JSON = "application/json"


class BadRequest(Exception):
    """A body that does not decode or breaks the schema: 400 with the field's path."""

    def __init__(self, param: str, reason: str):
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason


# -- the request ---------------------------------------------------------------------------


class Units(msgspec.Struct, omit_defaults=True):
    """requestedUnit / grantedUnit / the counts of a usedUnitContainer."""

    time: U32 | None = None
    totalVolume: U64 | None = None
    uplinkVolume: U64 | None = None
    downlinkVolume: U64 | None = None
    serviceSpecificUnits: U64 | None = None

    def volume(self) -> int | None:
        """Bytes: totalVolume, else uplink + downlink; None when none is given."""
        if self.totalVolume is not None:
            return self.totalVolume
        if self.uplinkVolume is not None or self.downlinkVolume is not None:
            return (self.uplinkVolume or 0) + (self.downlinkVolume or 0)
        return None


class UsedUnits(msgspec.Struct):
    """A usedUnitContainer."""

    localSequenceNumber: U32 | None = None
    time: U32 | None = None
    totalVolume: U64 | None = None
    uplinkVolume: U64 | None = None
    downlinkVolume: U64 | None = None
    serviceSpecificUnits: U64 | None = None
    serviceId: U32 | None = None


class MultipleUnitUsage(msgspec.Struct):
    ratingGroup: U32
    requestedUnit: Units | None = None
    usedUnitContainer: Annotated[list[UsedUnits], Meta(max_length=MAX_ITEMS)] | None = (
        None)
    UsedUnitContainer: Annotated[list[UsedUnits], Meta(max_length=MAX_ITEMS)] | None = (
        None)
    """Rel-15 (v2) spelling, accepted too."""

    def containers(self) -> list[UsedUnits]:
        return [*(self.usedUnitContainer or ()), *(self.UsedUnitContainer or ())]


class NfIdentification(msgspec.Struct):
    nodeFunctionality: Text | None = None
    nFName: Text | None = None
    nFIPv4Address: Text | None = None
    nFFqdn: Text | None = None


SD = Annotated[str, Meta(pattern="^[A-Fa-f0-9]{6}$")]


class Snssai(msgspec.Struct):
    sst: Annotated[int, Meta(ge=0, le=255)]
    sd: SD | None = None


class NetworkSlicingInfo(msgspec.Struct):
    sNSSAI: Snssai


class PduSessionInformation(msgspec.Struct):
    networkSlicingInfo: NetworkSlicingInfo | None = None
    pduSessionID: Annotated[int, Meta(ge=0, le=255)] | None = None
    dnnId: Text | None = None
    ratType: Text | None = None


class UserInformation(msgspec.Struct):
    servedGPSI: Text | None = None


class PduSessionChargingInformation(msgspec.Struct):
    chargingId: U32 | None = None
    userInformation: UserInformation | None = None
    pduSessionInformation: PduSessionInformation | None = None


class ChargingDataRequest(msgspec.Struct):
    invocationSequenceNumber: U32
    invocationTimeStamp: Text
    nfConsumerIdentification: NfIdentification | None = None
    nfIdentification: NfIdentification | None = None
    """Rel-15 (v2) name of nfConsumerIdentification."""
    subscriberIdentifier: Text | None = None
    notifyUri: Annotated[str, Meta(max_length=2048)] | None = None
    oneTimeEvent: bool | None = None
    multipleUnitUsage: Annotated[list[MultipleUnitUsage], Meta(max_length=MAX_ITEMS)] | None = (
        None)
    pDUSessionChargingInformation: PduSessionChargingInformation | None = None

    @property
    def consumer(self) -> NfIdentification:
        return self.nfConsumerIdentification or self.nfIdentification or NfIdentification()

    @property
    def usages(self) -> list[MultipleUnitUsage]:
        return self.multipleUnitUsage or []

    @property
    def pdu(self) -> PduSessionInformation | None:
        info = self.pDUSessionChargingInformation
        return info.pduSessionInformation if info is not None else None

    @property
    def slice(self) -> str:
        """The S-NSSAI as plans name it: "SST" or "SST-SD" (SD lower case); "" = none."""
        pdu = self.pdu
        if pdu is None or pdu.networkSlicingInfo is None:
            return ""
        s = pdu.networkSlicingInfo.sNSSAI
        return f"{s.sst}-{s.sd.lower()}" if s.sd else str(s.sst)

    @property
    def dnn(self) -> str:
        pdu = self.pdu
        return (pdu.dnnId or "") if pdu is not None else ""


_decoder = msgspec.json.Decoder(ChargingDataRequest)
_PATH = re.compile(r" - at `\$(.*)`$")
_SUPI = re.compile(r"^(imsi-[0-9]{5,15}|msisdn-[0-9]{5,15}|nai-.{1,253}|gci-.+|gli-.+)$")
_GPSI = re.compile(r"^msisdn-[0-9]{5,15}$")
_FUNCTIONS = frozenset({"SMF", "PGW_C_SMF"})
"""Consumers whose charging is PDU-session (data) charging: the ones this CHF serves."""


def _path(text: str) -> tuple[str, str]:
    """(field path, reason) of a msgspec validation message."""
    m = _PATH.search(text)
    if m is None:
        return "", text
    path = m.group(1)
    return (path[1:] if path.startswith(".") else path), text[: m.start()]


def decode_request(body: bytes) -> ChargingDataRequest:
    """The request in ``body``; BadRequest naming the field when it breaks the schema."""
    if not body:
        raise BadRequest("", "a ChargingDataRequest body is required")
    try:
        req = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        param, reason = _path(str(exc))
        if "missing required field" in reason and "`" in reason:
            name = reason.split("`")[1]
            param = f"{param}.{name}" if param else name
        raise BadRequest(param, reason) from None
    except msgspec.DecodeError as exc:
        raise BadRequest("", f"malformed JSON: {exc}") from None
    except RecursionError:  # arrays in arrays ... tens of thousands deep (in 64 KiB)
        raise BadRequest("", "JSON nested too deeply") from None
    if req.nfConsumerIdentification is None and req.nfIdentification is None:
        raise BadRequest("nfConsumerIdentification", "required")
    fn = req.consumer.nodeFunctionality
    if fn is not None and fn not in _FUNCTIONS:
        raise BadRequest("nfConsumerIdentification.nodeFunctionality",
                         f"{fn!r}: this CHF charges PDU sessions (SMF)")
    if req.subscriberIdentifier is not None and not _SUPI.match(req.subscriberIdentifier):
        raise BadRequest("subscriberIdentifier", "expected imsi-, msisdn- or nai-")
    info = req.pDUSessionChargingInformation
    gpsi = info.userInformation.servedGPSI if info and info.userInformation else None
    if gpsi is not None and not _GPSI.match(gpsi):
        raise BadRequest("pDUSessionChargingInformation.userInformation.servedGPSI",
                         "expected msisdn-<digits>")
    if req.notifyUri is not None and not req.notifyUri.startswith(("http://", "https://")):
        raise BadRequest("notifyUri", "an http:// or https:// URI")
    seen: set[int] = set()
    for i, u in enumerate(req.usages):
        if u.ratingGroup in seen:
            raise BadRequest(f"multipleUnitUsage[{i}].ratingGroup",
                             f"rating group {u.ratingGroup} appears twice")
        seen.add(u.ratingGroup)
        if len(u.containers()) > MAX_ITEMS:
            raise BadRequest(f"multipleUnitUsage[{i}].usedUnitContainer",
                             f"more than {MAX_ITEMS} containers")
    return req


def used_volume(u: MultipleUnitUsage) -> tuple[int, int, int]:
    """(bytes, uplink, downlink) summed over the rating group's containers."""
    total = up = down = 0
    for c in u.containers():
        up += c.uplinkVolume or 0
        down += c.downlinkVolume or 0
        if c.totalVolume is not None:
            total += c.totalVolume
        else:
            total += (c.uplinkVolume or 0) + (c.downlinkVolume or 0)
    return total, up, down


# -- the answer ----------------------------------------------------------------------------


class FinalUnitIndication(msgspec.Struct):
    finalUnitAction: str


class MultipleUnitInformation(msgspec.Struct, omit_defaults=True):
    ratingGroup: int
    resultCode: str
    grantedUnit: Units | None = None
    validityTime: int | None = None
    volumeQuotaThreshold: int | None = None
    finalUnitIndication: FinalUnitIndication | None = None


class InvalidParam(msgspec.Struct, omit_defaults=True):
    param: str
    reason: str = ""


class ProblemDetails(msgspec.Struct, omit_defaults=True):
    status: int
    title: str = ""
    detail: str = ""
    cause: str = ""
    invalidParams: list[InvalidParam] | None = None


class InvocationResult(msgspec.Struct, omit_defaults=True):
    error: ProblemDetails | None = None
    failureHandling: str = ""


class ChargingDataResponse(msgspec.Struct, omit_defaults=True):
    invocationTimeStamp: str
    invocationSequenceNumber: int
    multipleUnitInformation: list[MultipleUnitInformation] | None = None
    invocationResult: InvocationResult | None = None


class ChargingNotifyRequest(msgspec.Struct, omit_defaults=True):
    notificationType: str
    invocationTimeStamp: str = ""


_encoder = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def timestamp(now: float) -> str:
    """RFC 3339 UTC, whole seconds (the DateTime of TS 29.571)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def problem(status: int, cause: str, detail: str = "", *, param: str = "",
            reason: str = "") -> bytes:
    title = {400: "Bad Request", 403: "Forbidden", 404: "Not Found",
             405: "Method Not Allowed", 411: "Length Required", 413: "Payload Too Large",
             415: "Unsupported Media Type", 500: "Internal Server Error",
             503: "Service Unavailable"}.get(status, "")
    params = [InvalidParam(param=param, reason=reason)] if param else None
    return encode(ProblemDetails(status=status, title=title, detail=detail, cause=cause,
                                 invalidParams=params))
