"""The REST API in ``ocs serve``, driven by httpx (an independent HTTP client): tokens and
roles, the CLI's shapes, problem details, idempotent top-ups under concurrent retries,
cursor pages, and what a hostile client gets."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests_support import OCS, admin_healthy, free_tcp_port, init_server, serving

PROBLEM = "application/problem+json"


class Api:
    def __init__(self, cwd: Path, cfg: Path, port: int):
        self.cwd, self.cfg, self.port = cwd, cfg, port
        self.url = f"http://127.0.0.1:{port}"

    def cli(self, *args: str) -> Any:
        p = subprocess.run([OCS, *args, "--config", str(self.cfg), "--json"], cwd=self.cwd,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def token(self, role: str, name: str = "") -> str:
        out = self.cli("api", "token", "create", "--role", role, "--name", name or role)
        assert out["role"] == role and out["token"].startswith(out["token_id"])
        return str(out["token"])

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=20)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("api")
    port, admin = free_tcp_port(), free_tcp_port()
    cfg = init_server(tmp, f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
                           f'[api]\nlisten = "127.0.0.1:{port}"\nmax_page = 3\n')
    a = Api(tmp, cfg, port)
    for i in range(5):
        a.cli("subscriber", "add", "--msisdn", f"4917000000{i:02d}", "--plan", "prepaid-basic",
              "--balance", "5.00", "--imsi", f"26201000000000{i}")
    with serving(cfg, tmp, lambda: admin_healthy(admin)):
        yield a


def problem(r: httpx.Response, status: int, field: str = "") -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["title"]
    if field:
        assert field in [e["field"] for e in body["errors"]], body
    return body


def test_openapi_document_is_public_and_lists_every_route(api: Api) -> None:
    r = httpx.get(api.url + "/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    paths = set(doc["paths"])
    assert {"/api/v1/subscribers", "/api/v1/subscribers/{msisdn}",
            "/api/v1/subscribers/{msisdn}/topups", "/api/v1/subscribers/{msisdn}/usage",
            "/api/v1/plans", "/api/v1/alarms", "/api/v1/alarms/{alarm_id}/ack",
            "/api/v1/fraud/cases", "/api/v1/fraud/cases/{case_id}/resolve",
            "/api/v1/invoices"} <= paths
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_no_token_a_bad_token_and_a_revoked_token_are_401(api: Api) -> None:
    with api.client(None) as c:
        r = c.get("/subscribers/491700000000")
    problem(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"
    for bad in ("ocs_" + "A" * 43, "x", "ocs_" + "\u00e9" * 43, "Bearer", "ocs_"):
        with httpx.Client(base_url=api.url + "/api/v1",
                          headers={"Authorization": f"Bearer {bad}".encode()}) as c:
            problem(c.get("/subscribers/491700000000"), 401)
    token = api.token("readonly", "temp")
    with api.client(token) as c:
        assert c.get("/subscribers/491700000000").status_code == 200
        api.cli("api", "token", "revoke", token[:12])
        problem(c.get("/subscribers/491700000000"), 401)
    assert token not in json.dumps(api.cli("api", "token", "list"))


def test_roles_are_enforced_per_route(api: Api) -> None:
    noc, ro, care = api.token("noc"), api.token("readonly"), api.token("care")
    with api.client(noc) as c:
        problem(c.get("/subscribers/491700000000"), 403)
        problem(c.post("/subscribers/491700000000/topups",
                       json={"amount": "1.00", "reference": "noc-1"}), 403)
        assert c.get("/alarms").status_code == 200
        assert c.get("/plans").status_code == 200
    with api.client(ro) as c:
        assert c.get("/subscribers/491700000000").status_code == 200
        problem(c.post("/subscribers/491700000000/topups",
                       json={"amount": "1.00", "reference": "ro-1"}), 403)
        problem(c.patch("/subscribers/491700000000", json={"roaming": False}), 403)
        problem(c.post("/alarms/1/ack"), 403)
    with api.client(care) as c:
        problem(c.delete("/subscribers/491700000004"), 403)  # admin only
        problem(c.post("/alarms/1/ack"), 403)
    # nothing moved: the balance is what it was
    assert api.cli("subscriber", "show", "491700000000")["balance"] == "5.0000"


def test_subscriber_get_is_the_cli_shape(api: Api) -> None:
    with api.client(api.token("readonly")) as c:
        got = c.get("/subscribers/491700000001").json()
        problem(c.get("/subscribers/491799999999"), 404, "msisdn")
        problem(c.get("/subscribers/not-a-number"), 404, "msisdn")
    assert got == api.cli("subscriber", "show", "491700000001")


def test_cursor_pages_walk_every_subscriber_once(api: Api) -> None:
    seen: list[str] = []
    with api.client(api.token("readonly")) as c:
        cursor: str | None = ""
        pages = 0
        while cursor is not None:
            body = c.get("/subscribers", params={"cursor": cursor, "limit": 50}).json()
            assert len(body["items"]) <= 3  # [api] max_page
            seen += [i["msisdn"] for i in body["items"]]
            cursor = body["next_cursor"]
            pages += 1
            assert pages < 20
        problem(c.get("/subscribers", params={"cursor": "!!!"}), 400, "cursor")
        problem(c.get("/subscribers", params={"cursor": "Li4vZXRj"}), 400, "cursor")
        problem(c.get("/subscribers", params={"limit": 0}), 400)
        found = c.get("/subscribers", params={"q": "262010000000003"}).json()["items"]
    listed = [i["msisdn"] for i in api.cli("subscriber", "list")]
    assert seen == listed and len(set(seen)) == len(seen)
    assert [f["msisdn"] for f in found] == ["491700000003"]


def test_topup_with_reference_credits_once_under_concurrent_retries(api: Api) -> None:
    token = api.token("care", "crm")

    def send(_i: int) -> tuple[int, dict[str, Any]]:
        with api.client(token) as c:
            r = c.post("/subscribers/491700000002/topups",
                       json={"amount": "2.50", "reference": "pay-7781"})
            return r.status_code, r.json()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(16)))
    codes = sorted(code for code, _ in answers)
    assert codes == [200] * 15 + [201], codes
    assert {a["entry"] for _, a in answers} == {answers[0][1]["entry"]}
    assert {a["balance"] for _, a in answers} == {"7.5000"}
    assert api.cli("subscriber", "show", "491700000002")["balance"] == "7.5000"
    with api.client(token) as c:
        problem(c.post("/subscribers/491700000002/topups",
                       json={"amount": "3.00", "reference": "pay-7781"}), 409, "reference")
        problem(c.post("/subscribers/491700000002/topups",
                       json={"amount": "-1", "reference": "pay-neg"}), 400, "amount")
        problem(c.post("/subscribers/491700000002/topups",
                       json={"amount": "0", "reference": "pay-0"}), 422, "amount")
        problem(c.post("/subscribers/491700000002/topups",
                       json={"amount": "1.00"}), 400, "reference")
        problem(c.post("/subscribers/491700000002/topups",
                       json={"amount": "1.00", "reference": "a\nb"}), 400, "reference")
        problem(c.post("/subscribers/491799999999/topups",
                       json={"amount": "1.00", "reference": "nobody"}), 404, "msisdn")
        history = c.get("/subscribers/491700000002/usage").json()
    assert api.cli("subscriber", "show", "491700000002")["balance"] == "7.5000"
    tops = [h for h in history if h["kind"] == "topup"]
    assert [(t["amount"], t["reference"], t["balance_after"]) for t in tops] == [
        ("2.5000", "pay-7781", "7.5000")]
    assert tops[0]["actor"].startswith("api:") and tops[0]["actor"].endswith(":crm")
    assert history == api.cli("subscriber", "history", "491700000002")


def test_create_is_idempotent_by_msisdn_and_patch_changes_in_one_write(api: Api) -> None:
    body = {"msisdn": "491711111111", "plan": "prepaid-basic", "imsi": "262019999999991",
            "balance": "1.00", "password": "s3cret"}
    with api.client(api.token("care")) as c:
        first = c.post("/subscribers", json=body)
        assert first.status_code == 201, first.text
        assert first.headers["location"] == "/api/v1/subscribers/491711111111"
        again = c.post("/subscribers", json=body)
        assert again.status_code == 200 and again.json() == first.json()
        problem(c.post("/subscribers", json={**body, "balance": "2.00"}), 409, "balance")
        problem(c.post("/subscribers", json={**body, "password": "other"}), 409, "password")
        problem(c.post("/subscribers", json={**body, "msisdn": "491711111112"}), 409, "imsi")
        problem(c.post("/subscribers", json={**body, "plan": "nope", "msisdn": "491711111113",
                                             "imsi": ""}), 422, "plan")
        problem(c.post("/subscribers", json={**body, "colour": "red"}), 400)
        problem(c.post("/subscribers", content=b"{", headers={
            "content-type": "application/json"}), 400)
        r = c.patch("/subscribers/491711111111", json={"imsi": "262019999999992",
                                                       "roaming": False,
                                                       "status": "suspended"})
        assert r.status_code == 200, r.text
        assert r.json()["changed"] == ["imsi", "roaming", "status"]
        assert r.json()["status"] == "suspended" and r.json()["imsi"] == "262019999999992"
        # another subscriber's IMSI: refused whole (the roaming flag stays as it was)
        problem(c.patch("/subscribers/491711111111", json={"imsi": "262010000000000",
                                                           "roaming": True}), 409, "imsi")
        assert c.get("/subscribers/491711111111").json()["roaming"] is False
        found = c.get("/subscribers", params={"q": "262019999999992"}).json()["items"]
        assert [f["msisdn"] for f in found] == ["491711111111"]
        assert c.get("/subscribers", params={"q": "262019999999991"}).json()["items"] == []
    with api.client(api.token("admin")) as c:
        for _ in range(2):  # deleting again is the same answer
            r = c.delete("/subscribers/491711111111")
            assert r.status_code == 200 and r.json() == {"msisdn": "491711111111",
                                                         "status": "terminated"}
        problem(c.post("/subscribers/491711111111/topups",
                       json={"amount": "1.00", "reference": "late"}), 409, "status")


def test_plans_alarms_fraud_and_invoices_routes(api: Api) -> None:
    with api.client(api.token("noc")) as c:
        plans = c.get("/plans").json()
        assert plans == api.cli("plan", "list")
        assert c.get("/plans/prepaid-basic").json() == api.cli("plan", "show",
                                                                "prepaid-basic")
        problem(c.get("/plans/none"), 404, "plan_id")
        assert c.get("/alarms").json() == api.cli("alarms", "list")
        problem(c.post("/alarms/999999/ack"), 404, "alarm_id")
        problem(c.post("/alarms/abc/ack"), 404)  # no such route
        problem(c.get("/alarms", params={"limit": 0}), 400, "limit")
        problem(c.get("/alarms", params={"limit": 5001}), 400, "limit")
    with api.client(api.token("care")) as c:
        assert c.get("/fraud/cases").json() == []
        problem(c.get("/fraud/cases/5"), 404, "case_id")
        problem(c.post("/fraud/cases/5/resolve", json={}), 404, "case_id")
        problem(c.get("/invoices", params={"period": "2026-01"}), 404, "period")
        problem(c.get("/invoices", params={"period": "../../etc"}), 400)
        problem(c.get("/invoices/2026-01/..%2f..%2fserve.lock"), 404)


def test_invoices_by_the_api_as_json_html_and_pdf(api: Api) -> None:
    import datetime as dt
    import io

    from pypdf import PdfReader

    with api.client(api.token("care")) as c:
        r = c.post("/subscribers", json={"msisdn": "41790000777", "plan": "postpaid-business",
                                         "postpaid": True, "name": "Ada Lovelace"})
        assert r.status_code == 201 and r.json()["name"] == "Ada Lovelace", r.text
        r = c.patch("/subscribers/41790000777", json={"address": "1 Main St\nLondon"})
        assert r.json()["changed"] == ["address"]
        problem(c.patch("/subscribers/41790000777", json={"name": "a\tb"}), 422, "name")
    period = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    out = api.cfg.parent / "data" / "invoices" / period
    bill = api.cli("bill", "run", "--period", period, "--preview", "--out", str(out))
    assert bill["invoices"] >= 1
    with api.client(api.token("readonly")) as c:
        (item,) = [i for i in c.get("/invoices", params={"period": period}).json()
                   if i["msisdn"] == "41790000777"]
        doc = c.get(f"/invoices/{period}/{item['invoice_id']}").json()
        assert doc["customer"] == {"name": "Ada Lovelace", "address": "1 Main St\nLondon"}
        page = c.get(f"/invoices/{period}/{item['invoice_id']}", params={"format": "html"})
        assert "Ada Lovelace<br>1 Main St<br>London" in page.text
        pdf = c.get(f"/invoices/{period}/{item['invoice_id']}", params={"format": "pdf"})
        assert pdf.headers["content-type"] == "application/pdf"
        text = PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text()
        assert "Ada Lovelace" in text and "London" in text and item["invoice_id"] in text
        problem(c.get(f"/invoices/{period}/INV-0", params={"format": "pdf"}), 404,
                "invoice_id")


def test_kpis_route_is_the_cli_report(api: Api) -> None:
    with api.client(api.token("noc")) as c:
        got = c.get("/kpis", params={"period": "2026-11"}).json()
        problem(c.get("/kpis", params={"period": "2026-13"}), 400, "period")
        problem(c.get("/kpis"), 400, "period")
    cli = api.cli("report", "kpis", "--period", "2026-11")
    for k in (got, cli):
        assert k.pop("seconds") >= 0
    assert got == cli and got["period"] == "2026-11"


def test_hostile_clients_get_errors_and_the_server_keeps_answering(api: Api) -> None:
    token = api.token("care")
    for body in (b"[" * 70_000, b'{"msisdn": "' + b"1" * 200_000 + b'"}'):
        # over api.max_body_kb: a 413, or (RFC 9110 15.5.14) the connection closed while
        # the client still sends
        with api.client(token) as c:
            try:
                r = c.post("/subscribers/491700000003/topups", content=body,
                           headers={"content-type": "application/json"})
            except httpx.TransportError:
                continue
            assert r.status_code == 413, r.status_code
    with api.client(token) as c:  # a deep but small body: a 400, not a crash
        r = c.post("/subscribers/491700000003/topups", content=b"[" * 30_000,
                   headers={"content-type": "application/json"})
        assert r.status_code == 400, r.status_code
    # a client that sends half a request and waits is closed, and others are served
    s = socket.create_connection(("127.0.0.1", api.port))
    s.sendall(b"GET /api/v1/plans HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    with api.client(token) as c:
        assert c.get("/plans").status_code == 200
    s.settimeout(30)
    assert s.recv(100) == b""  # closed by the server's read timeout
    assert time.monotonic() - started < 25
    s.close()
    # a head that goes on (one long header) is cut off at 16 KiB: closed at once, well
    # before the request deadline (api.request_timeout_s, 10 s) would close it
    s = socket.create_connection(("127.0.0.1", api.port))
    s.settimeout(8)
    started = time.monotonic()
    with contextlib.suppress(OSError):  # the server may close while we still send
        s.sendall(b"GET /api/v1/plans HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 65_536)
    try:
        closed = s.recv(100) == b""
    except ConnectionResetError:
        closed = True
    assert closed and time.monotonic() - started < 5
    s.close()
    with api.client(token) as c:
        assert c.get("/plans").status_code == 200
    assert api.cli("subscriber", "show", "491700000003")["balance"] == "5.0000"
