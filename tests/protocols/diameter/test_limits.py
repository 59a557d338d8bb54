"""Diameter resource limits on a running ``ocs serve``: a hard CER deadline that traffic
does not extend, a small message size before CER, a connection cap, and backpressure
against a peer that never reads its answers (memory stays bounded, the peer is closed)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from diameter.message.commands import CreditControlRequest
from gy_support import peer_cer
from tests_support import admin_healthy, free_tcp_port, init_server, metric, serving

REALM = b"test.realm"


class Server:
    def __init__(self, cwd: Path, port: int, admin: int, pid: int):
        self.cwd, self.port, self.admin, self.pid = cwd, port, admin, pid

    def refused(self, reason: str) -> float:
        return metric(self.admin, "ocs_diameter_connections_refused_total", reason=reason)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("dlimits")
    port, admin = free_tcp_port(), free_tcp_port()
    cfg = init_server(tmp, f"""
[diameter]
listen = "127.0.0.1:{port}"
origin_host = "ocs.test.realm"
origin_realm = "test.realm"
cer_timeout_s = 2
max_connections = 20
write_buffer_kb = 256
write_stall_s = 3
[admin]
listen = "127.0.0.1:{admin}"
""")
    with serving(cfg, tmp, lambda: admin_healthy(admin), args=("--workers", "1")) as proc:
        yield Server(tmp, port, admin, proc.pid)


def _closed_within(s: socket.socket, seconds: float) -> bool:
    s.settimeout(seconds)
    try:
        while True:
            if s.recv(65536) == b"":
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_huge_message_before_cer_closes_at_once(server: Server) -> None:
    before = server.refused("oversize_before_cer")
    rss = server.rss_mb()
    socks = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(struct.pack("!I", (1 << 24) | (1 << 20)) + b"\x80" + b"\x00" * 4000)
        socks.append(s)
    for s in socks:
        assert _closed_within(s, 3)
        s.close()
    assert server.refused("oversize_before_cer") - before == 50
    assert server.rss_mb() - rss < 20


def test_cer_deadline_is_not_extended_by_trickling(server: Server) -> None:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    header = struct.pack("!I", (1 << 24) | 1000) + struct.pack("!I", (0x80 << 24) | 257)
    t0 = time.monotonic()
    s.sendall(header)
    closed = False
    for _ in range(20):  # one byte every 0.3 s: traffic, but never a CER
        try:
            s.sendall(b"\x00")
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        if _closed_within(s, 0.3):
            closed = True
            break
    assert closed and time.monotonic() - t0 < 5
    s.close()


def test_connections_beyond_the_cap_are_closed(server: Server) -> None:
    before = server.refused("max_connections")
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
             for _ in range(26)]
    time.sleep(0.5)
    closed = sum(_closed_within(s, 0.2) for s in socks)
    assert closed >= 6
    assert server.refused("max_connections") - before >= 6
    for s in socks:
        s.close()


def _proxy_info(size: int) -> bytes:
    def avp(code: int, data: bytes, flags: int = 0x40) -> bytes:
        n = 8 + len(data)
        return struct.pack("!II", code, (flags << 24) | n) + data + b"\x00" * (-n % 4)

    return avp(284, avp(280, b"proxy.test.realm") + avp(33, b"x" * size))


def test_a_peer_that_never_reads_is_paused_then_closed(server: Server) -> None:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(peer_cer(b"slow.test.realm"))
    head = s.recv(4, socket.MSG_WAITALL)
    s.recv(int.from_bytes(head[1:], "big") - 4, socket.MSG_WAITALL)
    rss = server.rss_mb()
    proxy = _proxy_info(32 * 1024)
    s.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 8
    for i in range(3000):  # CCRs for nobody: 5030, each answer echoing 32 KiB Proxy-Info
        r = CreditControlRequest()
        r.session_id = f"slow.test.realm;{i}"
        r.origin_host, r.origin_realm, r.destination_realm = b"slow.test.realm", REALM, REALM
        r.auth_application_id = 4
        r.service_context_id = "32251@3gpp.org"
        r.cc_request_type, r.cc_request_number = 1, 0
        r.add_subscription_id(0, "41000000000")
        r.header.application_id = 4
        r.header.hop_by_hop_identifier = r.header.end_to_end_identifier = 0x1000 + i
        raw = bytearray(r.as_bytes() + proxy)
        raw[1:4] = len(raw).to_bytes(3, "big")
        view = memoryview(bytes(raw))
        while view and time.monotonic() < deadline:
            try:
                view = view[s.send(view):]
            except BlockingIOError:
                time.sleep(0.01)  # the server stopped reading us: backpressure works
            except (BrokenPipeError, ConnectionResetError):
                break
        if view:
            break
        sent += 1
    assert sent < 3000  # the server stopped reading long before it had them all
    assert server.rss_mb() - rss < 40
    # still stuck after write_stall_s: the server closes the connection
    deadline = time.monotonic() + 10
    while server.refused("write_stalled") < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.refused("write_stalled") >= 1
    s.close()


def test_watchdog_on_a_silent_peer(tmp_path: Path) -> None:
    """The peer core's own timer (no poll of every connection): after Tw of silence our
    DWR, and without its DWA the connection is closed one Tw later."""
    port = free_tcp_port()
    cfg = init_server(tmp_path, f"""
[diameter]
listen = "127.0.0.1:{port}"
origin_host = "ocs.test.realm"
origin_realm = "test.realm"
watchdog_s = 2
[admin]
enabled = false
""")
    with serving(cfg, tmp_path, "diameter_listening", args=("--workers", "1")):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(peer_cer(b"quiet.test.realm"))
        t0 = time.monotonic()
        head = s.recv(4, socket.MSG_WAITALL)
        s.recv(int.from_bytes(head[1:], "big") - 4, socket.MSG_WAITALL)  # the CEA
        head = s.recv(8, socket.MSG_WAITALL)  # then, after Tw, our DWR
        assert int.from_bytes(head[5:8], "big") == 280 and head[4] & 0x80
        assert 1.5 <= time.monotonic() - t0 <= 4
        assert _closed_within(s, 5)  # no DWA: closed
        assert time.monotonic() - t0 <= 7
        s.close()
