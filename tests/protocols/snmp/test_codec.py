"""The BER decoder: pysnmp-built messages decode to the same varbinds; any bytes decode
or raise Drop."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pyasn1.codec.ber import encoder
from pysnmp.proto import api

from protocols.snmp.codec import INFORM, TRAP_V2, Drop, decode, encode_inform_response, raw_varbinds


def pysnmp_v2c(pdu_kind: str = "trap") -> bytes:
    p = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    pdu = p.SNMPv2TrapPDU() if pdu_kind == "trap" else p.InformRequestPDU()
    p.apiTrapPDU.set_defaults(pdu) if pdu_kind == "trap" else p.apiPDU.set_defaults(pdu)
    p.apiPDU.set_request_id(pdu, 4242)
    p.apiPDU.set_varbinds(pdu, [
        ((1, 3, 6, 1, 2, 1, 1, 3, 0), p.TimeTicks(12345)),
        ((1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0), p.ObjectIdentifier((1, 3, 6, 1, 6, 3, 1, 1, 5, 3))),
        ((1, 3, 6, 1, 2, 1, 2, 2, 1, 1, 3), p.Integer(3)),
        ((1, 3, 6, 1, 2, 1, 2, 2, 1, 2, 3), p.OctetString(b"eth0")),
        ((1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 6, 3), p.Counter64(2**40 + 7)),
    ])
    msg = p.Message()
    p.apiMessage.set_defaults(msg)
    p.apiMessage.set_community(msg, "public")
    p.apiMessage.set_pdu(msg, pdu)
    return bytes(encoder.encode(msg))


def test_pysnmp_trap_decodes() -> None:
    m = decode(pysnmp_v2c())
    assert (m.version, m.community, m.pdu_type, m.request_id) == (1, b"public", TRAP_V2, 4242)
    assert m.trap_oid == "1.3.6.1.6.3.1.1.5.3"
    assert dict(m.varbinds)["1.3.6.1.2.1.2.2.1.2.3"] == "eth0"
    assert dict(m.varbinds)["1.3.6.1.2.1.31.1.1.1.6.3"] == str(2**40 + 7)
    assert dict(m.varbinds)["1.3.6.1.2.1.1.3.0"] == "12345"


def test_our_encoder_decodes_in_pysnmp_and_ours() -> None:
    from pyasn1.codec.ber import decoder

    from protocols.snmp.codec import encode_trap_v2c

    raw = encode_trap_v2c(b"public", 7, 300, "1.3.6.1.6.3.1.1.5.3",
                          [("1.3.6.1.2.1.2.2.1.1.3", 3), ("1.3.6.1.2.1.2.2.1.2.3", "eth0"),
                           ("1.3.6.1.4.1.99999.200.300", 2**31 - 1)])
    m = decode(raw)
    assert m.trap_oid == "1.3.6.1.6.3.1.1.5.3" and m.request_id == 7
    assert dict(m.varbinds)["1.3.6.1.4.1.99999.200.300"] == str(2**31 - 1)
    p = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    msg, rest = decoder.decode(raw, asn1Spec=p.Message())
    assert rest == b""
    vbs = p.apiPDU.get_varbinds(p.apiMessage.get_pdu(msg))
    assert str(vbs[3][1]) == "eth0" and int(vbs[2][1]) == 3


def test_inform_response_decodes_in_pysnmp() -> None:
    from pyasn1.codec.ber import decoder

    raw = pysnmp_v2c("inform")
    m = decode(raw)
    assert m.pdu_type == INFORM
    resp = encode_inform_response(m, raw_varbinds(raw))
    p = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    msg, rest = decoder.decode(resp, asn1Spec=p.Message())
    assert rest == b""
    pdu = p.apiMessage.get_pdu(msg)
    assert pdu.isSameTypeWith(p.ResponsePDU())
    assert int(p.apiPDU.get_request_id(pdu)) == 4242
    assert len(p.apiPDU.get_varbinds(pdu)) == 5


SEED = pysnmp_v2c()


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.tuples(st.integers(0, len(SEED) - 1), st.binary(min_size=1, max_size=4))
                 .map(lambda t: SEED[: t[0]] + t[1] + SEED[t[0] + len(t[1]):])))
def test_fuzz_decode(data: bytes) -> None:
    try:
        decode(data)
    except Drop:
        pass
