"""Fraud scenarios through the Gy flows with the real engine and store: SIM box, roaming
in a high-risk network with a session at home, a spend spike; cases explain themselves;
resolving reinstates."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gy_support import Clock, ccr, mscc, rc, run, service_info, units
from tests_support import CONFIG_DIR, add

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import IdKind
from ocs.charging.service import EngineChargingService
from ocs.config import FraudConfig
from ocs.fraud.cases import decode_case, resolve, to_json
from ocs.provisioning import op_load_plans
from ocs.rating.plans import load_plans_file
from ocs.store import Store, Writer
from ocs.store.env import FRAUD_CASES
from protocols.diameter import codec as c
from protocols.diameter.codec import A, Rc
from protocols.diameter.gy import GyAgent, GySettings

FRAUD = dataclasses.asdict(FraudConfig(high_risk_networks=("99901",),
                                       high_risk_prefixes=("41900",)))
VOICE = "32260@3gpp.org"



@pytest.fixture
def agent(tmp_path: Path) -> Iterator[GyAgent]:
    store = Store(tmp_path / "d", map_size_mb=64)
    store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    for m in ("41790000001", "41790000002", "41790000003"):
        add(store, m, balance="50.00")
    writer = Writer(store, max_ops=64, max_delay_ms=0.5)
    writer.start()
    engine = ChargingEngine(store, writer, EngineSettings(
        node="f", home_networks=frozenset({"22801"}), fraud=FRAUD))
    yield GyAgent(EngineChargingService(engine),
                  GySettings(origin_host="ocs", origin_realm="test.realm"), clock=Clock())
    writer.stop()
    store.close()


def mscc_rc(m: c.Message) -> int:
    g = m.find(A.MULTIPLE_SERVICES_CREDIT_CONTROL)
    assert g is not None
    return c.find(g.group(), A.RESULT_CODE).u32  # type: ignore[union-attr]


def cases(agent: GyAgent) -> list[Any]:
    store = agent.charging.engine.store
    with store.read() as txn:
        return [decode_case(v) for _k, v in txn.cursor(db=store.dbs[FRAUD_CASES])]


def status(agent: GyAgent, msisdn: str) -> str:
    sub = agent.charging.engine.find_subscriber_now(((IdKind.MSISDN, msisdn),))
    assert sub is not None
    return sub.status


def call(agent: GyAgent, i: int, msisdn: str, seconds: int) -> c.Message:
    sid = f"pcscf;{msisdn};{i}"
    info = service_info(called=f"tel:+4179{i:07d}")
    first = run(agent, ccr(1, 0, mscc(None, units("time", 60)), info, sid=sid, msisdn=msisdn,
                           context=VOICE))
    if rc(first) != Rc.SUCCESS:
        return first
    return run(agent, ccr(3, 1, mscc(None, None, [units("time", seconds)]), info, sid=sid,
                          msisdn=msisdn, context=VOICE))


def test_sim_box_is_blocked_and_explained(agent: GyAgent) -> None:
    for i in range(30):
        assert rc(call(agent, i, "41790000001", 20)) == Rc.SUCCESS
    assert cases(agent) == [] and status(agent, "41790000001") == "active"
    assert rc(call(agent, 30, "41790000001", 20)) == Rc.SUCCESS  # the 31st call ends...
    [case] = cases(agent)
    assert (case.msisdn, case.decision, case.measure, case.status) == (
        "41790000001", "block", "suspended", "open")
    [f] = case.findings
    assert f.name == "sim_box" and f.value.startswith("31 calls/h, avg 20 s")
    assert status(agent, "41790000001") == "suspended"
    # ... and the next one is refused: 4010
    assert rc(call(agent, 31, "41790000001", 20)) == Rc.END_USER_SERVICE_DENIED
    # the operator finds it legitimate: reinstated, calls go through again
    store = agent.charging.engine.store
    done = store.run_write(lambda tx: resolve(tx, case.case_id, reinstate=True,
                                              note="call centre, whitelisted", at=1))
    assert done.reinstated and status(agent, "41790000001") == "active"
    assert rc(call(agent, 32, "41790000001", 20)) == Rc.SUCCESS


def test_roaming_in_a_high_risk_network_while_at_home(agent: GyAgent) -> None:
    home = run(agent, ccr(1, 0, mscc(10, units("octets", 10**6)), sid="home;1",
                          msisdn="41790000002"))
    assert mscc_rc(home) == Rc.SUCCESS
    away = run(agent, ccr(1, 0, mscc(10, units("octets", 10**6)), service_info(visited="99901"),
                          sid="away;1", msisdn="41790000002"))
    # high_risk_network (60) + distant_sessions (50) = 110: blocked at once
    assert rc(away) == Rc.END_USER_SERVICE_DENIED or mscc_rc(away) == Rc.END_USER_SERVICE_DENIED
    [case] = cases(agent)
    assert sorted(f.name for f in case.findings) == ["distant_sessions", "high_risk_network"]
    assert case.score == 110 and case.measure == "suspended"
    # the live home session is told at the next sweep (RAR, then 4010 on its CCR-U)
    assert [(k, s.session_id) for k, s in agent.sweep()] == [("rar", "home;1")]
    upd = run(agent, ccr(2, 1, mscc(10, units("octets", 10**6), [units("octets", 1000)]),
                         sid="home;1", msisdn="41790000002"))
    assert mscc_rc(upd) == Rc.END_USER_SERVICE_DENIED


def test_spend_spike_opens_a_case_for_review(agent: GyAgent) -> None:
    for i in range(33):  # 33 SMS abroad at 0.15 = 4.95: not above the 5.00 minimum yet
        a = run(agent, ccr(4, 0, mscc(None, units("ssu", 1)), sid=f"smsc;{i}",
                           msisdn="41790000003", context="32274@3gpp.org", action=0))
        assert rc(a) == Rc.SUCCESS
    assert cases(agent) == []
    run(agent, ccr(4, 0, mscc(None, units("ssu", 1)), sid="smsc;33", msisdn="41790000003",
                   context="32274@3gpp.org", action=0))
    [case] = cases(agent)
    assert (case.decision, case.measure, [f.name for f in case.findings]) == (
        "review", "", ["velocity"])
    assert status(agent, "41790000003") == "active"  # review: a case, no action


def test_no_rules_without_fraud_config(agent: GyAgent, tmp_path: Path) -> None:
    engine = ChargingEngine(agent.charging.engine.store, agent.charging.engine.writer,
                            EngineSettings(node="f", fraud=None))
    plain = GyAgent(EngineChargingService(engine), agent.s, clock=agent.clock)
    for i in range(35):
        assert rc(call(plain, i, "41790000003", 20)) == Rc.SUCCESS
    assert cases(plain) == []


def test_refused_roaming_is_recorded_as_an_indicator(agent: GyAgent) -> None:
    from ocs.provisioning import NewSubscriber, op_add_subscriber
    from ocs.store.env import BALANCES
    from ocs.store.records import dec_balance

    store = agent.charging.engine.store
    store.run_write(op_add_subscriber(NewSubscriber(msisdn="41790000009", plan_id="prepaid-basic",
                                                    balance="5.00", roaming=False)))
    a = run(agent, ccr(1, 0, mscc(10, units("octets", 10**6)), service_info(visited="26201"),
                       sid="r;1", msisdn="41790000009"))
    assert mscc_rc(a) == Rc.END_USER_SERVICE_DENIED
    with store.read() as txn:
        bal = dec_balance.decode(txn.get(b"41790000009", db=store.dbs[BALANCES]))
    assert bal.fraud is not None
    assert [f.name for f in bal.fraud.findings] == ["roaming_disabled"]
    # alone a case for review, as in the seed rules (5 points = review); nothing enforced
    [case] = cases(agent)
    assert (case.msisdn, case.decision, case.measure, case.score) == (
        "41790000009", "review", "", 40)
    assert to_json(case)["action"] == "review" and to_json(case)["measure"] == "none"
