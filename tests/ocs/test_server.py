"""``ocs serve`` as a process: admin endpoint, shared store with the CLI, reaper, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import IdKind, ReserveRequest
from ocs.rating.plans import Service
from ocs.store import Store

OCS = str(Path(sys.executable).parent / "ocs")

CONFIG = """
[node]
name = "srv"
data_dir = "{data}"
log_format = "json"
[store]
commit_max_delay_ms = 0.5
[charging]
reaper_interval_s = 0.2
[cdr]
rotate_s = 3600
export_interval_s = 0.2
[admin]
listen = "127.0.0.1:0"
"""


def _wait_for(pred, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_serve_admin_reaper_and_graceful_stop(repo_cwd: Path) -> None:
    data = repo_cwd / "d"
    cfg = repo_cwd / "srv.toml"
    cfg.write_text(CONFIG.format(data=data))
    init = subprocess.run([OCS, "init", "--config", str(cfg), "--plans", "config/plans.toml"],
                          cwd=repo_cwd, capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    subprocess.run([OCS, "subscriber", "add", "--config", str(cfg), "--msisdn", "41790000009",
                    "--plan", "prepaid-basic", "--balance", "2.00"], check=True, cwd=repo_cwd)
    log = (repo_cwd / "serve.log").open("w+")
    proc = subprocess.Popen([OCS, "serve", "--config", str(cfg)], cwd=repo_cwd, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        def admin_address() -> str | None:
            log.seek(0)
            for line in log.read().splitlines():
                if '"admin_listening"' in line:
                    return str(json.loads(line)["address"])
            return None

        addr = _wait_for(admin_address)
        status, body = _get(f"http://{addr}/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        # the CLI charges while the server runs on the same store
        ch = subprocess.run([OCS, "charge", "--config", str(cfg), "41790000009", "--service",
                             "sms", "--destination", "4179", "--json"], cwd=repo_cwd,
                            capture_output=True, text=True)
        assert ch.returncode == 0 and json.loads(ch.stdout)["charged"] == "0.0500"
        # a reservation that expires is settled by the server's reaper
        with Store(data) as store:
            eng = ChargingEngine(store, None, EngineSettings(node="srv"))
            g = eng.reserve_sync(ReserveRequest(
                request_key=b"r", session_id="leak", subscriber=((IdKind.MSISDN,
                                                                 "41790000009"),),
                service=Service.DATA, units=1_000_000, rating_group=10, validity_s=1))
            assert g.ok and g.money_reserved == 10_000

            def reaped() -> bool:
                v = eng.check_balance(((IdKind.MSISDN, "41790000009"),))
                return v is not None and v.reserved == 0

            _wait_for(reaped)
        status, metrics = _get(f"http://{addr}/metrics")
        assert status == 200
        assert "ocs_reservations_expired_total 1.0" in metrics
        assert "ocs_store_batches_total" in metrics
        assert _get(f"http://{addr}/nope")[0] == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    log.seek(0)
    text = log.read()
    assert "server_stopped" in text
    # graceful stop closed the CDR file: both rows are in a closed file
    files = sorted((data / "cdr").glob("cdr_srv_*.csv"))
    assert len(files) == 1
    rows = files[0].read_text().splitlines()
    assert len(rows) == 3
    assert ",0.050000,EUR," in rows[1] and ",expired" in rows[2]
    assert not list((data / "cdr").glob("*.part"))


def test_health_alarms_reach_the_cli_and_the_stream(repo_cwd: Path) -> None:
    data = repo_cwd / "d2"
    cfg = repo_cwd / "h.toml"
    cfg.write_text(CONFIG.format(data=data) + """
[noc]
health_interval_s = 0.2
min_free_disk_mb = 100000000
""")
    subprocess.run([OCS, "init", "--config", str(cfg), "--plans", "config/plans.toml"],
                   cwd=repo_cwd, check=True, capture_output=True)
    log = (repo_cwd / "h.log").open("w")
    proc = subprocess.Popen([OCS, "serve", "--config", str(cfg)], cwd=repo_cwd, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        def alarms() -> list[dict[str, object]]:
            p = subprocess.run([OCS, "alarms", "list", "--active", "--json", "--config",
                                str(cfg)], cwd=repo_cwd, capture_output=True, text=True)
            assert p.returncode == 0, p.stderr
            return list(json.loads(p.stdout))

        (a,) = _wait_for(alarms)
        for key in ("alarm_id", "element", "resource", "alarm_type", "probable_cause",
                    "perceived_severity", "first_seen", "last_seen", "count", "acknowledged",
                    "cleared_at", "varbinds"):
            assert key in a
        assert (a["element"], a["resource"], a["alarm_type"], a["perceived_severity"]) == (
            "srv", "disk", "environmentalAlarm", "major")
        _wait_for(lambda: alarms()[0]["count"] >= 2)  # repeats, not new alarms
        ack = subprocess.run([OCS, "alarms", "ack", str(a["alarm_id"]), "--config", str(cfg)],
                             cwd=repo_cwd, capture_output=True, text=True)
        assert ack.returncode == 0 and "acknowledged" in ack.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    files = sorted((data / "alarms").glob("alarms_srv_*.jsonl"))
    events = [json.loads(ln)["event"] for f in files for ln in f.read_text().splitlines()]
    assert events[0] == "raise" and "update" in events and "ack" in events


def test_charging_error_rate_alarm(tmp_path: Path) -> None:
    """More failed than answered operations in a health interval: processingErrorAlarm."""
    import asyncio

    from ocs.app import build_server
    from ocs.charging.model import DebitRequest
    from ocs.config import load_config
    from ocs.provisioning import NewSubscriber, op_add_subscriber, op_load_plans
    from ocs.rating.plans import load_plans_file
    from ocs.store import Overloaded

    cfg_path = tmp_path / "e.toml"
    cfg_path.write_text(f"""
[node]
name = "srv"
data_dir = "{tmp_path / 'd'}"
log_format = "json"
[store]
queue_size = 4
[noc]
min_free_disk_mb = 0
health_interval_s = 3600
[admin]
enabled = false
""")
    cfg = load_config(cfg_path)
    store = Store(cfg.data_dir)
    plans = Path(__file__).resolve().parents[2] / "config" / "plans.toml"
    store.run_write(op_load_plans(load_plans_file(plans)))
    store.run_write(op_add_subscriber(NewSubscriber(msisdn="41790000001",
                                                    plan_id="prepaid-basic", balance="10")))
    store.close()

    async def go() -> list[str]:
        server = build_server(cfg)
        await server.start()
        try:
            futs, busy = [], 0
            for i in range(100):
                try:
                    futs.append(server.engine.submit("debit", DebitRequest(
                        request_key=b"e%d" % i, subscriber=((IdKind.MSISDN, "41790000001"),),
                        service=Service.SMS, destination="41791112233")))
                except Overloaded:
                    busy += 1
            await asyncio.gather(*futs)
            assert busy >= 90 and server.writer.failed >= busy  # (+ reaper, health)
            outcomes = await server.check_health(int(time.time()))
            assert "charging:raise" in outcomes
            return await server.check_health(int(time.time()))  # a quiet interval
        finally:
            await server.stop()

    assert "charging:clear" in asyncio.run(go())
