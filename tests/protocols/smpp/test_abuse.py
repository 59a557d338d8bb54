"""SMPP against hostile ESMEs, on a running ``ocs serve``: a sequence number reused with
other content on a bind, and bind password guessing (smpplib and raw PDUs)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import smpplib.consts
import smpplib.exceptions
from tests_support import Smsc, free_tcp_port, init_server, metric, serving

BIND_TRANSMITTER, SUBMIT_SM = 0x00000002, 0x00000004


@pytest.fixture(scope="module")
def smsc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smsc]:
    cwd = tmp_path_factory.mktemp("smabuse")
    port, admin = free_tcp_port(), free_tcp_port()
    cfg = init_server(cwd, f"""
[smpp]
listen = "127.0.0.1:{port}"
[[smpp.accounts]]
system_id = "esme"
password = "secret"
[[smpp.routes]]
prefix = "417"
system_id = "esme"
[admin]
listen = "127.0.0.1:{admin}"
""")
    srv = Smsc(cwd, cfg, port)
    srv.admin = admin  # type: ignore[attr-defined]
    srv.ocs("subscriber", "add", "--msisdn", "41790000001", "--plan", "prepaid-basic",
            "--balance", "1.00")
    with serving(cfg, cwd, "smpp_listening"):
        yield srv


def _pdu(cmd: int, seq: int, body: bytes) -> bytes:
    return struct.pack("!IIII", 16 + len(body), cmd, 0, seq) + body


def _read(s: socket.socket) -> tuple[int, int, int, bytes]:
    head = s.recv(16, socket.MSG_WAITALL)
    assert len(head) == 16, "closed"
    length, cmd, status, seq = struct.unpack("!IIII", head)
    body = s.recv(length - 16, socket.MSG_WAITALL) if length > 16 else b""
    return cmd, status, seq, body


def _submit(seq: int, dest: bytes, text: bytes) -> bytes:
    body = (b"\x00" + b"\x01\x01" + b"41790000001\x00" + b"\x01\x01" + dest + b"\x00"
            + b"\x00\x00\x00" + b"\x00" + b"\x00" + b"\x00\x00\x00\x00"
            + bytes((len(text),)) + text)
    return _pdu(SUBMIT_SM, seq, body)


def test_sequence_number_reused_with_other_content_is_an_error(smsc: Smsc) -> None:
    s = socket.create_connection(("127.0.0.1", smsc.port), timeout=5)
    s.sendall(_pdu(BIND_TRANSMITTER, 1, b"esme\x00secret\x00\x00\x34\x00\x00\x00"))
    assert _read(s)[1] == 0
    s.sendall(_submit(7, b"41791234567", b"hello"))
    _, status, seq, _ = _read(s)
    assert (status, seq) == (0, 7)
    assert smsc.balance("41790000001") == "0.9500"
    # the same sequence number on the same bind, another destination and text
    s.sendall(_submit(7, b"41797654321", b"something else"))
    _, status, seq, _ = _read(s)
    assert (status, seq) == (smpplib.consts.SMPP_ESME_RSYSERR, 7)
    assert smsc.balance("41790000001") == "0.9500"
    # the identical PDU again is a retransmission: the first answer, nothing charged
    s.sendall(_submit(7, b"41791234567", b"hello"))
    _, status, seq, _ = _read(s)
    assert (status, seq) == (0, 7)
    assert smsc.balance("41790000001") == "0.9500"
    s.close()


def test_bind_guessing_is_braked_and_system_ids_cannot_be_listed(smsc: Smsc) -> None:
    statuses = set()
    for system_id, password in (("nosuch", "x"), ("esme", "wrong")):
        with pytest.raises(smpplib.exceptions.PDUError) as exc:
            smsc.esme(system_id=system_id, password=password)
        statuses.add(exc.value.args[1])
    assert statuses == {smpplib.consts.SMPP_ESME_RINVPASWD}  # one answer for both
    for i in range(30):  # over both workers (each brakes on its own): >= 5 on each
        with pytest.raises(smpplib.exceptions.PDUError):
            smsc.esme(password=f"guess{i}")
    # held off now: even the right password is refused, unchecked
    with pytest.raises(smpplib.exceptions.PDUError) as exc:
        smsc.esme()
    assert exc.value.args[1] == smpplib.consts.SMPP_ESME_RINVPASWD
    assert metric(smsc.admin, "ocs_auth_failures_total",  # type: ignore[attr-defined]
                  protocol="smpp", reason="throttled") >= 10
    assert Path(smsc.cwd / "serve.log").read_text().count("smpp_bind_failed") >= 5
