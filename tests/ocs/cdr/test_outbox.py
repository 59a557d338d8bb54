"""Draining the Redis Cluster's CDR outboxes into a node's journal: exactly once, also
when a node stops between the steps, and whichever node wrote the CDRs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests_support import CONFIG_DIR, WEDNESDAY_NOON, add

from ocs.cdr.outbox import drain, op_journal
from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import DebitRequest, IdKind
from ocs.provisioning import op_load_plans
from ocs.rating.plans import Service, load_plans_file
from ocs.store import Store
from ocs.store.cluster import ClusterStore, claimed_key, outbox_key
from ocs.store.env import CDR_JOURNAL, StoreError
from ocs.store.records import dec_cdr
from sim.rediscluster import RedisCluster

SUBS = [f"4179000{i:04d}" for i in range(40)]


def journal(local: Store) -> list[str]:
    with local.read() as txn:
        return [dec_cdr.decode(v).record_id for _k, v in txn.cursor(db=local.dbs[CDR_JOURNAL])]


@pytest.fixture
def charged(cluster_store: ClusterStore) -> ClusterStore:
    """40 subscribers (spread over many slots) with one SMS each: 40 CDRs waiting."""
    cluster_store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    engine = ChargingEngine(cluster_store, None, EngineSettings(node="n1"))
    for m in SUBS:
        add(cluster_store, m, balance="1.00")
        d = engine.debit_sync(DebitRequest(
            request_key=f"sms-{m}".encode(), subscriber=((IdKind.MSISDN, m),),
            service=Service.SMS, destination="41791234567", now=WEDNESDAY_NOON))
        assert d.ok and d.charged == 50_000  # sms-national
    return cluster_store


def test_every_cdr_once_across_two_nodes(charged: ClusterStore, redis_nodes: RedisCluster,
                                         tmp_path: Path) -> None:
    """Node 2 wrote nothing: its first drain scans every slot and takes what is there;
    node 1 then finds nothing left. Each record is in one journal."""
    with Store(tmp_path / "n1") as local1, Store(tmp_path / "n2") as local2, \
            ClusterStore(redis_nodes.nodes, wait_timeout_ms=2000) as other:
        assert drain(other, local2, "n2", batch=7) == 40
        assert drain(charged, local1, "n1") == 0
        ids = journal(local2)
        assert sorted(ids) == sorted(f"{m}-1" for m in SUBS) and journal(local1) == []
        assert charged.outbox() == []


def test_small_rounds_take_every_cdr_once(charged: ClusterStore, tmp_path: Path) -> None:
    """Rounds of few slots and few rows per slot (a long backlog is taken in bounded
    transactions): every record once, every outbox and claimed list empty after."""
    slots = charged.outbox_slots()
    assert len({charged.rc.nodes_manager.slots_cache[s][0].name for s in slots}) == 3
    charged.note_outbox(set(slots))
    with Store(tmp_path / "n1") as local:
        assert drain(charged, local, "n1", per_txn=3, slots_per_round=7) == 40
        assert sorted(journal(local)) == sorted(f"{m}-1" for m in SUBS)
        assert charged.outbox() == [] and charged.slots_with(
            lambda s: claimed_key(s, "n1")) == []


def test_a_node_that_stopped_between_the_steps_finishes_once(
        charged: ClusterStore, tmp_path: Path) -> None:
    with Store(tmp_path / "n1") as local:
        slots = charged.outbox_slots()
        assert slots
        # claimed, then the node stopped before journalling
        first = charged.claim_many([slots[0]], "n1", 500)[slots[0]]
        # claimed and journalled, then it stopped before the unclaim
        second = charged.claim_many([slots[1]], "n1", 500)[slots[1]]
        local.run_write(op_journal([(slots[1], second)]))
        assert len(journal(local)) == len(second)
        charged.note_outbox(set(slots))  # (a new process would find them by a full scan)
        assert drain(charged, local, "n1", recover=True) == 40 - len(second)
        ids = journal(local)
        assert len(ids) == 40 == len(set(ids))  # none twice, none lost
        assert dec_cdr.decode(first[0]).record_id in ids
        assert charged.rc.llen(claimed_key(slots[0], "n1")) == 0
        assert charged.rc.llen(outbox_key(slots[0])) == 0


def test_a_claim_another_node_holds_is_waited_for(charged: ClusterStore,
                                                   tmp_path: Path) -> None:
    """Rows another node claimed are that node's to journal (cdr flush names it)."""
    slot = charged.outbox_slots()[0]
    held = charged.claim_many([slot], "n9", 500)[slot]
    assert held and charged.claimed_elsewhere("n1") == {"n9": len(held)}
    with Store(tmp_path / "n1") as local:
        charged.note_outbox({slot})
        drain(charged, local, "n1")
        assert not set(journal(local)) & {dec_cdr.decode(r).record_id for r in held}


def test_a_journal_failure_leaves_the_rows_claimed(charged: ClusterStore,
                                                   tmp_path: Path) -> None:
    class Broken:
        def run_write(self, fn: object) -> int:
            raise StoreError("disk full")

    with pytest.raises(StoreError):
        drain(charged, Broken(), "n1")  # type: ignore[arg-type]
    with Store(tmp_path / "n1") as local:
        assert drain(charged, local, "n1", recover=True) == 40
        assert len(set(journal(local))) == 40


def test_one_process_scans_every_slot_and_another_takes_over(
        charged: ClusterStore, redis_nodes: RedisCluster) -> None:
    """The scan of every slot (outboxes and expiry sets other nodes left) is done by the
    holder of the cluster's lease only; one that stops hands it on at once, one that
    dies loses it when it runs out, and another process scans from then on."""
    want = sorted(charged.outbox_slots())
    assert len(want) > 1

    def serving_as(name: str) -> ClusterStore:
        s = ClusterStore(redis_nodes.nodes, wait_timeout_ms=2000)
        s.lease_name, s.full_scan_s, s.lease_ttl_s = name, 0.0, 1.0
        return s

    a, b, c = serving_as("a:0"), serving_as("b:0"), serving_as("c:0")
    try:
        assert a.outbox_slots() == want  # a takes the lease and scans
        a.expiries(WEDNESDAY_NOON)
        assert b.outbox_slots() == [] and b.expiries(WEDNESDAY_NOON) == []
        assert b.lease_holder("outbox") == b.lease_holder("expiry") == "a:0"
        assert a.outbox_slots() == want  # renewed by its holder
        a.close()  # stops: handed on
        assert b.lease_holder("outbox") is None
        assert b.outbox_slots() == want and b.lease_holder("outbox") == "b:0"
        # b dies (no close): c scans once b's lease has run out
        assert c.outbox_slots() == []
        time.sleep(1.2)
        assert c.outbox_slots() == want and c.lease_holder("outbox") == "c:0"
    finally:
        b.rc.close()  # (b "died": its lease is not handed on)
        c.close()
