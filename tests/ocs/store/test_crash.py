"""SIGKILL a writer process mid-batch: every acknowledged operation is in the store after
restart, and the CDR journal matches the balances."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
from tests_support import CONFIG_DIR, add

from ocs.charging.model import Debit, StoredAnswer
from ocs.provisioning import op_load_plans
from ocs.rating.plans import load_plans_file
from ocs.store import Store
from ocs.store.env import ANSWERS, BALANCES, CDR_JOURNAL
from ocs.store.records import dec_balance, dec_cdr

CHILD = Path(__file__).with_name("crash_writer.py")
SUBS = [f"4179000{i:04d}" for i in range(20)]
INITIAL = 2_000_000  # 2.00 each: 40 SMS at 0.05, so most of them run out of credit


def test_sigkill_mid_batch_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Store(data, map_size_mb=64) as s:
        s.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
        for m in SUBS:
            add(s, m, balance="2.00")
    proc = subprocess.Popen([sys.executable, str(CHILD), str(data), *SUBS],
                            stdout=subprocess.PIPE, text=True)
    acked: dict[int, bool] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        i, ok = line.split()
        acked[int(i)] = ok == "1"
        if len(acked) >= 1500:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    dec_answer = msgspec.msgpack.Decoder(StoredAnswer)
    with Store(data, map_size_mb=64) as s, s.read() as txn:
        answers = {}
        for k, v in txn.cursor(db=s.dbs[ANSWERS]):
            answers[int(bytes(k)[1:])] = dec_answer.decode(v).answer
        cdrs = [dec_cdr.decode(v) for _, v in txn.cursor(db=s.dbs[CDR_JOURNAL])]
        balances = {bytes(k).decode(): dec_balance.decode(v)
                    for k, v in txn.cursor(db=s.dbs[BALANCES])}
    # every acknowledged operation is durable, with the answer the caller got
    for i, ok in acked.items():
        assert i in answers, f"acknowledged operation {i} lost"
        assert isinstance(answers[i], Debit) and answers[i].ok == ok
    # and more may have committed without the caller hearing back (the kill came after)
    assert len(answers) >= len(acked)
    # every committed charge has exactly one CDR, and every CDR one committed charge
    charged = {a.record_id: a for a in answers.values() if isinstance(a, Debit) and a.ok}
    assert sorted(c.record_id for c in cdrs) == sorted(charged)
    for m in SUBS:
        total = sum(c.charge for c in cdrs if c.msisdn == m)
        assert balances[m].balance == INITIAL - total
        assert balances[m].balance >= 0
    # refusals (out of credit) were acknowledged too, and no balance went below zero
    assert not all(acked.values())
