"""SMPP 3.4 / 5.0 PDUs, sans-IO: framing, C-octet strings with their maximum lengths,
TLVs. Every decode checks lengths before slicing; errors carry the status to answer with.
"""

from __future__ import annotations

import functools
import struct
import time
from dataclasses import dataclass, field
from enum import IntEnum

from ocs.text import decode_gsm7

__all__ = ["decode_gsm7"]

HEADER = struct.Struct(">IIII")
MAX_PDU = 64 * 1024


class Cmd(IntEnum):
    GENERIC_NACK = 0x80000000
    BIND_RECEIVER = 0x00000001
    BIND_TRANSMITTER = 0x00000002
    QUERY_SM = 0x00000003
    SUBMIT_SM = 0x00000004
    DELIVER_SM = 0x00000005
    UNBIND = 0x00000006
    REPLACE_SM = 0x00000007
    CANCEL_SM = 0x00000008
    BIND_TRANSCEIVER = 0x00000009
    OUTBIND = 0x0000000B
    ENQUIRE_LINK = 0x00000015
    SUBMIT_MULTI = 0x00000021
    DATA_SM = 0x00000103

    @property
    def resp(self) -> int:
        return int(self) | 0x80000000


RESP = 0x80000000


class Status(IntEnum):
    ROK = 0x00
    RINVMSGLEN = 0x01
    RINVCMDLEN = 0x02
    RINVCMDID = 0x03
    RINVBNDSTS = 0x04
    RALYBND = 0x05
    RSYSERR = 0x08
    RINVSRCADR = 0x0A
    RINVDSTADR = 0x0B
    RBINDFAIL = 0x0D
    RINVPASWD = 0x0E
    RINVSYSID = 0x0F
    RMSGQFUL = 0x14
    RSUBMITFAIL = 0x45
    RTHROTTLED = 0x58
    RINVEXPIRY = 0x62
    RX_T_APPN = 0x64
    RX_P_APPN = 0x65
    RX_R_APPN = 0x66
    RINVOPTPARSTREAM = 0xC0
    RINVPARLEN = 0xC2


class Tag(IntEnum):
    RECEIPTED_MESSAGE_ID = 0x001E
    MESSAGE_STATE = 0x0427
    SC_INTERFACE_VERSION = 0x0210
    MESSAGE_PAYLOAD = 0x0424
    SAR_MSG_REF_NUM = 0x020C
    SAR_TOTAL_SEGMENTS = 0x020E
    SAR_SEGMENT_SEQNUM = 0x020F


class PduError(Exception):
    """A PDU we cannot take; answer with ``status`` (generic_nack when the command is
    unknown or the frame itself is bad)."""

    def __init__(self, status: Status, message: str, *, fatal: bool = False,
                 sequence: int = 0):
        super().__init__(message)
        self.status = status
        self.fatal = fatal
        """The stream cannot be resynchronised: answer, then close."""
        self.sequence = sequence


@dataclass(slots=True)
class Pdu:
    command_id: int
    status: int
    sequence: int
    body: bytes = b""

    def encode(self) -> bytes:
        return HEADER.pack(16 + len(self.body), self.command_id, self.status,
                           self.sequence) + self.body


class Framer:
    """Bytes in, whole PDUs out (across partial reads)."""

    def __init__(self, max_pdu: int = MAX_PDU):
        self._buf = bytearray()
        self.max_pdu = max_pdu

    def feed(self, data: bytes) -> list[Pdu]:
        self._buf.extend(data)
        out: list[Pdu] = []
        buf = self._buf
        while len(buf) >= 4:
            (length,) = struct.unpack_from(">I", buf)
            if length < 16 or length > self.max_pdu:
                seq = struct.unpack_from(">I", buf, 12)[0] if len(buf) >= 16 else 0
                raise PduError(Status.RINVCMDLEN, f"command_length {length}", fatal=True,
                               sequence=seq)
            if len(buf) < length:
                break
            _length, cmd, status, seq = HEADER.unpack_from(buf)
            out.append(Pdu(cmd, status, seq, bytes(buf[16:length])))
            del buf[:length]
        return out


class Reader:
    """Cursor over a PDU body."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def cstring(self, max_len: int, name: str) -> str:
        """A NUL-terminated string of at most ``max_len`` octets including the NUL."""
        end = self.data.find(b"\x00", self.pos, self.pos + max_len)
        if end < 0:
            raise PduError(Status.RINVMSGLEN if self.pos < len(self.data) else
                           Status.RINVCMDLEN, f"{name}: not NUL-terminated within {max_len}")
        value = self.data[self.pos:end].decode("latin-1")
        self.pos = end + 1
        return value

    def u8(self, name: str) -> int:
        if self.pos + 1 > len(self.data):
            raise PduError(Status.RINVCMDLEN, f"{name}: body too short")
        v = self.data[self.pos]
        self.pos += 1
        return v

    def octets(self, n: int, name: str) -> bytes:
        if self.pos + n > len(self.data):
            raise PduError(Status.RINVMSGLEN, f"{name}: {n} octets announced, fewer sent")
        v = self.data[self.pos:self.pos + n]
        self.pos += n
        return v

    def tlvs(self) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        while self.pos < len(self.data):
            if self.pos + 4 > len(self.data):
                raise PduError(Status.RINVOPTPARSTREAM, "truncated TLV header")
            tag, length = struct.unpack_from(">HH", self.data, self.pos)
            self.pos += 4
            if self.pos + length > len(self.data):
                raise PduError(Status.RINVPARLEN, f"TLV 0x{tag:04x} longer than the PDU")
            out.setdefault(tag, self.data[self.pos:self.pos + length])
            self.pos += length
        return out


def cstr(value: str) -> bytes:
    return value.encode("latin-1") + b"\x00"


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">HH", tag, len(value)) + value


@dataclass(frozen=True, slots=True)
class Bind:
    system_id: str
    password: str
    system_type: str
    interface_version: int
    addr_ton: int
    addr_npi: int
    address_range: str


def decode_bind(body: bytes) -> Bind:
    r = Reader(body)
    return Bind(
        system_id=r.cstring(16, "system_id"),
        password=r.cstring(9, "password"),
        system_type=r.cstring(13, "system_type"),
        interface_version=r.u8("interface_version"),
        addr_ton=r.u8("addr_ton"),
        addr_npi=r.u8("addr_npi"),
        address_range=r.cstring(41, "address_range"),
    )


def encode_bind(b: Bind) -> bytes:
    return (cstr(b.system_id) + cstr(b.password) + cstr(b.system_type)
            + bytes((b.interface_version, b.addr_ton, b.addr_npi)) + cstr(b.address_range))


@dataclass(frozen=True, slots=True)
class Submit:
    service_type: str
    source_ton: int
    source_npi: int
    source_addr: str
    dest_ton: int
    dest_npi: int
    destination_addr: str
    esm_class: int
    protocol_id: int
    priority_flag: int
    schedule_delivery_time: str
    validity_period: str
    registered_delivery: int
    replace_if_present: int
    data_coding: int
    sm_default_msg_id: int
    short_message: bytes
    tlvs: dict[int, bytes] = field(default_factory=dict)

    @property
    def payload(self) -> bytes:
        return self.tlvs.get(Tag.MESSAGE_PAYLOAD, self.short_message)


def decode_submit(body: bytes) -> Submit:
    r = Reader(body)
    service_type = r.cstring(6, "service_type")
    source_ton, source_npi = r.u8("source_addr_ton"), r.u8("source_addr_npi")
    source = r.cstring(21, "source_addr")
    dest_ton, dest_npi = r.u8("dest_addr_ton"), r.u8("dest_addr_npi")
    dest = r.cstring(21, "destination_addr")
    esm, pid, prio = r.u8("esm_class"), r.u8("protocol_id"), r.u8("priority_flag")
    sched = r.cstring(17, "schedule_delivery_time")
    validity = r.cstring(17, "validity_period")
    regd, repl, dcs, dflt = (r.u8("registered_delivery"), r.u8("replace_if_present_flag"),
                             r.u8("data_coding"), r.u8("sm_default_msg_id"))
    sm_length = r.u8("sm_length")
    short = r.octets(sm_length, "short_message")
    tlvs = r.tlvs()
    if short and Tag.MESSAGE_PAYLOAD in tlvs:
        raise PduError(Status.RINVMSGLEN, "both short_message and message_payload")
    return Submit(service_type, source_ton, source_npi, source, dest_ton, dest_npi, dest, esm,
                  pid, prio, sched, validity, regd, repl, dcs, dflt, short, tlvs)


def decode_data_sm(body: bytes) -> Submit:
    r = Reader(body)
    service_type = r.cstring(6, "service_type")
    source_ton, source_npi = r.u8("source_addr_ton"), r.u8("source_addr_npi")
    source = r.cstring(65, "source_addr")
    dest_ton, dest_npi = r.u8("dest_addr_ton"), r.u8("dest_addr_npi")
    dest = r.cstring(65, "destination_addr")
    esm, regd, dcs = r.u8("esm_class"), r.u8("registered_delivery"), r.u8("data_coding")
    tlvs = r.tlvs()
    return Submit(service_type, source_ton, source_npi, source, dest_ton, dest_npi, dest, esm,
                  0, 0, "", "", regd, 0, dcs, 0, b"", tlvs)


def encode_submit(s: Submit) -> bytes:
    return (cstr(s.service_type) + bytes((s.source_ton, s.source_npi)) + cstr(s.source_addr)
            + bytes((s.dest_ton, s.dest_npi)) + cstr(s.destination_addr)
            + bytes((s.esm_class, s.protocol_id, s.priority_flag))
            + cstr(s.schedule_delivery_time) + cstr(s.validity_period)
            + bytes((s.registered_delivery, s.replace_if_present, s.data_coding,
                     s.sm_default_msg_id, len(s.short_message))) + s.short_message
            + b"".join(tlv(t, v) for t, v in s.tlvs.items()))


# -- message parts -------------------------------------------------------------------------

def count_parts(sm: Submit) -> int:
    """How many SMS parts the network carries for this submit (what is charged).

    A submit with a UDH (esm_class 0x40) or SAR TLVs is one part of a concatenated
    message; a message_payload is split as the SMSC would: 160/153 GSM-7 septets,
    70/67 UCS-2 characters, 140/134 octets otherwise.
    """
    if sm.esm_class & 0x40 or Tag.SAR_TOTAL_SEGMENTS in sm.tlvs:
        return 1
    body = sm.payload
    if sm.data_coding == 0x08:
        units, single, multi = len(body) // 2, 70, 67
    elif sm.data_coding in (0x00, 0x01):
        units, single, multi = len(body), 160, 153  # septets (escapes count two)
    else:
        units, single, multi = len(body), 140, 134
    if units <= single:
        return 1
    return -(-units // multi)


def parse_validity(value: str, now: int, default_s: int) -> int:
    """Seconds of validity from an SMPP time: "" (default), relative "YYMMDDhhmmss000R" or
    absolute "YYMMDDhhmmsstnnp" (p = + or -, nn quarter hours from UTC)."""
    import calendar

    if not value:
        return default_s
    if len(value) != 16 or not value[:15].isdigit() or value[15] not in "R+-":
        raise PduError(Status.RINVEXPIRY, f"validity_period {value!r}")
    yy, mo, dd, hh, mi, ss = (int(value[i:i + 2]) for i in range(0, 12, 2))
    if value[15] == "R":
        return max(1, ((yy * 365 + mo * 30 + dd) * 24 + hh) * 3600 + mi * 60 + ss)
    try:
        local = calendar.timegm((2000 + yy, mo, dd, hh, mi, ss, 0, 0, 0))
    except (ValueError, OverflowError) as exc:
        raise PduError(Status.RINVEXPIRY, f"validity_period {value!r}") from exc
    offset = int(value[13:15]) * 900
    utc = local - offset if value[15] == "+" else local + offset
    if utc <= now:
        raise PduError(Status.RINVEXPIRY, f"validity_period {value!r} is in the past")
    return utc - now


def encode_deliver(source: str, destination: str, esm_class: int, data_coding: int,
                   payload: bytes, tlvs: dict[int, bytes] | None = None) -> bytes:
    """deliver_sm body (the submit_sm layout; long bodies go in message_payload)."""
    extra = dict(tlvs or {})
    short = payload
    if len(payload) > 254:
        extra[Tag.MESSAGE_PAYLOAD] = payload
        short = b""
    return encode_submit(Submit("", 1, 1, source, 1, 1, destination, esm_class, 0, 0, "", "",
                                0, 0, data_coding, 0, short, extra))


def receipt_text(*, message_id: str, stat: str, submitted_at: int, done_at: int,
                 text: str) -> str:
    """The de-facto standard delivery receipt text (SMPP 3.4 appendix B):
    ``id:… sub:001 dlvrd:… submit date:YYMMDDhhmm done date:… stat:… err:000 text:…``
    (the first 20 characters of the original, printable ASCII)."""
    delivered = "001" if stat == "DELIVRD" else "000"
    shown = "".join(c if c.isascii() and c.isprintable() else "?" for c in text[:20])
    return (f"id:{message_id} sub:001 dlvrd:{delivered} "
            f"submit date:{_yymmddhhmm(submitted_at)} done date:{_yymmddhhmm(done_at)} "
            f"stat:{stat} err:000 text:{shown}")


def _yymmddhhmm(ts: int) -> str:
    return _minute(ts // 60)


@functools.lru_cache(maxsize=256)
def _minute(minute: int) -> str:
    """YYMMDDhhmm (UTC) of a minute since the epoch: receipts of one minute share it."""
    return time.strftime("%y%m%d%H%M", time.gmtime(minute * 60))
