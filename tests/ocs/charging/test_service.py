"""Idempotency keys are built in the core, from the request's name."""

from __future__ import annotations

from ocs.charging.api import RequestRef
from ocs.charging.service import MAX_KEY, request_key


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
