"""The RADIUS agent with the real engine and store, no sockets: exact charges."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests_support import CONFIG_DIR, WEDNESDAY_NOON, add

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import IdKind
from ocs.charging.service import EngineChargingService
from ocs.config import RadiusClient, RadiusConfig
from ocs.provisioning import op_load_plans, op_set_status
from ocs.rating.plans import load_plans_file
from ocs.store import Store, Writer
from ocs.store.env import CDR_JOURNAL
from ocs.store.records import dec_cdr
from protocols.radius.agent import RadiusAgent
from protocols.radius.codec import (
    VENDOR_3GPP,
    AcctStatus,
    Attr,
    Code,
    Drop,
    Tgpp,
    attr,
    decode,
    encode_request,
    response_authenticator_ok,
    vsa,
)

SECRET = b"testing123"
MB = 1_000_000


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[RadiusAgent]:
    store = Store(tmp_path / "d", map_size_mb=64)
    store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    add(store, "41790000001", balance="1.00", username="bob", password="secret",
        imsi="228010000000001")
    add(store, "41790000003", plan="prepaid-data", balance="0", username="carol",
        password="pw")
    writer = Writer(store, max_ops=64, max_delay_ms=0.5)
    writer.start()
    eng = ChargingEngine(store, writer, EngineSettings(node="r"))
    cfg = RadiusConfig(clients=(RadiusClient(address="127.0.0.0/8", secret="testing123",
                                             name="lo"),), rating_group=10)
    yield RadiusAgent(EngineChargingService(eng), cfg, clock=lambda: WEDNESDAY_NOON)
    writer.stop()
    store.close()


def acct(agent: RadiusAgent, status: AcctStatus, sid: str = "s1", *, ident: int = 1,
         secret: bytes = SECRET, **counters: int) -> bytes:
    attrs = [attr(Attr.ACCT_STATUS_TYPE, status), attr(Attr.NAS_IP_ADDRESS, b"\x7f\x00\x00\x01"),
             attr(Attr.USER_NAME, "bob")]
    if sid:
        attrs.append(attr(Attr.ACCT_SESSION_ID, sid))
    names = {"in_octets": Attr.ACCT_INPUT_OCTETS, "in_giga": Attr.ACCT_INPUT_GIGAWORDS,
             "out_octets": Attr.ACCT_OUTPUT_OCTETS, "out_giga": Attr.ACCT_OUTPUT_GIGAWORDS,
             "delay": Attr.ACCT_DELAY_TIME}
    attrs += [attr(names[k], v) for k, v in counters.items()]
    raw = encode_request(Code.ACCOUNTING_REQUEST, ident, secret, attrs)
    client = agent.client_for("127.0.0.1")
    assert client is not None
    pkt = decode(raw)
    reply = asyncio.run(agent.accounting(client, pkt))
    rep = decode(reply)
    assert rep.code == Code.ACCOUNTING_RESPONSE and rep.identifier == ident
    assert response_authenticator_ok(rep, pkt.authenticator, SECRET)
    return reply


def balance(agent: RadiusAgent, msisdn: str = "41790000001") -> tuple[int, int]:
    v = agent.charging.engine.check_balance(((IdKind.MSISDN, msisdn),))
    assert v is not None
    return v.balance, v.reserved


def cdrs(agent: RadiusAgent) -> list[Any]:
    store = agent.charging.engine.store
    with store.read() as txn:
        return [dec_cdr.decode(v) for _, v in txn.cursor(db=store.dbs[CDR_JOURNAL])]


def test_start_interim_stop_exact(agent: RadiusAgent) -> None:
    acct(agent, AcctStatus.START)
    assert balance(agent) == (1_000_000, 100_000)  # 10 MB default grant at 0.01/MB
    acct(agent, AcctStatus.INTERIM_UPDATE, ident=2, in_octets=1_500_000, out_octets=500_000)
    assert balance(agent) == (980_000, 100_000)  # 2 MB charged, a new grant held
    # the same report again (a NAS retry with a new Acct-Delay-Time): nothing more
    acct(agent, AcctStatus.INTERIM_UPDATE, ident=3, in_octets=1_500_000, out_octets=500_000,
         delay=5)
    assert balance(agent) == (980_000, 100_000)
    acct(agent, AcctStatus.STOP, ident=4, in_octets=3_000_001, out_octets=500_000)
    assert balance(agent) == (964_999, 0)  # 1,500,001 more bytes -> 15,001 micro
    rows = cdrs(agent)
    # the repeated report committed nothing, so it has no CDR
    assert [(r.units, r.charge, r.result) for r in rows] == [
        (2_000_000, 20_000, "interim"), (1_500_001, 15_001, "final")]
    assert rows[0].session_id == "radius:lo:127.0.0.1:s1" and rows[0].protocol == "radius"


def test_gigawords_and_capping(agent: RadiusAgent) -> None:
    acct(agent, AcctStatus.START)
    acct(agent, AcctStatus.INTERIM_UPDATE, ident=2, in_octets=1000, in_giga=1)
    # 4,294,968,296 bytes at 0.01/MB = 42.95 EUR: prepaid stops at the 1.00 it had
    assert balance(agent)[0] == 0
    (row,) = cdrs(agent)
    assert row.units == 4_294_968_296 and row.bytes_in == 4_294_968_296
    assert row.charge == 1_000_000 and row.result == "capped"
    assert agent.counters["credit_exhausted"] == 1


def test_interim_without_start_opens_session(agent: RadiusAgent) -> None:
    acct(agent, AcctStatus.INTERIM_UPDATE, "late", in_octets=MB)
    assert balance(agent) == (990_000, 100_000)
    acct(agent, AcctStatus.STOP, "late", ident=2)  # a Stop without counters keeps totals
    assert balance(agent) == (990_000, 0)


def test_accounting_on_closes_the_nas_sessions(agent: RadiusAgent) -> None:
    acct(agent, AcctStatus.START, "a")
    acct(agent, AcctStatus.START, "b", ident=2)
    assert balance(agent)[1] == 200_000
    acct(agent, AcctStatus.ACCOUNTING_ON, "", ident=3)
    assert balance(agent) == (1_000_000, 0)
    assert [r.result for r in cdrs(agent)] == ["final", "final"]


def test_bad_authenticator_dropped_and_nothing_charged(agent: RadiusAgent) -> None:
    raw = encode_request(Code.ACCOUNTING_REQUEST, 1, b"wrong", [
        attr(Attr.ACCT_STATUS_TYPE, AcctStatus.START), attr(Attr.ACCT_SESSION_ID, "x"),
        attr(Attr.USER_NAME, "bob")])
    client = agent.client_for("127.0.0.5")
    assert client is not None
    with pytest.raises(Drop) as exc:
        asyncio.run(agent.accounting(client, decode(raw)))
    assert exc.value.reason == "bad_authenticator"
    assert balance(agent) == (1_000_000, 0)
    assert agent.client_for("10.0.0.1") is None


def access(agent: RadiusAgent, user: str, password: bytes, *, ma: bool = True,
           extra: list[tuple[int, bytes]] | None = None) -> Any:
    raw = encode_request(Code.ACCESS_REQUEST, 5, SECRET,
                         [attr(Attr.USER_NAME, user), *(extra or [])],
                         message_authenticator=ma, password=password)
    client = agent.client_for("127.0.0.1")
    assert client is not None
    pkt = decode(raw)
    rep = decode(asyncio.run(agent.access(client, pkt)))
    assert rep.attributes[0][0] == Attr.MESSAGE_AUTHENTICATOR
    assert response_authenticator_ok(rep, pkt.authenticator, SECRET)
    return rep


def test_access_accept_reject(agent: RadiusAgent) -> None:
    rep = access(agent, "bob", b"secret", extra=[attr(Attr.PROXY_STATE, b"p1"),
                                                 attr(Attr.PROXY_STATE, b"p2")])
    assert rep.code == Code.ACCESS_ACCEPT
    assert rep.integer(Attr.SESSION_TIMEOUT) == 3600
    assert rep.integer(Attr.ACCT_INTERIM_INTERVAL) == 300
    assert rep.all(Attr.PROXY_STATE) == [b"p1", b"p2"]
    bad = access(agent, "bob", b"nope")
    assert bad.code == Code.ACCESS_REJECT and bad.text(Attr.REPLY_MESSAGE) == (
        "authentication failed")
    assert access(agent, "eve", b"x").text(Attr.REPLY_MESSAGE) == "authentication failed"
    # carol has no money but 1 GB of data allowance: accepted
    assert access(agent, "carol", b"pw").code == Code.ACCESS_ACCEPT
    agent.charging.engine.store.run_write(op_set_status("41790000001", "suspend"))
    assert access(agent, "bob", b"secret").text(Attr.REPLY_MESSAGE) == "account suspended"


def test_access_requires_message_authenticator(agent: RadiusAgent) -> None:
    with pytest.raises(Drop) as exc:
        access(agent, "bob", b"secret", ma=False)
    assert exc.value.reason == "missing_message_authenticator"


def test_identity_by_imsi_vsa(agent: RadiusAgent) -> None:
    raw = encode_request(Code.ACCOUNTING_REQUEST, 9, SECRET, [
        attr(Attr.ACCT_STATUS_TYPE, AcctStatus.START), attr(Attr.ACCT_SESSION_ID, "v"),
        vsa(VENDOR_3GPP, Tgpp.IMSI, "228010000000001")])
    client = agent.client_for("127.0.0.1")
    assert client is not None
    asyncio.run(agent.accounting(client, decode(raw)))
    assert balance(agent)[1] == 100_000


def test_a_session_with_no_report_for_its_validity_leaves_the_table(
        agent: RadiusAgent) -> None:
    """A NAS that stops reporting: after validity_s (its reservation's life) the session
    leaves the live table at the next sweep, without a store read; reports move the
    deadline."""
    now = [float(WEDNESDAY_NOON)]
    agent.clock = lambda: now[0]
    acct(agent, AcctStatus.START, "quiet", ident=1)
    acct(agent, AcctStatus.START, "chatty", ident=2)
    quiet = "radius:lo:127.0.0.1:quiet"
    chatty = "radius:lo:127.0.0.1:chatty"
    for step in range(1, 4):  # chatty reports every validity_s / 2
        now[0] += agent.validity_s / 2
        acct(agent, AcctStatus.INTERIM_UPDATE, "chatty", ident=10 + step,
             in_octets=step * 1000)
        asyncio.run(agent.sweep())
        assert chatty in agent.sessions
        assert (quiet in agent.sessions) is (step < 3), step  # gone past validity_s
    assert agent.sessions[chatty].deadline == now[0] + agent.validity_s
