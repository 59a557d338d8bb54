"""Fraud state, scoring and cases in the store, applied inside charging transactions.

:func:`check` runs the rules for one rated event in the engine's write transaction:
the subscriber's state is read and written in the same transaction as the charge, the
indicators of the last 24 hours add up to a score, a score at ``review_score`` opens (or
updates) the subscriber's case, and at ``block_score`` the subscriber is suspended in
that same transaction — the protocols then tear its sessions down (Diameter RAR/ASR,
RADIUS Disconnect-Request) and refuse new ones (SMPP submits included). Every case
lists the indicators that made it, with their values and thresholds.
"""

from __future__ import annotations

import datetime
import zoneinfo
from functools import lru_cache

import msgspec

from ocs.fraud.rules import Event, FraudSettings, decision, evaluate
from ocs.store.env import BALANCES, FRAUD_CASES, META, SUBSCRIBERS, pack_u64, unpack_u64
from ocs.store.records import (
    Balance,
    Finding,
    FraudState,
    Subscriber,
    dec_balance,
    dec_subscriber,
    encode,
)
from ocs.store.tx import Tx

META_FRAUD_SEQ = b"fraud_case_seq"
WINDOW_S = 86400
class Case(msgspec.Struct, kw_only=True):
    case_id: int
    msisdn: str
    opened_at: int
    updated_at: int
    decision: str
    """review | block"""
    score: int
    findings: list[Finding] = []
    status: str = "open"
    """open | resolved"""
    measure: str = msgspec.field(default="", name="action")
    """What was done about it: "suspended" (block) or "" (review: a case only). Stored
    under its first name, ``action``; the JSON ``action`` is the decision."""
    resolved_at: int = 0
    resolution: str = ""
    reinstated: bool = False


_enc = msgspec.msgpack.Encoder()
_dec_case = msgspec.msgpack.Decoder(Case)


def load_case(tx: Tx, case_id: int) -> Case | None:
    raw = tx.get(FRAUD_CASES, pack_u64(case_id))
    return _dec_case.decode(raw) if raw is not None else None


def decode_case(raw: bytes) -> Case:
    return _dec_case.decode(raw)


@lru_cache(maxsize=64)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


@lru_cache(maxsize=4096)
def _local_hour(tz: str, hour: int) -> int:
    """Local hour of day at the start of UTC hour ``hour`` (cached: it changes hourly)."""
    return datetime.datetime.fromtimestamp(hour * 3600, _zone(tz)).hour


def local_hour(tz: str, at: int) -> int:
    return _local_hour(tz, at // 3600)


def check(tx: Tx, cfg: FraudSettings, sub: Subscriber, e: Event, bal: Balance) -> str:
    """Run the rules for a rated event of ``sub``; the decision for it now: allow |
    review | block (block: the subscriber has been suspended in this transaction). The
    state is ``bal.fraud``: the caller writes ``bal`` back, as it does for every charge."""
    st = bal.fraud
    if st is None:
        st = bal.fraud = FraudState()
    found = evaluate(st, e, cfg)
    verdict = "allow"
    if found:
        keep = [f for f in st.findings if f.at > e.at - WINDOW_S]
        keep += [Finding(i.name, i.value, i.threshold, i.weight, e.at) for i in found]
        st.findings = keep[-16:]
        names: dict[str, int] = {}
        for f in st.findings:
            names[f.name] = max(names.get(f.name, 0), f.weight)
        score = sum(names.values())
        verdict = decision(score, cfg)
        if verdict != "allow":
            st.open_case = _record(tx, st.open_case, sub, st.findings, score, verdict, e.at)
    return verdict


def _record(tx: Tx, case_id: int, sub: Subscriber, findings: list[Finding], score: int,
            verdict: str, at: int) -> int:
    case = load_case(tx, case_id) if case_id else None
    if case is None or case.status != "open":
        raw = tx.get(META, META_FRAUD_SEQ)
        case_id = (unpack_u64(raw) if raw else 0) + 1
        tx.put(META, META_FRAUD_SEQ, pack_u64(case_id))
        case = Case(case_id=case_id, msisdn=sub.msisdn, opened_at=at, updated_at=at,
                    decision=verdict, score=score)
    seen = {(f.name, f.at) for f in case.findings}
    case.findings = [*case.findings, *(f for f in findings if (f.name, f.at) not in seen)][-32:]
    case.score = max(case.score, score)
    case.updated_at = at
    if verdict == "block" or case.decision == "block":
        case.decision = "block"
        if sub.status == "active":
            tx.put(SUBSCRIBERS, sub.msisdn.encode(), encode(msgspec.structs.replace(
                sub, status="suspended", updated_at=at)))
            case.measure = "suspended"
    tx.put(FRAUD_CASES, pack_u64(case.case_id), _enc.encode(case))
    return case.case_id


def resolve(tx: Tx, case_id: int, *, reinstate: bool, note: str, at: int) -> Case:
    """Close a case; ``reinstate`` makes a subscriber suspended by it active again and
    forgets the findings that led to it."""
    case = load_case(tx, case_id)
    if case is None:
        raise KeyError(f"no fraud case {case_id}")
    if case.status != "open":
        raise ValueError(f"fraud case {case_id} is already resolved")
    case.status, case.resolved_at, case.resolution = "resolved", at, note
    key = case.msisdn.encode()
    raw = tx.get(SUBSCRIBERS, key)
    if reinstate and raw is not None:
        sub = dec_subscriber.decode(raw)
        if sub.status == "suspended":
            tx.put(SUBSCRIBERS, key, encode(msgspec.structs.replace(sub, status="active",
                                                                    updated_at=at)))
            case.reinstated = True
    braw = tx.get(BALANCES, key)
    bal = dec_balance.decode(braw) if braw is not None else Balance()
    st = bal.fraud
    if st is not None:
        if st.open_case == case_id:
            st.open_case = 0
        st.findings = []
        st.spend_in_hour, st.calls, st.call_seconds, st.destinations = 0, 0, 0, []
        tx.put(BALANCES, key, encode(bal))
    tx.put(FRAUD_CASES, pack_u64(case_id), _enc.encode(case))
    return case


def to_json(c: Case) -> dict[str, object]:
    return {
        "case_id": c.case_id,
        "msisdn": c.msisdn,
        "status": c.status,
        "action": c.decision,
        "decision": c.decision,
        "score": c.score,
        "measure": c.measure or "none",
        "opened_at": c.opened_at,
        "updated_at": c.updated_at,
        "resolved_at": c.resolved_at or None,
        "resolution": c.resolution,
        "reinstated": c.reinstated,
        "indicators": [{"name": f.name, "value": f.value, "threshold": f.threshold,
                        "weight": f.weight, "at": f.at} for f in c.findings],
    }
