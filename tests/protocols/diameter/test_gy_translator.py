"""The Gy agent as a translator, against an in-memory ChargingService (no store): which
charging command each CCR becomes, named how, and which Result-Code each answer and
refusal becomes. The money itself is tested against the real store in test_gy.py."""

from __future__ import annotations

import asyncio

import pytest
from fake_charging import Recorder
from gy_support import Clock, ccr, mscc, rc, units

from ocs.charging.api import (
    ChargeEvent,
    ChargingBusy,
    RefundEvent,
    Refusal,
    RequestRef,
)
from protocols.diameter import codec as c
from protocols.diameter.codec import A, Rc
from protocols.diameter.gy import REFUSAL_CODE, GyAgent, GySettings

SETTINGS = GySettings(origin_host="ocs.test.realm", origin_realm="test.realm")

def _run(agent: GyAgent, msg: c.Message) -> c.Message:
    return c.decode(asyncio.run(agent.handle(msg)))


def test_a_session_becomes_open_update_close_named_by_its_request() -> None:
    fake = Recorder()
    agent = GyAgent(fake, SETTINGS, clock=Clock())
    assert rc(_run(agent, ccr(1, 0, mscc(10, units("octets", 0))))) == Rc.SUCCESS
    assert rc(_run(agent, ccr(2, 1, mscc(10, units("octets", 0),
                                         [units("octets", 700)])))) == Rc.SUCCESS
    assert rc(_run(agent, ccr(3, 2, mscc(10, usu=[units("octets", 300)])))) == Rc.SUCCESS
    kinds = [type(x).__name__ for x in fake.commands]
    assert kinds == ["OpenSession", "UpdateSession", "CloseSession"]
    assert [x.request for x in fake.commands] == [
        RequestRef("gy", "pgw;1;1", 0), RequestRef("gy", "pgw;1;1", 1),
        RequestRef("gy", "pgw;1;1", 2)]
    assert [x.rating_group for x in fake.commands] == [10, 10, 10]
    assert (fake.commands[1].used_units, fake.commands[2].used_units) == (700, 300)
    assert fake.commands[0].subscriber == ((fake.commands[0].subscriber[0][0], "41790000001"),)
    assert len(agent.sessions) == 0


def test_an_event_refund_names_the_debit_it_reverses() -> None:
    fake = Recorder()
    agent = GyAgent(fake, SETTINGS, clock=Clock())
    assert rc(_run(agent, ccr(4, 0, mscc(7, units("ssu", 1)), sid="ev;1",
                              context="32274@3gpp.org", action=0))) == Rc.SUCCESS
    assert rc(_run(agent, ccr(4, 0, mscc(7), sid="ev;1", context="32274@3gpp.org",
                              action=1, e2e=99))) == Rc.SUCCESS
    debit, refund = fake.commands
    assert isinstance(debit, ChargeEvent) and debit.request == RequestRef("gy", "ev;1", 0)
    assert isinstance(refund, RefundEvent) and refund.original == debit.request
    assert refund.rating_group == debit.rating_group == 7


@pytest.mark.parametrize("refusal", list(Refusal))
def test_every_refusal_has_its_result_code(refusal: Refusal) -> None:
    """A refused open session is answered with the code REFUSAL_CODE gives (a request
    key reused with other content, or a session of another peer: 5004 for the CCR)."""
    fake = Recorder()
    fake.refusal = refusal
    agent = GyAgent(fake, SETTINGS, clock=Clock())
    msg = ccr(1, 0, mscc(10, units("octets", 0)))
    if refusal in (Refusal.REQUEST_MISMATCH, Refusal.NOT_OWNER):
        with pytest.raises(c.MessageError) as err:
            asyncio.run(agent.handle(msg, peer=object()))
        assert err.value.result_code == Rc.INVALID_AVP_VALUE
        return
    answer = _run(agent, msg)
    assert rc(answer) == Rc.SUCCESS  # MSCC-level outcome, command-level success
    (group,) = answer.find_all(A.MULTIPLE_SERVICES_CREDIT_CONTROL)
    got = next(a.u32 for a in group.group() if a.code == A.RESULT_CODE)
    assert got == REFUSAL_CODE.get(refusal, Rc.UNABLE_TO_COMPLY)


def test_busy_charging_reaches_the_transport_as_a_typed_error() -> None:
    fake = Recorder()
    fake.busy = True
    agent = GyAgent(fake, SETTINGS, clock=Clock())
    with pytest.raises(ChargingBusy):
        asyncio.run(agent.handle(ccr(1, 0, mscc(10, units("octets", 0)))))
