"""Interop: smpplib as an independent ESME against ``ocs serve`` (real sockets, the real
writer process): binds, charged submits with exact amounts, refusals, retries."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.gsm
from tests_support import Smsc, free_tcp_port, serving

CONFIG = """
[node]
name = "sm"
data_dir = "{data}"
log_format = "json"
[smpp]
listen = "127.0.0.1:{port}"
window = 8
[[smpp.accounts]]
system_id = "esme"
password = "secret"
[[smpp.routes]]
prefix = "417"
system_id = "esme"
[admin]
enabled = false
"""





@pytest.fixture(scope="module")
def smsc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smsc]:
    cwd = tmp_path_factory.mktemp("smsc")
    port = free_tcp_port()
    cfg = cwd / "sm.toml"
    cfg.write_text(CONFIG.format(data=cwd / "data", port=port))
    srv = Smsc(cwd, cfg, port)
    srv.ocs("init", "--plans", str(Path(__file__).resolve().parents[3] / "config" /
                                   "plans.toml"))
    for msisdn, balance in (("41790000001", "1.00"), ("41790000002", "0"),
                            ("41790000003", "1.00"), ("41790000004", "1.00")):
        srv.ocs("subscriber", "add", "--msisdn", msisdn, "--plan", "prepaid-basic",
                "--balance", balance)
    with serving(cfg, cwd, "smpp_listening"):
        yield srv


def submit(c: Any, source: str, dest: str, text: bytes = b"hello", **kw: Any) -> Any:
    c.send_message(source_addr_ton=1, source_addr=source, dest_addr_ton=1,
                   destination_addr=dest, short_message=text, **kw)
    return c.read_pdu()


def test_bind_wrong_password(smsc: Smsc) -> None:
    with pytest.raises(smpplib.exceptions.PDUError) as exc:
        smsc.esme(password="nope")
    assert exc.value.args[1] == smpplib.consts.SMPP_ESME_RINVPASWD


def test_submit_charged_exactly_once_per_part(smsc: Smsc) -> None:
    c = smsc.esme()
    resp = submit(c, "41790000001", "41791234567")
    assert resp.status == 0 and resp.message_id.startswith(b"sm-")
    assert smsc.balance("41790000001") == "0.9500"  # sms-national 0.05
    # a long UCS-2 message in two UDH parts: two submits, two charges
    parts, encoding, esm = smpplib.gsm.make_parts("Grüße aus Zürich ✓ " * 5)
    assert len(parts) == 2
    for part in parts:
        resp = submit(c, "41790000001", "41791234567", part, data_coding=encoding,
                      esm_class=esm)
        assert resp.status == 0
    assert smsc.balance("41790000001") == "0.8500"
    c.unbind()
    c.disconnect()


@pytest.mark.parametrize(("source", "dest", "status"), [
    ("41790000002", "41791234567", smpplib.consts.SMPP_ESME_RSUBMITFAIL),  # no credit
    ("41799999999", "41791234567", smpplib.consts.SMPP_ESME_RINVSRCADR),   # unknown sender
    ("41790000003", "4930123456", smpplib.consts.SMPP_ESME_RINVDSTADR),    # no route
])
def test_refusals_charge_nothing(smsc: Smsc, source: str, dest: str, status: int) -> None:
    c = smsc.esme()
    before = smsc.balance("41790000003")
    resp = submit(c, source, dest)
    assert resp.status == status
    assert smsc.balance("41790000003") == before
    c.disconnect()


def _raw(port: int, *pdus: bytes, replies: int) -> list[tuple[int, int, int, bytes]]:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    for p in pdus:
        s.sendall(p)
    out = []
    buf = b""
    while len(out) < replies:
        while len(buf) < 4 or len(buf) < struct.unpack(">I", buf[:4])[0]:
            chunk = s.recv(4096)
            assert chunk, "connection closed"
            buf += chunk
        n = struct.unpack(">I", buf[:4])[0]
        _length, cmd, status, seq = struct.unpack(">IIII", buf[:16])
        out.append((cmd, status, seq, buf[16:n]))
        buf = buf[n:]
    s.close()
    return out


def _pdu(cmd: int, seq: int, body: bytes) -> bytes:
    return struct.pack(">IIII", 16 + len(body), cmd, 0, seq) + body


BIND = _pdu(0x2, 1, b"esme\x00secret\x00\x00\x34\x00\x00\x00")
SUBMIT = _pdu(0x4, 7, b"\x00\x01\x01" + b"41790000004\x00" + b"\x01\x01" + b"41791234567\x00"
              + b"\x00\x00\x00" + b"\x00\x00" + b"\x00\x00\x00\x00" + b"\x02hi")


def test_repeated_pdu_on_a_bind_is_not_charged_twice(smsc: Smsc) -> None:
    replies = _raw(smsc.port, BIND, SUBMIT, SUBMIT, replies=3)
    assert replies[0][:2] == (0x80000002, 0)
    (c1, s1, q1, b1), (c2, s2, q2, b2) = replies[1:]
    assert (c1, s1, q1) == (c2, s2, q2) == (0x80000004, 0, 7)
    assert b1 == b2  # the same message_id: the stored answer, replayed
    assert smsc.balance("41790000004") == "0.9500"


def test_protocol_errors(smsc: Smsc) -> None:
    # unknown command -> generic_nack RINVCMDID, and the bind keeps working
    unknown = _pdu(0x99, 5, b"")
    replies = _raw(smsc.port, BIND, unknown, _pdu(0x15, 6, b""), replies=3)
    assert replies[1][:3] == (0x80000000, 0x3, 5)
    assert replies[2][:3] == (0x80000015, 0, 6)
    # anything before a bind -> RINVBNDSTS; submit on a receiver bind -> RINVBNDSTS
    assert _raw(smsc.port, SUBMIT, replies=1)[0][:2] == (0x80000004, 0x4)
    rx_bind = _pdu(0x1, 1, b"esme\x00secret\x00\x00\x34\x00\x00\x00")
    replies = _raw(smsc.port, rx_bind, SUBMIT, replies=2)
    assert replies[0][:2] == (0x80000001, 0) and replies[1][:2] == (0x80000004, 0x4)
    # a second bind on the same connection -> RALYBND
    assert _raw(smsc.port, BIND, BIND, replies=2)[1][:2] == (0x80000002, 0x5)
