"""The writer process: answers after commit, survives a SIGKILL with nothing acknowledged
lost, restarts, and reports operation errors without disturbing the batch."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from tests_support import CONFIG_DIR, add

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import Debit, DebitRequest, IdKind, StoredAnswer
from ocs.provisioning import op_load_plans
from ocs.rating.plans import Service, load_plans_file
from ocs.store import Store, StoreError
from ocs.store.env import ANSWERS, BALANCES, CDR_JOURNAL
from ocs.store.procwriter import OperationFailed, ProcessWriter
from ocs.store.records import dec_balance, dec_cdr
from ocs.writerproc import process_writer

SUBS = [f"4179100{i:04d}" for i in range(10)]


def _setup(data: Path) -> None:
    with Store(data, map_size_mb=64) as s:
        s.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
        for m in SUBS:
            add(s, m, balance="3.00")


def _writer(data: Path, **kw: Any) -> ProcessWriter:
    return process_writer(EngineSettings(node="pw"), data_dir=str(data), map_size_mb=64,
                          max_ops=64, max_delay_ms=1.0, queue_size=100_000, **kw)


def _debit(i: int) -> DebitRequest:
    return DebitRequest(request_key=b"k%06d" % i, subscriber=((IdKind.MSISDN,
                                                              SUBS[i % len(SUBS)]),),
                        service=Service.SMS, destination="4179")


def test_sigkill_writer_process_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "d"
    _setup(data)

    async def main() -> dict[int, bool]:
        w = _writer(data)
        await w.start()
        acked: dict[int, bool] = {}
        failed = 0

        async def one(i: int) -> None:
            nonlocal failed
            try:
                d = await w.submit("debit", _debit(i))
            except StoreError:
                failed += 1
                return
            acked[i] = d.ok

        tasks = [asyncio.ensure_future(one(i)) for i in range(3000)]
        while len(acked) < 500:
            await asyncio.sleep(0.001)
        pid = w.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await asyncio.gather(*tasks)
        assert failed > 0  # those in flight were told the writer went away
        for _ in range(200):  # restarted by itself
            if w.alive and w.pid != pid:
                break
            await asyncio.sleep(0.05)
        assert w.alive and w.pid != pid and w.restarts == 1
        d = await w.submit("debit", _debit(99_999))
        acked[99_999] = d.ok
        # a retry of an acknowledged request is replayed, never charged again
        first = next(i for i, ok in acked.items() if ok)
        again = await w.submit("debit", _debit(first))
        assert again.replayed
        await w.stop()
        return acked

    acked = asyncio.run(main())
    dec = msgspec.msgpack.Decoder(StoredAnswer)
    with Store(data) as s, s.read() as txn:
        answers = {int(bytes(k)[1:]): dec.decode(v).answer
                   for k, v in txn.cursor(db=s.dbs[ANSWERS])}
        cdrs = [dec_cdr.decode(v) for _, v in txn.cursor(db=s.dbs[CDR_JOURNAL])]
        balances = {bytes(k).decode(): dec_balance.decode(v)
                    for k, v in txn.cursor(db=s.dbs[BALANCES])}
    for i, ok in acked.items():
        assert i in answers and isinstance(answers[i], Debit) and answers[i].ok == ok
    charged = sorted(a.record_id for a in answers.values() if isinstance(a, Debit) and a.ok)
    assert sorted(c.record_id for c in cdrs) == charged
    for m in SUBS:
        assert balances[m].balance == 3_000_000 - sum(c.charge for c in cdrs if c.msisdn == m)
        assert balances[m].balance >= 0


def test_operation_errors_are_isolated(tmp_path: Path) -> None:
    data = tmp_path / "d"
    _setup(data)

    async def main() -> None:
        w = _writer(data)
        await w.start()
        good = w.submit("debit", _debit(1))
        bad = w.submit("debit", DebitRequest(request_key=b"x" * 600,  # over LMDB's key limit
                                             subscriber=((IdKind.MSISDN, SUBS[0]),),
                                             service=Service.SMS, destination="4179"))
        good2 = w.submit("debit", _debit(2))
        assert (await good).ok and (await good2).ok
        with pytest.raises(StoreError):
            await bad
        with pytest.raises(OperationFailed, match="no_such_operation"):
            w.submit("no_such_operation", _debit(3))
        await w.stop()

    asyncio.run(main())
    with Store(data) as s:
        eng = ChargingEngine(s, None, EngineSettings())

        def balance(m: str) -> int:
            v = eng.check_balance(((IdKind.MSISDN, m),))
            assert v is not None
            return v.balance

        assert balance(SUBS[0]) == 3_000_000  # the failed operation left nothing behind
        assert balance(SUBS[1]) == balance(SUBS[2]) == 3_000_000 - 50_000


def test_attached_clients_share_the_writer_and_reattach_after_a_restart(
        tmp_path: Path) -> None:
    """ocs serve --workers: one writer process, the other workers attached over a Unix
    socket; each gets its own answers, the batches are shared, and an attached client
    finds the writer again after it is restarted."""
    data = tmp_path / "d"
    _setup(data)
    path = str(tmp_path / "w.sock")

    async def main() -> None:
        owner = _writer(data)
        owner._conf["listen"] = path
        attached = [_writer(data, attach=path) for _ in range(2)]
        await owner.start()
        for a in attached:
            await a.start()
            assert a.alive and a.pid is None
        writers = [owner, *attached]
        results = await asyncio.gather(*(writers[i % 3].submit("debit", _debit(i))
                                         for i in range(300)))
        assert all(d.ok and d.charged == 50_000 for d in results)
        # every answer went to the one who asked: request keys are distinct, so are ids
        assert len({d.record_id for d in results}) == 300
        assert owner.ops == 300 and attached[0].ops == 0  # batch figures: the owner's
        assert owner.batches < 300  # shared batches
        # an operation that fails for an attached worker: its error goes to that worker,
        # and the owner counts it with the node's failures (the NOC error-rate alarm)
        with pytest.raises(StoreError):
            await attached[0].submit("debit", DebitRequest(
                request_key=b"x" * 600, subscriber=((IdKind.MSISDN, SUBS[0]),),
                service=Service.SMS, destination="4179"))
        assert attached[0].failed == 1
        for _ in range(100):
            if owner.failed == 1:
                break
            await asyncio.sleep(0.01)
        assert owner.failed == 1
        pid = owner.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(200):
            if owner.alive and owner.pid != pid and all(a.alive for a in attached):
                break
            await asyncio.sleep(0.05)
        assert owner.alive and all(a.alive and a.restarts == 1 for a in attached)
        d = await attached[1].submit("debit", _debit(300))
        assert d.ok
        for a in attached:
            await a.stop()
        await owner.stop()

    asyncio.run(main())
    with Store(data) as s, s.read() as txn:  # 301 SMS of 0.05 over 10 subscribers
        total = sum(dec_balance.decode(txn.get(m.encode(), db=s.dbs[BALANCES])).balance
                    for m in SUBS)
    assert total == 10 * 3_000_000 - 301 * 50_000
