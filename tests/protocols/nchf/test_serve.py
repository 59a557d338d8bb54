"""The CHF in ``ocs serve``, driven by independent HTTP/2 clients (httpx over h2, Debian's
curl with --http2-prior-knowledge), with notifications received by hypercorn (an
independent h2c server), one wallet shared with Gy (python-diameter), and TLS with ALPN."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nchf_support import BASE, request, usage
from tests_support import (
    OCS,
    admin_healthy,
    free_tcp_port,
    init_server,
    metric,
    require_tool,
    serving,
)

MB = 1_000_000
GY_CLIENT = Path(__file__).parents[1] / "diameter" / "gy_client.py"


class Chf:
    def __init__(self, cwd: Path, cfg: Path, port: int, admin: int, gy: int):
        self.cwd, self.cfg, self.port, self.admin, self.gy = cwd, cfg, port, admin, gy
        self.url = f"http://127.0.0.1:{port}"
        self.h2 = httpx.Client(http1=False, http2=True, base_url=self.url, timeout=10)

    def cli(self, *args: str) -> str:
        p = subprocess.run([OCS, *args, "--config", str(self.cfg)], cwd=self.cwd,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout

    def balance(self, msisdn: str) -> tuple[str, str]:
        d = json.loads(self.cli("subscriber", "show", msisdn, "--json"))
        return d["balance"], d["reserved"]

    def post(self, path: str, body: bytes) -> httpx.Response:
        return self.h2.post(path, content=body, headers={"content-type": "application/json"})

    def create(self, body: bytes) -> str:
        r = self.post(BASE, body)
        assert r.status_code == 201, r.text
        assert r.http_version == "HTTP/2"
        loc = r.headers["location"]
        assert loc.startswith(f"{self.url}{BASE}/")
        return loc.rsplit("/", 1)[-1]


@pytest.fixture(scope="module")
def chf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chf]:
    tmp = tmp_path_factory.mktemp("chf")
    port, admin, gy = free_tcp_port(), free_tcp_port(), free_tcp_port()
    cfg = init_server(tmp, f"""
[charging]
reaper_interval_s = 0.2
[chf]
listen = "127.0.0.1:{port}"
request_timeout_s = 1.0
max_connections = 64
[diameter]
listen = "127.0.0.1:{gy}"
origin_host = "ocs.test.realm"
origin_realm = "test.realm"
[admin]
listen = "127.0.0.1:{admin}"
""")
    c = Chf(tmp, cfg, port, admin, gy)
    for i, balance in enumerate(("10.00", "10.00", "0.003", "10.00", "10.00", "10.00"), 1):
        c.cli("subscriber", "add", "--msisdn", f"4179100000{i}", "--imsi",
              f"22801100000000{i}", "--plan", "prepaid-basic", "--balance", balance)
    with serving(cfg, tmp, lambda: admin_healthy(admin), args=("--workers", "1")):
        yield c
    c.h2.close()


def test_httpx_over_h2_and_http11_charge_exactly(chf: Chf) -> None:
    ref = chf.create(request(0, usage(10, 2 * MB), sub="imsi-228011000000001", sst=2))
    assert chf.balance("41791000001") == ("10.0000", "0.1000")  # 2 MB URLLC held
    up = chf.post(f"{BASE}/{ref}/update", request(1, usage(10, MB, 400_000, 600_000), sst=2))
    assert up.status_code == 200 and up.http_version == "HTTP/2"
    mui = up.json()["multipleUnitInformation"][0]
    assert (mui["resultCode"], mui["grantedUnit"]) == ("SUCCESS", {"totalVolume": MB})
    # the same update again (a consumer that timed out): the same answer, nothing charged
    again = chf.post(f"{BASE}/{ref}/update", request(1, usage(10, MB, 400_000, 600_000),
                                                     sst=2))
    assert again.json()["multipleUnitInformation"] == up.json()["multipleUnitInformation"]
    assert chf.balance("41791000001") == ("9.9500", "0.0500")
    with httpx.Client(base_url=chf.url, timeout=10) as h1:  # HTTP/1.1 on the same port
        rel = h1.post(f"{BASE}/{ref}/release", content=request(2, usage(10, None, 200_000)),
                      headers={"content-type": "application/json"})
    assert (rel.status_code, rel.http_version, rel.content) == (204, "HTTP/1.1", b"")
    assert chf.balance("41791000001") == ("9.9400", "0.0000")
    assert metric(chf.admin, "ocs_chf_requests_total", operation="update", status="200") >= 2


def test_curl_with_http2_prior_knowledge(chf: Chf, tmp_path: Path) -> None:
    curl = require_tool("curl")
    body = tmp_path / "create.json"
    body.write_bytes(request(0, usage(10, MB), sub="msisdn-41791000004"))

    def run(path: str, data: Path) -> tuple[str, str]:
        p = subprocess.run([curl, "-s", "-i", "--http2-prior-knowledge", "-H",
                            "content-type: application/json", "--data-binary", f"@{data}",
                            f"{chf.url}{path}"], capture_output=True, text=True, timeout=30)
        head, _, payload = p.stdout.replace("\r\n", "\n").partition("\n\n")
        return head, payload

    head, payload = run(BASE, body)
    assert head.startswith("HTTP/2 201")
    ref = next(h.split("/")[-1].strip() for h in head.splitlines()
               if h.lower().startswith("location:"))
    assert json.loads(payload)["multipleUnitInformation"][0]["resultCode"] == "SUCCESS"
    body.write_bytes(request(1, usage(10, None, 3 * MB)))
    head, payload = run(f"{BASE}/{ref}/release", body)
    assert head.startswith("HTTP/2 204") and payload == ""
    assert chf.balance("41791000004") == ("9.9700", "0.0000")


def test_one_wallet_with_gy(chf: Chf) -> None:
    """A Gy session and an Nchf session of one subscriber draw on the same balance."""
    env = {**os.environ, "PEER": "ocs.test.realm", "MSISDN": "41791000005",
           "SID": "pgw.test.realm;nchf;1"}

    def gy(kind: str) -> str:
        p = subprocess.run([sys.executable, str(GY_CLIENT), "127.0.0.1", str(chf.gy), kind],
                           capture_output=True, text=True, timeout=30, env=env)
        return next(ln for ln in p.stdout.splitlines() if ln.startswith("CCA"))

    assert gy("I").startswith("CCA 2001")  # 1 MB held at 0.01
    ref = chf.create(request(0, usage(10, MB), sub="msisdn-41791000005", sst=2))
    assert chf.balance("41791000005") == ("10.0000", "0.0600")
    assert gy("T").startswith("CCA 2001")  # 500,000 bytes: 0.005
    rel = chf.post(f"{BASE}/{ref}/release", request(1, usage(10, None, MB), sst=2))
    assert rel.status_code == 204  # 1 MB URLLC: 0.05
    assert chf.balance("41791000005") == ("9.9450", "0.0000")


class Consumer:
    """An SMF's notification endpoint: hypercorn (h2c and HTTP/1.1) in a thread."""

    def __init__(self) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        self.port = free_tcp_port()
        self.received: list[tuple[str, str, dict[str, Any]]] = []
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.accesslog = None
        config.errorlog = None

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            body = b""
            while True:
                msg = await receive()
                body += msg.get("body", b"")
                if not msg.get("more_body"):
                    break
            self.received.append((scope["http_version"], scope["path"], json.loads(body)))
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(app, config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while self._stop is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)

    def wait(self, n: int, timeout: float = 10.0) -> list[tuple[str, str, dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.received)

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_notifications_reach_the_consumer(chf: Chf) -> None:
    smf = Consumer()
    try:
        uri = f"http://127.0.0.1:{smf.port}/nsmf-callback/v1/notify/pdu-7"
        ref = chf.create(request(0, usage(10, MB), sub="imsi-228011000000003", notify=uri))
        before = metric(chf.admin, "ocs_chf_notifications_total", type="REAUTHORIZATION",
                        outcome="delivered")
        time.sleep(0.6)
        assert smf.received == []  # a final grant alone says nothing
        chf.cli("subscriber", "topup", "41791000003", "5.00")
        (version, path, body), = smf.wait(1)
        assert (version, path) == ("2", "/nsmf-callback/v1/notify/pdu-7")  # h2c
        assert body["notificationType"] == "REAUTHORIZATION"
        deadline = time.monotonic() + 5  # counted once the consumer's answer is in
        while metric(chf.admin, "ocs_chf_notifications_total", type="REAUTHORIZATION",
                     outcome="delivered") < before + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(chf.admin, "ocs_chf_notifications_total", type="REAUTHORIZATION",
                      outcome="delivered") == before + 1
        # the SMF re-authorises: a fresh grant now that there is credit
        up = chf.post(f"{BASE}/{ref}/update", request(1, usage(10, MB, 300_000)))
        mui = up.json()["multipleUnitInformation"][0]
        assert mui["grantedUnit"] == {"totalVolume": MB} and "finalUnitIndication" not in mui
        chf.cli("subscriber", "block", "41791000003")
        got = smf.wait(2)
        assert got[1][2]["notificationType"] == "ABORT_CHARGING"
        rel = chf.post(f"{BASE}/{ref}/release", request(2, usage(10, None, 100_000)))
        assert rel.status_code == 204
        assert chf.balance("41791000003") == ("4.9990", "0.0000")
    finally:
        smf.close()


def _cert(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chf.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_p, key_p = tmp / "chf.crt", tmp / "chf.key"
    cert_p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_p.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    return cert_p, key_p


def test_tls_with_alpn_h2(tmp_path: Path) -> None:
    port = free_tcp_port()
    cert, key = _cert(tmp_path)
    cfg = init_server(tmp_path, f"""
[chf]
listen = "127.0.0.1:{port}"
tls_cert = "{cert}"
tls_key = "{key}"
[admin]
enabled = false
""")
    subprocess.run([OCS, "subscriber", "add", "--msisdn", "41792000001", "--imsi",
                    "228012000000001", "--plan", "prepaid-basic", "--balance", "1.00",
                    "--config", str(cfg)], check=True, capture_output=True)
    trust = ssl.create_default_context(cafile=str(cert))
    with serving(cfg, tmp_path, "nchf_listening", args=("--workers", "1")), httpx.Client(
            http2=True, verify=trust, timeout=10) as c:
        r = c.post(f"https://127.0.0.1:{port}{BASE}",
                   content=request(0, usage(10, MB), sub="imsi-228012000000001"),
                   headers={"content-type": "application/json"})
        assert (r.status_code, r.http_version) == (201, "HTTP/2")
        assert r.headers["location"].startswith(f"https://127.0.0.1:{port}{BASE}/")
        with httpx.Client(verify=trust, timeout=10) as h1:  # ALPN http/1.1
            r1 = h1.post(r.headers["location"] + "/release",
                         content=request(1, usage(10, None, MB)),
                         headers={"content-type": "application/json"})
        assert (r1.status_code, r1.http_version) == (204, "HTTP/1.1")
