"""The alarm model on the real store: correlation, repeats, clears, flapping, operator
actions, and the stream files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ocs.noc import alarms as noc
from ocs.noc.stream import alarm_exporter
from ocs.store import Store
from ocs.store.env import ALARM_JOURNAL

T = 1_790_000_000


def link(store: Store, if_index: str, down: bool, at: int, **kw: object) -> str:
    n = noc.Notification(element="rtr1", resource=f"ifIndex={if_index}",
                         alarm_type="communicationsAlarm", probable_cause="lossOfSignal",
                         severity=noc.Severity.MAJOR if down else noc.Severity.CLEARED,
                         varbinds={"ifIndex": if_index}, at=at, **kw)  # type: ignore[arg-type]
    outcome, _a = store.run_write(lambda tx: noc.notify(tx, n))
    return outcome


def all_alarms(store: Store) -> list[noc.Alarm]:
    with store.read() as txn:
        return [noc.decode(v) for _k, v in txn.cursor(db=store.dbs[b"alarms"])]


def stream(store: Store) -> list[dict[str, object]]:
    with store.read() as txn:
        return [json.loads(v) for _k, v in txn.cursor(db=store.dbs[ALARM_JOURNAL])]


def test_raise_repeat_clear_is_one_alarm(store: Store) -> None:
    assert link(store, "3", True, T) == "raise"
    assert link(store, "3", True, T + 5) == "repeat"
    assert link(store, "4", True, T + 6) == "raise"  # another resource, another alarm
    assert link(store, "3", False, T + 60) == "clear"  # linkUp finds linkDown's alarm
    assert link(store, "3", False, T + 61) == "clear_unmatched"
    a3, a4 = sorted(all_alarms(store), key=lambda a: a.alarm_id)
    assert (a3.count, a3.perceived_severity, a3.cleared_at, a3.first_seen) == (
        2, "cleared", T + 60, T)
    assert a4.active and a4.count == 1
    events = [(e["event"], e["alarm_id"]) for e in stream(store)]
    assert events == [("raise", 1), ("update", 1), ("raise", 2), ("clear", 1)]
    assert stream(store)[3]["duration_s"] == 60


def test_flapping(store: Store) -> None:
    for i in range(3):
        link(store, "7", True, T + 10 * i * 2)
        link(store, "7", False, T + 10 * i * 2 + 10)
    alarms = all_alarms(store)
    assert alarms[-1].flapping
    events = [e["event"] for e in stream(store)]
    assert events.count("flapping") == 1
    # quiet for a window: the next raise is not flapping any more
    link(store, "7", True, T + 10_000)
    assert not all_alarms(store)[-1].flapping


def test_operator_ack_and_clear(store: Store) -> None:
    link(store, "9", True, T)
    (a,) = all_alarms(store)
    store.run_write(lambda tx: noc.operator(tx, noc.OperatorAction(
        alarm_id=a.alarm_id, action="ack", at=T + 1, user="nina")))
    store.run_write(lambda tx: noc.operator(tx, noc.OperatorAction(
        alarm_id=a.alarm_id, action="clear", at=T + 2, user="nina")))
    (a,) = all_alarms(store)
    assert a.acknowledged and not a.active and a.cleared_at == T + 2
    assert [e["event"] for e in stream(store)][-2:] == ["ack", "clear"]
    assert stream(store)[-1]["user"] == "nina"
    with pytest.raises(ValueError, match="no alarm 99"):
        store.run_write(lambda tx: noc.operator(tx, noc.OperatorAction(
            alarm_id=99, action="ack", at=T)))
    with pytest.raises(ValueError, match="unknown alarm type"):
        store.run_write(lambda tx: noc.notify(tx, noc.Notification(element="x",
                                                                   alarm_type="bogus")))


def test_stream_files(store: Store, tmp_path: Path) -> None:
    for i in range(5):
        link(store, str(i), True, T + i)
    ex = alarm_exporter(store, tmp_path / "alarms", "n1", rotate_s=300, rotate_records=3)
    ex.flush(T + 10)
    files = sorted((tmp_path / "alarms").glob("alarms_n1_*.jsonl"))
    assert len(files) == 2
    lines = [json.loads(ln) for f in files for ln in f.read_text().splitlines()]
    assert [ln["seq"] for ln in lines] == [1, 2, 3, 4, 5]
    assert all(ln["event"] == "raise" for ln in lines)
    with store.read() as txn:
        assert txn.stat(store.dbs[ALARM_JOURNAL])["entries"] == 0


def test_history_retention_trims_only_old_cleared_alarms(store: Store) -> None:
    link(store, "1", True, T)          # alarm 1: cleared long ago
    link(store, "1", False, T + 10)
    link(store, "2", True, T + 20)     # alarm 2: old but still active
    link(store, "3", True, T + 30)     # alarm 3: cleared recently
    link(store, "3", False, T + 5000)
    link(store, "1", True, T + 6000)   # alarm 4: the same problem as 1, back again
    n = store.run_write(lambda tx: noc.trim(tx, noc.TrimAlarms(before=T + 1000)))
    assert n == 1
    left = {a.alarm_id: a for a in all_alarms(store)}
    assert sorted(left) == [2, 3, 4]
    # the key of ifIndex=1 still finds the live alarm 4: a clear ends it
    assert link(store, "1", False, T + 6001) == "clear"
    assert store.run_write(lambda tx: noc.trim(tx, noc.TrimAlarms(before=T + 1000))) == 0


def test_caps_hold_back_new_alarms_on_a_summary_that_clears_below_the_cap(
        store: Store) -> None:
    limits = noc.Limits(per_element=3, total=5)

    def raise_(element: str, index: int, at: int, clear: bool = False) -> str:
        n = noc.Notification(element=element, resource=f"ifIndex={index}",
                             alarm_type="communicationsAlarm",
                             severity=noc.Severity.CLEARED if clear else noc.Severity.MAJOR,
                             at=at)
        return str(store.run_write(lambda tx: noc.notify(tx, n, limits))[0])

    assert [raise_("r1", i, T + i) for i in range(1, 6)] == [
        "raise", "raise", "raise", "capped", "capped"]
    active = [a for a in all_alarms(store) if a.active]
    summary = [a for a in active if a.resource == noc.LIMIT_RESOURCE]
    assert len(active) == 4 and summary[0].element == "r1" and summary[0].count == 2
    assert raise_("r1", 2, T + 9) == "repeat"  # an active alarm still repeats
    # node-wide cap: 3 + 2 = 5 active (summaries are not counted)
    assert [raise_("r2", i, T + 10 + i) for i in range(1, 4)] == ["raise", "raise", "capped"]
    assert {a.element for a in all_alarms(store)
            if a.active and a.resource == noc.LIMIT_RESOURCE} == {"r1", "*"}
    # a clear brings r1 below its cap (and the node below its own): both summaries clear
    assert raise_("r1", 1, T + 20, clear=True) == "clear"
    assert {a.element for a in all_alarms(store)
            if a.active and a.resource == noc.LIMIT_RESOURCE} == set()
    assert raise_("r1", 7, T + 21) == "raise"


def test_indeterminate_alarms_expire(store: Store) -> None:
    for i, sev in enumerate((noc.Severity.INDETERMINATE, noc.Severity.MAJOR,
                             noc.Severity.INDETERMINATE)):
        n = noc.Notification(element="bts", resource=f"trap{i}", severity=sev,
                             at=T + i * 1000)
        store.run_write(lambda tx, n=n: noc.notify(tx, n))  # type: ignore[misc]
    done = store.run_write(lambda tx: noc.expire(tx, noc.ExpireAlarms(
        before=T + 1500, at=T + 5000, limit=2)))
    assert (done.cleared, done.next_after) == (1, 2)  # trap0 only; trap1 is major
    done = store.run_write(lambda tx: noc.expire(tx, noc.ExpireAlarms(
        before=T + 1500, at=T + 5000, after=done.next_after, limit=2)))
    assert (done.cleared, done.next_after) == (0, 0)  # trap2 was seen after the cut
    assert [a.active for a in all_alarms(store)] == [False, True, True]
    assert stream(store)[-1]["reason"] == "expired"
