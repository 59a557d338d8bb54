"""The CHF agent with the real engine and LMDB store, no sockets: every charge exact."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gy_support import Clock
from nchf_support import BASE, request, usage
from tests_support import CONFIG_DIR, add

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import IdKind
from ocs.charging.service import EngineChargingService
from ocs.provisioning import op_load_plans, op_set_status, op_topup
from ocs.rating.plans import load_plans_file
from ocs.store import Store, Writer
from ocs.store.env import CDR_JOURNAL
from ocs.store.records import dec_cdr
from protocols.nchf.agent import ChfAgent, ChfSettings, HttpAnswer

MB = 1_000_000
EUR = 1_000_000


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[ChfAgent, Clock, Store]]:
    store = Store(tmp_path / "d", map_size_mb=64)
    store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    add(store, "41790000001", balance="1.00", imsi="228010000000001", username="alice@nai")
    add(store, "41790000002", balance="0")
    add(store, "41790000003", balance="0.003", imsi="228010000000003")
    add(store, "41790000005", balance="5.00", imsi="228010000000005")
    store.run_write(op_set_status("41790000005", "suspend"))
    writer = Writer(store, max_ops=64, max_delay_ms=0.5)
    writer.start()
    engine = ChargingEngine(store, writer, EngineSettings(node="c"))
    clock = Clock()
    yield ChfAgent(EngineChargingService(engine), ChfSettings(), clock=clock), clock, store
    writer.stop()
    store.close()


def post(agent: ChfAgent, path: str, body: bytes, method: str = "POST") -> HttpAnswer:
    return asyncio.run(agent.handle(method, path, body))


def js(ans: HttpAnswer) -> Any:
    return json.loads(ans.body)


def money(agent: ChfAgent, msisdn: str = "41790000001") -> tuple[int, int]:
    v = agent.charging.engine.check_balance(((IdKind.MSISDN, msisdn),))  # type: ignore[attr-defined]
    assert v is not None
    return v.balance, v.reserved


def cdrs(store: Store) -> list[Any]:
    with store.read() as txn:
        return [dec_cdr.decode(v) for _, v in txn.cursor(db=store.dbs[CDR_JOURNAL])]


def create(agent: ChfAgent, body: bytes) -> tuple[str, HttpAnswer]:
    ans = post(agent, BASE, body)
    assert ans.status == 201, ans.body
    ref = ans.location.rsplit("/", 1)[-1]
    assert ans.location == f"{BASE}/{ref}" and len(ref) == 32
    return ref, ans


def test_create_update_release_charge_the_slice_rate_exactly(env: Any) -> None:
    agent, _clock, store = env
    ref, ans = create(agent, request(0, usage(10, 2 * MB), sst=2, dnn="internet"))
    (mui,) = js(ans)["multipleUnitInformation"]
    assert mui == {"ratingGroup": 10, "resultCode": "SUCCESS",
                   "grantedUnit": {"totalVolume": 2 * MB}, "validityTime": 900,
                   "volumeQuotaThreshold": 400_000}
    assert money(agent) == (1 * EUR, 100_000)  # 2 MB at URLLC's 0.05/MB held
    # two containers, one as uplink + downlink: 600,000 + 400,000 bytes
    up = post(agent, f"{BASE}/{ref}/update",
              request(1, usage(10, MB, 600_000, up_down=(100_000, 300_000)), sst=2))
    assert up.status == 200 and js(up)["multipleUnitInformation"][0]["resultCode"] == "SUCCESS"
    assert money(agent) == (950_000, 50_000)
    rel = post(agent, f"{BASE}/{ref}/release", request(2, usage(10, None, 500_000), sst=2))
    assert (rel.status, rel.body) == (204, b"")
    assert money(agent) == (925_000, 0)
    rows = cdrs(store)
    assert [(r.charge, r.units, r.rate_id, r.protocol, r.slice, r.dnn) for r in rows] == [
        (50_000, MB, "data-urllc", "nchf", "2", "internet"),
        (25_000, 500_000, "data-urllc", "nchf", "2", "internet")]
    assert (rows[0].bytes_in, rows[0].bytes_out) == (100_000, 300_000)
    assert len(agent.sessions) == 0


@pytest.mark.parametrize(("sst", "sd", "rate", "cost"), [
    (None, None, "data-home", 10_000), (1, None, "data-home", 10_000),
    (1, "000001", "data-embb-video", 5_000), (1, "00000A", "data-home", 10_000),
    (2, "ABCDEF", "data-urllc", 50_000)])
def test_the_slice_picks_the_rate(env: Any, sst: int | None, sd: str | None, rate: str,
                                  cost: int) -> None:
    agent, _clock, store = env
    ref, _ = create(agent, request(0, usage(10, MB), sst=sst, sd=sd))
    assert post(agent, f"{BASE}/{ref}/release", request(1, usage(10, None, MB))).status == 204
    (row,) = cdrs(store)
    assert (row.rate_id, row.charge) == (rate, cost)
    assert money(agent) == (EUR - cost, 0)


def test_a_repeated_request_replays_and_charges_nothing(env: Any) -> None:
    agent, _clock, store = env
    body = request(0, usage(10, MB))
    ref, first = create(agent, body)
    ref2, again = create(agent, body)  # the create sent again: the same resource
    assert ref2 == ref and again.body == first.body
    up = request(1, usage(10, MB, 700_000))
    a1 = post(agent, f"{BASE}/{ref}/update", up)
    a2 = post(agent, f"{BASE}/{ref}/update", up)
    assert a1.status == a2.status == 200
    assert js(a1)["multipleUnitInformation"] == js(a2)["multipleUnitInformation"]
    assert money(agent) == (993_000, 10_000)
    # the same number with other content: 400 naming it, nothing charged
    bad = post(agent, f"{BASE}/{ref}/update", request(1, usage(10, MB, 900_000)))
    assert bad.status == 400 and bad.content_type == "application/problem+json"
    assert js(bad)["invalidParams"][0]["param"] == "invocationSequenceNumber"
    assert money(agent) == (993_000, 10_000)
    rel = request(2, usage(10, None, 100))
    assert post(agent, f"{BASE}/{ref}/release", rel).status == 204
    assert post(agent, f"{BASE}/{ref}/release", rel).status == 204  # replayed
    assert money(agent) == (992_999, 0)
    assert len(cdrs(store)) == 2


def test_a_repeat_with_other_content_is_refused_even_by_a_fresh_agent(env: Any) -> None:
    """After a restart the agent's memory is gone: the store's per-operation check holds."""
    agent, clock, _store = env
    ref, _ = create(agent, request(0, usage(10, MB)))
    assert post(agent, f"{BASE}/{ref}/update", request(1, usage(10, MB, 1000))).status == 200
    fresh = ChfAgent(agent.charging, ChfSettings(), clock=clock)
    bad = post(fresh, f"{BASE}/{ref}/update", request(1, usage(10, MB, 5000)))
    assert bad.status == 400
    ok = post(fresh, f"{BASE}/{ref}/update", request(2, usage(10, MB, 5000)))  # re-attached
    assert ok.status == 200
    assert money(agent) == (EUR - 60, 10_000)


def test_refusals_per_rating_group_and_for_the_request(env: Any) -> None:
    agent, _clock, _store = env
    unknown = post(agent, BASE, request(0, usage(10, MB), sub="imsi-228019999999999"))
    assert unknown.status == 404 and js(unknown)["cause"] == "USER_UNKNOWN"
    suspended = post(agent, BASE, request(0, usage(10, MB), sub="imsi-228010000000005"))
    assert suspended.status == 403
    assert js(suspended)["multipleUnitInformation"] == [
        {"ratingGroup": 10, "resultCode": "END_USER_SERVICE_DENIED"}]
    assert js(suspended)["invocationResult"]["error"]["cause"] == "END_USER_SERVICE_DENIED"
    _ref, mixed = create(agent, request(0, usage(10, MB), usage(30, MB), usage(99, MB),
                                        sub="msisdn-41790000001"))
    by_rg = {m["ratingGroup"]: m["resultCode"] for m in js(mixed)["multipleUnitInformation"]}
    assert by_rg == {10: "SUCCESS", 30: "RATING_FAILED", 99: "QUOTA_MANAGEMENT_NOT_APPLICABLE"}
    _ref, broke = create(agent, request(0, usage(10, MB), sub="msisdn-41790000002"))
    (mui,) = js(broke)["multipleUnitInformation"]
    assert mui["resultCode"] == "QUOTA_LIMIT_REACHED" and "grantedUnit" not in mui


def test_the_last_grant_carries_the_final_unit_indication(env: Any) -> None:
    agent, _clock, _store = env
    _ref, ans = create(agent, request(0, usage(10, MB), sub="imsi-228010000000003"))
    (mui,) = js(ans)["multipleUnitInformation"]
    assert mui["grantedUnit"] == {"totalVolume": 300_000}  # 0.003 EUR at 0.01/MB
    assert mui["finalUnitIndication"] == {"finalUnitAction": "TERMINATE"}
    assert "volumeQuotaThreshold" not in mui


def test_notifications_follow_top_up_suspension_and_block(env: Any) -> None:
    agent, _clock, store = env
    ref, _ = create(agent, request(0, usage(10, MB), sub="imsi-228010000000003",
                                   notify="http://127.0.0.1:1/notify"))
    quiet, _ = create(agent, request(0, usage(10, MB), notify=None))
    assert agent.sweep() == []  # nothing changed: nothing to say
    store.run_write(op_topup("41790000003", "5.00"))
    (kind, sess), = agent.sweep()
    assert (kind, sess.session_id, sess.notify_uri) == ("REAUTHORIZATION", ref,
                                                        "http://127.0.0.1:1/notify")
    assert agent.sweep() == []  # told once, until the consumer comes back
    assert post(agent, f"{BASE}/{ref}/update", request(1, usage(10, MB, 1))).status == 200
    store.run_write(op_set_status("41790000003", "block"))
    store.run_write(op_set_status("41790000001", "block"))
    assert [(k, s.session_id) for k, s in agent.sweep()] == [("ABORT_CHARGING", ref)]
    assert quiet in agent.sessions  # no notifyUri: nobody to tell (its deadline ends it)
    assert json.loads(agent.notify_body("ABORT_CHARGING"))["notificationType"] == (
        "ABORT_CHARGING")


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/nchf-convergedcharging/v2/chargingdata", 404),
    ("POST", BASE + "/x/delete", 404),
    ("POST", BASE + "/" + "a" * 200 + "/update", 404),
    ("GET", BASE, 405),
    ("POST", BASE + "/unknownref/update", 404),
    ("POST", BASE + "/unknownref/release", 404),
])
def test_routes(env: Any, method: str, path: str, status: int) -> None:
    agent, _clock, _store = env
    ans = post(agent, path, request(1, usage(10, MB, 5)), method)
    assert ans.status == status and ans.content_type == "application/problem+json"


@pytest.mark.parametrize(("body", "param"), [
    (b"{", ""),
    (b"", ""),
    (b'{"invocationSequenceNumber":1,"x":' + b"[" * 30000 + b"]" * 30000 + b"}", ""),
    (b"[]", ""),
    (request(0, usage(10, MB), sub="bob"), "subscriberIdentifier"),
    (request(-1, usage(10, MB)), "invocationSequenceNumber"),
    (request(0, {"ratingGroup": "ten"}), "multipleUnitUsage[0].ratingGroup"),
    (request(0, {"requestedUnit": {}}), "multipleUnitUsage[0].ratingGroup"),
    (request(0, usage(10, MB), usage(10, MB)), "multipleUnitUsage[1].ratingGroup"),
    (request(0, usage(10, MB), sst=256), "pDUSessionChargingInformation.pduSessionInformation"
                                         ".networkSlicingInfo.sNSSAI.sst"),
    (request(0, usage(10, MB), sst=1, sd="12345G"), "pDUSessionChargingInformation"
     ".pduSessionInformation.networkSlicingInfo.sNSSAI.sd"),
    (request(0, usage(10, MB), notify="ftp://x/"), "notifyUri"),
    (request(0, usage(10, MB), nfConsumerIdentification={"nodeFunctionality": "AMF"}),
     "nfConsumerIdentification.nodeFunctionality"),
    (request(0, usage(10, 10**12)), "multipleUnitUsage[0]"),  # above max_usage
    (request(0, usage(10, MB), sub=None), "subscriberIdentifier"),
])
def test_bad_requests_name_the_field_and_charge_nothing(env: Any, body: bytes,
                                                         param: str) -> None:
    agent, _clock, _store = env
    ans = post(agent, BASE, body)
    assert ans.status == 400, ans.body
    problem = js(ans)
    assert problem["status"] == 400
    if param:
        assert problem["invalidParams"][0]["param"] == param
    assert money(agent) == (EUR, 0)


def test_rel15_spelling_and_gpsi(env: Any) -> None:
    agent, _clock, _store = env
    body = json.loads(request(0, usage(10, MB), sub=None, gpsi="msisdn-41790000001"))
    body["nfIdentification"] = body.pop("nfConsumerIdentification")
    ref, _ = create(agent, json.dumps(body).encode())
    rel = post(agent, f"{BASE}/{ref}/release",
               request(1, usage(10, None, 200_000, 300_000, rel15=True)))
    assert rel.status == 204
    assert money(agent) == (995_000, 0)


def test_a_request_sent_again_with_a_new_time_stamp_is_the_same_request(env: Any) -> None:
    agent, _clock, _store = env
    ref, _ = create(agent, request(0, usage(10, MB), stamp="2026-11-18T12:00:00Z"))
    ref2, _ = create(agent, request(0, usage(10, MB), stamp="2026-11-18T12:00:05Z"))
    assert ref2 == ref  # the chargingId tells PDU sessions apart, not the stamp
    a1 = post(agent, f"{BASE}/{ref}/update", request(1, usage(10, MB, 1000),
                                                     stamp="2026-11-18T12:01:00Z"))
    a2 = post(agent, f"{BASE}/{ref}/update", request(1, usage(10, MB, 1000),
                                                     stamp="2026-11-18T12:01:09Z"))
    assert a1.status == a2.status == 200
    assert money(agent) == (EUR - 10, 10_000)
    # without a chargingId the stamp is all that tells two creates apart
    body = json.loads(request(0, usage(10, MB)))
    del body["pDUSessionChargingInformation"]["chargingId"]
    r1, _ = create(agent, json.dumps(body).encode())
    body["invocationTimeStamp"] = "2026-11-18T12:00:01Z"
    r2, _ = create(agent, json.dumps(body).encode())
    assert len({ref, r1, r2}) == 3


def test_translation_to_charging_commands() -> None:
    """Which commands a session becomes, named how (the in-memory ChargingService)."""
    from fake_charging import Recorder

    from ocs.charging.api import CloseSession, OpenSession, RequestRef, UpdateSession

    fake = Recorder()
    agent = ChfAgent(fake, ChfSettings(validity_s=60), clock=Clock())
    ans = post(agent, BASE, request(3, usage(10, 5000), usage(20, 0), sub="msisdn-41790000001",
                                    sst=1, sd="ABCDEF", dnn="ims"))
    ref = ans.location.rsplit("/", 1)[-1]
    assert post(agent, f"{BASE}/{ref}/update", request(4, usage(10, 7000, 300, 200),
                                                       usage(20, None, 50))).status == 200
    assert post(agent, f"{BASE}/{ref}/release", request(5, usage(10, None, 9))).status == 204
    kinds = [type(x).__name__ for x in fake.commands]
    assert kinds == ["OpenSession", "OpenSession", "UpdateSession", "UpdateSession",
                     "CloseSession", "CloseSession"]
    o10, o20, u10, u20, c10, c20 = fake.commands
    assert isinstance(o10, OpenSession) and isinstance(u10, UpdateSession)
    assert isinstance(c10, CloseSession) and isinstance(u20, UpdateSession)
    assert o10.request == RequestRef("nchf", ref, 3) and u10.request == RequestRef("nchf", ref, 4)
    assert (o10.units, o20.units, o10.slice, o10.dnn, o10.protocol) == (
        5000, None, "1-abcdef", "ims", "nchf")
    assert (o10.validity_s, u10.validity_s) == (120, 120)  # twice validityTime
    assert (u10.used_units, u10.next_units, u20.used_units, u20.next_units) == (
        500, 7000, 50, None)
    assert (c10.rating_group, c10.used_units, c20.rating_group, c20.used_units) == (
        10, 9, 20, 0)


def test_usage_in_a_group_without_quota_is_charged_as_it_comes(env: Any) -> None:
    agent, _clock, store = env
    ref, _ = create(agent, request(0, usage(10, MB)))
    up = post(agent, f"{BASE}/{ref}/update", request(1, usage(20, None, MB)))
    assert up.status == 200 and "multipleUnitInformation" not in js(up)
    rel = post(agent, f"{BASE}/{ref}/release", request(2, usage(20, None, 500_000)))
    assert rel.status == 204
    assert money(agent) == (EUR - 15_000, 0)
    assert [(r.rating_group, r.charge, r.result) for r in cdrs(store)] == [
        (20, 10_000, "event"), (10, 0, "final"), (20, 5_000, "event")]
    # the same release again: replayed, nothing charged twice
    assert post(agent, f"{BASE}/{ref}/release",
                request(2, usage(20, None, 500_000))).status == 204
    assert money(agent) == (EUR - 15_000, 0)
    # usage for a ref that never was: refused, nobody charged
    assert post(agent, f"{BASE}/{'f' * 32}/release",
                request(2, usage(20, None, 500_000))).status == 404
    assert money(agent) == (EUR - 15_000, 0) and len(cdrs(store)) == 3


def test_refused_creates_do_not_fill_the_session_table(env: Any) -> None:
    agent, _clock, _store = env
    for i in range(50):
        ans = post(agent, BASE, request(i, usage(30, MB)))  # no rate prices group 30
        assert js(ans)["multipleUnitInformation"][0]["resultCode"] == "RATING_FAILED"
    assert len(agent.sessions) == 0
    create(agent, request(0, usage(10, MB), sub="msisdn-41790000002"))  # waits for credit
    assert len(agent.sessions) == 1


def test_another_worker_knows_where_to_notify(env: Any) -> None:
    """The notifyUri is kept with the reservations: a worker (or a restarted server) that
    picks the resource up from the store can notify without the SMF repeating it."""
    agent, clock, store = env
    ref, _ = create(agent, request(0, usage(10, MB), sub="imsi-228010000000003",
                                   notify="http://smf.example:8080/cb/7"))
    other = ChfAgent(agent.charging, ChfSettings(), clock=clock)
    assert post(other, f"{BASE}/{ref}/update", request(1, usage(10, MB, 1))).status == 200
    assert other.sessions[ref].notify_uri == "http://smf.example:8080/cb/7"
    store.run_write(op_topup("41790000003", "5.00"))
    assert [(k, s.notify_uri) for k, s in other.sweep()] == [
        ("REAUTHORIZATION", "http://smf.example:8080/cb/7")]
