"""Interop: the real FreeRADIUS ``radclient`` against ``ocs serve``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests_support import free_udp_port, require_tool, serving

OCS = str(Path(sys.executable).parent / "ocs")

CONFIG = """
[node]
name = "rc"
data_dir = "{data}"
log_format = "json"
[charging]
reaper_interval_s = 60
[radius]
auth_listen = "127.0.0.1:{auth}"
acct_listen = "127.0.0.1:{acct}"
rating_group = 10
[[radius.clients]]
address = "127.0.0.1"
secret = "testing123"
name = "lo"
[admin]
enabled = false
"""




class Server:
    def __init__(self, cwd: Path, cfg: Path, auth: int, acct: int):
        self.cwd, self.cfg, self.auth, self.acct = cwd, cfg, auth, acct

    def ocs(self, *args: str) -> str:
        p = subprocess.run([OCS, *args, "--config", str(self.cfg)], cwd=self.cwd,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout

    def balance(self, msisdn: str) -> tuple[str, str]:
        d = json.loads(self.ocs("subscriber", "show", msisdn, "--json"))
        return d["balance"], d["reserved"]

    def radclient(self, kind: str, attrs: str, secret: str = "testing123") -> str:
        port = self.auth if kind == "auth" else self.acct
        cmd = [require_tool("radclient"), "-x", "-r", "1", "-t", "1",
               f"127.0.0.1:{port}", kind, secret]
        p = subprocess.run(cmd, input=attrs, capture_output=True, text=True, timeout=30)
        return p.stdout + p.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_tool("radclient")
    cwd = tmp_path_factory.mktemp("rc")
    auth, acct = free_udp_port(), free_udp_port()
    cfg = cwd / "rc.toml"
    cfg.write_text(CONFIG.format(data=cwd / "data", auth=auth, acct=acct))
    repo_config = Path(__file__).resolve().parents[3] / "config" / "plans.toml"
    srv = Server(cwd, cfg, auth, acct)
    srv.ocs("init", "--plans", str(repo_config))
    for i, user in enumerate(("bob", "carl", "dana")):
        srv.ocs("subscriber", "add", "--msisdn", f"4179000000{i + 1}", "--plan",
                "prepaid-basic", "--username", user, "--password", "secret",
                "--balance", "10.00")
    with serving(cfg, cwd, "radius_listening"):
        deadline = time.monotonic() + 20
        while (cwd / "serve.log").read_text().count("radius_listening") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield srv


def test_access_pap_with_message_authenticator(server: Server) -> None:
    out = server.radclient("auth", 'User-Name = "bob", User-Password = "secret", '
                           "NAS-IP-Address = 127.0.0.1, Message-Authenticator = 0x00, "
                           "Proxy-State = 0x01, Proxy-State = 0x02\n")
    assert "Received Access-Accept" in out, out
    received = out[out.index("Received Access-Accept"):]
    lines = [ln.strip() for ln in received.splitlines()[1:] if "=" in ln]
    assert lines[0].startswith("Message-Authenticator")  # first attribute (BlastRADIUS)
    assert "Session-Timeout = 3600" in received
    assert received.index("Proxy-State = 0x01") < received.index("Proxy-State = 0x02")
    bad = server.radclient("auth", 'User-Name = "bob", User-Password = "wrong", '
                           "Message-Authenticator = 0x00\n")
    assert "Received Access-Reject" in bad and "authentication failed" in bad
    # no Message-Authenticator while require_message_authenticator = true: no answer
    none = server.radclient("auth", 'User-Name = "bob", User-Password = "secret"\n')
    assert "Received" not in none


def test_accounting_session_exact_and_wrong_secret(server: Server) -> None:
    def acct(attrs: str, secret: str = "testing123") -> str:
        return server.radclient("acct", attrs + "\n", secret=secret)

    base = 'Acct-Session-Id = "s1", User-Name = "carl", NAS-IP-Address = 127.0.0.1'
    assert "Received Accounting-Response" in acct(f"Acct-Status-Type = Start, {base}")
    assert server.balance("41790000002") == ("10.0000", "0.1000")
    out = acct(f"Acct-Status-Type = Interim-Update, {base}, Acct-Input-Octets = 1000, "
               "Acct-Input-Gigawords = 0, Acct-Output-Octets = 2000000, Acct-Session-Time = 60")
    assert "Received Accounting-Response" in out
    assert server.balance("41790000002") == ("9.97999", "0.1000")  # 2,001,000 bytes
    # wrong secret: no answer and nothing charged
    out = acct(f"Acct-Status-Type = Interim-Update, {base}, Acct-Input-Octets = 9000000",
               secret="wrongsecret")
    assert "Received" not in out
    assert server.balance("41790000002") == ("9.97999", "0.1000")
    out = acct(f"Acct-Status-Type = Stop, {base}, Acct-Input-Octets = 1000, "
               "Acct-Input-Gigawords = 1, Acct-Output-Octets = 2000000, "
               "Acct-Terminate-Cause = User-Request")
    assert "Received Accounting-Response" in out
    # Gigawords: 4,294,968,296 + 2,000,000 bytes in all = 42.969683 EUR, capped at 10.00
    assert server.balance("41790000002") == ("0.0000", "0.0000")


def test_accounting_on_closes_sessions(server: Server) -> None:
    base = 'User-Name = "dana", NAS-IP-Address = 127.0.0.9'
    for sid in ("on-a", "on-b"):
        server.radclient("acct", f'Acct-Status-Type = Start, Acct-Session-Id = "{sid}", {base}\n')
    assert server.balance("41790000003") == ("10.0000", "0.2000")
    out = server.radclient("acct", "Acct-Status-Type = Accounting-On, "
                                   "NAS-IP-Address = 127.0.0.9\n")
    assert "Received Accounting-Response" in out
    assert server.balance("41790000003") == ("10.0000", "0.0000")
