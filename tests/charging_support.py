"""Charging runs on the engine for the tests of what reads its CDRs: a mixed run (events,
sessions with interim reports, allowances, roaming, a capped session, a refund) for
explain and re-rating; a store of plain SMS charges for the exporters."""

from __future__ import annotations

import random
from pathlib import Path

from tests_support import CONFIG_DIR, SATURDAY_NOON, WEDNESDAY_NOON, add, plans_by_id

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import (
    CommitRequest,
    DebitRequest,
    IdKind,
    RefundRequest,
    ReserveRequest,
)
from ocs.provisioning import op_load_plans
from ocs.rating.engine import local_time
from ocs.rating.plans import Service, load_plans_file
from ocs.store import Store

T0 = WEDNESDAY_NOON
PLAN_BASIC = plans_by_id()["prepaid-basic"]
MB = 1_000_000
SUBS = {"41790000001": "prepaid-basic", "41790000003": "prepaid-data",
        "41790000004": "postpaid-business"}
DESTS = ["41441234567", "41900123456", "4930123456", "14155550100", ""]
NETWORKS = ["", "22801", "26201", "310260", "99999"]


def ids(msisdn: str) -> tuple[tuple[IdKind, str], ...]:
    return ((IdKind.MSISDN, msisdn),)


def provision(engine: ChargingEngine) -> None:
    for msisdn, plan in SUBS.items():
        kw = {"postpaid": True, "credit_limit": "500.00"} if plan.startswith("postpaid") \
            else {"balance": "500.00"}
        add(engine.store, msisdn, plan=plan, roaming=True, **kw)  # type: ignore[arg-type]
    add(engine.store, "41790000002", balance="0.03")  # runs out mid-session


def mixed_run(engine: ChargingEngine, rnd: random.Random) -> list[str]:
    """Events, sessions, a capped session and a refund; the refusals are fine too."""
    debit_keys: list[bytes] = []
    for i in range(150):
        msisdn = rnd.choice(list(SUBS))
        service = rnd.choice([Service.VOICE, Service.SMS, Service.DATA])
        units = {Service.VOICE: rnd.randint(1, 400), Service.SMS: 1,
                 Service.DATA: rnd.randint(1, 30 * MB)}[service]
        key = f"ev{i}".encode()
        d = engine.debit_sync(DebitRequest(
            request_key=key, subscriber=ids(msisdn), service=service, units=units,
            destination=rnd.choice(DESTS), visited_network=rnd.choice(NETWORKS),
            rating_group=rnd.choice([None, 10, 20, 99]) if service is Service.DATA else None,
            now=T0 + i))
        if d.ok:
            debit_keys.append(key)
    for s in range(20):  # sessions: a reservation, interim reports, a final one
        msisdn = rnd.choice(list(SUBS))
        service = rnd.choice([Service.VOICE, Service.DATA])
        rg = 10 if service is Service.DATA else None
        sid = f"sess{s}"
        net = rnd.choice(NETWORKS)
        g = engine.reserve_sync(ReserveRequest(
            request_key=f"{sid}-0".encode(), session_id=sid, subscriber=ids(msisdn),
            service=service, units=None, rating_group=rg, destination=rnd.choice(DESTS),
            visited_network=net, now=T0 + 1000 + s))
        if not g.ok:
            continue
        reports = rnd.randint(1, 4)
        for n in range(1, reports + 1):
            used = rnd.randint(1, 90) if service is Service.VOICE else rnd.randint(1, 4 * MB)
            engine.commit_sync(CommitRequest(
                request_key=f"{sid}-{n}".encode(), session_id=sid, service=service,
                rating_group=rg, used_units=used, final=n == reports,
                next_units=None if n == reports else 0, now=T0 + 1000 + s + 60 * n))
    # a call opened on Friday 23:59 that goes on into the weekend band keeps its rate
    friday = SATURDAY_NOON - 13 * 3600 - 90  # (noon UTC is 13:00 in Zurich)
    assert local_time(PLAN_BASIC, friday).strftime("%a %H:%M") == "Fri 23:58"
    engine.reserve_sync(ReserveRequest(
        request_key=b"fri-0", session_id="fri", subscriber=ids("41790000001"),
        service=Service.VOICE, units=300, destination="41441234567", now=friday))
    for n in (1, 2, 3):
        engine.commit_sync(CommitRequest(
            request_key=b"fri-%d" % n, session_id="fri", service=Service.VOICE,
            used_units=70, final=n == 3, next_units=None if n == 3 else 0,
            now=friday + 70 * n))
    g = engine.reserve_sync(ReserveRequest(  # 0.03 EUR buys 3 MB of data-home
        request_key=b"cap-0", session_id="cap", subscriber=ids("41790000002"),
        service=Service.DATA, units=2 * MB, rating_group=10, now=T0 + 5000))
    assert g.ok
    engine.commit_sync(CommitRequest(request_key=b"cap-1", session_id="cap",
                                     service=Service.DATA, rating_group=10,
                                     used_units=2 * MB, next_units=2 * MB, now=T0 + 5060))
    s = engine.commit_sync(CommitRequest(request_key=b"cap-2", session_id="cap",
                                         service=Service.DATA, rating_group=10,
                                         used_units=2 * MB + 5, final=True, now=T0 + 5120))
    assert s.capped
    r = engine.refund_sync(RefundRequest(request_key=b"refund-1", original_key=debit_keys[3],
                                         now=T0 + 6000))
    assert r.ok
    return [k.decode() for k in debit_keys]


PREMIUM_3 = (CONFIG_DIR / "plans.toml").read_text().replace(
    'id = "voice-premium"\nservice = "voice"\nprice = "2.0000"',
    'id = "voice-premium"\nservice = "voice"\nprice = "3.0000"')
assert "3.0000" in PREMIUM_3


def sms_store(path: Path, n: int) -> None:
    """A store with the demo plans, one subscriber and ``n`` SMS charges (CDRs n1-1...)."""
    s = Store(path, map_size_mb=32)
    s.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    add(s, "41790000001", balance="1000.00", imsi="228010000000001")
    charge_sms(s, range(n))
    s.close()


def charge_sms(s: Store, numbers: range) -> None:
    """One SMS charge (one CDR of 0.05 EUR, session "sess,<i>") per number."""
    eng = ChargingEngine(s, None, EngineSettings(node="n1"))
    for i in numbers:
        d = eng.debit_sync(DebitRequest(request_key=b"e%d" % i, subscriber=ids("41790000001"),
                                        service=Service.SMS, destination="4179",
                                        session_id=f"sess,{i}", now=WEDNESDAY_NOON + i))
        assert d.ok and d.charged == 50_000
