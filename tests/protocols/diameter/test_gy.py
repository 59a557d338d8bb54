"""The Gy agent with the real engine and LMDB store, no sockets: every charge exact."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gy_support import Clock, ccr, mscc, rc, run, units
from tests_support import CONFIG_DIR, add

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import ExpireRequest, IdKind
from ocs.charging.service import EngineChargingService
from ocs.provisioning import op_load_plans, op_set_status
from ocs.rating.plans import load_plans_file
from ocs.store import Store, Writer
from ocs.store.env import CDR_JOURNAL
from ocs.store.records import dec_cdr
from protocols.diameter import codec as c
from protocols.diameter.codec import VENDOR_3GPP, A, MessageError, Rc
from protocols.diameter.gy import GyAgent, GySettings

MB = 1_000_000
SETTINGS = GySettings(origin_host="ocs.test.realm", origin_realm="test.realm")



@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[GyAgent, Clock]]:
    store = Store(tmp_path / "d", map_size_mb=64)
    store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    add(store, "41790000001", balance="1.00", imsi="228010000000001", username="alice@nai")
    add(store, "41790000002", balance="0")
    add(store, "41790000003", balance="0.003")
    add(store, "41790000004", balance="5.00", roaming=False)
    add(store, "41790000005", balance="5.00")
    store.run_write(op_set_status("41790000005", "suspend"))
    writer = Writer(store, max_ops=64, max_delay_ms=0.5)
    writer.start()
    engine = ChargingEngine(store, writer, EngineSettings(node="g",
                                                          home_networks=frozenset({"22801"})))
    clock = Clock()
    yield GyAgent(EngineChargingService(engine), SETTINGS, clock=clock), clock
    writer.stop()
    store.close()


def msccs(m: c.Message) -> list[dict[str, Any]]:
    out = []
    for g in m.find_all(A.MULTIPLE_SERVICES_CREDIT_CONTROL):
        d: dict[str, Any] = {}
        for a in g.group():
            if a.code == A.RATING_GROUP:
                d["rg"] = a.u32
            elif a.code == A.RESULT_CODE:
                d["rc"] = a.u32
            elif a.code == A.VALIDITY_TIME:
                d["vt"] = a.u32
            elif a.code == A.GRANTED_SERVICE_UNIT:
                d["gsu"] = {x.code: x.uint for x in a.group()}
            elif a.code == A.FINAL_UNIT_INDICATION:
                d["fui"] = c.value_of(a)
            elif a.vendor == VENDOR_3GPP:
                d[f"3gpp{a.code}"] = a.u32
        out.append(d)
    return out


def money(agent: GyAgent, msisdn: str = "41790000001") -> tuple[int, int]:
    v = agent.charging.engine.check_balance(((IdKind.MSISDN, msisdn),))
    assert v is not None
    return v.balance, v.reserved


def cdrs(agent: GyAgent) -> list[Any]:
    store = agent.charging.engine.store
    with store.read() as txn:
        return [dec_cdr.decode(v) for _k, v in txn.cursor(db=store.dbs[CDR_JOURNAL])]


def test_data_session_initial_update_terminate(env: tuple[GyAgent, Clock]) -> None:
    agent, _ = env
    a = run(agent, ccr(1, 0, mscc(10, units("octets", MB))))
    assert rc(a) == Rc.SUCCESS
    assert a.find(A.CC_REQUEST_TYPE).u32 == 1 and a.find(A.CC_REQUEST_NUMBER).u32 == 0  # type: ignore[union-attr]
    assert a.find(A.AUTH_APPLICATION_ID).u32 == 4  # type: ignore[union-attr]
    assert a.find(A.SESSION_ID).text == "pgw;1;1"  # type: ignore[union-attr]
    assert msccs(a) == [{"rg": 10, "rc": 2001, "vt": 900, "gsu": {A.CC_TOTAL_OCTETS: MB},
                         "3gpp869": 200_000}]
    assert money(agent) == (1_000_000, 10_000)  # 1 MB at 0.01 EUR/MB held
    a = run(agent, ccr(2, 1, mscc(10, units("octets", MB), [units("octets", 500_000)])))
    assert msccs(a)[0]["gsu"] == {A.CC_TOTAL_OCTETS: MB}
    assert money(agent) == (995_000, 10_000)
    a = run(agent, ccr(3, 2, mscc(10, None, [units("octets", 300_000)])))
    assert rc(a) == Rc.SUCCESS and msccs(a) == []
    assert money(agent) == (992_000, 0)
    records = cdrs(agent)
    assert [(r.units, r.charge, r.result, r.protocol) for r in records] == [
        (500_000, 5_000, "interim", "diameter"), (300_000, 3_000, "final", "diameter")]
    assert len(agent.sessions) == 0


def test_retransmission_charges_once(env: tuple[GyAgent, Clock]) -> None:
    agent, _ = env
    run(agent, ccr(1, 0, mscc(10, units("octets", MB))))
    update = ccr(2, 1, mscc(10, units("octets", MB), [units("octets", 400_000)]))
    first = asyncio.run(agent.handle(update))
    again = asyncio.run(agent.handle(update))
    assert first == again
    assert money(agent) == (996_000, 10_000)
    term = ccr(3, 2, mscc(10, None, [units("octets", 100_000)]))
    t1 = asyncio.run(agent.handle(term))
    t2 = asyncio.run(agent.handle(term))  # the session is closed: replayed from the store
    assert t1 == t2 and rc(c.decode(t2)) == Rc.SUCCESS
    assert money(agent) == (995_000, 0)
    assert len(cdrs(agent)) == 2


def test_several_rating_groups_each_with_its_result(env: tuple[GyAgent, Clock]) -> None:
    agent, _ = env
    a = run(agent, ccr(1, 0, mscc(10, units("octets", MB)), mscc(99, units("octets", MB)),
                       mscc(555, units("octets", MB))))
    assert rc(a) == Rc.SUCCESS
    got = {m["rg"]: m for m in msccs(a)}
    assert got[10]["rc"] == 2001 and got[10]["gsu"] == {A.CC_TOTAL_OCTETS: MB}
    assert got[99] == {"rg": 99, "rc": Rc.CREDIT_CONTROL_NOT_APPLICABLE}  # zero-rated
    assert got[555]["rc"] == Rc.RATING_FAILED and "gsu" not in got[555]
    assert money(agent) == (1_000_000, 10_000)


def test_no_credit_at_initial(env: tuple[GyAgent, Clock]) -> None:
    agent, _ = env
    a = run(agent, ccr(1, 0, mscc(10, units("octets", MB)), msisdn="41790000002"))
    assert rc(a) == Rc.SUCCESS
    assert msccs(a) == [{"rg": 10, "rc": Rc.CREDIT_LIMIT_REACHED, "vt": 900}]
    redirecting = GyAgent(agent.charging, dataclasses.replace(
        SETTINGS, final_unit_action="redirect", redirect_url="http://topup.example/"),
        clock=agent.clock)
    a = run(redirecting, ccr(1, 0, mscc(10, units("octets", MB)), msisdn="41790000002",
                             sid="pgw;2"))
    [m] = msccs(a)
    assert m["rc"] == 2001 and m["vt"] == 900 and "gsu" not in m
    assert m["fui"] == [(449, 0, 1), (434, 0, [(433, 0, 2), (435, 0, "http://topup.example/")])]


def test_last_units_then_usage_on_an_empty_account(env: tuple[GyAgent, Clock]) -> None:
    agent, _ = env
    a = run(agent, ccr(1, 0, mscc(10, units("octets", MB)), msisdn="41790000003"))
    [m] = msccs(a)  # 0.003 EUR buys 300 kB: the final grant
    assert m["gsu"] == {A.CC_TOTAL_OCTETS: 300_000} and m["fui"] == [(449, 0, 0)]
    assert "3gpp869" not in m  # no threshold on a final grant
    a = run(agent, ccr(2, 1, mscc(10, units("octets", MB), [units("octets", 500_000)]),
                       msisdn="41790000003"))
    [m] = msccs(a)  # RFC 4006 §9.1: the used units are still deducted, as far as possible
    assert m["rc"] == Rc.CREDIT_LIMIT_REACHED and "gsu" not in m
    assert money(agent, "41790000003") == (0, 0)
    assert [r.charge for r in cdrs(agent)] == [3_000]


def test_subscriber_refusals(env: tuple[GyAgent, Clock]) -> None:
    agent, _ = env
    assert rc(run(agent, ccr(1, 0, mscc(10, units("octets", MB)), msisdn="41999999999"))) == (
        Rc.USER_UNKNOWN)
    assert rc(run(agent, ccr(1, 0, mscc(10, units("octets", MB)), msisdn="41790000005"))) == (
        Rc.END_USER_SERVICE_DENIED)
    # IMSI and NAI identities find the same subscriber
    a = run(agent, ccr(1, 0, mscc(10, units("octets", MB)), msisdn="228010000000001",
                       sub_type=1, sid="imsi"))
    assert msccs(a)[0]["rc"] == 2001
    a = run(agent, ccr(1, 0, mscc(10, units("octets", MB)), msisdn="alice@nai", sub_type=3,
                       sid="nai"))
    assert msccs(a)[0]["rc"] == 2001


def test_unknown_session_and_tcc_expiry(env: tuple[GyAgent, Clock]) -> None:
    agent, clock = env
    assert rc(run(agent, ccr(2, 1, mscc(10, units("octets", MB)), sid="nope"))) == (
        Rc.UNKNOWN_SESSION_ID)
    assert rc(run(agent, ccr(3, 1, sid="nope"))) == Rc.UNKNOWN_SESSION_ID
    run(agent, ccr(1, 0, mscc(10, units("octets", MB))))
    clock.now += 2 * 900 + 1  # Tcc = 2 × Validity-Time without a CCR
    a = run(agent, ccr(2, 1, mscc(10, units("octets", MB), [units("octets", 1000)])))
    assert rc(a) == Rc.UNKNOWN_SESSION_ID
    eng = agent.charging.engine
    due = eng.expired_reservations(int(clock.now))
    assert len(due) == 1
    for key, exp in due:
        assert eng._run_sync(lambda tx, k=key, e=exp: eng.op_expire(  # type: ignore[misc]
            tx, ExpireRequest(key=k, expires_at=e, now=int(clock.now))))
    assert money(agent) == (1_000_000, 0)  # nothing charged, the hold released
    assert [r.result for r in cdrs(agent)] == ["expired"]


def test_usage_report_without_rsu_and_summed_usus(env: tuple[GyAgent, Clock]) -> None:
    agent, _ = env
    run(agent, ccr(1, 0, mscc(10, units("octets", MB))))
    reason_qht = c.u32(A.REPORTING_REASON, 1, vendor=VENDOR_3GPP)
    a = run(agent, ccr(2, 1, mscc(10, None, [units("octets", 100_000), units("octets", 200_000)],
                                  extra=reason_qht)))
    [m] = msccs(a)
    assert m == {"rg": 10, "rc": 2001, "vt": 900}  # usage taken, no new quota, a sane VT
    assert money(agent) == (997_000, 0)


def test_voice_session_priced_by_destination(env: tuple[GyAgent, Clock]) -> None:
    agent, _ = env
    ims = c.grouped(A.SERVICE_INFORMATION, c.grouped(
        A.IMS_INFORMATION, c.utf8(A.CALLED_PARTY_ADDRESS, "tel:+41441234567",
                                  vendor=VENDOR_3GPP), vendor=VENDOR_3GPP), vendor=VENDOR_3GPP)
    a = run(agent, ccr(1, 0, mscc(None, units("time", 60)), ims, context="32260@3gpp.org",
                       sid="ims"))
    assert msccs(a)[0]["gsu"] == {A.CC_TIME: 60}
    assert msccs(a)[0]["3gpp868"] == 12  # Time-Quota-Threshold 20 %
    run(agent, ccr(3, 1, mscc(None, None, [units("time", 30)]), ims, context="32260@3gpp.org",
                   sid="ims"))
    assert money(agent) == (900_000, 0)  # 30 s in a 60 s first increment at 0.10/min
    assert cdrs(agent)[0].destination == "41441234567"


def test_roaming_priced_from_the_visited_network(env: tuple[GyAgent, Clock]) -> None:
    agent, _ = env
    ps = c.grouped(A.SERVICE_INFORMATION, c.grouped(
        A.PS_INFORMATION, c.utf8(A.TGPP_SGSN_MCC_MNC, "26201", vendor=VENDOR_3GPP),
        vendor=VENDOR_3GPP), vendor=VENDOR_3GPP)
    run(agent, ccr(1, 0, mscc(10, units("octets", MB)), ps, sid="roam"))
    run(agent, ccr(3, 1, mscc(10, None, [units("octets", MB)]), ps, sid="roam"))
    assert money(agent) == (950_000, 0)  # data-eu: 0.05 EUR/MB
    r = cdrs(agent)[0]
    assert (r.roaming, r.visited_network, r.rate_id) == (True, "26201", "data-eu")
    a = run(agent, ccr(1, 0, mscc(10, units("octets", MB)), ps, sid="r2", msisdn="41790000004"))
    assert msccs(a)[0]["rc"] == Rc.END_USER_SERVICE_DENIED  # roaming disabled


def test_events_debit_refund_balance_price(env: tuple[GyAgent, Clock]) -> None:
    agent, _ = env
    sms = c.grouped(A.SERVICE_INFORMATION, c.grouped(A.SMS_INFORMATION, c.grouped(
        A.RECIPIENT_INFO, c.grouped(A.RECIPIENT_ADDRESS, c.utf8(A.ADDRESS_DATA, "+41791112233",
                                                                vendor=VENDOR_3GPP),
                                    vendor=VENDOR_3GPP), vendor=VENDOR_3GPP),
        vendor=VENDOR_3GPP), vendor=VENDOR_3GPP)
    ev = {"context": "32274@3gpp.org", "sid": "smsc;1"}
    a = run(agent, ccr(4, 0, mscc(None, units("ssu", 1)), sms, action=0, **ev))  # type: ignore[arg-type]
    assert rc(a) == Rc.SUCCESS and msccs(a)[0]["gsu"] == {A.CC_SERVICE_SPECIFIC_UNITS: 1}
    assert money(agent) == (950_000, 0)  # sms-national 0.05
    # a refund names the debit by Session-Id
    a = run(agent, ccr(4, 1, mscc(None, units("ssu", 1)), sms, action=1, **ev))  # type: ignore[arg-type]
    assert rc(a) == Rc.SUCCESS
    assert money(agent) == (1_000_000, 0)
    a = run(agent, ccr(4, 0, mscc(None, units("ssu", 1)), action=2, context="32274@3gpp.org",
                       sid="cb"))
    assert a.find(A.CHECK_BALANCE_RESULT).u32 == 0  # type: ignore[union-attr]
    a = run(agent, ccr(4, 0, action=2, context="32274@3gpp.org", sid="cb2",
                       msisdn="41790000002"))
    assert a.find(A.CHECK_BALANCE_RESULT).u32 == 1  # type: ignore[union-attr]
    ims = c.grouped(A.SERVICE_INFORMATION, c.grouped(
        A.IMS_INFORMATION, c.utf8(A.CALLED_PARTY_ADDRESS, "tel:+41441234567",
                                  vendor=VENDOR_3GPP), vendor=VENDOR_3GPP), vendor=VENDOR_3GPP)
    a = run(agent, ccr(4, 0, mscc(None, units("time", 120)), ims, action=3,
                       context="32260@3gpp.org", sid="pe"))
    cost = c.value_of(a.find(A.COST_INFORMATION))  # type: ignore[arg-type]
    assert cost == [(445, 0, [(447, 0, 2), (429, 0, -1)]), (425, 0, 978)]  # 0.2 EUR
    assert money(agent) == (1_000_000, 0)  # enquiries change nothing
    a = run(agent, ccr(4, 0, mscc(None, units("ssu", 1)), sms, action=0, msisdn="41790000002",
                       context="32274@3gpp.org", sid="poor"))
    assert rc(a) == Rc.CREDIT_LIMIT_REACHED


def test_concurrent_updates_of_one_session_are_serialised(env: tuple[GyAgent, Clock]) -> None:
    agent, _ = env
    run(agent, ccr(1, 0, mscc(10, units("octets", MB))))

    async def both() -> list[bytes]:
        return list(await asyncio.gather(
            agent.handle(ccr(2, 1, mscc(10, units("octets", MB), [units("octets", 100_000)]))),
            agent.handle(ccr(2, 2, mscc(10, units("octets", MB), [units("octets", 200_000)])))))

    answers = [c.decode(x) for x in asyncio.run(both())]
    assert [msccs(a)[0]["rc"] for a in answers] == [2001, 2001]
    assert money(agent) == (997_000, 10_000)


def test_malformed_ccrs(env: tuple[GyAgent, Clock]) -> None:
    agent, _ = env
    good = ccr(1, 0, mscc(10, units("octets", MB)))
    no_type = c.Message(good.code, good.flags, good.app, good.hbh, good.e2e,
                        [a for a in good.avps if a.code != A.CC_REQUEST_TYPE])
    with pytest.raises(MessageError) as e:
        asyncio.run(agent.handle(no_type))
    assert e.value.result_code == Rc.MISSING_AVP
    assert e.value.failed_avp == c.u32(A.CC_REQUEST_TYPE, 0)
    bad = c.Message(good.code, good.flags, good.app, good.hbh, good.e2e,
                    [c.Avp(A.CC_REQUEST_TYPE, (9).to_bytes(4, "big")) if a.code ==
                     A.CC_REQUEST_TYPE else a for a in good.avps])
    with pytest.raises(MessageError) as e:
        asyncio.run(agent.handle(bad))
    assert e.value.result_code == Rc.INVALID_AVP_VALUE
    twice = c.Message(good.code, good.flags, good.app, good.hbh, good.e2e,
                      [*good.avps, good.find(A.CC_REQUEST_NUMBER)])  # type: ignore[list-item]
    with pytest.raises(MessageError) as e:
        asyncio.run(agent.handle(twice))
    assert e.value.result_code == Rc.AVP_OCCURS_TOO_MANY_TIMES
    assert money(agent) == (1_000_000, 0)


def test_sweep_finds_sessions_to_notify(env: tuple[GyAgent, Clock]) -> None:
    agent, _ = env
    store = agent.charging.engine.store
    run(agent, ccr(1, 0, mscc(10, units("octets", MB)), sid="a"))
    run(agent, ccr(1, 0, mscc(10, units("octets", MB)), msisdn="41790000003", sid="b"))
    assert agent.sweep() == []  # 'b' is limited but still has no money
    store.run_write(op_set_status("41790000001", "block"))
    from ocs.provisioning import op_topup
    store.run_write(op_topup("41790000003", "2.00"))
    got = sorted((kind, s.session_id) for kind, s in agent.sweep())
    assert got == [("asr", "a"), ("rar", "b")]


def test_terminating_a_session_that_never_got_quota(env: tuple[GyAgent, Clock]) -> None:
    agent, _ = env
    a = run(agent, ccr(1, 0, mscc(10, units("octets", MB)), msisdn="41790000002", sid="poor"))
    assert msccs(a)[0]["rc"] == Rc.CREDIT_LIMIT_REACHED
    t = run(agent, ccr(3, 1, mscc(10, None, [units("octets", 0)]), msisdn="41790000002",
                       sid="poor"))
    assert rc(t) == Rc.SUCCESS and len(agent.sessions) == 0
    assert rc(run(agent, ccr(3, 2, sid="poor", msisdn="41790000002"))) == Rc.UNKNOWN_SESSION_ID


def test_a_session_moving_between_workers_follows_the_store(
        env: tuple[GyAgent, Clock]) -> None:
    """Two agents on one store are two workers: the session starts on one connection of
    the first, goes on and ends on the second, and a late CCR-U that reaches the first on
    a new connection is answered from what the store says (unknown), not from the first
    worker's stale copy of the session."""
    one, clock = env
    two = GyAgent(one.charging, SETTINGS, clock=clock)

    def on(agent: GyAgent, peer: object, msg: c.Message) -> c.Message:
        return c.decode(asyncio.run(agent.handle(msg, peer)))

    conn1, conn2, conn3 = object(), object(), object()
    assert rc(on(one, conn1, ccr(1, 0, mscc(10, units("octets", MB))))) == Rc.SUCCESS
    a = on(two, conn2, ccr(2, 1, mscc(10, units("octets", MB), [units("octets", 500_000)])))
    assert msccs(a)[0]["rc"] == Rc.SUCCESS  # re-attached from the reservation
    assert rc(on(two, conn2, ccr(3, 2, mscc(10, None, [units("octets", 200_000)])))) == (
        Rc.SUCCESS)
    assert money(one) == (993_000, 0)
    assert "pgw;1;1" in one.sessions  # the first worker's copy, now stale
    late = on(one, conn3, ccr(2, 3, mscc(10, units("octets", MB), [units("octets", 1)])))
    assert rc(late) == Rc.UNKNOWN_SESSION_ID
    assert money(one) == (993_000, 0) and "pgw;1;1" not in one.sessions
