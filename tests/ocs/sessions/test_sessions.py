"""The session table: deadlines from a heap that churn cannot grow, and the review that
turns a subscriber's status and credit into typed events (real store and charging)."""

from __future__ import annotations

import math

from tests_support import add

from ocs.charging.api import IdKind, Refusal, Service
from ocs.charging.engine import ChargingEngine
from ocs.charging.service import EngineChargingService
from ocs.provisioning import op_set_status
from ocs.sessions import ReauthRequired, Session, SessionTable


def _s(sid: str, msisdn: str = "41790000001", deadline: float = math.inf) -> Session:
    return Session(session_id=sid, identity=((IdKind.MSISDN, msisdn),), service=Service.DATA,
                   msisdn=msisdn, deadline=deadline, rating_group=10)


def test_sessions_past_their_deadline_expire_and_a_touch_moves_it() -> None:
    t: SessionTable[Session] = SessionTable()
    for i in range(5):
        t[f"s{i}"] = _s(f"s{i}", deadline=100.0 + i)
    t["forever"] = _s("forever")
    t.touch(t["s1"], 500.0)  # activity: no new heap entry, the old one is re-queued later
    assert t.queued == 5
    assert [s.session_id for s in t.expire(102.5)] == ["s0", "s2"]
    assert "s1" in t and "s0" not in t and len(t) == 4
    assert [s.session_id for s in t.expire(1000.0)] == ["s3", "s4", "s1"]
    assert list(t) == ["forever"] and t.queued == 0


def test_a_deadline_moved_earlier_takes_effect() -> None:
    t: SessionTable[Session] = SessionTable()
    t["a"] = s = _s("a", deadline=1000.0)
    t.touch(s, 10.0)
    assert t.expire(11.0) == [s]


def test_churn_does_not_grow_the_heap() -> None:
    """Sessions opened and closed well within their deadline (CCR-I/CCR-T) leave heap
    entries behind; the table compacts them."""
    t: SessionTable[Session] = SessionTable()
    t["held"] = _s("held", deadline=10_000.0)
    for i in range(100_000):
        t[f"c{i}"] = _s(f"c{i}", deadline=5_000.0 + i)
        if i % 2:
            t.pop(f"c{i}")
        else:
            del t[f"c{i}"]
    assert len(t) == 1
    assert t.queued <= 4096 + 2
    # a replaced session's entry is stale too, and the new one counts
    t["held"] = _s("held", deadline=20.0)
    assert [s.session_id for s in t.expire(21.0)] == ["held"]


def test_review_turns_status_and_credit_into_events(engine: ChargingEngine) -> None:
    store = engine.store
    for m, bal in (("41790000001", "5.00"), ("41790000002", "5.00"), ("41790000003", "5.00"),
                   ("41790000004", "0"), ("41790000005", "5.00")):
        add(store, m, balance=bal)
    store.run_write(op_set_status("41790000002", "suspend"))
    store.run_write(op_set_status("41790000003", "block"))
    charging = EngineChargingService(engine)
    t: SessionTable[Session] = SessionTable()
    for i, m in enumerate(["41790000001", "41790000002", "41790000003", "41790000004",
                           "41790000005", "41790000009"]):
        t[f"s{i}"] = _s(f"s{i}", m)
    t["s3"].limited = True  # no credit: stays limited, no event
    t["s4"].limited = True  # credit: re-authorise
    t["s0"].notified = "rar"  # pending: passed over
    events = t.review(charging, limit=100)
    got = {(type(e).__name__, e.session.session_id, e.refusal) for e in events}
    assert got == {("ReauthRequired", "s1", Refusal.SUSPENDED),
                   ("AbortRequired", "s2", Refusal.BLOCKED),
                   ("ReauthRequired", "s4", None),
                   ("AbortRequired", "s5", Refusal.UNKNOWN_SUBSCRIBER)}
    credit = next(e for e in events if e.session.session_id == "s4")
    assert isinstance(credit, ReauthRequired) and credit.subscriber is not None
    assert credit.subscriber.msisdn == "41790000005"


def test_review_goes_round_robin_and_drops_what_ended_elsewhere(
        engine: ChargingEngine) -> None:
    add(engine.store, "41790000001", balance="1.00")
    charging = EngineChargingService(engine)
    t: SessionTable[Session] = SessionTable()
    for i in range(6):
        t[f"s{i}"] = _s(f"s{i}")
    seen: list[str] = []

    def keep(s: Session) -> bool:
        seen.append(s.session_id)
        return s.session_id != "s1"

    assert t.review(charging, 3, keep=keep) == []
    assert t.review(charging, 3, keep=keep) == []
    assert seen == ["s0", "s1", "s2", "s3", "s4", "s5"]
    assert "s1" not in t and len(t) == 5


def test_turns_take_one_request_of_a_session_at_a_time() -> None:
    import asyncio

    from ocs.sessions import Turns, all_answers, answered

    async def run() -> list[str]:
        turns = Turns()
        order: list[str] = []

        async def request(sid: str, name: str, fail: bool = False) -> None:
            async with turns.of(sid):
                order.append(f"{name}+")
                await asyncio.sleep(0.01)
                order.append(f"{name}-")
                if fail:
                    raise ValueError(name)

        results = await asyncio.gather(request("s", "a", fail=True), request("s", "b"),
                                       request("t", "c"), return_exceptions=True)
        assert isinstance(results[0], ValueError) and results[1:] == [None, None]
        assert len(turns) == 0  # nothing left behind, a failed turn included
        assert await all_answers([answered(1)]) == [1]
        assert await all_answers([answered(1), answered(2)]) == [1, 2]
        return order

    order = asyncio.run(run())
    # a and b (one session) one after the other; c (another session) alongside
    assert order.index("a-") < order.index("b+")
    assert order.index("c+") < order.index("a-")
