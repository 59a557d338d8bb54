"""``ocs serve --workers 2``: both workers take connections on the one Diameter port and
charge exactly; /metrics adds up both; a killed worker is started again and traffic goes
on; SMPP messages submitted through binds on both workers are delivered once each; a
killed worker 0 takes the others with it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from tests_support import OCS, Smsc, free_tcp_port, init_server, require_tool, serving

from ocs.cdr.reader import closed_cdr_files, read_cdr_files
from ocs.server import bound_config
from ocs.store import Store
from ocs.workers import resolve
from protocols.diameter.codec import Cmd
from sim.core import provision
from sim.diameter_cmd import GyLoad, result_codes

SUBSCRIBERS = 20
PRICE = 150_000  # one SMS event to no destination: sms-international, 0.15


def health(admin: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=5) as r:
        result: dict[str, Any] = json.loads(r.read())
        return result


def metrics_text(admin: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        return str(r.read().decode())


def wait_for(cond: Any, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            if cond():
                return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def serve(cfg: Path, cwd: Path, admin: int, workers: int = 2
          ) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``ocs serve --workers N``, ready once /healthz counts every worker alive."""
    return serving(cfg, cwd, lambda: health(admin)["workers_alive"] == workers,
                   timeout=30, args=("--workers", str(workers)))


def tcp_owners(port: int) -> Counter[int]:
    """PIDs owning the established server-side connections of ``port`` (ss -tnp)."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return Counter(int(p) for p in re.findall(r"pid=(\d+)", out))


def child_writer(pid: int) -> int:
    """The writer process ``ocs serve`` (worker 0, ``pid``) started."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes()
            if int(stat[1]) == pid and b"ocs.writerproc" in cmd:
                return int(entry.name)
    raise AssertionError("no writer process")


def listeners(port: int, proto: str) -> set[int]:
    out = subprocess.run(["ss", f"-{proto}lnpH", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


async def debits(port: int, first: int, count: int) -> list[int]:
    """``count`` CCR-E direct debits over 16 connections; their Result-Codes."""
    load = GyLoad("127.0.0.1", port, connections=16, realm="test.realm")
    await load.open()
    try:
        return await _send(load, first, count)
    finally:
        load.close()


async def _send(load: GyLoad, first: int, count: int) -> list[int]:
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> int:
        async with sem:
            body = load.ccr(f"w;{i}", 4, 0, f"4177{i % SUBSCRIBERS:07d}", event_units=1)
            ans = await load._send(load.conns[i % len(load.conns)], Cmd.CCR, 4, body)
            return result_codes(ans)[0]

    return list(await asyncio.gather(*(one(i) for i in range(first, first + count))))


async def radius_sessions(port: int) -> list[float | None]:
    """One accounting session per subscriber (Start, Interim 5 MB, Stop 8 MB, in order),
    each from its own UDP source port, all sessions at once."""
    from protocols.radius.codec import AcctStatus
    from sim.radius_cmd import RadiusLoad

    load = RadiusLoad("127.0.0.1", port, b"testing123", sockets=SUBSCRIBERS)
    await load.open()

    async def session(i: int) -> list[float | None]:
        msisdn = f"4177{i:07d}"
        return [await load.request(RadiusLoad.session_attrs(status, i, total, msisdn, "w"), i)
                for status, total in ((AcctStatus.START, 0), (AcctStatus.INTERIM_UPDATE,
                                      5_000_000), (AcctStatus.STOP, 8_000_000))]

    try:
        return [r for rs in await asyncio.gather(*(session(i) for i in range(SUBSCRIBERS)))
                for r in rs]
    finally:
        load.close()


def _config(tmp: Path) -> tuple[Path, dict[str, int]]:
    from tests_support import free_udp_port

    ports = {"diameter": free_tcp_port(), "admin": free_tcp_port(), "acct": free_udp_port()}
    cfg = init_server(tmp, f"""
[diameter]
listen = "127.0.0.1:{ports['diameter']}"
origin_host = "ocs.test.realm"
origin_realm = "test.realm"
[radius]
auth_listen = "127.0.0.1:0"
acct_listen = "127.0.0.1:{ports['acct']}"
rating_group = 10
[[radius.clients]]
address = "127.0.0.1"
secret = "testing123"
[cdr]
export_interval_s = 0.1
[admin]
listen = "127.0.0.1:{ports['admin']}"
""", name="workers")
    with Store(tmp / "data") as store:
        provision(store, SUBSCRIBERS, balance="100.00")
    return cfg, ports


def test_worker_count_defaults_to_the_cores(tmp_path: Path) -> None:
    from ocs.config import Config, NodeConfig

    assert resolve(None, Config()) == len(os.sched_getaffinity(0))
    assert resolve(3, Config()) == 3
    assert resolve(None, Config(node=NodeConfig(workers=1))) == 1
    bad = subprocess.run([OCS, "serve", "--workers", "-1"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert bad.returncode == 2 and "--workers" in bad.stderr


def test_bound_config_names_the_ports_worker_0_got() -> None:
    from types import SimpleNamespace

    from ocs.config import ChfConfig, Config, DiameterConfig, RadiusConfig

    cfg = Config(diameter=DiameterConfig(listen="127.0.0.1:0"),
                 radius=RadiusConfig(auth_listen="::1:0", acct_listen="127.0.0.1:0"),
                 chf=ChfConfig(listen="127.0.0.1:0"))
    server = SimpleNamespace(
        cfg=cfg, diameter=SimpleNamespace(address=("127.0.0.1", 3868)), smpp=None,
        radius=SimpleNamespace(address=lambda k: ("::1", 1812) if k == "auth"
                               else ("127.0.0.1", 1813)),
        chf=SimpleNamespace(address=("127.0.0.1", 8086)))
    out = bound_config(server)  # type: ignore[arg-type]
    assert out.diameter is not None and out.diameter.listen == "127.0.0.1:3868"
    assert out.radius is not None and out.radius.auth_listen == "[::1]:1812"
    assert out.radius.acct_listen == "127.0.0.1:1813"
    assert out.chf is not None and out.chf.listen == "127.0.0.1:8086"


@pytest.mark.slow
def test_two_workers_share_the_ports_charge_exactly_and_survive_a_killed_worker(
        tmp_path: Path) -> None:
    require_tool("ss")
    cfg, ports = _config(tmp_path)
    dport, admin = ports["diameter"], ports["admin"]
    with serve(cfg, tmp_path, admin) as proc:
        h = health(admin)
        assert h["status"] == "ok" and h["workers"] == 2 and h["workers_alive"] == 2
        assert len(listeners(dport, "t")) == 2  # SO_REUSEPORT: both processes listen

        async def first_round() -> tuple[list[int], Counter[int]]:
            load = GyLoad("127.0.0.1", dport, connections=16, realm="test.realm")
            await load.open()
            try:
                owners = tcp_owners(dport)  # while the 16 connections are open
                return await _send(load, 0, 400), owners
            finally:
                load.close()

        codes, owners = asyncio.run(first_round())
        assert codes == [2001] * 400
        assert sum(owners.values()) == 16 and len(owners) == 2, owners
        assert proc.pid in owners  # worker 0 and one other process share the connections
        # /metrics adds up every worker's counters
        text = metrics_text(admin)
        m = re.search(r'^ocs_diameter_answers_total\{result="2001"\} (\S+)$', text, re.M)
        assert m is not None and float(m.group(1)) == 400, text[:2000]
        # a worker that dies is started again; traffic goes on
        (other,) = set(owners) - {proc.pid}
        os.kill(other, signal.SIGKILL)
        wait_for(lambda: health(admin)["worker_restarts"] == 1
                 and health(admin)["workers_alive"] == 2, what="worker restarted")
        assert health(admin)["status"] == "ok"
        assert "ocs_worker_restarts_total 1.0" in metrics_text(admin)
        assert other not in listeners(dport, "t") and len(listeners(dport, "t")) == 2
        assert asyncio.run(debits(dport, 400, 200)) == [2001] * 200
        # the one writer process (worker 0's) is killed: it is restarted, the other worker
        # attaches again, and retransmissions are charged once (their request keys)
        writer = child_writer(proc.pid)
        os.kill(writer, signal.SIGKILL)
        wait_for(lambda: health(admin)["writer_restarts"] == 1
                 and health(admin)["writer_alive"], what="writer restarted")
        deadline = time.monotonic() + 20
        while (codes := asyncio.run(debits(dport, 600, 100))) != [2001] * 100:
            assert time.monotonic() < deadline, Counter(codes)
            time.sleep(0.5)
        # RADIUS: both workers take the accounting port; 20 source ports spread over them
        assert len(listeners(ports["acct"], "u")) == 2
        assert None not in asyncio.run(radius_sessions(ports["acct"]))
    assert proc.returncode == 0
    # exact balances: 600 debits of 0.15 over 20 subscribers, and 8 MB at 0.01/MB each
    for n in range(SUBSCRIBERS):
        show = subprocess.run([OCS, "subscriber", "show", f"4177{n:07d}", "--json", "--config",
                               str(cfg)], check=True, capture_output=True, text=True).stdout
        s = json.loads(show)
        assert s["balance"] == f"{(100_000_000 - 35 * PRICE - 80_000) / 1e6:.4f}", s
        assert s["reserved"] == "0.0000", s
    rows = [r.record for r in read_cdr_files(closed_cdr_files(tmp_path / "data" / "cdr"))]
    debit_rows = [r for r in rows if r.session_id.startswith("w;")]
    assert Counter(Counter(r.session_id for r in debit_rows).values()) == {1: 700}
    assert sum(r.charge for r in debit_rows) == 700 * PRICE
    assert sum(r.charge for r in rows) == 700 * PRICE + SUBSCRIBERS * 80_000
    seqs = sorted(int(r.record_id.rsplit("-", 1)[1]) for r in rows)
    assert seqs == list(range(seqs[0], seqs[0] + len(rows)))  # one sequence, all workers


@pytest.mark.slow
def test_killed_worker_0_takes_the_workers_with_it(tmp_path: Path) -> None:
    require_tool("ss")
    cfg, ports = _config(tmp_path)
    with serve(cfg, tmp_path, ports["admin"]) as proc:
        pids = listeners(ports["diameter"], "t")
        assert len(pids) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_for(lambda: not listeners(ports["diameter"], "t"), 15, "workers to leave")
    for pid in pids - {proc.pid}:
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 15, "worker exit")
    with socket.socket() as s:  # the port is free again
        s.bind(("127.0.0.1", ports["diameter"]))


SMPP_CONFIG = """
[smpp]
listen = "127.0.0.1:{port}"
[[smpp.accounts]]
system_id = "esme"
password = "secret"
max_binds = 64
[[smpp.accounts]]
system_id = "few"
password = "secret"
max_binds = 6
[[smpp.routes]]
prefix = "417"
system_id = "esme"
[admin]
listen = "127.0.0.1:{admin}"
"""


def _smsc(tmp_path: Path) -> tuple[Smsc, Path, int]:
    require_tool("ss")
    port, admin = free_tcp_port(), free_tcp_port()
    cfg = init_server(tmp_path, SMPP_CONFIG.format(port=port, admin=admin), name="smsc")
    return Smsc(tmp_path, cfg, port), cfg, admin


@pytest.mark.slow
def test_smpp_delivers_each_message_once_across_workers(tmp_path: Path) -> None:
    srv, cfg, admin = _smsc(tmp_path)
    port = srv.port
    srv.ocs("subscriber", "add", "--msisdn", "41790000001", "--plan", "prepaid-basic",
            "--balance", "10.00")
    with serve(cfg, tmp_path, admin):
        receivers = [srv.esme("receiver") for _ in range(4)]
        while len(tcp_owners(port)) < 2 and len(receivers) < 16:  # the kernel's hash
            receivers.append(srv.esme("receiver"))  # decides; 16 all on one: 2**-15
        owners = tcp_owners(port)
        assert len(owners) == 2, owners  # receivers bound on both workers
        senders = [srv.esme("transmitter") for _ in range(6)]
        ids = []
        for i in range(30):
            tx = senders[i % len(senders)]
            tx.send_message(source_addr_ton=1, source_addr="41790000001", dest_addr_ton=1,
                            destination_addr=f"4179100{i:04d}", short_message=b"hi %d" % i,
                            registered_delivery=1)
            resp = tx.read_pdu()
            assert resp.status == 0
            ids.append(resp.message_id)
        def pump(seconds: float) -> None:
            """Read (and answer) what the receivers get; whole PDUs only."""
            import select

            end = time.monotonic() + seconds
            while time.monotonic() < end:
                ready, _, _ = select.select([rx._socket for rx in receivers], [], [], 0.05)
                for rx in receivers:
                    if rx._socket in ready:
                        rx.read_once()
                if sum(len(rx.received) for rx in receivers) >= 60 and seconds > 5:
                    return

        # more receivers bind while the first deliveries wait for their responses (we do
        # not read yet): a worker that sees a fresh bind must not take a claimed message
        time.sleep(0.5)
        receivers += [srv.esme("receiver") for _ in range(6)]
        time.sleep(0.5)
        pump(20)
        pump(1.5)  # nothing more must come: no message is delivered twice
        got = [p for rx in receivers for p in rx.received]
        texts = Counter(p.short_message for p in got if p.esm_class == 0)
        receipts = Counter(p.receipted_message_id for p in got if p.esm_class == 0x04)
        assert texts == Counter({b"hi %d" % i: 1 for i in range(30)})
        assert receipts == Counter({m: 1 for m in ids})
        assert srv.balance("41790000001") == "8.5000"  # 30 x 0.05
        for c in receivers + senders:
            with contextlib.suppress(Exception):
                c.disconnect()


@pytest.mark.slow
def test_worker_killed_mid_load_then_retransmit_charges_each_once(tmp_path: Path) -> None:
    """A worker (not worker 0) is SIGKILLed with debits in flight on its connections; the
    client reconnects (maybe to the other worker) and sends everything again: each
    request is charged once and is in one CDR."""
    require_tool("ss")
    cfg, ports = _config(tmp_path)
    dport, admin = ports["diameter"], ports["admin"]
    events = 1200
    with serve(cfg, tmp_path, admin) as proc:

        async def first() -> dict[int, int]:
            load = GyLoad("127.0.0.1", dport, connections=16, realm="test.realm")
            await load.open()
            victim = next(p for p in tcp_owners(dport) if p != proc.pid)
            answered: dict[int, int] = {}
            sem = asyncio.Semaphore(64)

            async def one(i: int) -> None:
                async with sem:
                    body = load.ccr(f"k;{i}", 4, 0, f"4177{i % SUBSCRIBERS:07d}",
                                    event_units=1)
                    try:
                        ans = await load._send(load.conns[i % 16], Cmd.CCR, 4, body)
                    except (TimeoutError, ConnectionError):
                        return
                    answered[i] = result_codes(ans)[0]
                    if len(answered) == events // 3:
                        os.kill(victim, signal.SIGKILL)

            await asyncio.gather(*(one(i) for i in range(events)))
            load.close()
            return answered

        answered = asyncio.run(first())
        assert events // 3 <= len(answered) < events  # some were lost with the worker
        assert set(answered.values()) <= {2001, 5012}
        wait_for(lambda: health(admin)["workers_alive"] == 2, what="worker restarted")

        async def again() -> list[int]:
            load = GyLoad("127.0.0.1", dport, connections=16, realm="test.realm")
            await load.open()
            try:
                sem = asyncio.Semaphore(64)

                async def one(i: int) -> int:
                    async with sem:
                        body = load.ccr(f"k;{i}", 4, 0, f"4177{i % SUBSCRIBERS:07d}",
                                        event_units=1)
                        return result_codes(await load._send(load.conns[i % 16], Cmd.CCR,
                                                             4, body))[0]

                return list(await asyncio.gather(*(one(i) for i in range(events))))
            finally:
                load.close()

        assert asyncio.run(again()) == [2001] * events
    assert proc.returncode == 0
    for n in range(SUBSCRIBERS):
        show = subprocess.run([OCS, "subscriber", "show", f"4177{n:07d}", "--json", "--config",
                               str(cfg)], check=True, capture_output=True, text=True).stdout
        expected = 100_000_000 - (events // SUBSCRIBERS) * PRICE
        assert json.loads(show)["balance"] == f"{expected / 1e6:.4f}"
    rows = [r.record for r in read_cdr_files(closed_cdr_files(tmp_path / "data" / "cdr"))]
    assert Counter(Counter(r.session_id for r in rows).values()) == {1: events}
    assert sum(r.charge for r in rows) == events * PRICE


@pytest.mark.slow
def test_smpp_max_binds_holds_over_all_workers(tmp_path: Path) -> None:
    import smpplib.exceptions

    srv, cfg, admin = _smsc(tmp_path)

    def bind_when_free() -> Any:
        """A bind, once the count has taken back one given up (released asynchronously)."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return srv.esme("transceiver", "few")
            except smpplib.exceptions.PDUError:
                assert time.monotonic() < deadline, "no bind after an unbind"
                time.sleep(0.1)

    with serve(cfg, tmp_path, admin):
        held = [srv.esme("transceiver", "few") for _ in range(6)]
        for _ in range(20):  # the kernel's hash places them: until both workers hold some
            if len(tcp_owners(srv.port)) == 2:
                break
            held.pop(0).unbind()
            held.append(bind_when_free())
        assert len(tcp_owners(srv.port)) == 2
        for _ in range(4):  # whichever worker a seventh reaches, the account is full
            with pytest.raises(smpplib.exceptions.PDUError):
                srv.esme("transceiver", "few")
        held.pop().unbind()  # one given back: room for one more
        held.append(bind_when_free())
        with pytest.raises(smpplib.exceptions.PDUError):
            srv.esme("transceiver", "few")
        for c in held:
            with contextlib.suppress(Exception):
                c.disconnect()


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_stops_cleanly(tmp_path: Path) -> None:
    """A service manager (systemd's default) sends SIGTERM to every process of the
    service at once: the writer and exporter wait for worker 0 to stop them, worker 1 is
    not started again, everything exits 0 and the last CDRs are in a closed file."""
    cfg, ports = _config(tmp_path)
    log = (tmp_path / "serve.log").open("a")
    proc = subprocess.Popen([OCS, "serve", "--config", str(cfg), "--workers", "2"],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for(lambda: health(ports["admin"])["workers_alive"] == 2, what="workers up")
        assert asyncio.run(debits(ports["diameter"], 0, 100)) == [2001] * 100
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "writer_process_lost" not in text and "worker_exited" not in text, text[-3000:]
    assert '"exporter_exit": 0' in text
    rows = [r.record for r in read_cdr_files(closed_cdr_files(tmp_path / "data" / "cdr"))]
    assert len(rows) == 100
