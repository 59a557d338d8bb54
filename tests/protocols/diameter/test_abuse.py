"""Diameter Gy against hostile peers, on a running ``ocs serve``: session takeover by
another peer or in another subscriber's name, a duplicate cache reached through a forged
Origin-Host, a CC-Request-Number reused with other usage, and absurd usage. The peers are
raw sockets speaking messages built with python-diameter."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from diameter.message import Message
from diameter.message.avp.grouped import RequestedServiceUnit, UsedServiceUnit
from diameter.message.commands import CreditControlRequest
from gy_support import peer_cer
from tests_support import OCS, free_tcp_port, init_server, serving

REALM = b"test.realm"


class Ocs:
    def __init__(self, cwd: Path, cfg: Path, port: int):
        self.cwd, self.cfg, self.port = cwd, cfg, port

    def cli(self, *args: str) -> str:
        p = subprocess.run([OCS, *args, "--config", str(self.cfg)], cwd=self.cwd,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout

    def money(self, msisdn: str) -> tuple[str, str]:
        d = json.loads(self.cli("subscriber", "show", msisdn, "--json"))
        return d["balance"], d["reserved"]


@pytest.fixture(scope="module")
def ocs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ocs]:
    tmp = tmp_path_factory.mktemp("gyabuse")
    port = free_tcp_port()
    cfg = init_server(tmp, f"""
[diameter]
listen = "127.0.0.1:{port}"
origin_host = "ocs.test.realm"
origin_realm = "test.realm"
[admin]
enabled = false
""")
    o = Ocs(tmp, cfg, port)
    for msisdn in ("41780000001", "41780000002", "41780000003", "41780000004"):
        o.cli("subscriber", "add", "--msisdn", msisdn, "--plan", "prepaid-basic",
              "--balance", "10.00")
    o.cli("subscriber", "add", "--msisdn", "41780000005", "--plan", "postpaid-business",
          "--postpaid", "--credit-limit", "200.00")
    with serving(cfg, tmp, "diameter_listening"):
        yield o


class Peer:
    """A raw Diameter peer: its own CER, then whatever it likes."""

    def __init__(self, port: int, host: bytes):
        self.host = host
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(peer_cer(host))
        assert self.recv().result_code == 2001

    def recv(self) -> Message:
        h = self.sock.recv(4, socket.MSG_WAITALL)
        assert len(h) == 4, "connection closed"
        n = int.from_bytes(h[1:4], "big")
        return Message.from_bytes(h + self.sock.recv(n - 4, socket.MSG_WAITALL))

    def ask(self, msg: CreditControlRequest) -> Message:
        self.sock.sendall(msg.as_bytes())
        return self.recv()


def ccr(sid: str, kind: int, number: int, e2e: int, msisdn: str, *,
        origin: bytes = b"pgw-a.test.realm", used: list[int] | None = None,
        rsu: bool = True) -> CreditControlRequest:
    r = CreditControlRequest()
    r.session_id = sid
    r.origin_host, r.origin_realm, r.destination_realm = origin, REALM, REALM
    r.auth_application_id = 4
    r.service_context_id = "32251@3gpp.org"
    r.cc_request_type = kind
    r.cc_request_number = number
    r.add_subscription_id(0, msisdn)
    r.add_multiple_services_credit_control(
        rating_group=10,
        requested_service_unit=RequestedServiceUnit(cc_total_octets=1_000_000) if rsu else None,
        used_service_unit=[UsedServiceUnit(cc_total_octets=u) for u in used] if used else None)
    r.header.application_id = 4
    r.header.hop_by_hop_identifier = e2e
    r.header.end_to_end_identifier = e2e
    return r


def mscc_rc(answer: Message) -> int | None:
    for m in getattr(answer, "multiple_services_credit_control", []) or []:
        return int(m.result_code) if m.result_code is not None else None
    return None


def test_another_peer_cannot_report_on_or_end_a_session(ocs: Ocs) -> None:
    a, b = Peer(ocs.port, b"pgw-a.test.realm"), Peer(ocs.port, b"pgw-b.test.realm")
    sid = "pgw-a.test.realm;7;take"
    assert a.ask(ccr(sid, 1, 0, 0x700, "41780000001")).result_code == 2001
    assert ocs.money("41780000001") == ("10.0000", "0.0100")
    # B reports 40 MB on A's session, then tries to end it: refused, nothing charged
    upd = b.ask(ccr(sid, 2, 1, 0x701, "41780000001", origin=b"pgw-b.test.realm",
                    used=[40_000_000]))
    assert upd.result_code == 5004
    end = b.ask(ccr(sid, 3, 2, 0x702, "41780000001", origin=b"pgw-b.test.realm",
                    used=[40_000_000], rsu=False))
    assert end.result_code == 5004
    assert ocs.money("41780000001") == ("10.0000", "0.0100")
    # A's session is untouched and goes on
    upd = a.ask(ccr(sid, 2, 1, 0x703, "41780000001", used=[1_000_000]))
    assert upd.result_code == 2001 and mscc_rc(upd) == 2001
    assert ocs.money("41780000001") == ("9.9900", "0.0100")
    end = a.ask(ccr(sid, 3, 2, 0x704, "41780000001", used=[1_000_000], rsu=False))
    assert end.result_code == 2001
    assert ocs.money("41780000001") == ("9.9800", "0.0000")


def test_a_session_cannot_be_charged_in_another_subscribers_name(ocs: Ocs) -> None:
    a = Peer(ocs.port, b"pgw-a.test.realm")
    sid = "pgw-a.test.realm;7;other"
    assert a.ask(ccr(sid, 1, 0, 0x710, "41780000002")).result_code == 2001
    # the same Session-Id now naming subscriber ...03: refused, nobody charged
    upd = a.ask(ccr(sid, 2, 1, 0x711, "41780000003", used=[5_000_000]))
    assert upd.result_code == 5030
    end = a.ask(ccr(sid, 3, 1, 0x712, "41780000003", used=[5_000_000], rsu=False))
    assert end.result_code == 5030
    assert ocs.money("41780000002") == ("10.0000", "0.0100")
    assert ocs.money("41780000003") == ("10.0000", "0.0000")


def test_duplicate_cache_is_keyed_on_the_peer_that_did_the_cer(ocs: Ocs) -> None:
    a, b = Peer(ocs.port, b"pgw-a.test.realm"), Peer(ocs.port, b"pgw-b.test.realm")
    first = a.ask(ccr("pgw-a.test.realm;8;dup", 1, 0, 0x800, "41780000004"))
    assert first.result_code == 2001
    # B forges A's Origin-Host and End-to-End id: no replay of A's answer, a 3010
    forged = ccr("pgw-a.test.realm;8;dup", 1, 0, 0x800, "41780000004")
    forged.header.is_retransmit = True
    answer = b.ask(forged)
    assert answer.result_code == 3010 and answer.header.is_error
    assert answer.as_bytes()[20:] != first.as_bytes()[20:]
    assert ocs.money("41780000004") == ("10.0000", "0.0100")


def test_request_number_reused_with_other_content(ocs: Ocs) -> None:
    a = Peer(ocs.port, b"pgw-a.test.realm")
    sid = "pgw-a.test.realm;9;reuse"
    assert a.ask(ccr(sid, 1, 0, 0x900, "41780000003")).result_code == 2001
    first = ccr(sid, 2, 1, 0x901, "41780000003", used=[1_000_000])
    assert a.ask(first).result_code == 2001
    assert ocs.money("41780000003") == ("9.9900", "0.0100")
    # n=1 again with 5 MB and a new End-to-End id: 5004, nothing charged
    again = a.ask(ccr(sid, 2, 1, 0x902, "41780000003", used=[5_000_000]))
    assert again.result_code == 5004
    assert ocs.money("41780000003") == ("9.9900", "0.0100")
    # the true retransmission still replays and charges nothing
    first.header.is_retransmit = True
    assert a.ask(first).result_code == 2001
    assert ocs.money("41780000003") == ("9.9900", "0.0100")


def test_absurd_usage_is_refused_without_a_traceback(ocs: Ocs) -> None:
    a = Peer(ocs.port, b"pgw-a.test.realm")
    sid = "pgw-a.test.realm;10;absurd"
    assert a.ask(ccr(sid, 1, 0, 0xA00, "41780000005")).result_code == 2001
    before = ocs.money("41780000005")
    one = a.ask(ccr(sid, 2, 1, 0xA01, "41780000005", used=[2**64 - 1]))
    assert one.result_code == 5004
    assert one.failed_avp is not None
    two = a.ask(ccr(sid, 2, 2, 0xA02, "41780000005", used=[2**63, 2**63]))  # sum > 2^64
    assert two.result_code == 5004
    assert ocs.money("41780000005") == before
    ok = a.ask(ccr(sid, 2, 3, 0xA03, "41780000005", used=[1_000_000]))
    assert ok.result_code == 2001
    assert "Traceback" not in (ocs.cwd / "serve.log").read_text()
