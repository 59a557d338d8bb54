"""The RFC 6733 peer state machine without sockets (a fake clock in seconds)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from protocols.diameter import codec as c
from protocols.diameter.codec import A, Cmd, Rc
from protocols.diameter.peer import (
    TRANSITIONS,
    Answer,
    Close,
    DuplicateCache,
    LocalNode,
    PeerConnection,
    PeerStateError,
    Request,
    Send,
    State,
    Trigger,
    with_hbh,
)

LOCAL = LocalNode(origin_host="ocs.test.realm", origin_realm="test.realm", origin_state_id=77)


def cer(host: str = "pgw.test.realm", apps: tuple[int, ...] = (4,), hbh: int = 1,
        vsa: bool = False) -> bytes:
    body = c.octets(A.ORIGIN_HOST, host.encode()) + c.octets(A.ORIGIN_REALM, b"test.realm")
    body += c.address(A.HOST_IP_ADDRESS, "127.0.0.1") + c.u32(A.VENDOR_ID, 0)
    body += c.utf8(A.PRODUCT_NAME, "t", flags=0)
    for app in apps:
        if vsa:
            body += c.grouped(A.VENDOR_SPECIFIC_APPLICATION_ID, c.u32(A.VENDOR_ID, 10415),
                              c.u32(A.AUTH_APPLICATION_ID, app))
        else:
            body += c.u32(A.AUTH_APPLICATION_ID, app)
    return c.encode_message(Cmd.CER, c.FLAG_R, 0, hbh, hbh, body)


def request(code: int, app: int = 0, body: bytes = b"", hbh: int = 5, flags: int = c.FLAG_R
            ) -> bytes:
    origin = c.octets(A.ORIGIN_HOST, b"pgw.test.realm") + c.octets(A.ORIGIN_REALM, b"test.realm")
    return c.encode_message(code, flags, app, hbh, hbh + 1000, origin + body)


def ccr(hbh: int = 9, extra: bytes = b"") -> bytes:
    return request(Cmd.CCR, 4, c.utf8(A.SESSION_ID, "s;1") + c.u32(A.CC_REQUEST_TYPE, 1)
                   + c.u32(A.CC_REQUEST_NUMBER, 0) + extra, hbh=hbh, flags=c.FLAG_R | c.FLAG_P)


def sent(events: list[object]) -> list[c.Message]:
    return [c.decode(e.data) for e in events if isinstance(e, Send)]


def result(m: c.Message) -> int:
    a = m.find(A.RESULT_CODE)
    assert a is not None
    return a.u32


def open_peer(now: float = 0.0, **kw: object) -> PeerConnection:
    p = PeerConnection(LOCAL, now=now, **kw)  # type: ignore[arg-type]
    [cea] = sent(p.receive(cer(), now))
    assert result(cea) == Rc.SUCCESS and p.state is State.OPEN
    return p


def test_cea_advertises_capabilities() -> None:
    p = PeerConnection(LOCAL, now=0)
    [cea] = sent(p.receive(cer(vsa=True), 0))
    assert (cea.code, cea.is_request, cea.hbh, cea.e2e) == (Cmd.CER, False, 1, 1)
    assert result(cea) == Rc.SUCCESS
    assert cea.find(A.ORIGIN_STATE_ID).u32 == 77  # type: ignore[union-attr]
    assert [a.u32 for a in cea.find_all(A.AUTH_APPLICATION_ID)] == [4]
    assert [a.u32 for a in cea.find_all(A.SUPPORTED_VENDOR_ID)] == [10415]
    assert cea.find(A.HOST_IP_ADDRESS).address == "127.0.0.1"  # type: ignore[union-attr]
    assert cea.find(A.ORIGIN_HOST).data == b"ocs.test.realm"  # type: ignore[union-attr]
    assert p.peer_host == "pgw.test.realm" and p.state is State.OPEN


def test_nothing_before_cer() -> None:
    p = PeerConnection(LOCAL, now=0)
    ev = p.receive(request(Cmd.DWR), 0)
    assert ev == [Close("command 280 before CER")] and p.state is State.CLOSED
    assert p.receive(cer(), 0) == []


def test_no_common_application_is_5010_and_close() -> None:
    p = PeerConnection(LOCAL, now=0)
    ev = p.receive(cer(apps=(16777238,)), 0)
    [cea] = sent(ev)
    assert result(cea) == Rc.NO_COMMON_APPLICATION and not cea.is_error
    assert isinstance(ev[-1], Close) and p.state is State.CLOSED


def test_relay_application_is_accepted() -> None:
    p = PeerConnection(LOCAL, now=0)
    [cea] = sent(p.receive(cer(apps=(c.App.RELAY,)), 0))
    assert result(cea) == Rc.SUCCESS


def test_unknown_peer_is_3010_and_close() -> None:
    local = LocalNode(origin_host="ocs", origin_realm="r", allowed_peers=("PGW.test.realm",))
    p = PeerConnection(local, now=0)
    [cea] = sent(p.receive(cer(), 0))  # case-insensitive match: allowed
    assert result(cea) == Rc.SUCCESS
    q = PeerConnection(local, now=0)
    ev = q.receive(cer(host="evil.test.realm"), 0)
    [cea] = sent(ev)
    assert result(cea) == Rc.UNKNOWN_PEER and cea.is_error and isinstance(ev[-1], Close)


def test_dwr_and_dpr() -> None:
    p = open_peer()
    [dwa1] = sent(p.receive(request(Cmd.DWR, hbh=10), 1))
    [dwa2] = sent(p.receive(request(Cmd.DWR, hbh=11), 2))
    assert result(dwa1) == Rc.SUCCESS and dwa1.hbh == 10
    assert dwa1.find(A.ORIGIN_STATE_ID).u32 == dwa2.find(A.ORIGIN_STATE_ID).u32 == 77  # type: ignore[union-attr]
    ev = p.receive(request(Cmd.DPR, body=c.u32(A.DISCONNECT_CAUSE, 0)), 3)
    [dpa] = sent(ev)
    assert result(dpa) == Rc.SUCCESS and isinstance(ev[-1], Close)


def test_protocol_errors_have_the_e_bit() -> None:
    p = open_peer()
    [a] = sent(p.receive(request(Cmd.CCR, app=0, body=c.utf8(A.SESSION_ID, "x")), 1))
    assert result(a) == Rc.APPLICATION_UNSUPPORTED and a.is_error and a.code == Cmd.CCR
    assert a.find(A.SESSION_ID).data == b"x"  # type: ignore[union-attr]
    [a] = sent(p.receive(request(999, app=4), 1))
    assert result(a) == Rc.COMMAND_UNSUPPORTED and a.is_error and a.code == 999
    [a] = sent(p.receive(request(Cmd.CCR, app=4, flags=c.FLAG_R | c.FLAG_E), 1))
    assert result(a) == Rc.INVALID_HDR_BITS and a.is_error


def test_unknown_mandatory_avp_is_5001_in_a_cca() -> None:
    p = open_peer()
    weird = c.u32(1, 1, vendor=99999)
    [a] = sent(p.receive(ccr(extra=weird), 1))
    assert result(a) == Rc.AVP_UNSUPPORTED and not a.is_error
    assert a.find(A.FAILED_AVP).data == weird  # type: ignore[union-attr]
    assert a.find(A.CC_REQUEST_TYPE).u32 == 1 and a.find(A.AUTH_APPLICATION_ID).u32 == 4  # type: ignore[union-attr]
    assert a.flags & c.FLAG_P  # P copied from the request


def test_proxy_info_is_echoed_in_errors() -> None:
    p = open_peer()
    pi = c.grouped(A.PROXY_INFO, c.octets(280, b"dra.test"), c.octets(33, b"state"))
    [a] = sent(p.receive(request(999, app=4, body=pi), 1))
    assert a.find(A.PROXY_INFO).encode() == pi  # type: ignore[union-attr]


def test_reassembly_byte_by_byte_and_coalesced() -> None:
    p = open_peer()
    got: list[object] = []
    for b in ccr(hbh=21):
        got += p.receive(bytes([b]), 1)
    assert [type(e) for e in got] == [Request] and got[0].message.hbh == 21  # type: ignore[attr-defined]
    ev = p.receive(ccr(hbh=22) + ccr(hbh=23), 1)
    assert [e.message.hbh for e in ev if isinstance(e, Request)] == [22, 23]


def test_framing_error_closes() -> None:
    p = open_peer()
    ev = p.receive(b"\x01\x00\x00\x07" + b"\x00" * 16, 1)
    assert isinstance(ev[-1], Close) and p.state is State.CLOSED


def test_watchdog() -> None:
    p = open_peer(now=0, watchdog_s=6)
    assert p.handle_timer(5) == []
    [dwr_ev] = p.handle_timer(6.1)
    dwr = c.decode(dwr_ev.data)  # type: ignore[union-attr]
    assert dwr.code == Cmd.DWR and dwr.is_request
    assert dwr.find(A.ORIGIN_HOST).data == b"ocs.test.realm"  # type: ignore[union-attr]
    # the peer answers: quiet again
    dwa = c.encode_message(Cmd.DWR, 0, 0, dwr.hbh, dwr.e2e, c.u32(A.RESULT_CODE, 2001))
    assert p.receive(dwa, 7) == []
    assert p.handle_timer(12) == []
    [dwr_ev] = p.handle_timer(13.2)
    # no answer within Tw: close
    assert p.handle_timer(19.3) == [Close("watchdog: no DWA")]


def test_cer_timeout_and_unknown_answers() -> None:
    p = PeerConnection(LOCAL, now=0, watchdog_s=30, cer_timeout_s=6)
    assert p.handle_timer(5.9) == []
    assert p.handle_timer(6) == [Close("no CER")]
    # traffic does not extend the deadline
    t = PeerConnection(LOCAL, now=0, cer_timeout_s=6)
    for i in range(5):
        assert t.receive(b"\x01\x00\x01\x00" if i == 0 else b"\x00", i) == []
        assert t.handle_timer(i + 0.5) == []
    assert t.handle_timer(6.0) == [Close("no CER")]
    # more than 16 KiB announced before CER: closed at once
    big = PeerConnection(LOCAL, now=0)
    [ev] = big.receive(b"\x01\x00\x40\x04", 0)
    assert isinstance(ev, Close) and big.counters["oversize_before_cer"] == 1
    q = open_peer()
    stray = c.encode_message(Cmd.RAR, 0, 4, 4242, 1, c.u32(A.RESULT_CODE, 2001))
    assert q.receive(stray, 1) == [] and q.counters["unknown_answer"] == 1


def test_our_requests_and_their_answers() -> None:
    p = open_peer()
    data, hbh = p.request(Cmd.RAR, 4, c.utf8(A.SESSION_ID, "s"), context="ctx")
    rar = c.decode(data)
    assert rar.is_request and rar.hbh == hbh and rar.app == 4
    raa = c.encode_message(Cmd.RAR, 0, 4, hbh, rar.e2e, c.u32(A.RESULT_CODE, 2002))
    [ev] = p.receive(raa, 1)
    assert isinstance(ev, Answer) and ev.context == "ctx"
    # graceful close: DPR out, DPA in
    [dpr_ev] = p.disconnect()
    dpr = c.decode(dpr_ev.data)  # type: ignore[union-attr]
    assert dpr.code == Cmd.DPR and dpr.find(A.DISCONNECT_CAUSE).u32 == 0  # type: ignore[union-attr]
    dpa = c.encode_message(Cmd.DPR, 0, 0, dpr.hbh, dpr.e2e, c.u32(A.RESULT_CODE, 2001))
    assert p.receive(dpa, 2) == [Close("DPA received")]


def test_duplicate_cache_window() -> None:
    cache = DuplicateCache(240)
    key = ("pgw", 7)
    cache.begin(key, 0)
    assert cache.get(key) == DuplicateCache.PENDING
    cache.finish(key, b"answer")
    assert cache.get(key) == b"answer"
    cache.begin(("pgw", 8), 239)
    assert cache.get(key) == b"answer"
    cache.begin(("pgw", 9), 240.5)  # the first entry is older than the window now
    assert cache.get(key) is None and len(cache) == 2
    raw = ccr(hbh=1)
    assert c.decode(with_hbh(raw, 99)).hbh == 99


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_chunks_after_cer(chunks: list[bytes]) -> None:
    p = open_peer()
    for chunk in chunks:
        for ev in p.receive(chunk, 1):
            assert isinstance(ev, Send | Request | Answer | Close)


def _with_origin(origin: str, route_record: str = "") -> bytes:
    body = c.utf8(A.SESSION_ID, "s;1") + c.u32(A.CC_REQUEST_TYPE, 1) + c.u32(
        A.CC_REQUEST_NUMBER, 0)
    if route_record:
        body += c.octets(A.ROUTE_RECORD, route_record.encode())
    return c.encode_message(Cmd.CCR, c.FLAG_R | c.FLAG_P, 4, 5, 5, b"".join([
        c.octets(A.ORIGIN_HOST, origin.encode()), c.octets(A.ORIGIN_REALM, b"test.realm"),
        body]))


def test_a_direct_peer_speaks_only_for_itself() -> None:
    p = open_peer()
    [ans] = sent(p.receive(_with_origin("other.test.realm"), 1))
    assert result(ans) == Rc.UNKNOWN_PEER and ans.is_error
    assert p.counters["origin_host_mismatch"] == 1
    # its own Origin-Host (any case) passes; so does a relayed request (Route-Record)
    assert isinstance(p.receive(_with_origin("PGW.test.realm"), 2)[0], Request)
    relayed = p.receive(_with_origin("other.test.realm", "other.test.realm"), 3)
    assert isinstance(relayed[0], Request)
    # with relay_peers, only those may relay
    strict = dataclasses.replace(LOCAL, relay_peers=("dra.test.realm",))
    q = PeerConnection(strict, now=0)
    q.receive(cer(), 0)
    [ans] = sent(q.receive(_with_origin("other.test.realm", "other.test.realm"), 1))
    assert result(ans) == Rc.UNKNOWN_PEER
    d = PeerConnection(strict, now=0)
    d.receive(cer("dra.test.realm"), 0)
    assert isinstance(d.receive(_with_origin("other.test.realm", "x"), 1)[0], Request)


def test_get_timer_names_the_next_deadline() -> None:
    p = PeerConnection(LOCAL, now=100, watchdog_s=6, cer_timeout_s=10)
    assert p.get_timer() == 110  # the CER deadline
    p.receive(cer(), 101)
    due = p.get_timer()
    assert due is not None and 101 + 4 <= due <= 101 + 8  # Tw with its jitter
    assert p.handle_timer(due - 0.01) == []
    [dwr] = p.handle_timer(due)
    assert isinstance(dwr, Send)
    assert p.get_timer() == due + 6  # the DWA deadline
    assert p.handle_timer(due + 6) == [Close("watchdog: no DWA")]
    assert p.get_timer() is None


def test_the_transition_table_is_the_state_machine() -> None:
    """Every state change goes through TRANSITIONS: CLOSED is final, OPEN is reached only
    by an accepted CER, and a change it does not list is refused, not made."""
    assert {nxt for (st_, _t), nxt in TRANSITIONS.items() if st_ is State.CLOSED} == {
        State.CLOSED}
    assert [k for k, v in TRANSITIONS.items() if v is State.OPEN] == [
        (State.WAIT_CER, Trigger.CER_ACCEPTED)]
    p = PeerConnection(LOCAL, now=0.0)
    with pytest.raises(PeerStateError):
        p.move(Trigger.WATCHDOG_EXPIRED)  # no watchdog before the CER
    assert p.state is State.WAIT_CER
    p.receive(cer(), 0.0)
    assert p.state is State.OPEN
    # a request of ours answered with a DPA's command code ends the connection
    q = PeerConnection(LOCAL, now=0.0)
    q.receive(cer(), 0.0)
    _data, hbh = q.request(Cmd.RAR, 4, b"")
    ev = q.receive(c.encode_message(Cmd.DPR, 0, 0, hbh, hbh, b""), 1.0)
    assert ev == [Close("DPA received")] and q.state is State.CLOSED
    assert p.disconnect() and p.state is State.CLOSING
    p.receive(request(Cmd.DPR), 1.0)
    assert p.state is State.CLOSED
    p.move(Trigger.TRANSPORT_CLOSED)
    assert p.state is State.CLOSED


@settings(max_examples=300, deadline=None)
@example(["cer", "rar", "answer_as_dpa"])
@example(["disconnect", "cer", "tick", "tick", "tick", "disconnect", "dpa"])
@given(st.lists(st.sampled_from([
    "ccr", "dwr", "dpr", "cer", "dpa", "junk", "bigframe", "tick", "disconnect", "rar",
    "answer_as_dpa"]),
    max_size=12))
def test_no_input_sequence_reaches_a_change_the_table_lacks(steps: list[str]) -> None:
    """Whatever a peer sends, in whatever order, with timers and our own disconnects in
    between: the machine only makes changes the table lists (no PeerStateError)."""
    p = PeerConnection(LOCAL, now=0.0, watchdog_s=1.0)
    now = 0.0
    for step in steps:
        now += 0.7
        if step == "tick":
            p.handle_timer(now)
        elif step == "disconnect":
            p.disconnect()
        elif step == "rar":
            p.request(Cmd.RAR, 4, b"")
        elif step == "answer_as_dpa":  # a request of ours answered with a DPA's code
            for hbh in list(p.pending)[:1]:
                p.receive(c.encode_message(Cmd.DPR, 0, 0, hbh, hbh, b""), now)
        else:
            data = {"ccr": ccr(), "dwr": request(Cmd.DWR), "dpr": request(Cmd.DPR),
                    "cer": cer(), "dpa": c.encode_message(Cmd.DPR, 0, 0, 1, 1, b""),
                    "junk": b"\x02\x00\x00\x14" + b"\x00" * 16,
                    "bigframe": b"\x01\xff\xff\xff" + b"\x00" * 16}[step]
            p.receive(data, now)
