"""Crash safety under load: ``ocs serve`` is SIGKILLed while Diameter direct debits are in
flight, restarted, and every request is sent again (answered or not). Afterwards: every
request is charged exactly once (answered ones replay their stored answer), balances are
exact and never negative, and each charge is in exactly one CDR, with no gap in the
record sequence across the files written before and after the crash."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from tests_support import OCS, free_tcp_port, init_server

from ocs.cdr.reader import closed_cdr_files, read_cdr_files
from ocs.store import Store
from protocols.diameter.codec import Cmd
from sim.core import provision
from sim.diameter_cmd import GyLoad, result_codes

SUBSCRIBERS, EVENTS = 20, 1200
PRICE = 150_000  # an SMS to no destination: sms-international, 0.15


def start(cfg: Path, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    seen = log.stat().st_size if log.exists() else 0
    out = log.open("a")
    proc = subprocess.Popen([OCS, "serve", "--config", str(cfg)], cwd=cwd, stdout=out,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while "diameter_listening" not in log.read_bytes()[seen:].decode():
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
        time.sleep(0.05)
    return proc


async def send_all(port: int, indexes: list[int], kill_after: int | None,
                   proc: subprocess.Popen[bytes] | None) -> dict[int, int]:
    """CCR-E direct debits; {request index: command Result-Code} for the answered ones."""
    load = GyLoad("127.0.0.1", port, connections=4, realm="test.realm")
    await load.open()
    answered: dict[int, int] = {}
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with sem:
            body = load.ccr(f"crash;{i}", 4, 0, f"4177{i % SUBSCRIBERS:07d}", event_units=1)
            try:
                ans = await load._send(load.conns[i % 4], Cmd.CCR, 4, body)
            except (TimeoutError, ConnectionError):
                return
            answered[i] = result_codes(ans)[0]
            if kill_after is not None and len(answered) == kill_after and proc is not None:
                os.kill(proc.pid, signal.SIGKILL)

    await asyncio.gather(*(one(i) for i in indexes))
    load.close()
    return answered


@pytest.mark.slow
def test_sigkill_mid_load_then_retransmit(tmp_path: Path) -> None:
    port = free_tcp_port()
    cfg = init_server(tmp_path, f"""
[diameter]
listen = "127.0.0.1:{port}"
origin_host = "ocs.test.realm"
origin_realm = "test.realm"
[cdr]
rotate_records = 250
export_interval_s = 0.1
[admin]
enabled = false
""", name="crash")
    with Store(tmp_path / "data") as store:
        provision(store, SUBSCRIBERS, balance="100.00")
    log = tmp_path / "serve.log"
    proc = start(cfg, tmp_path, log)
    first = asyncio.run(send_all(port, list(range(EVENTS)), EVENTS // 3, proc))
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert EVENTS // 3 <= len(first) < EVENTS, len(first)  # killed with requests in flight
    assert set(first.values()) == {2001}
    # children notice the parent is gone and leave (writer: EOF; exporter: orphaned)
    deadline = time.monotonic() + 20
    while subprocess.run(["pgrep", "-f", f"{tmp_path / 'data'}"],
                         capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "writer/exporter of the killed server linger"
        time.sleep(0.1)
    proc = start(cfg, tmp_path, log)
    try:
        second = asyncio.run(send_all(port, list(range(EVENTS)), None, None))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert len(second) == EVENTS and set(second.values()) == {2001}
    # balances: every request charged once
    for n in range(SUBSCRIBERS):
        show = subprocess.run([OCS, "subscriber", "show", f"4177{n:07d}", "--json", "--config",
                               str(cfg)], check=True, capture_output=True, text=True).stdout
        s = json.loads(show)
        expected = 100_000_000 - (EVENTS // SUBSCRIBERS) * PRICE
        assert s["balance"] == f"{expected / 1e6:.4f}", (n, s)
        assert not s["balance"].startswith("-")
    # CDRs: each request in exactly one row, record ids without gaps
    rows = [r.record for r in read_cdr_files(closed_cdr_files(tmp_path / "data" / "cdr"))]
    per_session = Counter(r.session_id for r in rows)
    assert len(per_session) == EVENTS and set(per_session.values()) == {1}
    seqs = sorted(int(r.record_id.rsplit("-", 1)[1]) for r in rows)
    assert seqs == list(range(seqs[0], seqs[0] + EVENTS))
    assert sum(r.charge for r in rows) == EVENTS * PRICE
