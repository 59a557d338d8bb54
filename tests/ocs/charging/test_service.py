"""Idempotency keys are built in the core, from the request's name."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from tests_support import CONFIG_DIR, WEDNESDAY_NOON, add

from ocs.charging.api import ChargingBusy, RequestRef, SessionHold
from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import IdKind, ReserveRequest
from ocs.charging.service import (
    MAX_KEY,
    MAX_PREFIX_SCANS,
    EngineChargingService,
    request_key,
)
from ocs.provisioning import op_load_plans
from ocs.rating.plans import Service, load_plans_file
from ocs.store import Store
from ocs.store.records import Reservation


def test_keys_name_the_request_and_the_operation() -> None:
    ref = RequestRef("gy", "pgw;1;1", 3)
    assert request_key(ref, 10, "c") == b"gy\x00pgw;1;1\x003\x0010\x00c"
    assert request_key(ref, None, "r") == b"gy\x00pgw;1;1\x003\x00-\x00r"
    stepped = RequestRef("radius:lo", "s", "7:ab", step="open")
    assert request_key(stepped, None, "r") == b"radius:lo\x00s\x007:ab\x00-\x00r:open"
    keys = {request_key(RequestRef(o, s, n, st), g, k)
            for o in ("gy", "radius:a") for s in ("s1", "s2") for n in (0, 1)
            for st in ("", "x") for g in (None, 1) for k in ("r", "c")}
    assert len(keys) == 2 ** 6  # every part counts


def test_a_long_session_id_gives_a_bounded_stable_key() -> None:
    """Peers choose session ids (and RADIUS NAS-Identifiers): the key stays within what
    LMDB takes, the same for a retransmission, and different for another request."""
    long_sid = "radius:c:" + "n" * 253 + ":" + "s" * 253
    a = request_key(RequestRef("radius:c", long_sid, "1:aa"), 10, "c")
    assert len(a) <= MAX_KEY and a == request_key(RequestRef("radius:c", long_sid, "1:aa"),
                                                  10, "c")
    assert a != request_key(RequestRef("radius:c", long_sid, "2:aa"), 10, "c")


def test_operations_are_counted_by_outcome() -> None:
    from ocs import metrics
    from ocs.charging.api import ChargingBusy, Grant, Refusal, Settlement
    from ocs.charging.service import count_operation

    def value(op: str, outcome: str) -> float:
        got = metrics.REGISTRY.get_sample_value("ocs_charging_operations_total",
                                                {"op": op, "outcome": outcome})
        return got or 0.0

    before = (value("reserve", "ok"), value("commit", "out_of_credit"),
              value("debit", "ChargingBusy"), value("smpp_bind", "ok"))
    count_operation("reserve", Grant(ok=True))
    count_operation("commit", Settlement(ok=False, refusal=Refusal.OUT_OF_CREDIT))
    count_operation("debit", ChargingBusy("queue full"))
    count_operation("smpp_bind", True)
    count_operation("alarm_notify", "raise")  # the NOC's, not charging: not counted
    after = (value("reserve", "ok"), value("commit", "out_of_credit"),
             value("debit", "ChargingBusy"), value("smpp_bind", "ok"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1]
    assert value("alarm_notify", "ok") == 0 and value("alarm_notify", "raise") == 0


def test_prefix_scans_are_shared_bounded_and_off_the_loop(tmp_path: Path) -> None:
    """Accounting-On asks for every session of a NAS: on a Redis Cluster that scans the
    keyspace, so it runs in a thread (the loop answers meanwhile), one at a time; callers
    for a prefix being scanned share the scan; past MAX_PREFIX_SCANS prefixes waiting
    (a NAS naming itself anew in each Accounting-On), ChargingBusy: no answer, it
    retries."""
    with Store(tmp_path / "store") as store:
        store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
        add(store, "41790000001", balance="1.00")
        engine = ChargingEngine(store, None, EngineSettings(node="n1"))
        for i in range(3):
            assert engine.reserve_sync(ReserveRequest(
                request_key=b"r%d" % i, session_id=f"radius:c:nas1:{i}",
                subscriber=((IdKind.MSISDN, "41790000001"),), service=Service.DATA,
                units=1_000_000, rating_group=10, now=WEDNESDAY_NOON)).ok
        service = EngineChargingService(engine)
        calls: list[str] = []
        gate = threading.Event()
        scan = engine.reservations_with_prefix

        def slow(prefix: str) -> list[Reservation]:  # a big keyspace takes its time
            calls.append(prefix)
            gate.wait(10)
            return scan(prefix)

        engine.reservations_with_prefix = slow  # type: ignore[method-assign]

        async def go() -> tuple[list[list[SessionHold]], list[list[SessionHold]]]:
            same = [asyncio.ensure_future(service.sessions_with_prefix("radius:c:nas1:"))
                    for _ in range(5)]
            others = [asyncio.ensure_future(service.sessions_with_prefix(f"radius:c:x{i}:"))
                      for i in range(MAX_PREFIX_SCANS - 1)]
            ticks = 0
            for _ in range(10):  # the loop runs while the first scan waits
                await asyncio.sleep(0.01)
                ticks += 1
            assert ticks == 10 and calls == ["radius:c:nas1:"]
            with pytest.raises(ChargingBusy):
                await service.sessions_with_prefix("radius:c:one-too-many:")
            gate.set()
            return list(await asyncio.gather(*same)), list(await asyncio.gather(*others))

        same, others = asyncio.run(go())
        assert all(sorted(h.session_id for h in got) == [f"radius:c:nas1:{i}"
                                                          for i in range(3)] for got in same)
        assert others == [[]] * (MAX_PREFIX_SCANS - 1)
        assert calls.count("radius:c:nas1:") == 1 and len(calls) == MAX_PREFIX_SCANS
