"""Hostile and broken Nchf clients against ``ocs serve``: each gets an HTTP error or a
closed connection (counted), never a crash, a hang or money moved; the CHF keeps serving.
Plus fuzzed bodies, through the agent and over the wire: 4xx, never 5xx."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from fake_charging import Recorder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nchf_support import BASE, request, usage
from tests_support import OCS, admin_healthy, free_tcp_port, init_server, metric, serving

from protocols.nchf.agent import ChfAgent, ChfSettings

MB = 1_000_000


class Target:
    def __init__(self, cwd: Path, cfg: Path, port: int, admin: int):
        self.cwd, self.cfg, self.port, self.admin = cwd, cfg, port, admin

    def balance(self) -> str:
        p = subprocess.run([OCS, "subscriber", "show", "41793000001", "--json", "--config",
                            str(self.cfg)], capture_output=True, text=True, timeout=30)
        return str(json.loads(p.stdout)["balance"])

    def alive(self) -> None:
        with httpx.Client(http1=False, http2=True, timeout=10) as c:
            r = c.post(f"http://127.0.0.1:{self.port}{BASE}",
                       content=request(0, usage(10, MB), sub="msisdn-41793000001",
                                       stamp=str(time.monotonic_ns())),
                       headers={"content-type": "application/json"})
        assert r.status_code == 201

    def dropped(self, reason: str) -> float:
        return metric(self.admin, "ocs_chf_dropped_total", reason=reason)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("chfabuse")
    port, admin = free_tcp_port(), free_tcp_port()
    cfg = init_server(tmp, f"""
[chf]
listen = "127.0.0.1:{port}"
request_timeout_s = 1.0
max_connections = 16
max_body_kb = 8
[admin]
listen = "127.0.0.1:{admin}"
""")
    subprocess.run([OCS, "subscriber", "add", "--msisdn", "41793000001", "--plan",
                    "prepaid-basic", "--balance", "10.00", "--config", str(cfg)],
                   check=True, capture_output=True)
    with serving(cfg, tmp, lambda: admin_healthy(admin), args=("--workers", "1")):
        yield Target(tmp, cfg, port, admin)


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(5)
    return s


def _read_until_closed(s: socket.socket, limit: float = 5.0) -> bytes:
    out = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk
    raise AssertionError(f"still open after {limit}s: {out[:200]!r}")


def _h2_client(s: socket.socket) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    return conn


def _headers(path: str = BASE, length: int | None = None) -> list[tuple[str, str]]:
    h = [(":method", "POST"), (":path", path), (":scheme", "http"),
         (":authority", "127.0.0.1"), ("content-type", "application/json")]
    if length is not None:
        h.append(("content-length", str(length)))
    return h


def test_garbage_after_the_preface_closes_that_connection(target: Target) -> None:
    before = target.dropped("h2_protocol_error")
    s = _connect(target.port)
    # SETTINGS, then DATA on stream 0 (RFC 9113 §6.1: a connection error)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
              + b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
    _read_until_closed(s)
    assert target.dropped("h2_protocol_error") == before + 1
    target.alive()


def test_a_broken_http11_request_is_a_400_and_closed(target: Target) -> None:
    s = _connect(target.port)
    s.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n")
    out = _read_until_closed(s)
    assert out.startswith(b"HTTP/1.1 400")
    target.alive()


def test_a_body_too_large_is_a_413_on_both_versions(target: Target) -> None:
    big = b'{"x": "' + b"a" * 20000 + b'"}'
    with httpx.Client(http1=False, http2=True, timeout=10) as c:
        r = c.post(f"http://127.0.0.1:{target.port}{BASE}", content=big,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413
    with httpx.Client(timeout=10) as c:
        r = c.post(f"http://127.0.0.1:{target.port}{BASE}", content=big,
                   headers={"content-type": "application/json"})
    assert r.status_code == 413
    # a body that grows past the limit without announcing its length (h2 DATA frames)
    s = _connect(target.port)
    conn = _h2_client(s)
    conn.send_headers(1, _headers())
    for _ in range(3):
        conn.send_data(1, b"a" * 4000)
    s.sendall(conn.data_to_send())
    got = b""
    deadline = time.monotonic() + 5
    status = None
    while status is None and time.monotonic() < deadline:
        got = s.recv(65536)
        if not got:
            break
        for ev in conn.receive_data(got):
            if isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers)[b":status"]
        s.sendall(conn.data_to_send())
    assert status == b"413"
    s.close()
    target.alive()


def test_rapid_reset_closes_the_connection(target: Target) -> None:
    before = target.dropped("rapid_reset")
    s = _connect(target.port)
    conn = _h2_client(s)
    for i in range(400):
        sid = 2 * i + 1
        conn.send_headers(sid, _headers())
        conn.reset_stream(sid)
        if i % 50 == 0:
            s.sendall(conn.data_to_send())
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        s.sendall(conn.data_to_send())
        _read_until_closed(s)
        s.sendall(b"\x00" * 9)  # closed: the next write fails
        time.sleep(0.2)
        s.sendall(b"\x00" * 9)
    assert target.dropped("rapid_reset") == before + 1
    target.alive()


@pytest.mark.parametrize("version", ["h1", "h2"])
def test_a_request_that_never_completes_is_closed(target: Target, version: str) -> None:
    before = target.dropped("request_timeout")
    s = _connect(target.port)
    if version == "h1":
        s.sendall(b"POST " + BASE.encode() + b" HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\n"
                  b"\r\n{\"invocation")
    else:
        conn = _h2_client(s)
        conn.send_headers(1, _headers())
        conn.send_data(1, b'{"invocation')
        s.sendall(conn.data_to_send())
    started = time.monotonic()
    _read_until_closed(s, limit=5)
    assert time.monotonic() - started < 4
    assert target.dropped("request_timeout") == before + 1
    target.alive()


def test_connections_beyond_the_limit_are_closed(target: Target) -> None:
    before = target.dropped("max_connections")
    held = [_connect(target.port) for _ in range(16)]
    try:
        time.sleep(0.3)
        extra = _connect(target.port)
        assert _read_until_closed(extra) == b""
        assert target.dropped("max_connections") >= before + 1
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    target.alive()


def test_not_json_is_a_415(target: Target) -> None:
    with httpx.Client(http1=False, http2=True, timeout=10) as c:
        r = c.post(f"http://127.0.0.1:{target.port}{BASE}", content=b"a=b",
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and r.headers["content-type"] == "application/problem+json"


# -- fuzzing -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from([
        "ratingGroup", "requestedUnit", "usedUnitContainer", "UsedUnitContainer",
        "totalVolume", "uplinkVolume", "sst", "sd", "sNSSAI", "x", "time",
        "localSequenceNumber"]), children, max_size=4),
    max_leaves=20)


def _mutated(base: dict[str, Any], key: str, value: Any) -> bytes:
    body = dict(base)
    body[key] = value
    return json.dumps(body).encode()


BASE_BODY = json.loads(request(0, usage(10, MB), sub="msisdn-41790000001"))
fuzzed = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(_mutated, st.just(BASE_BODY), st.sampled_from(sorted(BASE_BODY)), json_values),
    st.builds(_mutated, st.just(BASE_BODY), st.just("multipleUnitUsage"),
              st.lists(json_values, max_size=3)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=fuzzed, op=st.sampled_from(["", "/r/update", "/r/release"]))
def test_fuzzed_bodies_are_answered_never_500(body: bytes, op: str) -> None:
    agent = ChfAgent(Recorder(), ChfSettings())
    ans = asyncio.run(agent.handle("POST", BASE + op, body))
    assert ans.status < 500, (ans.status, ans.body)
    if ans.status >= 400:
        assert json.loads(ans.body)["status"] == ans.status


@pytest.fixture(scope="module")
def wire(target: Target) -> Iterator[httpx.Client]:
    before = target.balance()
    with httpx.Client(http1=False, http2=True, timeout=10) as c:
        yield c
    assert target.balance() == before


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=fuzzed)
def test_fuzzed_bodies_over_the_wire(target: Target, wire: httpx.Client, body: bytes) -> None:
    r = wire.post(f"http://127.0.0.1:{target.port}{BASE}/{'0' * 32}/update",
                  content=body, headers={"content-type": "application/json"})
    assert r.status_code in (400, 404), (r.status_code, body, r.text)


def test_thousands_of_pipelined_http11_requests_are_answered(target: Target) -> None:
    """Requests answered at once (415 here) must not recurse into the next one: 3,000
    pipelined in one write are all answered, in order, and the CHF keeps serving."""
    one = (b"POST " + BASE.encode() + b" HTTP/1.1\r\nHost: a\r\n"
           b"Content-Type: text/plain\r\nContent-Length: 1\r\n\r\nx")
    s = _connect(target.port)
    s.sendall(one * 3000)
    got = b""
    deadline = time.monotonic() + 20
    while got.count(b"HTTP/1.1 415") < 3000 and time.monotonic() < deadline:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    s.close()
    assert got.count(b"HTTP/1.1 415") == 3000
    target.alive()
