"""freeDiameterd 1.2.1 as a real Diameter relay between python-diameter's Gy client and
``ocs serve``, in a private network namespace (../shared/interop/freediameter/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests_support import OCS, free_tcp_port, init_server, require_tool

DRIVER = Path(__file__).with_name("fd_relay.py")


def test_session_through_freediameter_relay(tmp_path: Path) -> None:
    require_tool("freeDiameterd")
    require_tool("unshare")
    require_tool("openssl")
    if os.geteuid() != 0:
        if os.environ.get("OCS_REQUIRE_INTEROP") == "1":
            pytest.fail("the freeDiameterd relay test needs root for its network namespace")
        pytest.skip("needs root for a network namespace")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(tmp_path / "fd.key"), "-out", str(tmp_path / "fd.pem"), "-days", "2",
                    "-subj", "/CN=relay.test.realm"], check=True, capture_output=True)
    ocs_port, relay_port = free_tcp_port(), free_tcp_port()
    cfg = init_server(tmp_path, f"""
[diameter]
listen = "127.0.0.1:{ocs_port}"
origin_host = "ocs.test.realm"
origin_realm = "test.realm"
allowed_peers = ["relay.test.realm"]
[admin]
enabled = false
""")
    subprocess.run([OCS, "subscriber", "add", "--msisdn", "41780000001", "--plan",
                    "prepaid-basic", "--balance", "10", "--config", str(cfg)], check=True,
                   capture_output=True)
    p = subprocess.run(["unshare", "-n", sys.executable, str(DRIVER), str(tmp_path), str(cfg),
                        str(ocs_port), str(relay_port)], capture_output=True, text=True,
                       timeout=180)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.splitlines()[-1])
    diag = f"{out['serve_log_tail']}\n---\n{out['relay_log_tail']}"
    assert out["ocs_up"] and out["relay_open"], diag
    assert out["ccas"] == ["CCA 2001 1 0 [(10, 2001, 1000000, 900, None)]",
                           "CCA 2001 2 1 [(10, 2001, 1000000, 900, None)]",
                           "CCA 2001 3 2 []"], diag
    assert out["dpr_answered"], diag  # freeDiameterd stopping sends DPR (REBOOTING)
    show = subprocess.run([OCS, "subscriber", "show", "41780000001", "--json", "--config",
                           str(cfg)], check=True, capture_output=True, text=True).stdout
    assert json.loads(show)["balance"] == "9.9900"
