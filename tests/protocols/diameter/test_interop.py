"""``ocs serve`` with Diameter on a real socket, driven by independent peers:
python-diameter's Node as the Gy client (PROTOCOLS.md §2.5), a raw harness built from
python-diameter's message classes (T flag, malformed input, base protocol), and tshark
reading the capture of a session."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from diameter.message import Message
from diameter.message.avp import Avp
from diameter.message.avp.grouped import RequestedServiceUnit
from diameter.message.commands import (
    CapabilitiesExchangeRequest,
    CreditControlRequest,
    DeviceWatchdogRequest,
    DisconnectPeerRequest,
)
from tests_support import OCS, free_tcp_port, init_server, require_tool, serving

CLIENT = Path(__file__).with_name("gy_client.py")


class Ocs:
    def __init__(self, cwd: Path, cfg: Path, port: int):
        self.cwd, self.cfg, self.port = cwd, cfg, port

    def cli(self, *args: str) -> str:
        p = subprocess.run([OCS, *args, "--config", str(self.cfg)], cwd=self.cwd,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout

    def show(self, msisdn: str) -> dict[str, str]:
        return dict(json.loads(self.cli("subscriber", "show", msisdn, "--json")))

    def client(self, kind: str, *args: str, timeout: float = 30, **env: str) -> str:
        p = subprocess.run([sys.executable, str(CLIENT), "127.0.0.1", str(self.port), kind, *args],
                           capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PEER": "ocs.test.realm", **env})
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("CCA")]
        assert lines, p.stdout + p.stderr
        return lines[-1]


@pytest.fixture(scope="module")
def ocs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ocs]:
    tmp = tmp_path_factory.mktemp("gy")
    port = free_tcp_port()
    cfg = init_server(tmp, f"""
[charging]
reaper_interval_s = 0.5
[diameter]
listen = "127.0.0.1:{port}"
origin_host = "ocs.test.realm"
origin_realm = "test.realm"
watchdog_s = 6
[admin]
enabled = false
""")
    o = Ocs(tmp, cfg, port)
    for msisdn, balance in (("41780000001", "10.00"), ("41780000002", "0"),
                            ("41780000003", "5.00"), ("41780000004", "5.00")):
        o.cli("subscriber", "add", "--msisdn", msisdn, "--plan", "prepaid-basic",
              "--balance", balance)
    with serving(cfg, tmp, "diameter_listening"):
        yield o


def test_python_diameter_session_charges_exactly(ocs: Ocs) -> None:
    env = {"SID": "pgw.test.realm;1;a", "MSISDN": "41780000001"}
    assert ocs.client("I", **env) == "CCA 2001 1 0 [(10, 2001, 1000000, 900, None)]"
    assert ocs.show("41780000001")["reserved"] == "0.0100"
    assert ocs.client("U", **env) == "CCA 2001 2 1 [(10, 2001, 1000000, 900, None)]"
    assert ocs.client("T", GRACEFUL="1", **env) == "CCA 2001 3 2 []"
    s = ocs.show("41780000001")
    assert (s["balance"], s["reserved"]) == ("9.9900", "0.0000")  # 2 × 500 kB at 0.01/MB
    # the session is closed: a further update is unknown
    assert ocs.client("U", **env).startswith("CCA 5002")


def test_events_through_python_diameter(ocs: Ocs) -> None:
    env = {"SID": "smsc.test.realm;9", "MSISDN": "41780000003", "RG": "300"}
    ctx = "32274@3gpp.org"
    assert ocs.client("E", "0", ctx, **env) == "CCA 2001 4 0 [(300, 2001, 1, None, None)]"
    assert ocs.show("41780000003")["balance"] == "4.8500"  # sms-international 0.15
    assert ocs.client("E", "1", ctx, **env) == "CCA 2001 4 0 [(300, 2001, None, None, None)]"
    assert ocs.show("41780000003")["balance"] == "5.0000"
    assert ocs.client("E", "2", ctx, **env).endswith("check=0")
    assert ocs.client("E", "3", ctx, **env).endswith("cost=15e-2/978")
    assert ocs.show("41780000003")["balance"] == "5.0000"


def test_refusals(ocs: Ocs) -> None:
    assert ocs.client("I", SID="x;1", MSISDN="41789999999").startswith("CCA 5030")
    assert ocs.client("I", SID="x;2", MSISDN="41780000002") == (
        "CCA 2001 1 0 [(10, 4012, None, 900, None)]")


# -- raw harness -------------------------------------------------------------------------

def recv(s: socket.socket) -> Message:
    h = s.recv(4, socket.MSG_WAITALL)
    assert len(h) == 4, "connection closed"
    n = int.from_bytes(h[1:4], "big")
    return Message.from_bytes(h + s.recv(n - 4, socket.MSG_WAITALL))


def connect(port: int, apps: tuple[int, ...] = (4,), host: bytes = b"raw.test.realm"
            ) -> tuple[socket.socket, Message]:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    cer = CapabilitiesExchangeRequest()
    cer.origin_host = host
    cer.origin_realm = b"test.realm"
    cer.host_ip_address = "127.0.0.1"
    cer.vendor_id = 99999
    cer.product_name = "raw"
    for app in apps:
        cer.append_avp(Avp.new(258, 0, app))  # Auth-Application-Id
    cer.header.hop_by_hop_identifier = cer.header.end_to_end_identifier = 1
    s.sendall(cer.as_bytes())
    return s, recv(s)


def ccr_i(sid: str, e2e: int, msisdn: str = "41780000004") -> CreditControlRequest:
    r = CreditControlRequest()
    r.session_id = sid
    r.origin_host = b"raw.test.realm"
    r.origin_realm = b"test.realm"
    r.destination_realm = b"test.realm"
    r.auth_application_id = 4
    r.service_context_id = "32251@3gpp.org"
    r.cc_request_type = 1
    r.cc_request_number = 0
    r.add_subscription_id(0, msisdn)
    r.add_multiple_services_credit_control(
        requested_service_unit=RequestedServiceUnit(cc_total_octets=1000), rating_group=10)
    r.header.application_id = 4
    r.header.hop_by_hop_identifier = 0x1234
    r.header.end_to_end_identifier = e2e
    return r


def closed(s: socket.socket) -> bool:
    s.settimeout(5)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_t_flag_retransmission_gets_the_same_answer_and_charges_once(ocs: Ocs) -> None:
    before = ocs.show("41780000004")
    s, cea = connect(ocs.port)
    assert cea.result_code == 2001
    r = ccr_i("raw.test.realm;1;dup", 0xABCD)
    s.sendall(r.as_bytes())
    a1 = recv(s)
    r.header.is_retransmit = True
    r.header.hop_by_hop_identifier = 0x5678
    s.sendall(r.as_bytes())
    a2 = recv(s)
    assert a1.result_code == a2.result_code == 2001
    assert a2.header.hop_by_hop_identifier == 0x5678
    assert a1.as_bytes()[20:] == a2.as_bytes()[20:]
    after = ocs.show("41780000004")
    assert after["reserved"] == "0.00001" and before["reserved"] == "0.0000"
    s.close()


def test_pipelined_byte_by_byte_and_coalesced(ocs: Ocs) -> None:
    s, _ = connect(ocs.port)
    one = ccr_i("raw.test.realm;2;a", 0x100).as_bytes()
    for b in one:
        s.send(bytes([b]))
    assert recv(s).result_code == 2001
    two = ccr_i("raw.test.realm;2;b", 0x101).as_bytes() + ccr_i("raw.test.realm;2;c",
                                                                 0x102).as_bytes()
    s.sendall(two)
    got = {recv(s).session_id, recv(s).session_id}
    assert got == {"raw.test.realm;2;b", "raw.test.realm;2;c"}
    s.close()


def test_base_protocol(ocs: Ocs) -> None:
    # nothing before CER
    s = socket.create_connection(("127.0.0.1", ocs.port), timeout=5)
    dwr = DeviceWatchdogRequest()
    dwr.origin_host, dwr.origin_realm = b"raw.test.realm", b"test.realm"
    s.sendall(dwr.as_bytes())
    assert closed(s)
    # no common application: 5010 and closed
    s, cea = connect(ocs.port, apps=(16777238,))
    assert cea.result_code == 5010 and closed(s)
    # DWR/DWA with a stable Origin-State-Id, unknown command 3001 with the E bit, DPR/DPA
    s, cea = connect(ocs.port)
    osi = cea.origin_state_id
    s.sendall(dwr.as_bytes())
    dwa = recv(s)
    assert dwa.result_code == 2001 and dwa.origin_state_id == osi
    bogus = bytearray(dwr.as_bytes())
    bogus[5:8] = (999).to_bytes(3, "big")
    s.sendall(bytes(bogus))
    err = recv(s)
    assert err.header.command_code == 999 and err.header.is_error
    assert err.result_code == 3001
    # CCR without CC-Request-Type: 5005 with the missing AVP in Failed-AVP
    r = ccr_i("raw.test.realm;3", 0x200)
    r.cc_request_type = None
    s.sendall(r.as_bytes())
    a = recv(s)
    assert a.result_code == 5005 and not a.header.is_error
    [failed] = a.find_avps((279, 0))
    assert [(x.code, x.payload) for x in failed.value] == [(416, b"\x00" * 4)]
    dpr = DisconnectPeerRequest()
    dpr.origin_host, dpr.origin_realm, dpr.disconnect_cause = b"raw.test.realm", b"test.realm", 0
    s.sendall(dpr.as_bytes())
    assert recv(s).result_code == 2001 and closed(s)


def expect(p: subprocess.Popen[str], prefix: str) -> str:
    """The next line of the client's output that starts with ``prefix`` (all it printed
    in the assertion message otherwise)."""
    assert p.stdout is not None
    seen = []
    while True:
        line = p.stdout.readline()
        if not line:
            raise AssertionError(f"no {prefix!r} line; client printed {seen}")
        seen.append(line.strip())
        if line.startswith(prefix):
            return line.strip()


def test_rar_after_top_up_and_asr_when_blocked(ocs: Ocs) -> None:
    ocs.cli("subscriber", "add", "--msisdn", "41780000010", "--plan", "prepaid-basic",
            "--balance", "0")
    env = {**os.environ, "PEER": "ocs.test.realm", "SID": "pgw.test.realm;rar",
           "MSISDN": "41780000010", "RAR_WAIT": "30"}
    p = subprocess.Popen([sys.executable, str(CLIENT), "127.0.0.1", str(ocs.port), "I"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert expect(p, "CCA").startswith("CCA 2001 1 0 [(10, 4012")
        ocs.cli("subscriber", "topup", "41780000010", "1.00")
        assert expect(p, "SERVER-REQUEST") == "SERVER-REQUEST 258"  # RAR, answered 2002
    finally:
        p.wait(30)
    env["SID"], env["MSISDN"] = "pgw.test.realm;asr", "41780000003"
    p = subprocess.Popen([sys.executable, str(CLIENT), "127.0.0.1", str(ocs.port), "I"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert expect(p, "CCA").startswith("CCA 2001 1 0 [(10, 2001")
        assert ocs.show("41780000003")["reserved"] == "0.0100"
        ocs.cli("subscriber", "block", "41780000003")
        assert expect(p, "SERVER-REQUEST") == "SERVER-REQUEST 274"  # ASR, answered 2001
    finally:
        p.wait(30)
    deadline = time.monotonic() + 15
    while ocs.show("41780000003")["reserved"] != "0.0000":  # released after the ASA
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_tshark_decodes_a_session_without_errors(ocs: Ocs, tmp_path: Path) -> None:
    tshark = require_tool("tshark")
    pcap = tmp_path / "gy.pcap"
    cap = subprocess.Popen([tshark, "-i", "lo", "-f", f"tcp port {ocs.port}", "-w", str(pcap),
                            "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not pcap.exists() or pcap.stat().st_size == 0:
            assert time.monotonic() < deadline and cap.poll() is None
            time.sleep(0.1)
        time.sleep(0.5)
        env = {"SID": "pgw.test.realm;1;shark", "MSISDN": "41780000001"}
        for kind in ("I", "U", "T"):
            ocs.client(kind, **env)
        time.sleep(1.0)
    finally:
        cap.terminate()
        cap.wait(10)
    fields = subprocess.run(
        [tshark, "-r", str(pcap), "-d", f"tcp.port=={ocs.port},diameter", "-T", "fields",
         "-e", "diameter.cmd.code", "-e", "diameter.flags.request", "-e", "diameter.Result-Code",
         "-e", "diameter.CC-Request-Type", "-e", "_ws.malformed", "-Y", "diameter"],
        capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    rows = [ln.split("\t") for ln in fields]
    assert rows and not any(r[4] for r in rows), fields  # no malformed packet
    # Result-Code: the command's first, then one per MSCC
    answers = [(r[0], r[2].split(",")[0], r[3]) for r in rows
               if r[1] in ("0", "False") and r[0] == "272"]
    assert ("272", "2001", "1") in answers and ("272", "2001", "3") in answers, rows
    expert = subprocess.run([tshark, "-r", str(pcap), "-d", f"tcp.port=={ocs.port},diameter",
                             "-Y", "_ws.expert.severity >= \"error\" || _ws.malformed"],
                            capture_output=True, text=True, timeout=60).stdout
    assert expert.strip() == "", expert


def test_duplicate_while_the_first_is_in_flight_and_garbage_on_another_peer(ocs: Ocs) -> None:
    before = ocs.show("41780000001")["reserved"]
    good, _ = connect(ocs.port)
    bad, _ = connect(ocs.port, host=b"bad.test.realm")
    r = ccr_i("raw.test.realm;4;inflight", 0xBEEF, msisdn="41780000001")
    first = r.as_bytes()
    r.header.is_retransmit = True
    r.header.hop_by_hop_identifier = 0x9999
    good.sendall(first + r.as_bytes())  # the copy arrives before the first is answered
    bad.sendall(b"\x01\x00\x00\x07" + b"\xff" * 40)  # a length no message can have
    a1, a2 = recv(good), recv(good)
    assert {a1.header.hop_by_hop_identifier, a2.header.hop_by_hop_identifier} == {0x1234, 0x9999}
    assert a1.as_bytes()[20:] == a2.as_bytes()[20:] and a1.result_code == 2001
    assert closed(bad)
    s = ocs.show("41780000001")["reserved"]
    assert s == "0.00001" and before == "0.0000"  # one reservation of 1000 bytes
    good.sendall(ccr_i("raw.test.realm;4;after", 0xBEF0, msisdn="41780000004").as_bytes())
    assert recv(good).result_code == 2001  # the other peer is unaffected
    good.close()
