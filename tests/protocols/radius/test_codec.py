"""RADIUS codec: bounds, authenticators, Message-Authenticator, passwords; pyrad as the
independent encoder/decoder on the other side."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pyrad import packet as pyrad_packet
from pyrad.client import Client as PyradClient
from pyrad.dictionary import Dictionary
from tests_support import REPO

from protocols.radius.codec import (
    VENDOR_3GPP,
    AcctStatus,
    Attr,
    Code,
    Drop,
    Tgpp,
    attr,
    decode,
    decrypt_password,
    encode_reply,
    encode_request,
    encrypt_password,
    message_authenticator_ok,
    request_authenticator_ok,
    response_authenticator_ok,
    vsa,
)

DICT = Dictionary(str(REPO / "protocols" / "radius" / "dictionaries" / "dictionary"))
SECRET = b"testing123"


def pyrad_acct(**attrs: object) -> bytes:
    c = PyradClient(server="127.0.0.1", secret=SECRET, dict=DICT)
    p = c.CreateAcctPacket()
    for k, v in attrs.items():
        p[k.replace("_", "-")] = v
    raw: bytes = p.RequestPacket()
    return raw


def test_pyrad_accounting_request_verifies_and_decodes() -> None:
    raw = pyrad_acct(Acct_Status_Type="Interim-Update", Acct_Session_Id="s1",
                     User_Name="bob", Acct_Input_Octets=1000, Acct_Input_Gigawords=1,
                     NAS_IP_Address="127.0.0.1")
    pkt = decode(raw)
    assert pkt.code == Code.ACCOUNTING_REQUEST
    assert request_authenticator_ok(pkt, SECRET)
    assert not request_authenticator_ok(pkt, b"wrong")
    assert pkt.integer(Attr.ACCT_STATUS_TYPE) == AcctStatus.INTERIM_UPDATE
    assert pkt.text(Attr.ACCT_SESSION_ID) == "s1"
    assert pkt.integer(Attr.ACCT_INPUT_GIGAWORDS) == 1
    assert pkt.get(Attr.NAS_IP_ADDRESS) == bytes([127, 0, 0, 1])


def test_our_requests_decode_in_pyrad() -> None:
    raw = encode_request(Code.ACCOUNTING_REQUEST, 7, SECRET, [
        attr(Attr.ACCT_STATUS_TYPE, AcctStatus.START), attr(Attr.ACCT_SESSION_ID, "x"),
        vsa(VENDOR_3GPP, Tgpp.IMSI, "228010000000001")])
    p = pyrad_packet.AcctPacket(packet=raw, dict=DICT, secret=SECRET)
    assert p.VerifyAcctRequest()
    assert p["Acct-Session-Id"] == ["x"]
    assert p["3GPP-IMSI"] == ["228010000000001"]
    assert decode(raw).vsa(VENDOR_3GPP, Tgpp.IMSI) == b"228010000000001"


def test_reply_authenticator_and_message_authenticator_first() -> None:
    req = decode(encode_request(Code.ACCESS_REQUEST, 9, SECRET,
                                [attr(Attr.USER_NAME, "bob"), attr(Attr.PROXY_STATE, b"a"),
                                 attr(Attr.PROXY_STATE, b"b")],
                                message_authenticator=True, password=b"pw"))
    assert message_authenticator_ok(req, SECRET) is True
    raw = encode_reply(Code.ACCESS_ACCEPT, req, SECRET,
                       [attr(Attr.SESSION_TIMEOUT, 60), *[(Attr.PROXY_STATE, v)
                                                         for v in req.all(Attr.PROXY_STATE)]],
                       message_authenticator=True)
    rep = decode(raw)
    assert rep.attributes[0][0] == Attr.MESSAGE_AUTHENTICATOR
    assert rep.all(Attr.PROXY_STATE) == [b"a", b"b"]
    assert response_authenticator_ok(rep, req.authenticator, SECRET)
    assert message_authenticator_ok(rep, SECRET, req.authenticator) is True
    # pyrad (independent) agrees the reply answers the request
    client = PyradClient(server="127.0.0.1", secret=SECRET, dict=DICT)
    preq = client.CreateAuthPacket(code=pyrad_packet.AccessRequest)
    preq.authenticator = req.authenticator
    preq.id = req.identifier
    preq["Proxy-State"] = [b"a", b"b"]
    reply = pyrad_packet.Packet(packet=raw, dict=DICT, secret=SECRET)
    assert preq.VerifyReply(reply, raw, enforce_ma=True)
    forged = bytearray(raw)
    forged[-1] ^= 1
    assert not preq.VerifyReply(pyrad_packet.Packet(packet=bytes(forged), dict=DICT,
                                                    secret=SECRET), bytes(forged))


def test_corrupted_message_authenticator_is_detected() -> None:
    raw = bytearray(encode_request(Code.ACCESS_REQUEST, 1, SECRET, [attr(Attr.USER_NAME, "u")],
                                   message_authenticator=True, password=b"x"))
    raw[-1] ^= 1  # flip a bit in User-Name
    assert message_authenticator_ok(decode(bytes(raw)), SECRET) is False
    assert message_authenticator_ok(decode(bytes(raw)), b"other") is False


@pytest.mark.parametrize("password", [b"", b"a", b"secret", b"x" * 16, b"y" * 17, b"z" * 100])
def test_password_round_trip_and_pyrad(password: bytes) -> None:
    auth = bytes(range(16))
    enc = encrypt_password(password, SECRET, auth)
    assert decrypt_password(enc, SECRET, auth) == password
    p = pyrad_packet.AuthPacket(secret=SECRET, authenticator=auth, dict=DICT)
    if password:
        assert decrypt_password(p.PwCrypt(password), SECRET, auth) == password


def test_gigawords_oracle() -> None:
    # RFC 2869: total = Gigawords * 2^32 + Octets
    from protocols.radius.agent import octets

    pkt = decode(pyrad_acct(Acct_Status_Type="Interim-Update", Acct_Input_Octets=1000,
                            Acct_Input_Gigawords=1))
    assert octets(pkt, Attr.ACCT_INPUT_OCTETS, Attr.ACCT_INPUT_GIGAWORDS) == 4_294_968_296
    assert octets(pkt, Attr.ACCT_OUTPUT_OCTETS, Attr.ACCT_OUTPUT_GIGAWORDS) is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "short_packet"),
        (b"\x04\x01\x00\x13" + b"\x00" * 15, "short_packet"),
        (b"\x04\x01\x00\x10" + b"\x00" * 16, "bad_length"),
        (b"\x04\x01\x10\x01" + b"\x00" * 16, "bad_length"),
        (b"\x04\x01\x00\x20" + b"\x00" * 16, "bad_length"),
        (b"\x04\x01\x00\x16" + b"\x00" * 16 + b"\x01\x01", "bad_attribute"),
        (b"\x04\x01\x00\x17" + b"\x00" * 16 + b"\x01\x05\x00", "bad_attribute"),
        (b"\x04\x01\x00\x15" + b"\x00" * 16 + b"\x01", "bad_attribute"),
    ],
)
def test_decode_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(Drop) as exc:
        decode(data)
    assert exc.value.reason == reason


def test_trailing_octets_ignored() -> None:
    raw = pyrad_acct(Acct_Status_Type="Start", Acct_Session_Id="s")
    pkt = decode(raw + b"garbage")
    assert pkt.raw == raw and request_authenticator_ok(pkt, SECRET)


SEEDS = [
    pyrad_acct(Acct_Status_Type="Start", Acct_Session_Id="s1", User_Name="bob"),
    encode_request(Code.ACCESS_REQUEST, 3, SECRET, [attr(Attr.USER_NAME, "bob")],
                   message_authenticator=True, password=b"pw"),
]


@settings(max_examples=1500, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.tuples(st.sampled_from(SEEDS), st.integers(0, 200), st.binary(min_size=1, max_size=8))
    .map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]):]),
))
@example(SEEDS[0])
@example(SEEDS[1])
def test_fuzz_any_bytes_decode_or_drop(data: bytes) -> None:
    try:
        pkt = decode(data)
    except Drop:
        return
    # whatever decodes can be verified and read without raising anything but Drop
    request_authenticator_ok(pkt, SECRET)
    message_authenticator_ok(pkt, SECRET)
    pkt.vsa(VENDOR_3GPP, Tgpp.IMSI)
    pkt.integer(Attr.ACCT_STATUS_TYPE)
    pkt.text(Attr.USER_NAME)
    pw = pkt.get(Attr.USER_PASSWORD)
    if pw is not None:
        try:
            decrypt_password(pw, SECRET, pkt.authenticator)
        except Drop:
            pass


def test_hmac_is_the_rfc_3579_construction() -> None:
    req = decode(encode_request(Code.ACCESS_REQUEST, 5, SECRET, [attr(Attr.USER_NAME, "u")],
                                message_authenticator=True))
    raw = bytearray(req.raw)
    raw[22:38] = b"\x00" * 16  # MA is the first attribute: type, length, then 16 octets
    assert hmac.new(SECRET, bytes(raw), hashlib.md5).digest() == req.get(
        Attr.MESSAGE_AUTHENTICATOR)
