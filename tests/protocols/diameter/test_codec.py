"""The lean Diameter codec: round trips, declared errors, and python-diameter 0.9.0 as the
independent oracle (ours -> theirs and theirs -> ours, on generated messages)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from diameter.message import Message as TheirMessage
from diameter.message.avp import Avp as TheirAvp
from diameter.message.avp import avp as their_avp_types
from diameter.message.avp.dictionary import AVP_DICTIONARY, AVP_VENDOR_DICTIONARY
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from protocols.diameter import codec as c
from protocols.diameter.codec import A, Avp, FramingError, MessageError, Rc
from protocols.diameter.dictionary import DEFAULT, AvpDef, DictionaryError, parse

DEFS = sorted(DEFAULT.by_key.values(), key=lambda d: (d.vendor, d.code))
LEAVES = [d for d in DEFS if d.type != "Grouped"]
GROUPS = [d for d in DEFS if d.type == "Grouped"]

THEIR_TYPE = {
    their_avp_types.AvpOctetString: {"OctetString", "DiameterIdentity", "IPFilterRule"},
    their_avp_types.AvpUtf8String: {"UTF8String", "DiameterURI"},
    their_avp_types.AvpUnsigned32: {"Unsigned32"},
    their_avp_types.AvpUnsigned64: {"Unsigned64"},
    their_avp_types.AvpInteger32: {"Integer32", "Enumerated"},
    their_avp_types.AvpInteger64: {"Integer64"},
    their_avp_types.AvpFloat32: {"Float32"},
    their_avp_types.AvpFloat64: {"Float64"},
    their_avp_types.AvpGrouped: {"Grouped"},
    their_avp_types.AvpAddress: {"Address"},
    their_avp_types.AvpTime: {"Time"},
}


def their_entry(d: AvpDef) -> Any:
    if d.vendor == 0:
        return AVP_DICTIONARY.get(d.code)
    return AVP_VENDOR_DICTIONARY.get(d.vendor, {}).get(d.code)


# Where python-diameter 0.9.0 differs from the RFC text, the RFC wins (same wire size):
# RFC 6733 §4.5 / §8 make these Unsigned32 (python-diameter: Integer32); 3GPP-NSAPI is
# UTF8String in TS 29.061 (python-diameter: OctetString).
RFC_OVER_ORACLE = {"Result-Code", "Session-Binding", "Authorization-Lifetime",
                   "Inband-Security-Id", "3GPP-NSAPI"}


def test_dictionary_agrees_with_python_diameter() -> None:
    """Every AVP both dictionaries know has the same base type (Charging-Rule-Base-Name
    was OctetString here until this test compared it)."""
    compared = 0
    for d in DEFS:
        entry = their_entry(d)
        if entry is None or d.name in RFC_OVER_ORACLE:
            continue
        compared += 1
        allowed = next(v for k, v in THEIR_TYPE.items() if issubclass(entry["type"], k))
        assert d.type in allowed, (d, entry)
    assert compared >= 120


def test_dictionary_file_errors_name_the_line() -> None:
    with pytest.raises(DictionaryError, match=r"x:2: unknown type"):
        parse("AVP A 1 Unsigned32 M\nAVP B 2 Bogus M\n", "x")
    with pytest.raises(DictionaryError, match="defined twice"):
        c.Dictionary([AvpDef("A", 1, "Unsigned32", True), AvpDef("A", 1, "Unsigned32", True)])


def test_round_trip_every_type() -> None:
    body = b"".join([
        c.utf8(A.SESSION_ID, "pgw;1;ü"),
        c.u32(A.CC_REQUEST_NUMBER, 0xFFFFFFFF),
        c.u64(A.CC_TOTAL_OCTETS, 2**64 - 1),
        c.i32(A.EXPONENT, -6),
        c.i64(A.VALUE_DIGITS, -(2**63)),
        c.address(A.HOST_IP_ADDRESS, "2001:db8::1"),
        c.address(A.HOST_IP_ADDRESS, "192.0.2.1"),
        c.time_(55, 1_800_000_000),
        c.f32(9999, 1.5, flags=0),
        c.f64(9998, -2.25, flags=0, vendor=99),
        c.grouped(A.MULTIPLE_SERVICES_CREDIT_CONTROL, c.u32(A.RATING_GROUP, 10),
                  c.grouped(A.USED_SERVICE_UNIT, c.u32(A.CC_TIME, 7)),
                  c.u32(A.REPORTING_REASON, 2, vendor=c.VENDOR_3GPP)),
        c.octets(12345, b"\x01\x02\x03", flags=0, vendor=424242),  # unknown, kept as is
    ])
    raw = c.encode_message(272, c.FLAG_R | c.FLAG_P, 4, 7, 8, body)
    m = c.decode(raw)
    assert (m.code, m.app, m.hbh, m.e2e, m.is_request, m.is_error) == (272, 4, 7, 8, True, False)
    assert m.encode() == raw
    vals = [c.value_of(a) for a in m.avps]
    assert vals[:8] == ["pgw;1;ü", 0xFFFFFFFF, 2**64 - 1, -6, -(2**63), "2001:db8::1",
                        "192.0.2.1", 1_800_000_000]
    assert m.avps[8].f32 == 1.5 and m.avps[9].f64 == -2.25 and m.avps[9].vendor == 99
    assert vals[10] == [(432, 0, 10), (446, 0, [(420, 0, 7)]), (872, 10415, 2)]
    assert m.avps[11].data == b"\x01\x02\x03" and m.avps[11].vendor == 424242
    c.check(m.avps)  # unknown without M: fine


def test_framing_and_length_errors() -> None:
    with pytest.raises(FramingError):
        c.frame_length(b"\x01\x00\x00\x10")  # shorter than a header
    with pytest.raises(FramingError):
        c.frame_length(b"\x01\x00\x00\x17")  # not a multiple of 4
    assert c.frame_length(b"\x01\x00") is None
    ok = c.encode_message(280, c.FLAG_R, 0, 1, 1, c.u32(A.ORIGIN_STATE_ID, 1))
    bad_version = b"\x02" + ok[1:]
    with pytest.raises(MessageError) as e:
        c.decode(bad_version)
    assert e.value.result_code == Rc.UNSUPPORTED_VERSION
    # an AVP claiming more bytes than the message has
    broken = ok[:20] + struct.pack("!II", 278, (0x40 << 24) | 200) + ok[28:]
    with pytest.raises(MessageError) as e:
        c.decode(broken)
    assert e.value.result_code == Rc.INVALID_AVP_LENGTH and e.value.failed_avp
    # Unsigned32 with 3 bytes of payload
    short = c.encode_message(280, c.FLAG_R, 0, 1, 1, c.octets(A.ORIGIN_STATE_ID, b"abc"))
    with pytest.raises(MessageError) as e:
        c.check(c.decode(short).avps)
    assert e.value.result_code == Rc.INVALID_AVP_LENGTH
    failed = c.decode_avps(e.value.failed_avp or b"", 0, len(e.value.failed_avp or b""))
    assert [(a.code, a.data) for a in failed] == [(A.ORIGIN_STATE_ID, b"abc")]


def test_unknown_mandatory_avp_is_5001_with_the_avp() -> None:
    weird = c.u32(1, 5, vendor=99999)
    m = c.decode(c.encode_message(272, c.FLAG_R, 4, 1, 1, c.utf8(A.SESSION_ID, "x") + weird))
    with pytest.raises(MessageError) as e:
        c.check(m.avps)
    assert e.value.result_code == Rc.AVP_UNSUPPORTED and e.value.failed_avp == weird


def test_depth_cap() -> None:
    inner = c.u32(A.RATING_GROUP, 1)
    for _ in range(c.MAX_DEPTH + 2):
        inner = c.grouped(A.MULTIPLE_SERVICES_CREDIT_CONTROL, inner)
    m = c.decode(c.encode_message(272, c.FLAG_R, 4, 1, 1, inner))
    with pytest.raises(MessageError) as e:
        c.check(m.avps)
    assert e.value.result_code == Rc.INVALID_AVP_VALUE


def test_zero_filled_missing_avp() -> None:
    a = c.decode_avps(c.zero_filled(A.CC_REQUEST_TYPE), 0, 12)[0]
    assert (a.code, a.data) == (A.CC_REQUEST_TYPE, b"\x00" * 4)
    assert c.decode_avps(c.zero_filled(A.SESSION_ID), 0, 8)[0].data == b""


# -- differential against python-diameter ------------------------------------------------

def _leaf_value(d: AvpDef) -> st.SearchStrategy[Any]:
    t = d.type
    if t in ("Unsigned32", "Time"):
        return st.integers(0, 2**32 - 1)
    if t == "Enumerated" or t == "Integer32":
        return st.integers(-(2**31), 2**31 - 1)
    if t == "Unsigned64":
        return st.integers(0, 2**64 - 1)
    if t == "Integer64":
        return st.integers(-(2**63), 2**63 - 1)
    if t == "Address":
        return st.ip_addresses().map(str)
    if t in ("UTF8String", "DiameterURI"):
        return st.text(max_size=20)
    return st.binary(max_size=20)


def _encode_leaf(d: AvpDef, v: Any) -> bytes:
    flags = c.AVP_M if d.mandatory else 0
    t = d.type
    if t in ("Unsigned32", "Time"):
        return c.u32(d.code, v, flags, d.vendor)
    if t in ("Enumerated", "Integer32"):
        return c.i32(d.code, v, flags, d.vendor)
    if t == "Unsigned64":
        return c.u64(d.code, v, flags, d.vendor)
    if t == "Integer64":
        return c.i64(d.code, v, flags, d.vendor)
    if t == "Address":
        return c.address(d.code, v, flags, d.vendor)
    if t in ("UTF8String", "DiameterURI"):
        return c.utf8(d.code, v, flags, d.vendor)
    return c.octets(d.code, v, flags, d.vendor)


known_to_both = [d for d in LEAVES if their_entry(d) is not None]
leaf = st.sampled_from(known_to_both).flatmap(
    lambda d: _leaf_value(d).map(lambda v: _encode_leaf(d, v)))
tree = st.recursive(
    leaf,
    lambda kids: st.tuples(st.sampled_from([g for g in GROUPS if their_entry(g)]),
                           st.lists(kids, max_size=4)).map(
        lambda gk: c.grouped(gk[0].code, *gk[1], vendor=gk[0].vendor)),
    max_leaves=12)


def _theirs_as_tuples(avps: list[TheirAvp]) -> list[Any]:
    out = []
    for a in avps:
        kids = a.value if isinstance(a, their_avp_types.AvpGrouped) else None
        out.append((a.code, a.vendor_id, a.is_mandatory,
                    _theirs_as_tuples(kids) if kids is not None else a.payload))
    return out


def _ours_as_tuples(avps: list[Avp]) -> list[Any]:
    out = []
    for a in avps:
        d = DEFAULT.get(a.code, a.vendor)
        grouped = d is not None and d.type == "Grouped"
        out.append((a.code, a.vendor, a.mandatory,
                    _ours_as_tuples(a.group()) if grouped else a.data))
    return out


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tree, max_size=6), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_ours_decoded_by_python_diameter(avps: list[bytes], hbh: int, e2e: int) -> None:
    raw = c.encode_message(272, c.FLAG_R | c.FLAG_P, 4, hbh, e2e, b"".join(avps))
    theirs = TheirMessage.from_bytes(raw, plain_msg=True)
    assert theirs.header.hop_by_hop_identifier == hbh
    assert theirs.header.end_to_end_identifier == e2e
    assert theirs.header.is_request and not theirs.header.is_error
    assert _theirs_as_tuples(theirs.avps) == _ours_as_tuples(c.decode(raw).avps)
    assert theirs.as_bytes() == raw


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([d for d in known_to_both
                                 if d.name not in RFC_OVER_ORACLE]).flatmap(
    lambda d: _leaf_value(d).map(lambda v: (d, v))), max_size=8))
def test_python_diameter_decoded_by_ours(items: list[tuple[AvpDef, Any]]) -> None:
    msg = TheirMessage()
    msg.header.command_code = 272
    msg.header.application_id = 4
    msg.header.is_request = True
    expected = []
    for d, v in items:
        entry = their_entry(d)
        if issubclass(entry["type"], their_avp_types.AvpTime):
            continue
        a = TheirAvp.new(d.code, d.vendor, value=v)
        msg.append_avp(a)
        expected.append((d, v))
    ours = c.decode(msg.as_bytes())
    assert [(a.code, a.vendor) for a in ours.avps] == [(d.code, d.vendor) for d, _ in expected]
    for a, (d, v) in zip(ours.avps, expected, strict=True):
        got = c.value_of(a)
        if d.type == "Enumerated":
            got = a.i32
        if d.type == "Address":
            import ipaddress
            assert ipaddress.ip_address(got) == ipaddress.ip_address(v)
        else:
            assert got == v


# -- fuzzing: only declared errors escape -------------------------------------------------

def _decode_all(data: bytes) -> None:
    pos = 0
    while True:
        n = c.frame_length(data, pos)
        if n is None or len(data) - pos < n:
            return
        m = c.decode(data[pos:pos + n])
        c.check(m.avps)
        for a in m.avps:
            c.value_of(a)
        pos += n


VALID = c.encode_message(272, c.FLAG_R, 4, 1, 2, b"".join([
    c.utf8(A.SESSION_ID, "pgw;1;1"), c.u32(A.CC_REQUEST_TYPE, 2),
    c.grouped(A.MULTIPLE_SERVICES_CREDIT_CONTROL, c.u32(A.RATING_GROUP, 10),
              c.grouped(A.USED_SERVICE_UNIT, c.u64(A.CC_TOTAL_OCTETS, 5))),
]))


@settings(max_examples=500)
@given(st.binary(max_size=300))
@example(b"\x01\x00\x00\x14" + b"\x00" * 16)
@example(b"\x01\x00\x00\x1c" + b"\x00" * 16 + b"\x00\x00\x01\x07\x80\x00\x00\x08")
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        _decode_all(data)
    except (FramingError, MessageError):
        pass


@settings(max_examples=500)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6))
def test_fuzz_mutated_valid_message(mutations: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for pos, value in mutations:
        data[pos] = value
    try:
        _decode_all(bytes(data))
    except (FramingError, MessageError):
        pass
