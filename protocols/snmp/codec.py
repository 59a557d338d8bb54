"""SNMP v1/v2c notifications over raw bytes: a lean BER decoder (sans-IO).

Handles what a trap receiver gets: SNMPv1 Trap-PDU (translated to the v2 form, RFC 3584
§3.1), SNMPv2-Trap and InformRequest, and encodes the Response an InformRequest needs.
Every length is checked before slicing and nesting is capped; anything else is a
:class:`Drop` with the counter to bump. SNMPv3 (USM) is not decoded here.
"""

from __future__ import annotations

from dataclasses import dataclass

INTEGER, OCTET_STRING, NULL, OID, SEQUENCE = 0x02, 0x04, 0x05, 0x06, 0x30
IP_ADDRESS, COUNTER32, GAUGE32, TIMETICKS, OPAQUE, COUNTER64 = 0x40, 0x41, 0x42, 0x43, 0x44, 0x46
TRAP_V1, RESPONSE, INFORM, TRAP_V2 = 0xA4, 0xA2, 0xA6, 0xA7

SNMP_TRAP_OID = "1.3.6.1.6.3.1.1.4.1.0"
SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
SNMP_TRAP_ENTERPRISE = "1.3.6.1.6.3.1.1.4.3.0"
GENERIC_TRAPS = "1.3.6.1.6.3.1.1.5."  # + generic-trap + 1 (coldStart .1 ... authFailure .5)


class Drop(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    version: int  # 0 = v1, 1 = v2c
    community: bytes
    pdu_type: int
    request_id: int
    varbinds: tuple[tuple[str, str], ...]
    """(OID, value as text) in order; v1 traps are translated (sysUpTime, snmpTrapOID ...)."""
    agent_addr: str = ""

    def get(self, oid: str) -> str | None:
        for o, v in self.varbinds:
            if o == oid:
                return v
        return None

    @property
    def trap_oid(self) -> str:
        return self.get(SNMP_TRAP_OID) or ""


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the TLV at ``pos``."""
    if pos + 2 > end:
        raise Drop("truncated")
    tag = data[pos]
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > end:
            raise Drop("bad_length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > end:
        raise Drop("truncated")
    return tag, pos, pos + length


def _int(data: bytes, start: int, end: int) -> int:
    if end - start < 1 or end - start > 9:
        raise Drop("bad_integer")
    return int.from_bytes(data[start:end], "big", signed=True)


def _oid(data: bytes, start: int, end: int) -> str:
    if end <= start or end - start > 128:
        raise Drop("bad_oid")
    parts: list[int] = []
    value = 0
    for b in data[start:end]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    if data[end - 1] & 0x80:
        raise Drop("bad_oid")
    first = parts[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(p) for p in head + parts[1:])


def _value(data: bytes, tag: int, start: int, end: int) -> str:
    if tag == INTEGER:
        return str(_int(data, start, end))
    if tag in (COUNTER32, GAUGE32, TIMETICKS, COUNTER64):
        if end - start > 9:
            raise Drop("bad_integer")
        return str(int.from_bytes(data[start:end], "big"))
    if tag == OID:
        return _oid(data, start, end)
    if tag == IP_ADDRESS:
        if end - start != 4:
            raise Drop("bad_ip")
        return ".".join(str(b) for b in data[start:end])
    if tag == NULL or tag in (0x80, 0x81, 0x82):
        return ""
    if tag in (OCTET_STRING, OPAQUE):
        raw = data[start:end]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.hex()
        return text if text.isprintable() else raw.hex()
    raise Drop("bad_value_type")


def _seq(data: bytes, pos: int, end: int, tag: int = SEQUENCE) -> tuple[int, int]:
    t, start, stop = _tlv(data, pos, end)
    if t != tag:
        raise Drop("unexpected_type")
    return start, stop


def _varbinds(data: bytes, pos: int, end: int) -> list[tuple[str, str]]:
    start, stop = _seq(data, pos, end)
    out: list[tuple[str, str]] = []
    p = start
    while p < stop:
        vstart, vstop = _seq(data, p, stop)
        t, s, e = _tlv(data, vstart, vstop)
        if t != OID:
            raise Drop("bad_varbind")
        oid = _oid(data, s, e)
        vt, vs, ve = _tlv(data, e, vstop)
        out.append((oid, _value(data, vt, vs, ve)))
        p = vstop
        if len(out) > 256:
            raise Drop("too_many_varbinds")
    return out


def decode(data: bytes) -> Message:
    if len(data) > 65535:
        raise Drop("too_large")
    start, stop = _seq(data, 0, len(data))
    t, s, e = _tlv(data, start, stop)
    if t != INTEGER:
        raise Drop("bad_version")
    version = _int(data, s, e)
    if version == 3:
        raise Drop("v3_not_supported")
    if version not in (0, 1):
        raise Drop("bad_version")
    t, cs, ce = _tlv(data, e, stop)
    if t != OCTET_STRING:
        raise Drop("bad_community")
    community = data[cs:ce]
    pdu_type, ps, pe = _tlv(data, ce, stop)
    if version == 0 and pdu_type == TRAP_V1:
        return _trap_v1(data, ps, pe, community)
    if version == 1 and pdu_type in (TRAP_V2, INFORM):
        t, s, e = _tlv(data, ps, pe)
        if t != INTEGER:
            raise Drop("bad_request_id")
        request_id = _int(data, s, e)
        t, s, e2 = _tlv(data, e, pe)  # error-status
        t, s, e3 = _tlv(data, e2, pe)  # error-index
        varbinds = _varbinds(data, e3, pe)
        return Message(version, community, pdu_type, request_id, tuple(varbinds))
    raise Drop("not_a_notification")


def _trap_v1(data: bytes, pos: int, end: int, community: bytes) -> Message:
    t, s, e = _tlv(data, pos, end)
    if t != OID:
        raise Drop("bad_enterprise")
    enterprise = _oid(data, s, e)
    t, s, e = _tlv(data, e, end)
    if t != IP_ADDRESS or e - s != 4:
        raise Drop("bad_agent_addr")
    agent = ".".join(str(b) for b in data[s:e])
    t, s, e = _tlv(data, e, end)
    generic = _int(data, s, e)
    t, s, e = _tlv(data, e, end)
    specific = _int(data, s, e)
    t, s, e = _tlv(data, e, end)
    uptime = str(int.from_bytes(data[s:e], "big"))
    varbinds = _varbinds(data, e, end)
    # RFC 3584 §3.1: the v2 form of a v1 trap
    trap_oid = (f"{GENERIC_TRAPS}{generic + 1}" if generic != 6
                else f"{enterprise}.0.{specific}")
    head = [(SYS_UPTIME, uptime), (SNMP_TRAP_OID, trap_oid)]
    return Message(0, community, TRAP_V1, 0,
                   tuple(head + varbinds + [(SNMP_TRAP_ENTERPRISE, enterprise)]), agent)


# -- encoding (the Response to an InformRequest) ----------------------------------------------


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(b),)) + b


def _enc(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + _len(len(value)) + value


def _enc_int(v: int) -> bytes:
    return _enc(INTEGER, v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big", signed=True))


def encode_inform_response(msg: Message, raw_varbinds: bytes) -> bytes:
    """Response PDU echoing the inform's request-id and varbinds (RFC 3416 §4.2.7)."""
    pdu = _enc(RESPONSE, _enc_int(msg.request_id) + _enc_int(0) + _enc_int(0) + raw_varbinds)
    return _enc(SEQUENCE, _enc_int(msg.version) + _enc(OCTET_STRING, msg.community) + pdu)


def raw_varbinds(data: bytes) -> bytes:
    """The varbind list of a v2c PDU as received (for echoing in a Response)."""
    start, stop = _seq(data, 0, len(data))
    _t, _s, e = _tlv(data, start, stop)
    _t, _s, ce = _tlv(data, e, stop)
    _t, ps, pe = _tlv(data, ce, stop)
    _t, _s, e = _tlv(data, ps, pe)
    _t, _s, e2 = _tlv(data, e, pe)
    _t, _s, e3 = _tlv(data, e2, pe)
    _t, _vs, ve = _tlv(data, e3, pe)
    return data[e3:ve]


def _enc_oid(oid: str) -> bytes:
    parts = [int(p) for p in oid.split(".")]
    out = bytearray([parts[0] * 40 + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out.extend(reversed(chunk))
    return _enc(OID, bytes(out))


def encode_trap_v2c(community: bytes, request_id: int, uptime: int, trap_oid: str,
                    varbinds: list[tuple[str, int | str]], *, inform: bool = False) -> bytes:
    """A v2c SNMPv2-Trap (or InformRequest): sysUpTime, snmpTrapOID, then ``varbinds``
    (int -> INTEGER, str -> OCTET STRING). For the simulator and tests."""
    def vb(oid: str, value: bytes) -> bytes:
        return _enc(SEQUENCE, _enc_oid(oid) + value)

    ticks = uptime.to_bytes(max(1, (uptime.bit_length() + 8) // 8), "big")
    items = [vb(SYS_UPTIME, _enc(TIMETICKS, ticks)), vb(SNMP_TRAP_OID, _enc_oid(trap_oid))]
    for oid, value in varbinds:
        items.append(vb(oid, _enc_int(value) if isinstance(value, int)
                        else _enc(OCTET_STRING, value.encode())))
    pdu = _enc(INFORM if inform else TRAP_V2, _enc_int(request_id) + _enc_int(0) + _enc_int(0)
               + _enc(SEQUENCE, b"".join(items)))
    return _enc(SEQUENCE, _enc_int(1) + _enc(OCTET_STRING, community) + pdu)
