"""Running it as a service, as an operator meets it: config discovery, --version, --json
and pipe-friendly output, log level, hot backup under load and its restore, the wheel
installed normally."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tests_support import (
    CONFIG_DIR,
    OCS,
    admin_healthy,
    free_tcp_port,
    free_udp_port,
    init_server,
    require_tool,
    serving,
)

from ocs.cdr.reader import closed_cdr_files, read_cdr_file
from ocs.money import parse_amount
from ocs.store import Store
from ocs.store.env import BALANCES, CDR_JOURNAL, META, META_CDR_SEQ, unpack_u64
from ocs.store.records import dec_balance, dec_cdr
from sim.core import provision

REPO = Path(__file__).resolve().parents[2]


def ocs(*args: str, cwd: Path, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k != "OCS_CONFIG"}
    p = subprocess.run([OCS, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                       env={**e, **(env or {})})
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_config_discovery_version_and_help(tmp_path: Path) -> None:
    cfg = init_server(tmp_path, "[admin]\nenabled = false\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # nothing found: one line naming where it looked, exit 2 (not silent defaults)
    p = ocs("subscriber", "list", cwd=elsewhere, check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "no config file" in p.stderr and "/etc/ocs/ocs.toml" in p.stderr
    # $OCS_CONFIG
    ocs("subscriber", "add", "--msisdn", "41790000001", "--plan", "prepaid-basic",
        cwd=elsewhere, env={"OCS_CONFIG": str(cfg)})
    listed = ocs("subscriber", "list", "--json", cwd=elsewhere, env={"OCS_CONFIG": str(cfg)})
    assert [s["msisdn"] for s in json.loads(listed.stdout)] == ["41790000001"]
    # ./config/ocs.toml in the working directory
    (elsewhere / "config").mkdir()
    shutil.copy(cfg, elsewhere / "config" / "ocs.toml")
    assert "41790000001" in ocs("subscriber", "list", cwd=elsewhere).stdout
    # --config wins over $OCS_CONFIG; an error names the file it read
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nbogus = 1\n")
    p = ocs("subscriber", "list", "--config", str(bad), cwd=elsewhere,
            env={"OCS_CONFIG": str(cfg)}, check=False)
    assert p.returncode == 2 and str(bad) in p.stderr and "node.bogus" in p.stderr
    v = ocs("--version", cwd=elsewhere)
    assert v.stdout.startswith("ocs ") and v.stdout.split()[1][0].isdigit()
    bare = ocs(cwd=elsewhere, check=False)
    assert bare.returncode == 2 and "usage: ocs" in bare.stdout and "serve" in bare.stdout


def test_json_everywhere_and_whole_values_in_pipes(tmp_path: Path) -> None:
    cfg = init_server(tmp_path, "[admin]\nenabled = false\n")
    c = ["--config", str(cfg)]
    init = json.loads(ocs("init", *c, "--json", cwd=tmp_path).stdout)
    assert (init["plans"], init["zones"], init["config"]) == (4, 2, str(cfg))
    added = json.loads(ocs("subscriber", "add", "--msisdn", "41790000001", "--plan",
                           "prepaid-basic", "--username", "a-rather-long-user-name@example.org",
                           "--json", *c, cwd=tmp_path).stdout)
    assert added == {"msisdn": "41790000001", "plan": "prepaid-basic", "mode": "prepaid",
                     "status": "active"}
    top = json.loads(ocs("subscriber", "topup", "41790000001", "2.5", "--json", *c,
                         cwd=tmp_path).stdout)
    assert top == {"msisdn": "41790000001", "amount": "2.5000", "balance": "2.5000"}
    assert json.loads(ocs("subscriber", "suspend", "41790000001", "--json", *c,
                          cwd=tmp_path).stdout)["status"] == "suspended"
    flush = json.loads(ocs("cdr", "flush", "--json", *c, cwd=tmp_path).stdout)
    assert flush == {"closed": [], "rows": 0}
    bill = json.loads(ocs("bill", "run", "--period", "2026-10", "--dry-run", "--json", *c,
                          cwd=tmp_path).stdout)
    del bill["seconds"]
    assert bill == {"period": "2026-10", "dry_run": True, "preview": False, "rerun": False,
                    "out": None,
                    "invoices": 0, "rows": 0, "files": 0, "subtotal": "0.0000",
                    "tax": "0.0000", "total": "0.0000"}  # a month before anyone was added
    # into a pipe: tab-separated, nothing cut
    listed = ocs("subscriber", "list", *c, cwd=tmp_path).stdout.splitlines()
    assert listed[0].split("\t")[:2] == ["msisdn", "plan"]
    assert listed[1].split("\t")[:4] == ["41790000001", "prepaid-basic", "prepaid",
                                         "suspended"]
    shown = ocs("plan", "show", "prepaid-basic", *c, cwd=tmp_path).stdout
    assert "data-embb-video\tdata" in shown and "1-000001" in shown


def test_log_level(tmp_path: Path) -> None:
    admin = free_tcp_port()
    cfg = init_server(tmp_path, f'[admin]\nlisten = "127.0.0.1:{admin}"\n')
    with serving(cfg, tmp_path, lambda: admin_healthy(admin), log_name="quiet.log",
                 args=("--workers", "1", "--log-level", "warning")):
        pass
    with serving(cfg, tmp_path, lambda: admin_healthy(admin), log_name="info.log",
                 args=("--workers", "1")):
        pass
    levels = {name: {json.loads(ln)["level"] for ln in (tmp_path / name).read_text()
                     .splitlines() if ln.startswith("{")} for name in ("quiet.log", "info.log")}
    assert "info" in levels["info.log"] and "info" not in levels["quiet.log"]
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace("[node]\n", '[node]\nlog_level = "loud"\n'))
    p = ocs("serve", "--config", str(bad), cwd=tmp_path, check=False)
    assert p.returncode == 2 and "node.log_level" in p.stderr


def _charged(store_dir: Path, cdr_dir: Path, initial: int, n: int) -> tuple[int, int]:
    """(money gone from the balances, money on the CDRs the copy knows of)."""
    with Store(store_dir, create=False) as s, s.read() as txn:
        gone = sum(initial - dec_balance.decode(v).balance
                   for _k, v in txn.cursor(db=s.dbs[BALANCES]))
        seq = unpack_u64(txn.get(META_CDR_SEQ, db=s.dbs[META]) or b"\0" * 8)
        journal = {dec_cdr.decode(v).record_id: dec_cdr.decode(v).charge
                   for _k, v in txn.cursor(db=s.dbs[CDR_JOURNAL])}
    files = {r.record.record_id: r.record.charge for f in closed_cdr_files(cdr_dir)
             for r in read_cdr_file(f) if int(r.record.record_id.rsplit("-", 1)[1]) <= seq}
    assert len(files.keys() | journal.keys()) == seq  # every CDR up to the copy's
    return gone, sum({**files, **journal}.values())


@pytest.mark.slow
def test_a_backup_taken_under_load_restores_consistent(tmp_path: Path) -> None:
    port, admin = free_tcp_port(), free_tcp_port()
    cfg = init_server(tmp_path, f"""
[diameter]
listen = "127.0.0.1:{port}"
origin_host = "ocs.test.realm"
origin_realm = "test.realm"
[cdr]
export_interval_s = 0.2
[admin]
listen = "127.0.0.1:{admin}"
""")
    n = 200
    store = Store(tmp_path / "data")
    provision(store, n, balance="100.00")
    store.close()
    initial = parse_amount("100.00")
    c = ["--config", str(cfg)]
    with serving(cfg, tmp_path, lambda: admin_healthy(admin), args=("--workers", "1")):
        load = threading.Thread(target=subprocess.run, args=([
            sys.executable, "-m", "sim.cli", "diameter", "--server", f"127.0.0.1:{port}",
            "--realm", "test.realm", "--sessions", str(n), "--updates", "20000",
            "--terminate", "--json"],), kwargs={"capture_output": True, "timeout": 300})
        load.start()
        time.sleep(1.5)  # well into the updates
        m = json.loads(ocs("store", "backup", str(tmp_path / "bk"), "--json", *c,
                           cwd=tmp_path).stdout)
        load.join()
    assert m["subscribers"] == n and m["cdr_seq"] > 0 and (tmp_path / "bk" / "ocs.lmdb").exists()
    assert oct((tmp_path / "bk" / "ocs.lmdb").stat().st_mode & 0o777) == "0o600"
    # the copy is one instant: every balance with exactly the CDRs committed with it
    gone, on_cdrs = _charged(tmp_path / "bk", tmp_path / "data" / "cdr", initial, n)
    assert gone == on_cdrs > 0
    checked = ocs("store", "verify", "--data-dir", str(tmp_path / "bk"), "--json", *c,
                  cwd=tmp_path, check=False)
    assert json.loads(checked.stdout) == {"ok": True, "differences": []}, checked.stdout
    # the server went on after the copy: the live store has moved past it
    live_gone, _ = _charged(tmp_path / "data", tmp_path / "data" / "cdr", initial, n)
    assert live_gone > gone
    # restore (README): stop the server, put the copy back as DATA_DIR/ocs.lmdb, start
    restored = tmp_path / "restored"
    restored.mkdir()
    rcfg = init_server(restored, "[admin]\nenabled = false\n")
    shutil.copy(tmp_path / "bk" / "ocs.lmdb", restored / "data" / "ocs.lmdb")
    (restored / "data" / "ocs.lmdb-lock").unlink(missing_ok=True)
    shown = json.loads(ocs("subscriber", "show", "41770000007", "--json", "--config",
                           str(rcfg), cwd=restored).stdout)
    with Store(tmp_path / "bk", create=False) as s:
        raw = s.get(BALANCES, b"41770000007")
    assert raw is not None
    assert parse_amount(shown["balance"]) == dec_balance.decode(raw).balance
    # into a directory that is not empty: refused, nothing written
    p = ocs("store", "backup", str(tmp_path / "bk"), *c, cwd=tmp_path, check=False)
    assert p.returncode == 1 and "not an empty directory" in p.stderr


@pytest.mark.slow
def test_the_wheel_works_installed_normally(tmp_path: Path) -> None:
    """pip install of the built wheel (not editable) in a fresh venv: the dictionaries are
    package data; init, --version and serve work from any directory."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(wheels), str(REPO)], check=True, capture_output=True,
                   timeout=300)
    (wheel,) = wheels.glob("ocs-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # third-party dependencies from the test environment, appended after the venv's own
    # site-packages (its .pth files, the editable install among them, are not read)
    deps = next(p for p in sys.path if p.endswith("site-packages") and ".venv" in p)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OCS_CONFIG")}
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300, env=env)
    (site / "zz_deps.pth").write_text(deps + "\n")  # after: pip must not see ours there
    ocs_bin = str(venv / "bin" / "ocs")
    run = tmp_path / "run"
    run.mkdir()
    p = subprocess.run([venv / "bin" / "python", "-c", "import ocs, protocols; "
                        "print(ocs.__file__, protocols.__file__)"], cwd=run, env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    where = p.stdout
    assert str(REPO) not in where and str(site) in where
    assert subprocess.run([ocs_bin, "--version"], cwd=run, env=env, capture_output=True,
                          text=True, check=True).stdout.startswith("ocs 0.")
    port, admin = free_tcp_port(), free_tcp_port()
    cfg = run / "ocs.toml"
    cfg.write_text(f'[node]\ndata_dir = "{run / "data"}"\nlog_format = "json"\n'
                   f'[diameter]\nlisten = "127.0.0.1:{port}"\n'
                   f'[admin]\nlisten = "127.0.0.1:{admin}"\n')
    shutil.copy(CONFIG_DIR / "plans.toml", run / "plans.toml")
    subprocess.run([ocs_bin, "init", "--config", str(cfg)], cwd=run, env=env, check=True,
                   capture_output=True, timeout=120)
    log = (run / "serve.log").open("w")
    proc = subprocess.Popen([ocs_bin, "serve", "--config", str(cfg), "--workers", "1"],
                            cwd=run, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "diameter_listening" not in (run / "serve.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (
                run / "serve.log").read_text()
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    unit = tmp_path / "ocs.service"
    unit.write_text((REPO / "deploy" / "ocs.service").read_text()
                    .replace("/usr/local/bin/ocs", OCS))
    p = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert "ocs.service" not in p.stderr, p.stderr  # others' units may warn; ours not
    text = unit.read_text()
    for line in ("Type=notify", "ProtectSystem=strict", "ReadWritePaths=/var/lib/ocs",
                 "Restart=on-failure", "WatchdogSec=", "User=ocs"):
        assert line in text


def test_sd_notify_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    """ocs serve speaks the notify protocol to $NOTIFY_SOCKET as systemd would see it:
    READY=1 only once the listeners (of both workers) answer, WATCHDOG=1 pings, then
    STOPPING=1; the workers send nothing (NotifyAccess=main)."""
    import socket as so

    port, admin = free_tcp_port(), free_tcp_port()
    cfg = init_server(tmp_path, f"""
[diameter]
listen = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin}"
""")
    sock_path = tmp_path / "notify.sock"
    rx = so.socket(so.AF_UNIX, so.SOCK_DGRAM)
    rx.bind(str(sock_path))
    rx.settimeout(30)
    senders: list[int] = []
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}
    env.pop("OCS_CONFIG", None)
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([OCS, "serve", "--config", str(cfg), "--workers", "2"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    rx.setsockopt(so.SOL_SOCKET, so.SO_PASSCRED, 1)
    try:
        messages: list[str] = []
        while not any(m.startswith("READY=1") for m in messages):
            data, anc, _flags, _addr = rx.recvmsg(4096, so.CMSG_SPACE(12))
            for level, kind, cred in anc:
                if level == so.SOL_SOCKET and kind == so.SCM_CREDENTIALS:
                    senders.append(int.from_bytes(cred[:4], "little"))
            messages.append(data.decode())
        # ready means ready: the Diameter port and /healthz answer now
        with so.create_connection(("127.0.0.1", port), timeout=5):
            pass
        assert admin_healthy(admin)
        ready = next(m for m in messages if m.startswith("READY=1"))
        assert f"MAINPID={proc.pid}" in ready and "2 worker(s)" in ready
        pings = 0
        while pings < 2:
            data, anc, _f, _a = rx.recvmsg(4096, so.CMSG_SPACE(12))
            pings += data == b"WATCHDOG=1"
            senders += [int.from_bytes(c[:4], "little") for lv, k, c in anc
                        if lv == so.SOL_SOCKET and k == so.SCM_CREDENTIALS]
        proc.terminate()
        while True:
            data = rx.recv(4096)
            if data.startswith(b"STOPPING=1"):
                break
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        rx.close()
    assert senders and set(senders) == {proc.pid}


def _acct(port: int, secret: bytes, sid: str) -> bool:
    """One Accounting-Request (Start) from a fresh source port; True when answered."""
    from pyrad import client as pyrad_client
    from pyrad import packet as pyrad_packet
    from pyrad.dictionary import Dictionary

    c = pyrad_client.Client(server="127.0.0.1", acctport=port, secret=secret,
                            dict=Dictionary(str(REPO / "protocols" / "radius" / "dictionaries"
                                                / "dictionary")))
    c.timeout, c.retries = 0.5, 2
    req = c.CreateAcctPacket(User_Name="41790000002")
    req["Acct-Status-Type"] = "Start"
    req["Acct-Session-Id"] = sid
    req["Calling-Station-Id"] = "41790000002"
    try:
        return bool(c.SendPacket(req).code == pyrad_packet.AccountingResponse)
    except pyrad_client.Timeout:
        return False


def test_sighup_reloads_without_dropping_a_session(tmp_path: Path) -> None:
    """A real SIGHUP against ``ocs serve --workers 2`` with a Gy session open across it:
    the RADIUS secret and the log level change in both workers; the session ends exactly
    charged; a broken file changes nothing; a listener address change is logged as
    needing a restart and not applied."""
    port, acct, auth, admin = free_tcp_port(), free_tcp_port(), free_tcp_port(), free_tcp_port()
    base = f"""
[diameter]
listen = "127.0.0.1:{port}"
origin_host = "ocs.test.realm"
origin_realm = "test.realm"
[radius]
auth_listen = "127.0.0.1:{auth}"
acct_listen = "127.0.0.1:{acct}"
rating_group = 10
[[radius.clients]]
address = "127.0.0.1"
secret = "SECRET"
[admin]
listen = "127.0.0.1:{admin}"
"""
    cfg = init_server(tmp_path, base.replace("SECRET", "old-secret"))
    text = cfg.read_text()
    for i, balance in ((1, "10.00"), (2, "10.00")):
        ocs("subscriber", "add", "--msisdn", f"4179000000{i}", "--plan", "prepaid-basic",
            "--balance", balance, "--config", str(cfg), cwd=tmp_path)
    env = {**os.environ, "PEER": "ocs.test.realm", "MSISDN": "41790000001",
           "SID": "pgw.test.realm;hup;1"}
    gy = REPO / "tests" / "protocols" / "diameter" / "gy_client.py"

    def ccr(kind: str) -> str:
        p = subprocess.run([sys.executable, str(gy), "127.0.0.1", str(port), kind],
                           capture_output=True, text=True, timeout=30, env=env)
        return next(ln for ln in p.stdout.splitlines() if ln.startswith("CCA"))

    def logged(event: str) -> list[dict[str, object]]:
        return [json.loads(ln) for ln in (tmp_path / "serve.log").read_text().splitlines()
                if ln.startswith("{") and f'"{event}"' in ln]

    def wait_for(event: str, count: int) -> list[dict[str, object]]:
        deadline = time.monotonic() + 15
        while len(logged(event)) < count:
            assert time.monotonic() < deadline, (event, logged(event))
            time.sleep(0.1)
        return logged(event)

    with serving(cfg, tmp_path, lambda: admin_healthy(admin),
                 args=("--workers", "2")) as proc:
        assert ccr("I").startswith("CCA 2001")  # 1 MB held
        assert _acct(acct, b"old-secret", "r1") and not _acct(acct, b"new-secret", "r2")
        cfg.write_text(text.replace("old-secret", "new-secret"))
        proc.send_signal(signal.SIGHUP)
        reloaded = wait_for("config_reloaded", 2)  # worker 0 and worker 1
        assert {r["worker"] for r in reloaded} == {0, 1}
        assert all("radius.clients" in r["applied"] for r in reloaded)  # type: ignore[operator]
        # every worker has the new secret (packets from 8 source ports spread over both)
        assert all(_acct(acct, b"new-secret", f"n{i}") for i in range(8))
        assert not _acct(acct, b"old-secret", "o1")
        # a broken file: one line, the running config stays
        cfg.write_text(text + "\n[radius]\nbogus = 1\n")
        proc.send_signal(signal.SIGHUP)
        failed = wait_for("config_reload_failed", 1)
        assert "bogus" in str(failed[0]["error"]) or "radius" in str(failed[0]["error"])
        assert _acct(acct, b"new-secret", "n9")
        # a listener address: logged as needing a restart, not applied; the log level:
        # applied (the info line saying so is no longer written, in either worker)
        cfg.write_text(text.replace("old-secret", "new-secret")
                       .replace(f"127.0.0.1:{acct}", f"127.0.0.1:{free_tcp_port()}")
                       .replace('log_format = "json"',
                                'log_format = "json"\nlog_level = "warning"'))
        proc.send_signal(signal.SIGHUP)
        needs = wait_for("config_reload_needs_restart", 1)
        assert needs[0]["keys"] == ["radius.acct_listen"]
        assert _acct(acct, b"new-secret", "n10")  # the same port, the same secret
        time.sleep(1.0)
        assert len(logged("config_reloaded")) == 2
        assert ccr("T").startswith("CCA 2001")  # the session opened before the reloads
    show = json.loads(ocs("subscriber", "show", "41790000001", "--json", "--config",
                          str(cfg), cwd=tmp_path).stdout)
    assert (show["balance"], show["reserved"]) == ("9.9950", "0.0000")  # 500 kB at 0.01/MB


def test_metrics_the_dashboard_needs_are_scraped(tmp_path: Path) -> None:
    """Every metric the Grafana dashboard queries is on a real /metrics scrape of a server
    that took some traffic of each protocol; the counters that were declared and never
    moved (charging operations, SMPP, RADIUS accept/reject, latency) move."""
    import re

    import httpx
    import smpplib.client
    import smpplib.exceptions
    from nchf_support import BASE, request, usage
    from tests_support import admin_get, metric

    port, smpp, chf, admin = free_tcp_port(), free_tcp_port(), free_tcp_port(), free_tcp_port()
    acct, auth, trap = free_udp_port(), free_udp_port(), free_udp_port()
    cfg = init_server(tmp_path, f"""
[diameter]
listen = "127.0.0.1:{port}"
origin_host = "ocs.test.realm"
origin_realm = "test.realm"
[radius]
auth_listen = "127.0.0.1:{auth}"
acct_listen = "127.0.0.1:{acct}"
rating_group = 10
[[radius.clients]]
address = "127.0.0.1"
secret = "s3cret"
[smpp]
listen = "127.0.0.1:{smpp}"
[[smpp.accounts]]
system_id = "esme"
password = "secret"
[snmp]
trap_listen = "127.0.0.1:{trap}"
[chf]
listen = "127.0.0.1:{chf}"
[admin]
listen = "127.0.0.1:{admin}"
""")
    for i in (1, 2):
        ocs("subscriber", "add", "--msisdn", f"4179000000{i}", "--imsi", f"22801000000000{i}",
            "--plan", "prepaid-basic", "--balance", "5.00", "--config", str(cfg), cwd=tmp_path)
    env = {**os.environ, "PEER": "ocs.test.realm", "MSISDN": "41790000001",
           "SID": "pgw.test.realm;m;1"}
    with serving(cfg, tmp_path, lambda: admin_healthy(admin), args=("--workers", "1")):
        p = subprocess.run([sys.executable, str(REPO / "tests" / "protocols" / "diameter" /
                                                "gy_client.py"), "127.0.0.1", str(port), "I"],
                           capture_output=True, text=True, timeout=30, env=env)
        assert "CCA 2001" in p.stdout
        assert _acct(acct, b"s3cret", "m1")
        with httpx.Client(http1=False, http2=True, timeout=10) as c:
            r = c.post(f"http://127.0.0.1:{chf}{BASE}", content=request(0, usage(10, 1000)),
                       headers={"content-type": "application/json"})
            assert r.status_code == 201
        esme = smpplib.client.Client("127.0.0.1", smpp, timeout=5)
        esme.connect()
        with pytest.raises(smpplib.exceptions.PDUError):
            esme.bind_transceiver(system_id="esme", password="wrong")
        esme.disconnect()
        scrape = admin_get(admin, "/metrics")
        # CCR-I, the RADIUS Start and the Nchf create each reserved once
        assert metric(admin, "ocs_charging_operations_total", op="reserve", outcome="ok") == 3
        for proto in ("diameter", "radius", "nchf"):
            assert metric(admin, "ocs_request_seconds_count", protocol=proto) >= 1, proto
        assert metric(admin, "ocs_smpp_binds_total", outcome="bad_credentials") == 1
        assert metric(admin, "ocs_build_info") == 1
        assert metric(admin, "ocs_store_file_bytes") > 0  # on the scrape, no /healthz first
    families = {re.sub(r"_(total|created)$", "", f)
                for f in re.findall(r"^# TYPE (\S+) ", scrape, re.M)}
    dashboard = json.loads((REPO / "deploy" / "grafana" / "ocs-dashboard.json").read_text())
    named = {re.sub(r"_(total|bucket|count|sum|created)$", "", m)
             for panel in dashboard["panels"] for t in panel["targets"]
             for m in re.findall(r"\b(ocs_[a-z0-9_]+)", t["expr"])}
    assert len(named) >= 20
    assert named <= families, sorted(named - families)


def test_secrets_from_the_environment_or_a_file(tmp_path: Path) -> None:
    acct, auth, admin = free_udp_port(), free_udp_port(), free_tcp_port()
    secret_file = tmp_path / "smpp.pw"
    secret_file.write_text("from-a-file\n")
    os.environ["OCS_TEST_RADIUS_SECRET"] = "from-the-env"
    cfg = init_server(tmp_path, f"""
[radius]
auth_listen = "127.0.0.1:{auth}"
acct_listen = "127.0.0.1:{acct}"
rating_group = 10
[[radius.clients]]
address = "127.0.0.1"
secret = "env:OCS_TEST_RADIUS_SECRET"
[smpp]
listen = "127.0.0.1:{free_tcp_port()}"
[[smpp.accounts]]
system_id = "esme"
password = "file:{secret_file}"
[admin]
listen = "127.0.0.1:{admin}"
""")
    try:
        from ocs.config import ConfigError, load_config

        del os.environ["OCS_TEST_RADIUS_SECRET"]
        with pytest.raises(ConfigError, match=r"radius\.clients\[0\]\.secret: environment "
                           "variable 'OCS_TEST_RADIUS_SECRET' is not set"):
            load_config(cfg)
        os.environ["OCS_TEST_RADIUS_SECRET"] = "from-the-env"
        loaded = load_config(cfg)
        assert loaded.radius is not None and loaded.radius.clients[0].secret == "from-the-env"
        assert loaded.smpp is not None and loaded.smpp.accounts[0].password == "from-a-file"
        ocs("subscriber", "add", "--msisdn", "41790000002", "--plan", "prepaid-basic",
            "--balance", "1.00", "--config", str(cfg), cwd=tmp_path,
            env={"OCS_TEST_RADIUS_SECRET": "from-the-env"})
        with serving(cfg, tmp_path, lambda: admin_healthy(admin), args=("--workers", "1")):
            assert _acct(acct, b"from-the-env", "s1")
            assert not _acct(acct, b"env:OCS_TEST_RADIUS_SECRET", "s2")
        assert "from-the-env" not in (tmp_path / "serve.log").read_text()
    finally:
        os.environ.pop("OCS_TEST_RADIUS_SECRET", None)


def test_sighup_reaches_the_writer_settings(tmp_path: Path) -> None:
    """Charging settings live in the writer process (default grants) and in every worker
    (plausibility limits): a reload changes both, sessions go on."""
    import httpx
    from nchf_support import BASE, request, usage

    chf, admin = free_tcp_port(), free_tcp_port()
    cfg = init_server(tmp_path, f"""
[chf]
listen = "127.0.0.1:{chf}"
[admin]
listen = "127.0.0.1:{admin}"
""")
    ocs("subscriber", "add", "--msisdn", "41790000001", "--imsi", "228010000000001", "--plan",
        "prepaid-basic", "--balance", "10.00", "--config", str(cfg), cwd=tmp_path)
    text = cfg.read_text()

    def granted(ans: httpx.Response) -> int:
        return int(ans.json()["multipleUnitInformation"][0]["grantedUnit"]["totalVolume"])

    with serving(cfg, tmp_path, lambda: admin_healthy(admin), args=("--workers", "2")) as proc, \
            httpx.Client(http1=False, http2=True, timeout=10,
                         base_url=f"http://127.0.0.1:{chf}") as c:
        h = {"content-type": "application/json"}
        first = c.post(BASE, content=request(0, usage(10, 0), stamp="a"), headers=h)
        assert first.status_code == 201 and granted(first) == 10_000_000  # the default
        ref = first.headers["location"].rsplit("/", 1)[-1]
        cfg.write_text(text + "[charging]\ndefault_data_grant_bytes = 2000000\n"
                              "max_usage_bytes = 5000000\n")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while (tmp_path / "serve.log").read_text().count('"config_reloaded"') < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.3)  # the writer's copy is a queued operation
        second = c.post(BASE, content=request(0, usage(10, 0), sub="msisdn-41790000001"),
                        headers=h)
        assert second.status_code == 201 and granted(second) == 2_000_000
        too_much = c.post(f"{BASE}/{ref}/update", content=request(1, usage(10, 0, 6_000_000)),
                          headers=h)
        assert too_much.status_code == 400  # the new plausibility limit, in this worker
        fine = c.post(f"{BASE}/{ref}/update", content=request(2, usage(10, 0, 1_000_000)),
                      headers=h)
        assert fine.status_code == 200 and granted(fine) == 2_000_000
    assert "config_reload_needs_restart" not in (tmp_path / "serve.log").read_text()
