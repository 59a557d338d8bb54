"""RADIUS against a hostile or broken peer, on a running ``ocs serve`` (real sockets).

Each test reproduces an attack that used to freeze the server, move money or touch
another party's state; the peers are raw UDP sockets (a hostile NAS crafts what it likes)
and pyrad where an ordinary NAS is enough.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests_support import (
    admin_healthy,
    free_tcp_port,
    free_udp_port,
    init_server,
    metric,
    serving,
)

from protocols.radius.codec import AcctStatus, Attr, Code, attr, decode, encode_request

OCS = str(Path(sys.executable).parent / "ocs")
SECRET = b"testing123"
OTHER_SECRET = b"othersecret"


class Server:
    def __init__(self, cwd: Path, cfg: Path, acct: int, auth: int, admin: int, coa: int,
                 proc: subprocess.Popen[bytes]):
        self.cwd, self.cfg, self.acct, self.auth, self.admin, self.coa = (
            cwd, cfg, acct, auth, admin, coa)
        self.proc = proc
        self._ident = 0

    def ocs(self, *args: str) -> str:
        p = subprocess.run([OCS, *args, "--config", str(self.cfg)], cwd=self.cwd,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout

    def show(self, msisdn: str) -> dict[str, str]:
        d = json.loads(self.ocs("subscriber", "show", msisdn, "--json"))
        return {"balance": d["balance"], "reserved": d["reserved"]}

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.admin, name, **labels)

    def request(self, sock: socket.socket, code: Code, attrs: list[tuple[int, bytes]], *,
                secret: bytes = SECRET, port: int | None = None,
                timeout: float = 3.0) -> bytes | None:
        """Send one request from ``sock``; the reply, or None when none came."""
        self._ident = (self._ident + 1) % 256
        raw = encode_request(code, self._ident, secret, attrs)
        sock.settimeout(timeout)
        sock.sendto(raw, ("127.0.0.1", port or self.acct))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                return None
            if data[1] == raw[1]:
                return data
        return None


CONFIG = """
[charging]
reaper_interval_s = 1
max_usage_bytes = 1000000000
[radius]
auth_listen = "127.0.0.1:{auth}"
acct_listen = "127.0.0.1:{acct}"
rating_group = 10
dae_queue_limit = 16
[[radius.clients]]
address = "127.0.0.1"
secret = "testing123"
name = "nas-a"
coa_port = {coa}
[[radius.clients]]
address = "127.0.0.2"
secret = "othersecret"
name = "nas-b"
coa_port = {coa}
[admin]
listen = "127.0.0.1:{admin}"
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    auth, acct, coa, admin = free_udp_port(), free_udp_port(), free_udp_port(), free_tcp_port()
    cfg = init_server(tmp_path, CONFIG.format(auth=auth, acct=acct, coa=coa, admin=admin))
    plans = str(Path(__file__).resolve().parents[3] / "config" / "plans.toml")
    subprocess.run([OCS, "plan", "load", plans, "--config", str(cfg)], check=True,
                   capture_output=True)
    with serving(cfg, tmp_path, lambda: admin_healthy(admin)) as proc:
        srv = Server(tmp_path, cfg, acct, auth, admin, coa, proc)
        srv.ocs("subscriber", "add", "--msisdn", "41790000001", "--plan", "prepaid-basic",
                "--username", "bob", "--password", "secret", "--balance", "10.00")
        srv.ocs("subscriber", "add", "--msisdn", "41790000002", "--plan", "prepaid-basic",
                "--username", "carl", "--password", "secret", "--balance", "50.00")
        yield srv


def _udp(host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # replies to a burst
    s.bind((host, 0))
    return s


def _acct(status: AcctStatus, sid: str, user: str, *extra: tuple[int, bytes],
          nas_ip: bytes = b"\x7f\x00\x00\x01") -> list[tuple[int, bytes]]:
    return [attr(Attr.ACCT_STATUS_TYPE, status), attr(Attr.ACCT_SESSION_ID, sid),
            attr(Attr.USER_NAME, user), attr(Attr.NAS_IP_ADDRESS, nas_ip), *extra]


def test_refused_starts_with_silent_coa_port_do_not_freeze_the_server(server: Server) -> None:
    """300 Starts for an unknown user within 2 s while the NAS's CoA port is silent: each
    refused Start queues a Disconnect-Request; once all 256 Identifiers are in flight the
    rest wait in a bounded queue (16 here) and the excess is dropped and counted. The
    server keeps answering and SIGTERM ends it."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the NAS's CoA port: mute
    silent.bind(("127.0.0.1", server.coa))
    sock = _udp()
    sock.settimeout(5)
    try:
        sent = 0
        t0 = time.monotonic()
        for i in range(300):
            raw = encode_request(Code.ACCOUNTING_REQUEST, i % 256, SECRET,
                                 _acct(AcctStatus.START, f"flood-{i}", "nobody"))
            sock.sendto(raw, ("127.0.0.1", server.acct))
            sent += 1
            time.sleep(0.004)
        answered = 0
        while answered < sent:
            try:
                sock.recv(4096)
            except TimeoutError:
                break
            answered += 1
        assert time.monotonic() - t0 < 10
        assert answered == sent  # every Start answered (refused, charged nothing)
        # the node still serves: admin and a normal accounting request
        t1 = time.monotonic()
        assert admin_healthy(server.admin)
        reply = server.request(_udp(), Code.ACCOUNTING_REQUEST,
                               _acct(AcctStatus.START, "ok-1", "bob"))
        assert reply is not None and decode(reply).code == Code.ACCOUNTING_RESPONSE
        assert time.monotonic() - t1 < 3
        silent.settimeout(3)
        seen = set()
        with pytest.raises(TimeoutError):
            while True:
                seen.add(decode(silent.recv(4096)).identifier)
        assert len(seen) == 256  # all Identifiers used, none twice at once
        dropped = server.metric("ocs_radius_dae_total", kind="disconnect", outcome="dropped")
        assert 0 < dropped <= 300 - 256 - 16  # the queue held 16; the excess was dropped
        assert server.show("41790000001") == {"balance": "10.0000", "reserved": "0.1000"}
    finally:
        silent.close()
    t2 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
    assert time.monotonic() - t2 < 20
    assert os.path.exists(server.cwd / "data")


def _ok(reply: bytes | None) -> None:
    assert reply is not None and decode(reply).code == Code.ACCOUNTING_RESPONSE


def test_resent_stop_and_interim_after_stop_charge_nothing(server: Server) -> None:
    """RFC 2866 §5.2: a NAS re-sending a Stop uses a new Identifier (and Acct-Delay-Time):
    the session has ended, so the report is answered and charges nothing; an Interim after
    the Stop takes no hold either."""
    sock = _udp()
    _ok(server.request(sock, Code.ACCOUNTING_REQUEST, _acct(AcctStatus.START, "s5", "bob")))
    assert server.show("41790000001") == {"balance": "10.0000", "reserved": "0.1000"}
    stop = _acct(AcctStatus.STOP, "s5", "bob", attr(Attr.ACCT_INPUT_OCTETS, 20_000_000))
    _ok(server.request(sock, Code.ACCOUNTING_REQUEST, stop))
    assert server.show("41790000001") == {"balance": "9.8000", "reserved": "0.0000"}
    _ok(server.request(sock, Code.ACCOUNTING_REQUEST,
                       [*stop, attr(Attr.ACCT_DELAY_TIME, 3)]))
    _ok(server.request(sock, Code.ACCOUNTING_REQUEST, _acct(
        AcctStatus.INTERIM_UPDATE, "s5", "bob", attr(Attr.ACCT_INPUT_OCTETS, 30_000_000))))
    assert server.show("41790000001") == {"balance": "9.8000", "reserved": "0.0000"}
    assert server.metric("ocs_radius_suspect_total", reason="ended_session_report") == 2


def test_a_client_reaches_only_its_own_sessions(server: Server) -> None:
    """A second client (own secret) naming the first client's NAS-IP-Address and session:
    its reports and its Accounting-On touch only its own sessions; the claim is counted."""
    a, b = _udp(), _udp("127.0.0.2")
    _ok(server.request(a, Code.ACCOUNTING_REQUEST, _acct(AcctStatus.START, "s6", "bob")))
    assert server.show("41790000001") == {"balance": "10.0000", "reserved": "0.1000"}
    _ok(server.request(b, Code.ACCOUNTING_REQUEST, _acct(AcctStatus.ACCOUNTING_ON, "", "x"),
                       secret=OTHER_SECRET))
    assert server.show("41790000001") == {"balance": "10.0000", "reserved": "0.1000"}
    assert server.metric("ocs_radius_suspect_total", reason="nas_ip_mismatch") == 1
    # A's session goes on as if B had not spoken: its counters are its own
    _ok(server.request(a, Code.ACCOUNTING_REQUEST, _acct(
        AcctStatus.INTERIM_UPDATE, "s6", "bob", attr(Attr.ACCT_INPUT_OCTETS, 5_000_000))))
    assert server.show("41790000001") == {"balance": "9.9500", "reserved": "0.1000"}
    _ok(server.request(a, Code.ACCOUNTING_REQUEST, _acct(
        AcctStatus.STOP, "s6", "bob", attr(Attr.ACCT_INPUT_OCTETS, 5_000_000))))
    assert server.show("41790000001") == {"balance": "9.9500", "reserved": "0.0000"}


def test_absurd_counters_are_answered_and_the_excess_not_charged(server: Server) -> None:
    """Gigawords and Octets at their maximum in both directions (2^65 bytes): answered, at
    most charging.max_usage_bytes (1 GB here = 10.00) charged, the rest counted; the Stop
    with the same counters charges nothing more."""
    sock = _udp()
    huge = [attr(Attr.ACCT_INPUT_OCTETS, 2**32 - 1), attr(Attr.ACCT_INPUT_GIGAWORDS, 2**32 - 1),
            attr(Attr.ACCT_OUTPUT_OCTETS, 2**32 - 1),
            attr(Attr.ACCT_OUTPUT_GIGAWORDS, 2**32 - 1)]
    _ok(server.request(sock, Code.ACCOUNTING_REQUEST, _acct(AcctStatus.START, "s10", "carl")))
    _ok(server.request(sock, Code.ACCOUNTING_REQUEST,
                       _acct(AcctStatus.INTERIM_UPDATE, "s10", "carl", *huge)))
    assert server.show("41790000002") == {"balance": "40.0000", "reserved": "0.1000"}
    assert server.metric("ocs_radius_suspect_total", reason="implausible_usage") == 1
    _ok(server.request(sock, Code.ACCOUNTING_REQUEST,
                       _acct(AcctStatus.STOP, "s10", "carl", *huge)))
    assert server.show("41790000002") == {"balance": "40.0000", "reserved": "0.0000"}
    log = (server.cwd / "serve.log").read_text()
    assert "Traceback" not in log and "radius_implausible_usage" in log


def _access(server: Server, sock: socket.socket, user: str, password: bytes) -> bytes | None:
    server._ident = (server._ident + 1) % 256
    raw = encode_request(Code.ACCESS_REQUEST, server._ident, SECRET,
                         [attr(Attr.USER_NAME, user)], message_authenticator=True,
                         password=password)
    sock.settimeout(5)
    sock.sendto(raw, ("127.0.0.1", server.auth))
    return sock.recv(4096)


def test_password_guessing_is_braked_and_users_cannot_be_listed(server: Server) -> None:
    """Wrong passwords: after 5 failures the (client, User-Name) is held off, and even the
    right password is refused unchecked meanwhile; an unknown user gets the very answer of
    a wrong password."""
    sock = _udp()
    unknown = decode(_access(server, sock, "nobody", b"guess") or b"")
    wrong = decode(_access(server, sock, "carl", b"guess") or b"")
    assert unknown.code == wrong.code == Code.ACCESS_REJECT
    assert unknown.text(Attr.REPLY_MESSAGE) == wrong.text(Attr.REPLY_MESSAGE)
    for i in range(30):
        reply = decode(_access(server, sock, "carl", b"guess%d" % i) or b"")
        assert reply.code == Code.ACCESS_REJECT
    # held off: the right password is refused too, without being checked
    assert decode(_access(server, sock, "carl", b"secret") or b"").code == Code.ACCESS_REJECT
    assert server.metric("ocs_auth_failures_total", protocol="radius",
                         reason="throttled") >= 20
    # another user of the same NAS is not affected
    assert decode(_access(server, sock, "bob", b"secret") or b"").code == Code.ACCESS_ACCEPT
