"""The HTTP/2 stack's cost alone: the CHF's transport (``h2`` + ``h11`` under an asyncio
protocol) against hypercorn (the same ``h2`` behind ASGI), both answering canned Nchf
answers with no charging, driven by ``ocs-sim nchf`` in a process of its own.

``python -m sim.nchf_stack [ours|hypercorn ...]`` prints, per stack, updates/s and the
server process's CPU per request (create + update). hypercorn comes with the test extras.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any, ClassVar

from protocols.nchf.agent import HttpAnswer
from sim.report import run_sim

_BODY = (b'{"invocationSequenceNumber":0,"multipleUnitInformation":'
         b'[{"ratingGroup":10,"resultCode":"SUCCESS"}]}')
CREATED = HttpAnswer(201, _BODY, location="/nchf-convergedcharging/v3/chargingdata/abc")
OK = HttpAnswer(200, _BODY)


class CannedAgent:
    """Stands in for the ChfAgent: the same answers whatever is asked."""

    sessions: ClassVar[dict[str, Any]] = {}

    async def handle(self, method: str, path: str, body: bytes) -> HttpAnswer:
        return CREATED if path.endswith("chargingdata") else OK

    def sweep(self, limit: int = 0) -> list[Any]:
        return []


async def _ours(port: int) -> None:
    from protocols.nchf.transport import ChfServer

    srv = ChfServer(CannedAgent(), sweep_interval_s=3600)  # type: ignore[arg-type]
    await srv.start("127.0.0.1", port)
    await asyncio.Event().wait()


async def _hypercorn(port: int) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    cfg = Config()
    cfg.bind = [f"127.0.0.1:{port}"]
    cfg.accesslog = None
    cfg.errorlog = None
    cfg.h2_max_concurrent_streams = 128
    cfg.keep_alive_max_requests = 10**9

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        ans = CREATED if scope["path"].endswith("chargingdata") else OK
        headers = [(b"content-type", b"application/json")]
        if ans.location:
            headers.append((b"location", ans.location.encode()))
        await send({"type": "http.response.start", "status": ans.status, "headers": headers})
        await send({"type": "http.response.body", "body": ans.body})

    await serve(app, cfg)  # type: ignore[arg-type]


def _serve(kind: str, port: int) -> None:
    import uvloop

    uvloop.run(_ours(port) if kind == "ours" else _hypercorn(port))


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, updates: int = 30_000) -> dict[str, Any]:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([sys.executable, "-m", "sim.nchf_stack", "--serve", kind,
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2.0)
        args = ["nchf", "--server", f"127.0.0.1:{port}", "--sessions", "2000", "--window",
                "512", "--connections", "8"]
        run_sim([*args, "--updates", "2000"])  # warm up: connections, HPACK tables
        c0 = _cpu_s(proc.pid)
        reports = run_sim([*args, "--updates", str(updates)])
        c1 = _cpu_s(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    upd = next(r for r in reports if r["name"].startswith("update"))
    requests = upd["operations"] + 2000
    return {"stack": kind, "updates_per_s": round(upd["throughput_per_s"]),
            "errors": upd["errors"], "cpu_us_per_request": round((c1 - c0) * 1e6 / requests)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.nchf_stack", description=__doc__)
    p.add_argument("stacks", nargs="*", default=["ours", "hypercorn"])
    p.add_argument("--serve", nargs=2, metavar=("STACK", "PORT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        _serve(args.serve[0], int(args.serve[1]))
        return 0
    for kind in args.stacks:
        print(json.dumps(measure(kind)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
