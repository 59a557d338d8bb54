"""SMPP codec and bind state machine without sockets; fuzzing of every decoder."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.smpp.pdu import (
    Bind,
    Cmd,
    Framer,
    Pdu,
    PduError,
    Status,
    Submit,
    Tag,
    count_parts,
    decode_bind,
    decode_data_sm,
    decode_gsm7,
    decode_submit,
    encode_bind,
    encode_submit,
)
from protocols.smpp.session import Authenticate, Charge, Close, Send, SmppSession, State


def sm(**kw: object) -> Submit:
    base = dict(service_type="", source_ton=1, source_npi=1, source_addr="41790000001",
                dest_ton=1, dest_npi=1, destination_addr="41791234567", esm_class=0,
                protocol_id=0, priority_flag=0, schedule_delivery_time="",
                validity_period="", registered_delivery=0, replace_if_present=0,
                data_coding=0, sm_default_msg_id=0, short_message=b"hi", tlvs={})
    base.update(kw)
    return Submit(**base)  # type: ignore[arg-type]


def test_submit_round_trip_and_limits() -> None:
    s = sm(tlvs={Tag.SAR_TOTAL_SEGMENTS: b"\x02"})
    assert decode_submit(encode_submit(s)) == s
    with pytest.raises(PduError) as e:
        decode_submit(encode_submit(sm(source_addr="1" * 25)))  # over 21 with the NUL
    assert e.value.status in (Status.RINVMSGLEN, Status.RINVCMDLEN)
    with pytest.raises(PduError, match="both"):
        decode_submit(encode_submit(sm(tlvs={Tag.MESSAGE_PAYLOAD: b"x"})))
    with pytest.raises(PduError):
        decode_submit(encode_submit(sm())[:-1])  # sm_length says 2, one octet left


def test_framer_partial_reads_and_bad_length() -> None:
    pdu = Pdu(Cmd.ENQUIRE_LINK, 0, 9).encode() + Pdu(Cmd.UNBIND, 0, 10).encode()
    f = Framer()
    got = []
    for b in pdu:
        got += f.feed(bytes([b]))
    assert [(p.command_id, p.sequence) for p in got] == [(0x15, 9), (0x6, 10)]
    with pytest.raises(PduError) as e:
        Framer().feed(struct.pack(">IIII", 8, 0x15, 0, 3))
    assert e.value.status == Status.RINVCMDLEN and e.value.fatal and e.value.sequence == 3


@pytest.mark.parametrize(("kw", "parts"), [
    ({"short_message": b"a" * 160}, 1),
    ({"short_message": b"", "tlvs": {Tag.MESSAGE_PAYLOAD: b"a" * 161}}, 2),
    ({"short_message": b"", "tlvs": {Tag.MESSAGE_PAYLOAD: b"a" * 306}}, 2),
    ({"short_message": b"", "tlvs": {Tag.MESSAGE_PAYLOAD: b"a" * 307}}, 3),
    ({"data_coding": 8, "short_message": b"\x00a" * 70}, 1),
    ({"data_coding": 8, "short_message": b"", "tlvs": {Tag.MESSAGE_PAYLOAD: b"\x00a" * 71}},
     2),
    ({"esm_class": 0x40, "short_message": b"\x05\x00\x03\x01\x02\x01" + b"a" * 150}, 1),
])
def test_parts(kw: dict[str, object], parts: int) -> None:
    assert count_parts(sm(**kw)) == parts


def test_gsm7_extension_table() -> None:
    assert decode_gsm7(b"\x1b\x65 5") == "€ 5"


def bind_pdu(cmd: Cmd = Cmd.BIND_TRANSMITTER, seq: int = 1) -> Pdu:
    return Pdu(cmd, 0, seq, encode_bind(Bind("esme", "secret", "", 0x34, 0, 0, "")))


def test_session_state_machine() -> None:
    s = SmppSession(window=1)
    # before a bind: submit refused with RINVBNDSTS, enquire_link with generic_nack
    (a,) = s.receive(Pdu(Cmd.SUBMIT_SM, 0, 2, encode_submit(sm())), 0.0)
    assert isinstance(a, Send) and a.pdu.status == Status.RINVBNDSTS
    (auth,) = s.receive(bind_pdu(), 0.0)
    assert isinstance(auth, Authenticate) and auth.bind.system_id == "esme"
    (resp,) = s.bind_done(1, Cmd.BIND_TRANSMITTER, "esme", Status.ROK, 0x34)
    assert isinstance(resp, Send) and resp.pdu.command_id == 0x80000002
    assert s.state is State.BOUND_TX
    (charge,) = s.receive(Pdu(Cmd.SUBMIT_SM, 0, 3, encode_submit(sm())), 0.0)
    assert isinstance(charge, Charge)
    # the window (1) is full: the next one is throttled
    (busy,) = s.receive(Pdu(Cmd.SUBMIT_SM, 0, 4, encode_submit(sm())), 0.0)
    assert isinstance(busy, Send) and busy.pdu.status == Status.RTHROTTLED
    (done,) = s.submit_done(3, Cmd.SUBMIT_SM, Status.ROK, "id-1")
    assert isinstance(done, Send) and done.pdu.body == b"id-1\x00"
    (again,) = s.receive(bind_pdu(seq=5), 0.0)
    assert isinstance(again, Send) and again.pdu.status == Status.RALYBND
    out = s.receive(Pdu(Cmd.UNBIND, 0, 6), 0.0)
    assert isinstance(out[0], Send) and out[0].pdu.command_id == 0x80000006
    assert isinstance(out[1], Close) and s.state is State.CLOSED


def test_refused_bind_closes() -> None:
    s = SmppSession()
    s.receive(bind_pdu(), 0.0)
    resp, close = s.bind_done(1, Cmd.BIND_TRANSMITTER, "esme", Status.RINVPASWD, 0x34)
    assert isinstance(resp, Send) and resp.pdu.status == Status.RINVPASWD
    assert isinstance(close, Close)


def test_throttle_per_second() -> None:
    s = SmppSession(throttle_per_s=2)
    s.receive(bind_pdu(), 0.0)
    s.bind_done(1, Cmd.BIND_TRANSCEIVER, "esme", Status.ROK, 0x34)
    kinds = [type(s.receive(Pdu(Cmd.SUBMIT_SM, 0, 10 + i, encode_submit(sm())), 0.0)[0])
             for i in range(3)]
    assert kinds == [Charge, Charge, Send]  # the third within the same second: RTHROTTLED
    assert isinstance(s.receive(Pdu(Cmd.SUBMIT_SM, 0, 20, encode_submit(sm())), 1.0)[0],
                      Charge)


SEEDS = [encode_submit(sm()), encode_bind(Bind("esme", "secret", "", 0x34, 0, 0, ""))]


@settings(max_examples=1500, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.tuples(st.sampled_from(SEEDS), st.integers(0, 60), st.binary(max_size=6))
                 .map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]):])))
def test_fuzz_decoders(data: bytes) -> None:
    for decode in (decode_submit, decode_data_sm, decode_bind):
        try:
            decode(data)
        except PduError:
            pass
    f = Framer()
    try:
        f.feed(data)
    except PduError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([int(c) for c in Cmd] + [0x99, 0x80000004]),
                          st.binary(max_size=40)), max_size=12))
def test_fuzz_session_never_raises(pdus: list[tuple[int, bytes]]) -> None:
    s = SmppSession(window=2)
    for i, (cmd, body) in enumerate(pdus):
        for a in s.receive(Pdu(cmd, 0, i + 1, body), float(i)):
            if isinstance(a, Authenticate):
                s.bind_done(a.sequence, a.command_id, a.bind.system_id, Status.ROK, 0x34)
            elif isinstance(a, Charge):
                s.submit_done(a.sequence, a.command_id, Status.ROK, "x")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([*SEEDS, b"\x00\x00\x00\x10\x00\x00\x00\x15" + bytes(8)]),
                min_size=1, max_size=4).map(lambda parts: b"".join(
                    struct.pack(">IIII", 16 + len(p), 0x4, 0, i + 1) + p
                    for i, p in enumerate(parts))),
       st.lists(st.integers(1, 7), min_size=1, max_size=30))
def test_fuzz_framer_byte_by_byte_equals_whole(stream: bytes, cuts: list[int]) -> None:
    whole = Framer().feed(stream)
    f = Framer()
    got = []
    pos = 0
    i = 0
    while pos < len(stream):
        n = cuts[i % len(cuts)]
        got += f.feed(stream[pos:pos + n])
        pos += n
        i += 1
    assert [(p.command_id, p.sequence, p.body) for p in got] == [
        (p.command_id, p.sequence, p.body) for p in whole]
