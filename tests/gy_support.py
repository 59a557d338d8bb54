"""Building Gy CCRs with the production codec, for the agent and fraud tests."""

from __future__ import annotations

import asyncio

from tests_support import WEDNESDAY_NOON

from protocols.diameter import codec as c
from protocols.diameter.codec import VENDOR_3GPP, A, Cmd
from protocols.diameter.gy import GyAgent


def units(kind: str, value: int) -> bytes:
    code = {"octets": A.CC_TOTAL_OCTETS, "time": A.CC_TIME,
            "ssu": A.CC_SERVICE_SPECIFIC_UNITS}[kind]
    return c.u32(code, value) if kind == "time" else c.u64(code, value)


def mscc(rg: int | None, rsu: bytes | None = None, usu: list[bytes] | None = None,
         extra: bytes = b"") -> bytes:
    parts = [] if rg is None else [c.u32(A.RATING_GROUP, rg)]
    if rsu is not None:
        parts.append(c.grouped(A.REQUESTED_SERVICE_UNIT, rsu))
    for u in usu or []:
        parts.append(c.grouped(A.USED_SERVICE_UNIT, u))
    return c.grouped(A.MULTIPLE_SERVICES_CREDIT_CONTROL, *parts, extra)


def ccr(kind: int, number: int, *body: bytes, sid: str = "pgw;1;1", msisdn: str = "41790000001",
        context: str = "32251@3gpp.org", e2e: int | None = None, action: int | None = None,
        sub_type: int = 0) -> c.Message:
    parts = [
        c.utf8(A.SESSION_ID, sid),
        c.octets(A.ORIGIN_HOST, b"pgw.test.realm"),
        c.octets(A.ORIGIN_REALM, b"test.realm"),
        c.octets(A.DESTINATION_REALM, b"test.realm"),
        c.u32(A.AUTH_APPLICATION_ID, 4),
        c.utf8(A.SERVICE_CONTEXT_ID, context),
        c.u32(A.CC_REQUEST_TYPE, kind),
        c.u32(A.CC_REQUEST_NUMBER, number),
    ]
    if msisdn:
        parts.append(c.grouped(A.SUBSCRIPTION_ID, c.u32(A.SUBSCRIPTION_ID_TYPE, sub_type),
                               c.utf8(A.SUBSCRIPTION_ID_DATA, msisdn)))
    if action is not None:
        parts.append(c.u32(A.REQUESTED_ACTION, action))
    parts.extend(body)
    raw = c.encode_message(Cmd.CCR, c.FLAG_R | c.FLAG_P, 4, 7, e2e if e2e is not None else
                           kind * 100 + number, b"".join(parts))
    m = c.decode(raw)
    c.check(m.avps)
    return m


def service_info(*, visited: str = "", called: str = "") -> bytes:
    """Service-Information with PS-Information (3GPP-SGSN-MCC-MNC) and/or IMS-Information
    (Called-Party-Address)."""
    inner = []
    if visited:
        inner.append(c.grouped(A.PS_INFORMATION, c.utf8(A.TGPP_SGSN_MCC_MNC, visited,
                                                        vendor=VENDOR_3GPP),
                               vendor=VENDOR_3GPP))
    if called:
        inner.append(c.grouped(A.IMS_INFORMATION, c.utf8(A.CALLED_PARTY_ADDRESS, called,
                                                         vendor=VENDOR_3GPP),
                               vendor=VENDOR_3GPP))
    return c.grouped(A.SERVICE_INFORMATION, *inner, vendor=VENDOR_3GPP)


class Clock:
    """A settable clock for the Gy agent (seconds)."""

    def __init__(self, now: float = float(WEDNESDAY_NOON)) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(agent: GyAgent, msg: c.Message) -> c.Message:
    """The agent's CCA for ``msg``, decoded."""
    return c.decode(asyncio.run(agent.handle(msg)))


def rc(m: c.Message) -> int:
    return m.find(A.RESULT_CODE).u32  # type: ignore[union-attr]


def peer_cer(host: bytes, realm: bytes = b"test.realm") -> bytes:
    """A CER for Credit-Control, built by python-diameter (the raw peers of the abuse and
    limits tests)."""
    from diameter.message.avp import Avp
    from diameter.message.commands import CapabilitiesExchangeRequest

    cer = CapabilitiesExchangeRequest()
    cer.origin_host, cer.origin_realm = host, realm
    cer.host_ip_address = "127.0.0.1"
    cer.vendor_id = 99999
    cer.product_name = "raw"
    cer.append_avp(Avp.new(258, 0, 4))
    cer.header.hop_by_hop_identifier = cer.header.end_to_end_identifier = 1
    return bytes(cer.as_bytes())
