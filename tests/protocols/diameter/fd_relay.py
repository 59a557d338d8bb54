"""Run inside ``unshare -n`` (see ../shared/interop/freediameter/README.md): ocs serve,
freeDiameterd as a relay in front of it, and python-diameter's Gy client through the
relay. Prints one JSON object with what happened; every process started here ends here.

Usage: fd_relay.py WORKDIR OCS_CONFIG OCS_PORT RELAY_PORT
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

work, cfg, ocs_port, relay_port = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
here = Path(__file__).parent
ocs_bin = str(Path(sys.executable).parent / "ocs")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


def wait_for(path: Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return True
        time.sleep(0.1)
    return False


sh("ip", "link", "set", "lo", "up")
sh("ip", "link", "add", "fdv0", "type", "veth", "peer", "name", "fdv1")
sh("ip", "addr", "add", "192.0.2.10/32", "dev", "fdv0")
sh("ip", "link", "set", "fdv0", "up")
sh("ip", "link", "set", "fdv1", "up")

(work / "relay.conf").write_text(f"""
Identity = "relay.test.realm";
Realm = "test.realm";
Port = {relay_port};
SecPort = 0;
No_SCTP;
No_IPv6;
TwTimer = 6;
TLS_Cred = "{work}/fd.pem", "{work}/fd.key";
TLS_CA = "{work}/fd.pem";
LoadExtension = "/usr/lib/freeDiameter/dict_nasreq.fdx";
LoadExtension = "/usr/lib/freeDiameter/dict_dcca.fdx";
LoadExtension = "/usr/lib/freeDiameter/dict_dcca_3gpp.fdx";
ConnectPeer = "ocs.test.realm" {{ ConnectTo = "127.0.0.1"; Port = {ocs_port}; No_TLS; }};
ConnectPeer = "pgw.test.realm" {{ ConnectTo = "127.0.0.1"; Port = 13999; No_TLS; }};
""")
serve_log = work / "serve.log"
relay_log = work / "relay.log"
out: dict[str, object] = {}
with serve_log.open("w") as slog, relay_log.open("w") as rlog:
    ocs = subprocess.Popen([ocs_bin, "serve", "--config", cfg], cwd=work, stdout=slog,
                           stderr=subprocess.STDOUT)
    relay = None
    try:
        out["ocs_up"] = wait_for(serve_log, "diameter_listening", 20)
        relay = subprocess.Popen(["freeDiameterd", "-c", str(work / "relay.conf")], cwd=work,
                                 stdout=rlog, stderr=subprocess.STDOUT)
        out["relay_open"] = wait_for(serve_log, "relay.test.realm", 20)
        ccas = []
        env = {**os.environ, "PEER": "relay.test.realm", "SID": "pgw.test.realm;relay;1",
               "MSISDN": "41780000001", "GRACEFUL": "1"}  # DPR, or the relay keeps a stale peer
        for kind in ("I", "U", "T"):
            p = subprocess.run([sys.executable, str(here / "gy_client.py"), "127.0.0.1",
                                relay_port, kind], capture_output=True, text=True, timeout=60,
                               env=env)
            ccas += [ln for ln in p.stdout.splitlines() if ln.startswith("CCA")]
        out["ccas"] = ccas
        relay.send_signal(signal.SIGTERM)
        relay.wait(20)
        out["dpr_answered"] = wait_for(serve_log, "peer sent DPR", 10)
    finally:
        for proc in (relay, ocs):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
out["serve_log_tail"] = serve_log.read_text()[-3000:]
out["relay_log_tail"] = relay_log.read_text()[-3000:]
print(json.dumps(out))
