"""The RADIUS agent as a translator, against an in-memory ChargingService (no store):
which command each Accounting-Request becomes and how it is named. The money is tested
on the real store in test_agent.py."""

from __future__ import annotations

import asyncio

from fake_charging import Recorder

from ocs.charging.api import CloseSession, OpenSession, RequestRef, UpdateSession
from ocs.config import RadiusClient, RadiusConfig
from protocols.radius.agent import RadiusAgent
from protocols.radius.codec import AcctStatus, Attr, Code, attr, decode, encode_request

SECRET = b"testing123"
CFG = RadiusConfig(clients=(RadiusClient(address="127.0.0.0/8", secret="testing123",
                                         name="lo"),), rating_group=10)


def _acct(agent: RadiusAgent, status: AcctStatus, ident: int, **octets: int) -> bytes:
    attrs = [attr(Attr.ACCT_STATUS_TYPE, status), attr(Attr.ACCT_SESSION_ID, "s1"),
             attr(Attr.NAS_IP_ADDRESS, b"\x7f\x00\x00\x01"), attr(Attr.USER_NAME, "bob")]
    if "total" in octets:
        attrs.append(attr(Attr.ACCT_INPUT_OCTETS, octets["total"]))
    pkt = decode(encode_request(Code.ACCOUNTING_REQUEST, ident, SECRET, attrs))
    client = agent.client_for("127.0.0.1")
    assert client is not None
    asyncio.run(agent.accounting(client, pkt))
    return pkt.authenticator


def test_start_interim_stop_become_open_update_close() -> None:
    fake = Recorder()
    agent = RadiusAgent(fake, CFG, clock=lambda: 1_000_000.0)
    auths = [_acct(agent, AcctStatus.START, 1), _acct(agent, AcctStatus.INTERIM_UPDATE, 2,
                                                      total=5000),
             _acct(agent, AcctStatus.STOP, 3, total=8000)]
    start, interim, stop = fake.commands
    assert isinstance(start, OpenSession) and isinstance(interim, UpdateSession)
    assert isinstance(stop, CloseSession)
    # named by (client, Identifier, Authenticator): what a retransmission repeats
    assert [c.request for c in fake.commands] == [
        RequestRef("radius:lo", "", f"{i}:{a.hex()}") for i, a in zip((1, 2, 3), auths,
                                                                       strict=True)]
    assert {c.session_id for c in fake.commands} == {"radius:lo:127.0.0.1:s1"}
    assert (interim.cumulative_units, stop.cumulative_units) == (5000, 8000)
    assert interim.clamp_excess and stop.clamp_excess and stop.remember_end
    assert start.owner == interim.owner == stop.owner == "radius:lo"
    assert start.rating_group == 10 and len(agent.sessions) == 0


def test_an_interim_without_start_opens_then_charges_under_steps() -> None:
    fake = Recorder()
    fake.unknown_sessions = True
    agent = RadiusAgent(fake, CFG, clock=lambda: 1_000_000.0)
    auth = _acct(agent, AcctStatus.INTERIM_UPDATE, 7, total=100)
    first, opened, charged = fake.commands
    name = f"7:{auth.hex()}"
    assert isinstance(first, UpdateSession) and first.request == RequestRef("radius:lo", "",
                                                                             name)
    assert isinstance(opened, OpenSession) and opened.request.step == "open"
    assert isinstance(charged, UpdateSession) and charged.request.step == "charge"
    assert charged.cumulative_units == 100
