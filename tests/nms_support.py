"""A real network element for the NMS tests: Debian's net-snmp ``snmpd`` on a loopback
port, its own IF-MIB and processor-load modules switched off and those subtrees served by
a ``pass_persist`` script from a JSON state file the test writes (CPU per processor, per
interface status and counters); sysUpTime, HOST-RESOURCES memory and the rest are the
agent's own."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests_support import free_udp_port, require_tool

PASS = r'''
import json, sys

STATE = sys.argv[1]
IF, IFX, CPU = (1, 3, 6, 1, 2, 1, 2, 2, 1), (1, 3, 6, 1, 2, 1, 31, 1, 1, 1), (
    1, 3, 6, 1, 2, 1, 25, 3, 3, 1, 2)


def rows():
    with open(STATE) as f:
        s = json.load(f)
    out = []
    for n, load in enumerate(s["cpu"], 1):
        out.append((CPU + (196607 + n,), "integer", load))
    for idx, i in sorted(s["ifaces"].items(), key=lambda kv: int(kv[0])):
        x = int(idx)
        out += [(IF + (1, x), "integer", x), (IF + (2, x), "string", i["descr"]),
                (IF + (7, x), "integer", i["admin"]), (IF + (8, x), "integer", i["oper"]),
                (IF + (10, x), "counter", i["in_octets"] % 2**32),
                (IF + (11, x), "counter", i["in_pkts"] % 2**32),
                (IF + (13, x), "counter", i["in_discards"]),
                (IF + (14, x), "counter", i["in_errors"]),
                (IF + (16, x), "counter", i["out_octets"] % 2**32)]
        if s.get("hc", True):
            out += [(IFX + (6, x), "counter64", i["in_octets"]),
                    (IFX + (7, x), "counter64", i["in_pkts"]),
                    (IFX + (10, x), "counter64", i["out_octets"]),
                    (IFX + (15, x), "gauge", i["speed"])]
    return sorted(out)


def parse(text):
    return tuple(int(p) for p in text.strip().strip(".").split("."))


for line in sys.stdin:
    cmd = line.strip()
    if cmd == "PING":
        print("PONG", flush=True)
        continue
    oid = parse(sys.stdin.readline())
    if cmd == "set":
        value = sys.stdin.readline().split()
        if oid[:-1] == IF + (7,) and value[0] == "integer":
            with open(STATE) as f:
                s = json.load(f)
            iface = s["ifaces"].get(str(oid[-1]))
            if iface is None:
                print("no-such-name", flush=True)
                continue
            iface["admin"] = int(value[1])
            s.setdefault("sets", []).append([".".join(map(str, oid)), int(value[1])])
            with open(STATE + ".tmp", "w") as f:
                json.dump(s, f)
            import os
            os.replace(STATE + ".tmp", STATE)
            print("DONE", flush=True)
        else:
            print("not-writable", flush=True)
        continue
    found = None
    for o, t, v in rows():
        if (cmd == "get" and o == oid) or (cmd == "getnext" and o > oid):
            found = (o, t, v)
            break
    if found is None:
        print("NONE", flush=True)
    else:
        print("." + ".".join(map(str, found[0])), found[1], found[2], sep="\n", flush=True)
'''


class Element:
    """``snmpd`` serving the state in ``self.state`` (call :meth:`write` after a change)."""

    def __init__(self, tmp: Path, *, cpu: list[int] | None = None,
                 ifaces: dict[str, dict[str, Any]] | None = None):
        self.snmpd = require_tool("snmpd")
        self.dir = tmp
        self.port = free_udp_port()
        self.address = f"127.0.0.1:{self.port}"
        self.state: dict[str, Any] = {"cpu": cpu if cpu is not None else [20, 30],
                                      "ifaces": ifaces or {"1": iface("eth0")}}
        self.state_file = tmp / "state.json"
        self.write()
        script = tmp / "pass.py"
        script.write_text(PASS)
        runner = tmp / "pass.sh"
        runner.write_text(f"#!/bin/sh\nexec {sys.executable} {script} {self.state_file}\n")
        runner.chmod(0o755)
        conf = tmp / "snmpd.conf"
        conf.write_text(f"agentAddress udp:{self.address}\nrocommunity public 127.0.0.1\n"
                        "rwcommunity private 127.0.0.1\n"
                        f"pass_persist .1.3.6.1.2.1.2.2.1 {runner}\n"
                        f"pass_persist .1.3.6.1.2.1.31.1.1.1 {runner}\n"
                        f"pass_persist .1.3.6.1.2.1.25.3.3.1.2 {runner}\n")
        self.conf = conf
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def read(self) -> dict[str, Any]:
        """The state as the agent has it now (SETs included)."""
        return dict(json.loads(self.state_file.read_text()))

    def write(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        tmp.replace(self.state_file)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.snmpd, "-f", "-Lf", str(self.dir / "snmpd.log"), "-C", "-c", str(self.conf),
             "-M", "/nonexistent", "-p", str(self.dir / "snmpd.pid"),
             "-I", "-hr_proc,ifTable,ifXTable,interface"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.8)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


def iface(descr: str, *, admin: int = 1, oper: int = 1, in_octets: int = 0,
          out_octets: int = 0, in_pkts: int = 0, in_errors: int = 0, in_discards: int = 0,
          speed: int = 1000) -> dict[str, Any]:
    return {"descr": descr, "admin": admin, "oper": oper, "in_octets": in_octets,
            "out_octets": out_octets, "in_pkts": in_pkts, "in_errors": in_errors,
            "in_discards": in_discards, "speed": speed}
