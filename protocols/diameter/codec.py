"""Diameter messages and AVPs over raw bytes (RFC 6733 §3, §4), sans-IO.

Decoding keeps every AVP as (code, flags, vendor, raw payload): unknown AVPs survive a
round trip byte for byte, and Grouped payloads are walked only when asked for (or by
:func:`check`, which the server runs on every request). Problems are declared errors:

* :class:`FramingError` — the byte stream cannot be split into messages any more
  (length < 20 or above the cap): the connection must be closed.
* :class:`MessageError` — the message was framed but is wrong; it carries the
  Result-Code for the answer, whether that is a protocol error (E bit), and a
  Failed-AVP payload where RFC 6733 §7.5 asks for one.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from protocols.diameter.dictionary import DEFAULT, Dictionary

HEADER_LEN = 20
MAX_MESSAGE = 1 << 20
MAX_DEPTH = 8
"""Grouped AVPs nest at most this deep (the Gy grammar needs 4)."""

# header flags
FLAG_R, FLAG_P, FLAG_E, FLAG_T = 0x80, 0x40, 0x20, 0x10
# AVP flags
AVP_V, AVP_M, AVP_P = 0x80, 0x40, 0x20

VENDOR_3GPP = 10415
NTP_OFFSET = 2208988800
"""Seconds from 1900-01-01 (Diameter Time) to 1970-01-01."""


class Cmd:
    CER = 257
    RAR = 258
    ACR = 271
    CCR = 272
    ASR = 274
    STR = 275
    DWR = 280
    DPR = 282


class App:
    COMMON = 0
    ACCOUNTING = 3
    CREDIT_CONTROL = 4
    RELAY = 0xFFFFFFFF


class Rc:
    SUCCESS = 2001
    LIMITED_SUCCESS = 2002
    COMMAND_UNSUPPORTED = 3001
    UNABLE_TO_DELIVER = 3002
    REALM_NOT_SERVED = 3003
    TOO_BUSY = 3004
    APPLICATION_UNSUPPORTED = 3007
    INVALID_HDR_BITS = 3008
    INVALID_AVP_BITS = 3009
    UNKNOWN_PEER = 3010
    END_USER_SERVICE_DENIED = 4010
    CREDIT_CONTROL_NOT_APPLICABLE = 4011
    CREDIT_LIMIT_REACHED = 4012
    AVP_UNSUPPORTED = 5001
    UNKNOWN_SESSION_ID = 5002
    INVALID_AVP_VALUE = 5004
    MISSING_AVP = 5005
    AVP_OCCURS_TOO_MANY_TIMES = 5009
    NO_COMMON_APPLICATION = 5010
    UNSUPPORTED_VERSION = 5011
    UNABLE_TO_COMPLY = 5012
    INVALID_AVP_LENGTH = 5014
    INVALID_MESSAGE_LENGTH = 5015
    NO_COMMON_SECURITY = 5017
    USER_UNKNOWN = 5030
    RATING_FAILED = 5031


class A:
    """AVP codes (vendor 0 unless the name says 3GPP)."""

    USER_NAME = 1
    FILTER_ID = 11
    CALLED_STATION_ID = 30
    EVENT_TIMESTAMP = 55
    HOST_IP_ADDRESS = 257
    AUTH_APPLICATION_ID = 258
    ACCT_APPLICATION_ID = 259
    VENDOR_SPECIFIC_APPLICATION_ID = 260
    SESSION_ID = 263
    ORIGIN_HOST = 264
    SUPPORTED_VENDOR_ID = 265
    VENDOR_ID = 266
    FIRMWARE_REVISION = 267
    RESULT_CODE = 268
    PRODUCT_NAME = 269
    DISCONNECT_CAUSE = 273
    AUTH_SESSION_STATE = 277
    ORIGIN_STATE_ID = 278
    FAILED_AVP = 279
    ERROR_MESSAGE = 281
    ROUTE_RECORD = 282
    DESTINATION_REALM = 283
    PROXY_INFO = 284
    RE_AUTH_REQUEST_TYPE = 285
    DESTINATION_HOST = 293
    ERROR_REPORTING_HOST = 294
    TERMINATION_CAUSE = 295
    ORIGIN_REALM = 296
    EXPERIMENTAL_RESULT = 297
    INBAND_SECURITY_ID = 299
    CC_INPUT_OCTETS = 412
    CC_MONEY = 413
    CC_OUTPUT_OCTETS = 414
    CC_REQUEST_NUMBER = 415
    CC_REQUEST_TYPE = 416
    CC_SERVICE_SPECIFIC_UNITS = 417
    CC_SESSION_FAILOVER = 418
    CC_TIME = 420
    CC_TOTAL_OCTETS = 421
    CHECK_BALANCE_RESULT = 422
    COST_INFORMATION = 423
    CURRENCY_CODE = 425
    CREDIT_CONTROL_FAILURE_HANDLING = 427
    EXPONENT = 429
    FINAL_UNIT_INDICATION = 430
    GRANTED_SERVICE_UNIT = 431
    RATING_GROUP = 432
    REDIRECT_ADDRESS_TYPE = 433
    REDIRECT_SERVER = 434
    REDIRECT_SERVER_ADDRESS = 435
    REQUESTED_ACTION = 436
    REQUESTED_SERVICE_UNIT = 437
    SERVICE_IDENTIFIER = 439
    SUBSCRIPTION_ID = 443
    SUBSCRIPTION_ID_DATA = 444
    UNIT_VALUE = 445
    USED_SERVICE_UNIT = 446
    VALUE_DIGITS = 447
    VALIDITY_TIME = 448
    FINAL_UNIT_ACTION = 449
    SUBSCRIPTION_ID_TYPE = 450
    MULTIPLE_SERVICES_INDICATOR = 455
    MULTIPLE_SERVICES_CREDIT_CONTROL = 456
    SERVICE_CONTEXT_ID = 461
    # 3GPP (vendor 10415)
    TGPP_SGSN_MCC_MNC = 18
    TGPP_RAT_TYPE = 21
    TGPP_USER_LOCATION_INFO = 22
    CALLED_PARTY_ADDRESS = 832
    TIME_QUOTA_THRESHOLD = 868
    VOLUME_QUOTA_THRESHOLD = 869
    UNIT_QUOTA_THRESHOLD = 1226
    QUOTA_HOLDING_TIME = 871
    REPORTING_REASON = 872
    SERVICE_INFORMATION = 873
    PS_INFORMATION = 874
    IMS_INFORMATION = 876
    ADDRESS_DATA = 897
    RECIPIENT_ADDRESS = 1201
    SMS_INFORMATION = 2000
    RECIPIENT_INFO = 2026


class FramingError(Exception):
    """The stream cannot be framed any more; close the connection."""


class MessageError(Exception):
    """A framed message that must be answered with an error."""

    def __init__(self, result_code: int, text: str, failed_avp: bytes | None = None, *,
                 protocol: bool = False):
        super().__init__(text)
        self.result_code = result_code
        self.text = text
        self.failed_avp = failed_avp
        """An encoded AVP (or AVPs) to put inside Failed-AVP."""
        self.protocol = protocol
        """A protocol error (3xxx): answered with the E bit and the answer-message grammar."""


_HDR = struct.Struct("!IIIII")
_AVP = struct.Struct("!II")
_VAVP = struct.Struct("!III")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_I32 = struct.Struct("!i")
_I64 = struct.Struct("!q")
_F32 = struct.Struct("!f")
_F64 = struct.Struct("!d")


class Avp:
    __slots__ = ("_kids", "code", "data", "flags", "vendor")

    def __init__(self, code: int, data: bytes, flags: int = AVP_M, vendor: int = 0):
        self.code = code
        self.flags = flags
        self.vendor = vendor
        self.data = data
        self._kids: list[Avp] | None = None

    def __repr__(self) -> str:
        v = f"/{self.vendor}" if self.vendor else ""
        return f"Avp({self.code}{v}, flags=0x{self.flags:02x}, {self.data!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Avp) and self.code == other.code
                and self.flags == other.flags and self.vendor == other.vendor
                and self.data == other.data)

    __hash__ = None  # type: ignore[assignment]

    @property
    def mandatory(self) -> bool:
        return bool(self.flags & AVP_M)

    # typed views; a wrong payload length is 5014 with this AVP as Failed-AVP
    def _fixed(self, n: int) -> bytes:
        if len(self.data) != n:
            raise MessageError(Rc.INVALID_AVP_LENGTH,
                               f"AVP {self.code}: payload of {len(self.data)} bytes, "
                               f"expected {n}", self.encode())
        return self.data

    @property
    def u32(self) -> int:
        return int(_U32.unpack(self._fixed(4))[0])

    @property
    def u64(self) -> int:
        return int(_U64.unpack(self._fixed(8))[0])

    @property
    def i32(self) -> int:
        return int(_I32.unpack(self._fixed(4))[0])

    @property
    def i64(self) -> int:
        return int(_I64.unpack(self._fixed(8))[0])

    @property
    def f32(self) -> float:
        return float(_F32.unpack(self._fixed(4))[0])

    @property
    def f64(self) -> float:
        return float(_F64.unpack(self._fixed(8))[0])

    @property
    def uint(self) -> int:
        """Unsigned32 or Unsigned64, whichever length the payload has."""
        if len(self.data) == 8:
            return int(_U64.unpack(self.data)[0])
        return int(_U32.unpack(self._fixed(4))[0])

    @property
    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise MessageError(Rc.INVALID_AVP_VALUE, f"AVP {self.code}: not UTF-8",
                               self.encode()) from None

    @property
    def address(self) -> str:
        d = self.data
        if len(d) == 6 and d[:2] == b"\x00\x01":
            return str(ipaddress.IPv4Address(d[2:]))
        if len(d) == 18 and d[:2] == b"\x00\x02":
            return str(ipaddress.IPv6Address(d[2:]))
        raise MessageError(Rc.INVALID_AVP_VALUE, f"AVP {self.code}: bad Address", self.encode())

    def group(self, depth: int = 1) -> list[Avp]:
        """The AVPs inside a Grouped AVP (decoded once, then cached)."""
        kids = self._kids
        if kids is not None:
            return kids
        if depth > MAX_DEPTH:
            raise MessageError(Rc.INVALID_AVP_VALUE, f"AVP {self.code}: nested deeper than "
                               f"{MAX_DEPTH}", self.encode())
        try:
            kids = self._kids = decode_avps(self.data, 0, len(self.data))
        except MessageError as exc:
            raise MessageError(exc.result_code, f"in AVP {self.code}: {exc.text}",
                               exc.failed_avp) from None
        return kids

    def encode(self) -> bytes:
        return encode_avp(self.code, self.data, self.flags, self.vendor)


def find(avps: Iterable[Avp], code: int, vendor: int = 0) -> Avp | None:
    for a in avps:
        if a.code == code and a.vendor == vendor:
            return a
    return None


def find_all(avps: Iterable[Avp], code: int, vendor: int = 0) -> Iterator[Avp]:
    for a in avps:
        if a.code == code and a.vendor == vendor:
            yield a


class Message:
    __slots__ = ("app", "avps", "code", "e2e", "flags", "hbh")

    def __init__(self, code: int, flags: int, app: int, hbh: int, e2e: int,
                 avps: list[Avp] | None = None):
        self.code = code
        self.flags = flags
        self.app = app
        self.hbh = hbh
        self.e2e = e2e
        self.avps = avps if avps is not None else []

    def __repr__(self) -> str:
        return (f"Message({self.code}, flags=0x{self.flags:02x}, app={self.app}, "
                f"hbh={self.hbh}, e2e={self.e2e}, {len(self.avps)} AVPs)")

    @property
    def is_request(self) -> bool:
        return bool(self.flags & FLAG_R)

    @property
    def is_error(self) -> bool:
        return bool(self.flags & FLAG_E)

    @property
    def is_retransmit(self) -> bool:
        return bool(self.flags & FLAG_T)

    def find(self, code: int, vendor: int = 0) -> Avp | None:
        for a in self.avps:
            if a.code == code and a.vendor == vendor:
                return a
        return None

    def find_all(self, code: int, vendor: int = 0) -> list[Avp]:
        return [a for a in self.avps if a.code == code and a.vendor == vendor]

    def encode(self) -> bytes:
        return encode_message(self.code, self.flags, self.app, self.hbh, self.e2e,
                              b"".join(a.encode() for a in self.avps))


# -- decoding ----------------------------------------------------------------------------

def frame_length(buf: bytes | bytearray | memoryview, pos: int = 0,
                 limit: int = MAX_MESSAGE) -> int | None:
    """Length of the message starting at ``pos``, None when the header is incomplete;
    FramingError past ``limit`` bytes."""
    if len(buf) - pos < 4:
        return None
    n = (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]
    if n < HEADER_LEN or n > limit or n % 4:
        raise FramingError(f"message length {n}")
    return n


def decode_header(data: bytes) -> Message:
    """The header alone (AVPs not parsed): enough to answer with an error."""
    if len(data) < HEADER_LEN:
        raise FramingError(f"{len(data)} bytes is shorter than a header")
    _, word1, app, hbh, e2e = _HDR.unpack_from(data)
    return Message(word1 & 0xFFFFFF, word1 >> 24, app, hbh, e2e)


def decode(data: bytes) -> Message:
    """One whole message (as framed by :func:`frame_length`)."""
    msg = decode_header(data)
    if data[0] != 1:
        raise MessageError(Rc.UNSUPPORTED_VERSION, f"version {data[0]}")
    length = (data[1] << 16) | (data[2] << 8) | data[3]
    if length != len(data):
        raise MessageError(Rc.INVALID_MESSAGE_LENGTH,
                           f"header says {length} bytes, got {len(data)}")
    msg.avps = decode_avps(data, HEADER_LEN, length, message=True)
    return msg


def decode_avps(data: bytes, pos: int, end: int, *, message: bool = False) -> list[Avp]:
    if type(data) is not bytes:  # a bytearray or memoryview: payloads must be bytes
        data = bytes(data)
    out: list[Avp] = []
    append = out.append
    unpack = _AVP.unpack_from
    while pos < end:
        if end - pos < 8:
            raise MessageError(Rc.INVALID_MESSAGE_LENGTH if message else Rc.INVALID_AVP_LENGTH,
                               f"{end - pos} stray bytes after the last AVP")
        code, word = unpack(data, pos)
        flags = word >> 24
        length = word & 0xFFFFFF
        hdr = 8
        vendor = 0
        if flags & AVP_V:
            hdr = 12
            if end - pos < 12:
                raise MessageError(Rc.INVALID_AVP_LENGTH, f"AVP {code}: truncated header",
                                   encode_avp(code, b"", flags & ~AVP_V))
            vendor = _U32.unpack_from(data, pos + 8)[0]
        if length < hdr or pos + length > end:
            raise MessageError(Rc.INVALID_AVP_LENGTH,
                               f"AVP {code}: length {length} does not fit",
                               encode_avp(code, b"", flags, vendor))
        append(Avp(code, data[pos + hdr:pos + length], flags, vendor))
        pos += (length + 3) & ~3
    if pos > end and message:
        raise MessageError(Rc.INVALID_MESSAGE_LENGTH, "last AVP padding runs past the end")
    return out


def check(avps: list[Avp], dictionary: Dictionary = DEFAULT, depth: int = 1) -> None:
    """RFC 6733 §7.5 checks the codec can do without the command grammar: an unknown AVP
    with the M bit is 5001; a known fixed-size AVP with another length is 5014; a
    Grouped AVP is walked to :data:`MAX_DEPTH`."""
    shape = dictionary.shape
    for a in avps:
        n = shape.get((a.code, a.vendor))
        if n is None:
            if a.flags & AVP_M:
                raise MessageError(Rc.AVP_UNSUPPORTED,
                                   f"unknown AVP {a.code} (vendor {a.vendor}) with the M bit",
                                   a.encode())
        elif n < 0:
            check(a.group(depth), dictionary, depth + 1)
        elif n and len(a.data) != n:
            name = dictionary.by_key[(a.code, a.vendor)].name
            raise MessageError(Rc.INVALID_AVP_LENGTH,
                               f"{name}: payload of {len(a.data)} bytes, expected {n}",
                               a.encode())


# -- encoding ----------------------------------------------------------------------------

_PAD = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")


def encode_avp(code: int, data: bytes, flags: int = AVP_M, vendor: int = 0) -> bytes:
    if vendor:
        n = 12 + len(data)
        return _VAVP.pack(code, ((flags | AVP_V) << 24) | n, vendor) + data + _PAD[n & 3]
    n = 8 + len(data)
    return _AVP.pack(code, ((flags & ~AVP_V) << 24) | n) + data + _PAD[n & 3]


def encode_message(code: int, flags: int, app: int, hbh: int, e2e: int, body: bytes) -> bytes:
    return _HDR.pack(0x01000000 | (HEADER_LEN + len(body)), (flags << 24) | code, app,
                     hbh, e2e) + body


def u32(code: int, value: int, flags: int = AVP_M, vendor: int = 0) -> bytes:
    return encode_avp(code, _U32.pack(value), flags, vendor)


def u64(code: int, value: int, flags: int = AVP_M, vendor: int = 0) -> bytes:
    return encode_avp(code, _U64.pack(value), flags, vendor)


def i32(code: int, value: int, flags: int = AVP_M, vendor: int = 0) -> bytes:
    return encode_avp(code, _I32.pack(value), flags, vendor)


def i64(code: int, value: int, flags: int = AVP_M, vendor: int = 0) -> bytes:
    return encode_avp(code, _I64.pack(value), flags, vendor)


def f32(code: int, value: float, flags: int = AVP_M, vendor: int = 0) -> bytes:
    return encode_avp(code, _F32.pack(value), flags, vendor)


def f64(code: int, value: float, flags: int = AVP_M, vendor: int = 0) -> bytes:
    return encode_avp(code, _F64.pack(value), flags, vendor)


def utf8(code: int, value: str, flags: int = AVP_M, vendor: int = 0) -> bytes:
    return encode_avp(code, value.encode(), flags, vendor)


def octets(code: int, value: bytes, flags: int = AVP_M, vendor: int = 0) -> bytes:
    return encode_avp(code, value, flags, vendor)


def address(code: int, value: str, flags: int = AVP_M, vendor: int = 0) -> bytes:
    ip = ipaddress.ip_address(value)
    family = b"\x00\x01" if ip.version == 4 else b"\x00\x02"
    return encode_avp(code, family + ip.packed, flags, vendor)


def time_(code: int, unix_seconds: int, flags: int = AVP_M, vendor: int = 0) -> bytes:
    return encode_avp(code, _U32.pack((unix_seconds + NTP_OFFSET) & 0xFFFFFFFF), flags, vendor)


def grouped(code: int, *children: bytes, flags: int = AVP_M, vendor: int = 0) -> bytes:
    return encode_avp(code, b"".join(children), flags, vendor)


def zero_filled(code: int, vendor: int = 0, dictionary: Dictionary = DEFAULT) -> bytes:
    """A missing AVP for Failed-AVP: its code and vendor with a zero-filled payload of the
    minimum length of its type (RFC 6733 §7.5)."""
    d = dictionary.get(code, vendor)
    n = (d.fixed_length or 0) if d else 0
    return encode_avp(code, b"\x00" * n, AVP_M, vendor)


def value_of(a: Avp, dictionary: Dictionary = DEFAULT, depth: int = 1) -> Any:
    """The typed value of an AVP by its dictionary type (unknown AVPs: raw bytes;
    Grouped: a list of (code, vendor, value) triples; Time: Unix seconds)."""
    d = dictionary.get(a.code, a.vendor)
    t = d.type if d is not None else "OctetString"
    if t == "Grouped":
        return [(x.code, x.vendor, value_of(x, dictionary, depth + 1)) for x in a.group(depth)]
    if t in ("Unsigned32", "Enumerated"):
        return a.u32
    if t == "Unsigned64":
        return a.u64
    if t == "Integer32":
        return a.i32
    if t == "Integer64":
        return a.i64
    if t == "Float32":
        return a.f32
    if t == "Float64":
        return a.f64
    if t == "Time":
        return a.u32 - NTP_OFFSET
    if t == "Address":
        return a.address
    if t in ("UTF8String", "DiameterURI"):
        return a.text
    return a.data  # OctetString, DiameterIdentity, IPFilterRule (ASCII octets)
