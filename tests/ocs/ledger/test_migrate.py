"""``ocs store migrate``: a node's LMDB store into a real Redis Cluster, charging going
on there exactly where it stopped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests_support import WEDNESDAY_NOON, add

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import (
    CommitRequest,
    DebitRequest,
    IdKind,
    RefundRequest,
    ReserveRequest,
)
from ocs.ledger.migrate import migrate
from ocs.provisioning import op_credit
from ocs.rating.plans import Service
from ocs.store import Store
from ocs.store.cluster import ClusterStore
from sim.rediscluster import RedisCluster

T0 = WEDNESDAY_NOON
ALICE, BOB = "41790000001", "41790000002"
MB = 1_000_000
OCS = str(Path(sys.executable).parent / "ocs")


def engine_on(store: object) -> ChargingEngine:
    return ChargingEngine(store, None, EngineSettings(node="n1"))  # type: ignore[arg-type]


def test_charging_goes_on_after_the_move(demo_store: Store,
                                         cluster_store: ClusterStore) -> None:
    add(demo_store, ALICE, balance="1.00", imsi="228010000000001")
    add(demo_store, BOB, balance="2.00", username="bob")
    demo_store.run_write(op_credit(ALICE, "0.50", reference="pay-1"))
    old = engine_on(demo_store)
    alice = ((IdKind.MSISDN, ALICE),)
    g = old.reserve_sync(ReserveRequest(request_key=b"r1", session_id="s1", subscriber=alice,
                                        service=Service.DATA, units=5 * MB, rating_group=10,
                                        now=T0))
    assert g.ok and g.money_reserved == 50_000
    sms = DebitRequest(request_key=b"sms-1", subscriber=alice, service=Service.SMS,
                       destination="41791234567", now=T0)
    assert old.debit_sync(sms).charged == 50_000

    moved = migrate(demo_store, cluster_store, answer_retention_s=10**9)
    assert (moved.subscribers, moved.reservations, moved.already_there) == (2, 1, 0)
    assert moved.answers == 2 and moved.plans > 0 and moved.skipped == []
    assert migrate(demo_store, cluster_store, answer_retention_s=10**9).already_there == 2

    new = engine_on(cluster_store)
    v = new.check_balance(((IdKind.IMSI, "228010000000001"),), now=T0)
    assert v is not None and (v.balance, v.reserved) == (1_450_000, 50_000)
    assert new.find_subscriber_now(((IdKind.USERNAME, "bob"),)) is not None
    # the retransmitted SMS is replayed, not charged again; its refund finds it
    again = new.debit_sync(sms)
    assert again.replayed and again.charged == 50_000
    r = new.refund_sync(RefundRequest(request_key=b"ref-1", original_key=b"sms-1", now=T0))
    assert r.ok and r.refunded == 50_000
    # the session opened on LMDB is charged and closed on the cluster
    s = new.commit_sync(CommitRequest(request_key=b"c1", session_id="s1",
                                      service=Service.DATA, rating_group=10,
                                      used_units=3 * MB, final=True, now=T0 + 60))
    assert s.ok and s.charged == 30_000
    v = new.check_balance(alice, now=T0)
    assert v is not None and (v.balance, v.reserved) == (1_470_000, 0)
    # a top-up reference used before the move credits nothing again
    again_top = cluster_store.run_write(op_credit(ALICE, "0.50", reference="pay-1"))
    assert again_top.replayed and again_top.balance.balance == 1_470_000
    assert cluster_store.verify() == []


def test_the_command(tmp_path: Path, redis_nodes: RedisCluster) -> None:
    redis_nodes.flush()
    src = tmp_path / "src.toml"
    src.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n')
    plans = str(Path(__file__).resolve().parents[3] / "config" / "plans.toml")
    dst = tmp_path / "dst.toml"
    dst.write_text(f'[node]\ndata_dir = "{tmp_path / "d2"}"\n')

    def ocs(*args: str, config: Path = src) -> subprocess.CompletedProcess[str]:
        return subprocess.run([OCS, *args, "--config", str(config)], capture_output=True,
                              text=True, timeout=60)

    assert ocs("init", "--plans", plans).returncode == 0
    assert ocs("subscriber", "add", "--msisdn", ALICE, "--plan", "prepaid-basic",
               "--balance", "3.25").returncode == 0
    p = ocs("store", "migrate", "--to-config", str(dst))
    assert p.returncode != 0 and "store.backend must be redis" in p.stderr
    dst.write_text(dst.read_text() + '[store]\nbackend = "redis"\n[store.redis]\nnodes = ["'
                   + redis_nodes.nodes[0] + '"]\n[fraud]\nenabled = false\n')
    p = ocs("store", "migrate", "--to-config", str(dst), "--json")
    assert p.returncode == 0, p.stderr
    assert '"subscribers": 1' in p.stdout
    shown = ocs("subscriber", "show", ALICE, "--json", config=dst)
    assert shown.returncode == 0 and '"balance": "3.2500"' in shown.stdout


def test_messages_waiting_for_delivery_are_reported_not_lost_silently(
        demo_store: Store, cluster_store: ClusterStore) -> None:
    """An SMS queued on LMDB has an id an ESME holds for its receipt; the cluster's ids
    name their account, so it cannot move: the migration says so (exit 1 in the CLI)
    and, once the queue is empty, a run again finishes clean."""
    from ocs.charging.model import SmsOutcomeRequest, SubmitSmsRequest

    add(demo_store, ALICE, balance="1.00")
    old = engine_on(demo_store)
    d = demo_store.run_write(lambda tx: old.op_submit_sms(tx, SubmitSmsRequest(
        debit=DebitRequest(request_key=b"q1", subscriber=((IdKind.MSISDN, ALICE),),
                           service=Service.SMS, destination="41791234567", now=T0),
        submitter="esme", route="esme", source=ALICE, destination="41791234567",
        payload=b"hi")))
    assert d.ok and d.charged == 50_000
    moved = migrate(demo_store, cluster_store, answer_retention_s=10**9)
    assert moved.skipped == ["1 SMS message(s) waiting for delivery: not carried "
                             "(let the queue empty, then run again)"]
    assert moved.subscribers == 1  # the rest moved
    assert demo_store.run_write(lambda tx: old.op_sms_outcome(tx, SmsOutcomeRequest(
        message_id=str(d.record_id), outcome="delivered", now=T0 + 1)))
    again = migrate(demo_store, cluster_store, answer_retention_s=10**9)
    assert again.skipped == [] and again.already_there == 1
