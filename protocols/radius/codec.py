"""RADIUS packets over raw bytes (RFC 2865, 2866, 3579, 5176), sans-IO.

Verification works on the bytes as received (never on a re-encoding), every length is
checked before slicing, and digests are compared in constant time. Attribute names and
types come from a FreeRADIUS-format dictionary loaded with pyrad and passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum

HEADER = struct.Struct("!BBH16s")
MIN_LENGTH = 20
MAX_LENGTH = 4096
VENDOR_3GPP = 10415


class Code(IntEnum):
    ACCESS_REQUEST = 1
    ACCESS_ACCEPT = 2
    ACCESS_REJECT = 3
    ACCOUNTING_REQUEST = 4
    ACCOUNTING_RESPONSE = 5
    ACCESS_CHALLENGE = 11
    STATUS_SERVER = 12
    DISCONNECT_REQUEST = 40
    DISCONNECT_ACK = 41
    DISCONNECT_NAK = 42
    COA_REQUEST = 43
    COA_ACK = 44
    COA_NAK = 45


class Attr(IntEnum):
    USER_NAME = 1
    USER_PASSWORD = 2
    CHAP_PASSWORD = 3
    NAS_IP_ADDRESS = 4
    NAS_PORT = 5
    SERVICE_TYPE = 6
    FRAMED_IP_ADDRESS = 8
    FILTER_ID = 11
    REPLY_MESSAGE = 18
    STATE = 24
    CLASS = 25
    VENDOR_SPECIFIC = 26
    SESSION_TIMEOUT = 27
    CALLED_STATION_ID = 30
    CALLING_STATION_ID = 31
    NAS_IDENTIFIER = 32
    PROXY_STATE = 33
    ACCT_STATUS_TYPE = 40
    ACCT_DELAY_TIME = 41
    ACCT_INPUT_OCTETS = 42
    ACCT_OUTPUT_OCTETS = 43
    ACCT_SESSION_ID = 44
    ACCT_SESSION_TIME = 46
    ACCT_TERMINATE_CAUSE = 49
    ACCT_INPUT_GIGAWORDS = 52
    ACCT_OUTPUT_GIGAWORDS = 53
    EVENT_TIMESTAMP = 55
    EAP_MESSAGE = 79
    MESSAGE_AUTHENTICATOR = 80
    ACCT_INTERIM_INTERVAL = 85
    ERROR_CAUSE = 101


class AcctStatus(IntEnum):
    START = 1
    STOP = 2
    INTERIM_UPDATE = 3
    ACCOUNTING_ON = 7
    ACCOUNTING_OFF = 8


class Tgpp(IntEnum):
    """3GPP vendor attribute types (TS 29.061)."""

    IMSI = 1
    SGSN_MCC_MNC = 18
    USER_LOCATION_INFO = 22


class Drop(Exception):
    """A packet to discard silently; ``reason`` names the counter to bump."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Packet:
    code: int
    identifier: int
    authenticator: bytes
    attributes: tuple[tuple[int, bytes], ...]
    """(type, value) in packet order; Vendor-Specific values kept whole."""
    raw: bytes
    """The packet as received, up to its Length field."""
    first: dict[int, bytes]
    """The first value of each attribute type (lookups without scanning)."""

    def get(self, attr: int) -> bytes | None:
        return self.first.get(attr)

    def all(self, attr: int) -> list[bytes]:
        return [v for t, v in self.attributes if t == attr]

    def text(self, attr: int) -> str:
        v = self.get(attr)
        return v.decode("utf-8", "replace") if v is not None else ""

    def integer(self, attr: int) -> int | None:
        v = self.get(attr)
        if v is None or len(v) != 4:
            return None
        return int.from_bytes(v, "big")

    def vsa(self, vendor: int, vtype: int) -> bytes | None:
        if Attr.VENDOR_SPECIFIC not in self.first:
            return None
        for t, v in self.attributes:
            if t != Attr.VENDOR_SPECIFIC or len(v) < 4:
                continue
            if int.from_bytes(v[:4], "big") != vendor:
                continue
            for st, sv in _sub_attributes(v[4:]):
                if st == vtype:
                    return sv
        return None


def _sub_attributes(data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 2 <= len(data):
        t, length = data[pos], data[pos + 1]
        if length < 2 or pos + length > len(data):
            return
        yield t, data[pos + 2 : pos + length]
        pos += length


def decode(data: bytes) -> Packet:
    """Parse one datagram. Octets beyond the Length field are ignored (RFC 2865 §3)."""
    if len(data) < MIN_LENGTH:
        raise Drop("short_packet")
    code, ident, length, auth = HEADER.unpack_from(data)
    if length < MIN_LENGTH or length > MAX_LENGTH or length > len(data):
        raise Drop("bad_length")
    attrs: list[tuple[int, bytes]] = []
    first: dict[int, bytes] = {}
    pos = MIN_LENGTH
    while pos < length:
        if pos + 2 > length:
            raise Drop("bad_attribute")
        t, alen = data[pos], data[pos + 1]
        if alen < 2 or pos + alen > length:
            raise Drop("bad_attribute")
        v = bytes(data[pos + 2 : pos + alen])
        attrs.append((t, v))
        if t not in first:
            first[t] = v
        pos += alen
    return Packet(code, ident, auth, tuple(attrs), bytes(data[:length]), first)


def _md5(*parts: bytes) -> bytes:
    h = hashlib.md5(usedforsecurity=False)
    for p in parts:
        h.update(p)
    return h.digest()


def request_authenticator_ok(pkt: Packet, secret: bytes) -> bool:
    """Accounting-Request / Disconnect / CoA: MD5(Code+Id+Length+16 zero+attrs+secret)."""
    raw = pkt.raw
    expected = _md5(raw[:4], b"\x00" * 16, raw[20:], secret)
    return hmac.compare_digest(expected, pkt.authenticator)


def response_authenticator_ok(pkt: Packet, request_authenticator: bytes, secret: bytes) -> bool:
    raw = pkt.raw
    expected = _md5(raw[:4], request_authenticator, raw[20:], secret)
    return hmac.compare_digest(expected, pkt.authenticator)


def _attribute_offsets(raw: bytes) -> Iterator[tuple[int, int, int]]:
    """(type, offset of value, length of value) for each attribute of a decoded packet."""
    pos = MIN_LENGTH
    while pos + 2 <= len(raw):
        t, alen = raw[pos], raw[pos + 1]
        if alen < 2:
            return
        yield t, pos + 2, alen - 2
        pos += alen


def message_authenticator_ok(pkt: Packet, secret: bytes,
                             authenticator: bytes | None = None) -> bool | None:
    """Check Message-Authenticator (RFC 3579 §3.2): HMAC-MD5 over the packet with the
    attribute's value zeroed. None when the packet has none. ``authenticator`` replaces the
    header's (16 zero octets for Accounting/DAE requests, the request's for replies)."""
    if Attr.MESSAGE_AUTHENTICATOR not in pkt.first:
        return None
    raw = bytearray(pkt.raw)
    found: bytes | None = None
    for t, off, n in _attribute_offsets(pkt.raw):
        if t == Attr.MESSAGE_AUTHENTICATOR:
            if n != 16 or found is not None:
                return False
            found = bytes(raw[off : off + 16])
            raw[off : off + 16] = b"\x00" * 16
    if found is None:
        return None
    if authenticator is not None:
        raw[4:20] = authenticator
    expected = hmac.new(secret, bytes(raw), hashlib.md5).digest()
    return hmac.compare_digest(expected, found)


def decrypt_password(value: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """User-Password (RFC 2865 §5.2): undo the MD5 chain; trailing NULs removed."""
    if not value or len(value) % 16 or len(value) > 128:
        raise Drop("bad_password_attribute")
    out = bytearray()
    last = authenticator
    for i in range(0, len(value), 16):
        block = value[i : i + 16]
        key = _md5(secret, last)
        out.extend(a ^ b for a, b in zip(block, key, strict=True))
        last = block
    return bytes(out).rstrip(b"\x00")


def encrypt_password(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """The NAS side of :func:`decrypt_password` (for tests and the simulator)."""
    padded = password + b"\x00" * (-len(password) % 16 or (16 if not password else 0))
    out = bytearray()
    last = authenticator
    for i in range(0, len(padded), 16):
        key = _md5(secret, last)
        block = bytes(a ^ b for a, b in zip(padded[i : i + 16], key, strict=True))
        out.extend(block)
        last = block
    return bytes(out)


def attr(t: int, value: bytes | str | int) -> tuple[int, bytes]:
    if isinstance(value, int):
        return (t, value.to_bytes(4, "big"))
    if isinstance(value, str):
        return (t, value.encode())
    return (t, value)


def vsa(vendor: int, vtype: int, value: bytes | str) -> tuple[int, bytes]:
    v = value.encode() if isinstance(value, str) else value
    return (Attr.VENDOR_SPECIFIC, vendor.to_bytes(4, "big") + bytes((vtype, len(v) + 2)) + v)


def _attrs_bytes(attributes: Iterable[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for t, v in attributes:
        if len(v) > 253:
            raise ValueError(f"attribute {t} value too long ({len(v)} octets)")
        out += bytes((t, len(v) + 2)) + v
    return bytes(out)


def encode_reply(code: int, request: Packet, secret: bytes,
                 attributes: Iterable[tuple[int, bytes]], *,
                 message_authenticator: bool = False) -> bytes:
    """A reply to ``request``. With ``message_authenticator`` the attribute goes first
    (BlastRADIUS advice), computed over the packet with the request's authenticator."""
    body = _attrs_bytes(attributes)
    if message_authenticator:
        body = bytes((Attr.MESSAGE_AUTHENTICATOR, 18)) + b"\x00" * 16 + body
    length = MIN_LENGTH + len(body)
    if length > MAX_LENGTH:
        raise ValueError("reply too large")
    head = struct.pack("!BBH", code, request.identifier, length)
    if message_authenticator:
        mac = hmac.new(secret, head + request.authenticator + body, hashlib.md5).digest()
        body = body[:2] + mac + body[18:]
    auth = _md5(head, request.authenticator, body, secret)
    return head + auth + body


def encode_request(code: int, identifier: int, secret: bytes,
                   attributes: Iterable[tuple[int, bytes]], *,
                   message_authenticator: bool = False,
                   password: bytes | None = None) -> bytes:
    """A request as a NAS or a DAE client sends it.

    Access-Request gets a random authenticator (and ``password`` hidden with it);
    Accounting, Disconnect and CoA requests get MD5(... 16 zero octets ... secret).
    """
    attrs = list(attributes)
    if code == Code.ACCESS_REQUEST:
        authenticator = os.urandom(16)
        if password is not None:
            attrs.insert(0, (Attr.USER_PASSWORD, encrypt_password(password, secret,
                                                                  authenticator)))
    else:
        authenticator = b"\x00" * 16
    body = _attrs_bytes(attrs)
    if message_authenticator:
        body = bytes((Attr.MESSAGE_AUTHENTICATOR, 18)) + b"\x00" * 16 + body
    length = MIN_LENGTH + len(body)
    head = struct.pack("!BBH", code, identifier, length)
    if message_authenticator:
        mac = hmac.new(secret, head + authenticator + body, hashlib.md5).digest()
        body = body[:2] + mac + body[18:]
    if code != Code.ACCESS_REQUEST:
        authenticator = _md5(head, b"\x00" * 16, body, secret)
    return head + authenticator + body
