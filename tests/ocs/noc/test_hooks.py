"""Notification hooks: which events go where, and delivery from ``ocs serve`` to a real
command and a real HTTP endpoint (with a failed first attempt retried)."""

from __future__ import annotations

import http.server
import json
import socket
import sys
import threading
import time
from pathlib import Path

from tests_support import free_udp_port, init_server, serving

from ocs.noc.hooks import Hook
from protocols.snmp.codec import encode_trap_v2c


def test_which_events_a_hook_wants() -> None:
    h = Hook(frozenset({"major", "cleared"}))
    assert h.wants({"event": "raise", "perceived_severity": "major"})
    assert not h.wants({"event": "raise", "perceived_severity": "minor"})
    assert not h.wants({"event": "update", "perceived_severity": "major"})
    assert h.wants({"event": "clear", "perceived_severity": "cleared"})
    assert not Hook(frozenset({"major"})).wants({"event": "clear"})
    # flapping: the flapping event once, raises and clears suppressed meanwhile
    assert h.wants({"event": "flapping", "perceived_severity": "major", "flapping": True})
    assert not h.wants({"event": "raise", "perceived_severity": "major", "flapping": True})


def test_hooks_deliver_from_serve(tmp_path: Path) -> None:
    got: list[dict[str, object]] = []
    attempts = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            attempts.append(body)
            if len(attempts) == 1:
                self.send_response(500)  # the first attempt fails: retried
            else:
                got.append(json.loads(body))
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    out = tmp_path / "paged.jsonl"
    script = tmp_path / "page.py"
    script.write_text("import sys\nopen(sys.argv[1], 'a').write(sys.stdin.read() + '\\n')\n")
    port = free_udp_port()
    cfg = init_server(tmp_path, f"""
[snmp]
trap_listen = "127.0.0.1:{port}"
[cdr]
export_interval_s = 0.1
[noc]
min_free_disk_mb = 0
[[noc.hooks]]
severities = ["major"]
command = "{sys.executable} {script} {out}"
[[noc.hooks]]
severities = ["major", "cleared"]
url = "http://127.0.0.1:{httpd.server_address[1]}/alarms"
retries = 2
[admin]
enabled = false
""", name="nm")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with serving(cfg, tmp_path, "snmp_listening"):
            for trap in ("1.3.6.1.6.3.1.1.5.3", "1.3.6.1.6.3.1.1.5.4"):
                s.sendto(encode_trap_v2c(b"public", 1, 1, trap,
                                         [("1.3.6.1.2.1.2.2.1.1.4", 4)]), ("127.0.0.1", port))
                time.sleep(0.3)
            deadline = time.monotonic() + 15
            while len(got) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        s.close()
        httpd.shutdown()
    assert [(e["event"], e["resource"]) for e in got] == [("raise", "ifIndex=4"),
                                                           ("clear", "ifIndex=4")]
    assert len(attempts) == 3
    paged = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [(e["event"], e["perceived_severity"]) for e in paged] == [("raise", "major")]
