"""Our enquire_link: idle binds are probed, dead ones closed, unbound connections too."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from tests_support import free_tcp_port

from protocols.smpp.pdu import Bind, Cmd, Pdu, Status, encode_bind
from protocols.smpp.session import Close, Send, SmppSession

OCS = str(Path(sys.executable).parent / "ocs")


def test_session_timers() -> None:
    s = SmppSession(enquire_link_s=10, response_timeout_s=3, bind_timeout_s=5, now=100.0)
    assert s.get_timer() == 105.0
    assert s.handle_timer(104.0) == []
    (close,) = s.handle_timer(105.0)
    assert isinstance(close, Close) and s.get_timer() is None

    s = SmppSession(enquire_link_s=10, response_timeout_s=3, bind_timeout_s=5, now=0.0)
    s.receive(Pdu(Cmd.BIND_TRANSMITTER, 0, 1,
                  encode_bind(Bind("esme", "pw", "", 0x34, 0, 0, ""))), 1.0)
    s.bind_done(1, Cmd.BIND_TRANSMITTER, "esme", Status.ROK, 0x34)
    assert s.get_timer() == 11.0
    s.receive(Pdu(Cmd.ENQUIRE_LINK, 0, 2), 4.0)  # traffic resets the idle clock
    assert s.get_timer() == 14.0
    (probe,) = s.handle_timer(14.0)
    assert isinstance(probe, Send) and probe.pdu.command_id == Cmd.ENQUIRE_LINK
    assert s.get_timer() == 17.0
    s.receive(Pdu(Cmd.ENQUIRE_LINK.resp, 0, probe.pdu.sequence), 15.0)  # answered
    assert s.pending_enquire is None and s.get_timer() == 25.0
    (probe2,) = s.handle_timer(25.0)
    assert isinstance(probe2, Send) and probe2.pdu.sequence == probe.pdu.sequence + 1
    (dead,) = s.handle_timer(28.0)  # not answered within 3 s
    assert isinstance(dead, Close)


def test_sequence_wraps() -> None:
    s = SmppSession()
    s._our_seq = 0x7FFFFFFF
    assert s.next_sequence() == 1





def test_server_closes_dead_and_unbound_connections(tmp_path: Path) -> None:
    port = free_tcp_port()
    cfg = tmp_path / "t.toml"
    cfg.write_text(f"""
[node]
name = "tm"
data_dir = "{tmp_path / 'data'}"
log_format = "json"
[smpp]
listen = "127.0.0.1:{port}"
enquire_link_s = 0.4
response_timeout_s = 0.4
bind_timeout_s = 0.6
[[smpp.accounts]]
system_id = "esme"
password = "secret"
[admin]
enabled = false
""")
    plans = Path(__file__).resolve().parents[3] / "config" / "plans.toml"
    subprocess.run([OCS, "init", "--config", str(cfg), "--plans", str(plans)], check=True,
                   capture_output=True)
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([OCS, "serve", "--config", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while "smpp_listening" not in (tmp_path / "serve.log").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # never binds: closed after bind_timeout_s
        idle = socket.create_connection(("127.0.0.1", port), timeout=5)
        t0 = time.monotonic()
        assert idle.recv(100) == b""
        assert 0.4 < time.monotonic() - t0 < 3
        # binds, then ignores our enquire_link: probed, then closed
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        body = encode_bind(Bind("esme", "secret", "", 0x34, 0, 0, ""))
        s.sendall(Pdu(Cmd.BIND_TRANSCEIVER, 0, 1, body).encode())
        got = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        cmds = []
        while got:
            n, cmd = struct.unpack(">II", got[:8])
            cmds.append(cmd)
            got = got[n:]
        assert cmds == [Cmd.BIND_TRANSCEIVER.resp, Cmd.ENQUIRE_LINK]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
    assert "enquire_link not answered" in (tmp_path / "serve.log").read_text()
