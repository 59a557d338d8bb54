"""Two ``ocs serve`` nodes over one Redis Cluster (3 primaries, 3 replicas on loopback):
gateways charge one subscriber through both at once, over Gy (the simulator's client)
and RADIUS (FreeRADIUS radclient); one wallet, never below zero, every charge with one
CDR in one node's files."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests_support import (
    admin_get,
    admin_healthy,
    free_tcp_port,
    free_udp_port,
    init_server,
    metric,
    require_tool,
    serving,
)

from ocs.store.cluster import ClusterStore
from sim.diameter_cmd import GyLoad, result_codes
from sim.rediscluster import RedisCluster

OCS = str(Path(sys.executable).parent / "ocs")
ALICE = "41790000001"
MB = 1_000_000
PERIOD = time.strftime("%Y-%m", time.gmtime())

SECTIONS = """
[store]
backend = "redis"
[store.redis]
nodes = [{nodes}]
wait_timeout_ms = 2000
[charging]
reaper_interval_s = 1
[cdr]
export_interval_s = 0.2
[diameter]
listen = "127.0.0.1:{dia}"
origin_host = "{name}.localdomain"
origin_realm = "localdomain"
[radius]
auth_listen = "127.0.0.1:{auth}"
acct_listen = "127.0.0.1:{acct}"
rating_group = 10
[[radius.clients]]
address = "127.0.0.1"
secret = "testing123"
name = "lo"
[chf]
listen = "127.0.0.1:{chf}"
[fraud]
enabled = false
[admin]
listen = "127.0.0.1:{admin}"
"""


class Node:
    def __init__(self, root: Path, name: str, nodes: list[str], extra: str = ""):
        self.cwd = root / name
        self.cwd.mkdir()
        self.name = name
        self.dia, self.acct, self.admin = free_tcp_port(), free_udp_port(), free_tcp_port()
        self.chf = free_tcp_port()
        self.cfg = init_server(self.cwd, SECTIONS.format(
            nodes=", ".join(f'"{n}"' for n in nodes), dia=self.dia, auth=free_udp_port(),
            acct=self.acct, admin=self.admin, name=name, chf=self.chf) + extra, name=name)

    def ocs(self, *args: str) -> str:
        p = subprocess.run([OCS, *args, "--config", str(self.cfg)], cwd=self.cwd,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout

    def show(self, msisdn: str = ALICE) -> dict[str, str]:
        return dict(json.loads(self.ocs("subscriber", "show", msisdn, "--json")))

    def radclient(self, attrs: str) -> str:
        p = subprocess.run([require_tool("radclient"), "-x", "-r", "3", "-t", "3",
                            f"127.0.0.1:{self.acct}", "acct", "testing123"],
                           input=attrs + "\n", capture_output=True, text=True, timeout=60)
        return p.stdout + p.stderr

    def cdr_rows(self) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = []
        for path in sorted((self.cwd / "data" / "cdr").glob("cdr_*.csv")):
            assert f"cdr_{self.name}_" in path.name  # the node's name in its files
            with path.open(newline="", encoding="utf-8") as f:
                rows += list(csv.DictReader(f))
        return rows


def micro(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 1_000_000 + int((frac + "000000")[:6])


async def gy_sessions(port: int, tag: str, sessions: int, updates: int) -> dict[int, int]:
    """``sessions`` data sessions through one node, each CCR-I, ``updates`` CCR-Us of
    1 MB used and 1 MB asked, CCR-T: result code (the MSCC's, else the answer's) ->
    count."""
    load = GyLoad("127.0.0.1", port, connections=2)
    await load.open()
    counts: dict[int, int] = {}

    async def one(i: int) -> None:
        sid = f"pgw-{tag};1;{i}"
        steps = [load.ccr(sid, 1, 0, ALICE, requested=MB)]
        steps += [load.ccr(sid, 2, n, ALICE, used=MB, requested=MB)
                  for n in range(1, updates + 1)]
        steps.append(load.ccr(sid, 3, updates + 1, ALICE, used=MB))
        for body in steps:
            ans = await load._send(load.conns[i % 2], 272, 4, body)
            rc, inner = result_codes(ans)
            for code in inner or [rc]:
                counts[code] = counts.get(code, 0) + 1

    try:
        await asyncio.gather(*(one(i) for i in range(sessions)))
    finally:
        load.close()
    return counts


def test_two_nodes_share_one_wallet(tmp_path: Path, redis_nodes: RedisCluster) -> None:
    redis_nodes.flush()
    a = Node(tmp_path, "ocs-a", redis_nodes.nodes)
    b = Node(tmp_path, "ocs-b", redis_nodes.nodes)
    # provisioned through one node, seen by the other
    b.ocs("subscriber", "add", "--msisdn", ALICE, "--plan", "prepaid-basic", "--balance",
          "0.60", "--username", "alice")
    assert a.show()["balance"] == "0.6000"
    with serving(a.cfg, a.cwd, lambda: admin_healthy(a.admin)), \
            serving(b.cfg, b.cwd, lambda: admin_healthy(b.admin)):
        # one exact session on node a: 3 MB at 0.01 / MB
        out = a.radclient('Acct-Status-Type = Start, Acct-Session-Id = "r1", '
                          'User-Name = "alice", NAS-IP-Address = 127.0.0.1')
        assert "Received Accounting-Response" in out, out
        out = b.radclient('Acct-Status-Type = Stop, Acct-Session-Id = "r1", '
                          'User-Name = "alice", NAS-IP-Address = 127.0.0.1, '
                          'Acct-Input-Octets = 1000000, Acct-Output-Octets = 2000000')
        assert "Received Accounting-Response" in out, out  # closed through the other node
        shown = b.show()
        assert (shown["balance"], shown["reserved"]) == ("0.5700", "0.0000")
        # a charge from the command line, on the cluster (its CDR drained by a node)
        sms = json.loads(a.ocs("charge", ALICE, "--service", "sms", "--units", "1",
                               "--json"))
        assert sms["ok"] and micro(sms["charged"]) > 0
        assert micro(b.show()["balance"]) == 570_000 - micro(sms["charged"])
        # then both nodes at once, over Gy and RADIUS, asking for more than 0.57 pays
        results: dict[str, dict[int, int]] = {}

        def gy(node: Node) -> None:
            results[node.name] = asyncio.run(gy_sessions(node.dia, node.name, 8, 6))

        def radius(node: Node, n: int) -> None:
            for i in range(n):
                base = (f'Acct-Session-Id = "{node.name}-{i}", User-Name = "alice", '
                        "NAS-IP-Address = 127.0.0.1")
                node.radclient(f"Acct-Status-Type = Start, {base}")
                node.radclient(f"Acct-Status-Type = Stop, {base}, "
                               "Acct-Input-Octets = 2000000, Acct-Output-Octets = 0")

        threads = [threading.Thread(target=gy, args=(a,)),
                   threading.Thread(target=gy, args=(b,)),
                   threading.Thread(target=radius, args=(a, 3)),
                   threading.Thread(target=radius, args=(b, 3))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert results["ocs-a"].get(2001, 0) > 0 and results["ocs-b"].get(2001, 0) > 0
        codes = set(results["ocs-a"]) | set(results["ocs-b"])
        assert 4012 in codes and codes <= {2001, 4012}  # granted, then out of credit
        shown = a.show()
        assert shown["reserved"] == "0.0000"
        left = micro(shown["balance"])
        assert 0 <= left < 10_000  # prepaid: used up, never below zero
        with ClusterStore(redis_nodes.nodes) as cluster:
            assert cluster.verify() == []
            # one process of the two scans every slot for each job
            assert {cluster.lease_holder(j) for j in ("expiry", "outbox")} <= {
                "ocs-a:0", "ocs-b:0"}
        # one node's flush closes every serving node's open file
        flushed = json.loads(a.ocs("cdr", "flush", "--json"))
        assert flushed["nodes"] == ["ocs-b"]
        assert not [p for p in (b.cwd / "data" / "cdr").glob("*.part")
                    if p.read_text().count("\n") > 1]  # (a header at most)
        for node in (a, b):  # the backend's counters on /metrics
            exchanges = metric(node.admin, "ocs_redis_exchanges_total")
            batches = metric(node.admin, "ocs_redis_write_batches_total")
            assert exchanges > batches > 0
            assert "\nocs_redis_conflicts_total " in admin_get(node.admin, "/metrics")
    rows = a.cdr_rows() + b.cdr_rows()
    ids = [r["record_id"] for r in rows]
    assert len(ids) == len(set(ids))  # no record in two files, on one node or two
    assert sum(micro(r["charge"]) for r in rows) == 600_000 - left  # every charge, once
    assert {r["msisdn"] for r in rows} == {ALICE}
    assert {r["protocol"] for r in rows} >= {"diameter", "radius"}
    # the subscriber list and history read the cluster: the same on every node; history
    # shows the charges of the CDR files in the node's [cdr] dir (gathered there)
    listed = json.loads(a.ocs("subscriber", "list", "--json"))
    assert [(i["msisdn"], micro(i["balance"])) for i in listed] == [(ALICE, left)]
    for path in (a.cwd / "data" / "cdr").glob("cdr_*.csv"):
        shutil.copy(path, b.cwd / "data" / "cdr" / path.name)
    items = json.loads(b.ocs("subscriber", "history", ALICE, "--json"))
    assert [i["kind"] for i in items if i["kind"] != "charge"] == ["opening"]
    charges = [i for i in items if i["kind"] == "charge"]
    assert sorted(i["record_id"] for i in charges) == sorted(ids)
    out = [i["amount"] for i in charges]  # money out: negative (or nothing)
    assert all(a.startswith("-") or micro(a) == 0 for a in out)
    assert sum(micro(a.removeprefix("-")) for a in out) == 600_000 - left
    # a bill run on one node: subscribers and plans from the cluster, every node's files
    bill = json.loads(b.ocs("bill", "run", "--period", PERIOD, "--preview", "--json"))
    assert (bill["invoices"], bill["rows"]) == (1, len(ids))
    assert bill["files"] == len(list((b.cwd / "data" / "cdr").glob("cdr_*.csv")))
    kpis = json.loads(b.ocs("report", "kpis", "--period", PERIOD, "--json"))
    assert kpis["rows"] == len(ids)
    # a CDR rated again from the cluster's plans, as the engine did
    row = next(r for r in rows if micro(r["charge"]) > 0)
    explained = json.loads(b.ocs("cdr", "explain", row["record_id"], "--json"))
    assert micro(explained["charge"]) == micro(row["charge"])
    # re-rated on the cluster's plans (the same): every CDR read, nothing to move
    rr = json.loads(b.ocs("rerate", "--period", PERIOD, "--json"))
    assert micro(rr["old_total"]) == 600_000 - left == micro(rr["new_total"])
    assert (rr["delta"], rr["adjustments"]) == ("0.0000", {})
    # and the files against the cluster's balances and ledgers: they agree
    rec = json.loads(b.ocs("bill", "reconcile", "--period", PERIOD, "--json"))
    assert rec["ok"] and micro(rec["cdr_total"]) == 600_000 - left == micro(
        rec["engine_total"])


def test_the_rest_api_on_a_cluster(tmp_path: Path, redis_nodes: RedisCluster) -> None:
    """The REST API of one node works on the cluster: what it provisions and credits
    the other node sees, and what the other node changes it answers; tokens are the
    node's own."""
    redis_nodes.flush()
    port = free_tcp_port()
    a = Node(tmp_path, "ocs-a", redis_nodes.nodes, f'[api]\nlisten = "127.0.0.1:{port}"\n')
    b = Node(tmp_path, "ocs-b", redis_nodes.nodes)
    token = json.loads(a.ocs("api", "token", "create", "--role", "admin", "--name", "ops",
                             "--json"))["token"]
    with serving(a.cfg, a.cwd, lambda: admin_healthy(a.admin)), \
            httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=20,
                         headers={"Authorization": f"Bearer {token}"}) as api:
        r = api.post("/subscribers", json={"msisdn": ALICE, "plan": "prepaid-basic",
                                           "balance": "1.00", "imsi": "228010000000001"})
        assert r.status_code == 201, r.text
        assert b.show()["balance"] == "1.0000"  # in the cluster
        r = api.post(f"/subscribers/{ALICE}/topups", json={"amount": "2.00",
                                                           "reference": "pay-1"})
        assert r.status_code == 201 and r.json()["balance"] == "3.0000", r.text
        r = api.post(f"/subscribers/{ALICE}/topups", json={"amount": "2.00",
                                                           "reference": "pay-1"})
        assert r.status_code == 200 and r.json()["balance"] == "3.0000"  # once
        assert b.show()["balance"] == "3.0000"
        b.ocs("subscriber", "add", "--msisdn", "41790000002", "--plan", "prepaid-basic")
        page = api.get("/subscribers", params={"limit": 1}).json()
        assert [i["msisdn"] for i in page["items"]] == [ALICE] and page["next_cursor"]
        page = api.get("/subscribers", params={"cursor": page["next_cursor"]}).json()
        assert [i["msisdn"] for i in page["items"]] == ["41790000002"]
        assert not page["next_cursor"]
        found = api.get("/subscribers", params={"q": "228010000000001"}).json()["items"]
        assert [i["msisdn"] for i in found] == [ALICE]
        b.ocs("subscriber", "suspend", ALICE)  # changed through the other node
        assert api.get(f"/subscribers/{ALICE}").json()["status"] == "suspended"
        r = api.patch(f"/subscribers/{ALICE}", json={"status": "active"})
        assert r.status_code == 200 and r.json()["changed"] == ["status"], r.text
        assert b.show()["status"] == "active"
        assert {p["id"] for p in api.get("/plans").json()} >= {"prepaid-basic"}
        kinds = [i["kind"] for i in api.get(f"/subscribers/{ALICE}/usage").json()]
        assert kinds == ["opening", "topup"]
        assert api.get("/fraud/cases").json() == []
        # a CSV import through the other node's command line, found through the API
        csv_file = tmp_path / "import.csv"
        csv_file.write_text("msisdn,plan,imsi,balance\n41790000003,prepaid-basic,"
                            "228010000000003,4.00\n41790000004,prepaid-basic,,\n")
        assert json.loads(b.ocs("subscriber", "import", str(csv_file), "--json",
                                "--no-progress"))["imported"] == 2
        found = api.get("/subscribers", params={"q": "228010000000003"}).json()["items"]
        assert [(i["msisdn"], i["balance"]) for i in found] == [("41790000003", "4.0000")]


SMPP = """
[smpp]
listen = "127.0.0.1:{port}"
[[smpp.accounts]]
system_id = "sender"
password = "secret"
[[smpp.accounts]]
system_id = "dest"
password = "secret"
max_binds = 1
[[smpp.routes]]
prefix = "4179"
system_id = "dest"
"""


def read_until(c: Any, n: int, timeout: float = 10.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while len(c.received) < n and time.monotonic() < deadline:
        c.read_once()
    return list(c.received)


def test_sms_store_and_forward_across_nodes(tmp_path: Path, redis_nodes: RedisCluster) -> None:
    """An SMSC of two nodes: a message submitted on one is delivered by the node its
    receiver is bound to, the receipt goes back through the first; the bind limit holds
    over both; a node killed holding a bind stops counting after BIND_TTL_S, and what
    waited meanwhile goes to the receiver bound again on the other node. Exact money,
    one CDR per message."""
    import smpplib.consts
    import smpplib.exceptions
    from tests_support import Smsc

    from ocs.charging.model import BIND_TTL_S

    redis_nodes.flush()
    pa, pb = free_tcp_port(), free_tcp_port()
    a = Node(tmp_path, "ocs-a", redis_nodes.nodes, SMPP.format(port=pa))
    b = Node(tmp_path, "ocs-b", redis_nodes.nodes, SMPP.format(port=pb))
    a.ocs("subscriber", "add", "--msisdn", ALICE, "--plan", "prepaid-basic", "--balance",
          "1.00")
    sa, sb = Smsc(a.cwd, a.cfg, pa), Smsc(b.cwd, b.cfg, pb)
    with serving(a.cfg, a.cwd, lambda: admin_healthy(a.admin)):
        # b in one process: SIGKILL leaves no worker to give the bind back on its way out
        with serving(b.cfg, b.cwd, lambda: admin_healthy(b.admin),
                     args=("--workers", "1")) as proc_b:
            dest = sb.esme("receiver", system_id="dest")
            with pytest.raises(smpplib.exceptions.PDUError) as refused:
                sa.esme("receiver", system_id="dest")  # max_binds 1, over both nodes
            assert refused.value.args[1] == smpplib.consts.SMPP_ESME_RBINDFAIL
            sender = sa.esme("transceiver", system_id="sender")
            sender.send_message(source_addr_ton=1, source_addr=ALICE, dest_addr_ton=1,
                                destination_addr="41791234567", short_message=b"hi b",
                                registered_delivery=1)
            resp = sender.read_pdu()
            assert resp.status == 0
            first_id = resp.message_id.decode()
            assert first_id.startswith(ALICE + "-")
            (dl,) = read_until(dest, 1)  # delivered by node b
            assert dl.short_message == b"hi b" and dl.source_addr == ALICE.encode()
            receipts = read_until(sender, 1)  # the receipt, back through node a
            assert receipts and f"id:{first_id} ".encode() in receipts[0].short_message
            assert b"stat:DELIVRD" in receipts[0].short_message
            os.kill(proc_b.pid, signal.SIGKILL)  # b dies holding dest's bind
            proc_b.wait()
            killed_at = time.monotonic()
            sender.send_message(source_addr_ton=1, source_addr=ALICE, dest_addr_ton=1,
                                destination_addr="41791234567", short_message=b"later",
                                registered_delivery=0)
            assert sender.read_pdu().status == 0  # queued: no receiver anywhere
            again = None
            while again is None:
                try:
                    again = sa.esme("receiver", system_id="dest")
                except smpplib.exceptions.PDUError as exc:
                    assert exc.args[1] == smpplib.consts.SMPP_ESME_RBINDFAIL
                    assert time.monotonic() - killed_at < BIND_TTL_S + 20
                    time.sleep(2)
            assert time.monotonic() - killed_at >= BIND_TTL_S - 12  # (touched <= 10 s before)
            (late,) = read_until(again, 1, timeout=15)
            assert late.short_message == b"later"
            for c in (again, sender):
                c.unbind()
                c.disconnect()
        assert a.show()["balance"] == "0.9000"  # two messages at 0.05, once each
        with serving(b.cfg, b.cwd, lambda: admin_healthy(b.admin)):
            a.ocs("cdr", "flush")  # b again: it exports what it had drained when killed
    rows = a.cdr_rows() + b.cdr_rows()
    ids = [r["record_id"] for r in rows]
    assert len(ids) == 2 == len(set(ids)) and first_id in ids
    assert all(r["service"] == "sms" and micro(r["charge"]) == 50_000 for r in rows)


def test_a_node_on_a_cluster_lists_the_cluster_s_fraud_cases(
        tmp_path: Path, redis_nodes: RedisCluster) -> None:
    cfg = tmp_path / "ocs.toml"
    base = (f'[node]\ndata_dir = "{tmp_path / "data"}"\n[store]\nbackend = "redis"\n'
            f'[store.redis]\nnodes = ["{redis_nodes.nodes[0]}"]\n')
    cfg.write_text(base)
    redis_nodes.flush()
    p = subprocess.run([OCS, "fraud", "cases", "list", "--json", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and json.loads(p.stdout) == [], p.stderr


def test_the_three_node_example_configs_load() -> None:
    """config/cluster/: three nodes, one cluster, each its own name, data, listeners."""
    from ocs.config import load_config

    repo = Path(__file__).resolve().parents[2]
    cfgs = [load_config(p) for p in sorted((repo / "config" / "cluster").glob("*.toml"))]
    assert len(cfgs) == 3
    assert {c.store.backend for c in cfgs} == {"redis"}
    assert len({c.store.redis.nodes for c in cfgs}) == 1
    for attr in ("name", "data_dir"):
        assert len({getattr(c.node, attr) for c in cfgs}) == 3
    listens = [c.diameter.listen for c in cfgs if c.diameter is not None]
    listens += [c.radius.acct_listen for c in cfgs if c.radius is not None]
    listens += [c.admin.listen for c in cfgs]
    assert len(listens) == 9 == len(set(listens))


async def debits(port: int, keys: list[int], *, on_answer: Any = None) -> tuple[
        dict[int, int], set[int]]:
    """CCR-E direct debits (session ``ev;<k>``, number 0) through one node, 16 in flight:
    (key -> result code of the answered ones, keys that got no answer)."""
    load = GyLoad("127.0.0.1", port, connections=2, timeout_s=5)
    await load.open()
    answered: dict[int, int] = {}
    lost: set[int] = set()
    sem = asyncio.Semaphore(16)

    async def one(k: int) -> None:
        async with sem:
            body = load.ccr(f"ev;{k}", 4, 0, ALICE, event_units=1)
            try:
                ans = await load._send(load.conns[k % 2], 272, 4, body)
            except (ConnectionError, TimeoutError):
                lost.add(k)
                return
            answered[k] = result_codes(ans)[0]
            if on_answer is not None:
                on_answer(len(answered))

    try:
        await asyncio.gather(*(one(k) for k in keys))
    finally:
        load.close()
    return answered, lost


def test_a_killed_node_loses_no_answered_charge_and_no_cdr(
        tmp_path: Path, redis_nodes: RedisCluster) -> None:
    """SIGKILL of a node while it charges: what it answered is in the wallet; what got
    no answer, re-sent to the other node, is charged once (a replay where the dead node
    had charged it). Restarted, the killed node finishes the CDRs it had claimed: every
    charge has exactly one CDR in one node's files."""
    redis_nodes.flush()
    a = Node(tmp_path, "ocs-a", redis_nodes.nodes)
    b = Node(tmp_path, "ocs-b", redis_nodes.nodes)
    a.ocs("subscriber", "add", "--msisdn", ALICE, "--plan", "prepaid-basic", "--balance",
          "100.00")
    n = 300
    with serving(b.cfg, b.cwd, lambda: admin_healthy(b.admin)):
        with serving(a.cfg, a.cwd, lambda: admin_healthy(a.admin)) as proc:
            def kill_at(count: int) -> None:
                if count == 100 and proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)

            answered, lost = asyncio.run(debits(a.dia, list(range(n)), on_answer=kill_at))
        assert proc.returncode == -signal.SIGKILL
        assert lost and len(answered) >= 100 and set(answered.values()) == {2001}
        resent, still = asyncio.run(debits(b.dia, sorted(lost)))
        assert not still and set(resent.values()) == {2001}
        # one event's price, from the first answer's CDR below; here the wallet
        spent = 100_000_000 - micro(b.show()["balance"])
        with serving(a.cfg, a.cwd, lambda: admin_healthy(a.admin)):  # a again
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                with ClusterStore(redis_nodes.nodes) as cluster:
                    if not cluster.claimed_elsewhere("-") and not cluster.outbox():
                        break
                time.sleep(0.2)
            a.ocs("cdr", "flush")
        b.ocs("cdr", "flush")
    rows = a.cdr_rows() + b.cdr_rows()
    ids = [r["record_id"] for r in rows]
    assert len(ids) == n == len(set(ids))  # each event once: none lost, none twice
    assert {r["session_id"] for r in rows} == {f"ev;{k}" for k in range(n)}
    price = micro(rows[0]["charge"])
    assert price > 0 and all(micro(r["charge"]) == price for r in rows)
    assert spent == n * price


def test_a_5g_charging_session_moves_between_nodes(tmp_path: Path,
                                                   redis_nodes: RedisCluster) -> None:
    """Nchf over HTTP/2 (httpx): created on one node, updated on the other (it finds the
    session in the cluster), released on the first; exact amounts, one wallet."""
    from nchf_support import BASE, request, usage

    redis_nodes.flush()
    a = Node(tmp_path, "ocs-a", redis_nodes.nodes)
    b = Node(tmp_path, "ocs-b", redis_nodes.nodes)
    a.ocs("subscriber", "add", "--msisdn", ALICE, "--plan", "prepaid-basic", "--balance",
          "1.00", "--imsi", "228010000000001")
    json_body = {"content-type": "application/json"}
    with serving(a.cfg, a.cwd, lambda: admin_healthy(a.admin)), \
            serving(b.cfg, b.cwd, lambda: admin_healthy(b.admin)), \
            httpx.Client(http1=False, http2=True, timeout=10) as h2:
        r = h2.post(f"http://127.0.0.1:{a.chf}{BASE}", content=request(0, usage(10, 2 * MB)),
                    headers=json_body)
        assert r.status_code == 201, r.text
        ref = r.headers["location"].rsplit("/", 1)[-1]
        assert (b.show()["balance"], b.show()["reserved"]) == ("1.0000", "0.0200")
        up = h2.post(f"http://127.0.0.1:{b.chf}{BASE}/{ref}/update",
                     content=request(1, usage(10, MB, MB)), headers=json_body)
        assert up.status_code == 200, up.text
        mui = up.json()["multipleUnitInformation"][0]
        assert (mui["resultCode"], mui["grantedUnit"]) == ("SUCCESS", {"totalVolume": MB})
        assert (a.show()["balance"], a.show()["reserved"]) == ("0.9900", "0.0100")
        rel = h2.post(f"http://127.0.0.1:{a.chf}{BASE}/{ref}/release",
                      content=request(2, usage(10, None, 500_000)), headers=json_body)
        assert rel.status_code == 204, rel.text
        assert (b.show()["balance"], b.show()["reserved"]) == ("0.9850", "0.0000")
