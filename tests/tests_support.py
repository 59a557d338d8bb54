"""Helpers shared by tests (importable because tests/ is on sys.path via conftest)."""

from __future__ import annotations

import calendar
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ocs.provisioning import NewSubscriber, op_add_subscriber
from ocs.rating.plans import Plan, compile_plan, load_plans_file
from ocs.store import Store

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "config"

# Wednesday 2026-11-18 12:00:00 UTC (13:00 in Europe/Zurich): a weekday, peak time.
WEDNESDAY_NOON = calendar.timegm((2026, 11, 18, 12, 0, 0))
# Saturday 2026-11-21 12:00:00 UTC: weekend band.
SATURDAY_NOON = calendar.timegm((2026, 11, 21, 12, 0, 0))


def add(store: Store, msisdn: str, plan: str = "prepaid-basic", **kw: object) -> None:
    store.run_write(op_add_subscriber(NewSubscriber(msisdn=msisdn, plan_id=plan, **kw)))  # type: ignore[arg-type]


def require_tool(name: str) -> str:
    """Path of a third-party tool; skip when absent unless OCS_REQUIRE_INTEROP=1."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")  # snmpd
    if path is None:
        if os.environ.get("OCS_REQUIRE_INTEROP") == "1":
            pytest.fail(f"{name} is required (OCS_REQUIRE_INTEROP=1) but not installed")
        pytest.skip(f"{name} not installed")
    return path


def plans_by_id() -> dict[str, Plan]:
    doc = load_plans_file(CONFIG_DIR / "plans.toml")
    zones = {z.id for z in doc.zones}
    return {p["id"]: compile_plan(p, known_zones=zones) for p in doc.plans}


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def start_nas(port: int, secret: bytes = b"testing123") -> Any:
    """A NAS's Dynamic Authorization side, from pyrad, in a thread: records the
    Disconnect/CoA requests it gets (``nas.received``, ``nas.coa``) and answers as told by
    ``nas.answer`` (ack | nak (Error-Cause 503) | silent)."""
    import threading

    from pyrad import packet as pyrad_packet
    from pyrad import server as pyrad_server
    from pyrad.dictionary import Dictionary

    class Nas(pyrad_server.Server):  # type: ignore[misc]
        answer = "ack"

        def _reply(self, pkt: Any, ack: int, nak: int) -> None:
            if self.answer == "silent":
                return
            r = self.CreateReplyPacket(pkt)
            if self.answer == "ack":
                r.code = ack
            else:
                r.code = nak
                r["Error-Cause"] = 503
            self.SendReplyPacket(pkt.fd, r)

        def HandleDisconnectPacket(self, pkt: Any) -> None:
            self.received.append({k: pkt[k] for k in pkt.keys()})  # noqa: SIM118
            self._reply(pkt, pyrad_packet.DisconnectACK, pyrad_packet.DisconnectNAK)

        def HandleCoaPacket(self, pkt: Any) -> None:
            self.coa.append({k: pkt[k] for k in pkt.keys()})  # noqa: SIM118
            self._reply(pkt, pyrad_packet.CoAACK, pyrad_packet.CoANAK)

    nas = Nas(dict=Dictionary(str(REPO / "protocols" / "radius" / "dictionaries" / "dictionary")),
              coaport=port, auth_enabled=False, acct_enabled=False, coa_enabled=True)
    nas.received = []
    nas.coa = []
    nas.hosts["127.0.0.1"] = pyrad_server.RemoteHost("127.0.0.1", secret, "ocs")
    nas.BindToAddress("127.0.0.1")
    threading.Thread(target=nas.Run, daemon=True).start()
    return nas


OCS = str(Path(sys.executable).parent / "ocs")


@contextlib.contextmanager
def serving(cfg: Path, cwd: Path, ready: str | Callable[[], bool], *,
            log_name: str = "serve.log", timeout: float = 20.0,
            args: Sequence[str] = ()) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``ocs serve --config cfg [args]`` until the block ends (SIGTERM, then SIGKILL if
    it hangs); ready once ``ready`` appears in its log (or, a function, returns true)."""
    log_path = cwd / log_name
    log = log_path.open("a")
    proc = subprocess.Popen([OCS, "serve", "--config", str(cfg), *args], cwd=cwd, stdout=log,
                            stderr=subprocess.STDOUT)

    def is_ready() -> bool:
        if isinstance(ready, str):
            return ready in log_path.read_text()
        with contextlib.suppress(OSError, ValueError):
            return ready()
        return False

    try:
        deadline = time.monotonic() + timeout
        while not is_ready():
            assert time.monotonic() < deadline and proc.poll() is None, log_path.read_text()
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def free_tcp_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


class Smsc:
    """A running ``ocs serve`` with SMPP, driven through the real CLI and smpplib ESMEs."""

    def __init__(self, cwd: Path, cfg: Path, port: int):
        self.cwd, self.cfg, self.port = cwd, cfg, port

    def ocs(self, *args: str) -> str:
        p = subprocess.run([OCS, *args, "--config", str(self.cfg)], cwd=self.cwd,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout

    def balance(self, msisdn: str) -> str:
        import json

        return str(json.loads(self.ocs("subscriber", "show", msisdn, "--json"))["balance"])

    def esme(self, kind: str = "transmitter", system_id: str = "esme",
             password: str = "secret") -> Any:
        """A bound smpplib client; what it receives collects in ``.received``."""
        import smpplib.client
        import smpplib.exceptions

        c = smpplib.client.Client("127.0.0.1", self.port, timeout=5)
        c.connect()
        try:
            getattr(c, f"bind_{kind}")(system_id=system_id, password=password)
        except smpplib.exceptions.PDUError:
            c.disconnect()
            raise
        received: list[Any] = []
        c.set_message_received_handler(lambda pdu: received.append(pdu))
        c.received = received
        return c


def init_server(tmp: Path, sections: str, *, name: str = "ocs-1") -> Path:
    """Write ``tmp/ocs.toml`` ([node] with a data dir under ``tmp``, JSON logs, then
    ``sections``) and the demo plans beside it, and run ``ocs init``; returns the config."""
    cfg = tmp / "ocs.toml"
    cfg.write_text(f'[node]\nname = "{name}"\ndata_dir = "{tmp / "data"}"\n'
                   f'log_format = "json"\n{sections}')
    (tmp / "plans.toml").write_text((CONFIG_DIR / "plans.toml").read_text())
    subprocess.run([OCS, "init", "--config", str(cfg)], check=True, capture_output=True)
    return cfg


def admin_get(admin: int, path: str, timeout: float = 10.0) -> str:
    """GET ``path`` from a running server's admin endpoint on 127.0.0.1:``admin``."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=timeout) as r:
        return str(r.read().decode())


def admin_healthy(admin: int) -> bool:
    """/healthz answers ok (a ``serving()`` ready check)."""
    import json

    return bool(json.loads(admin_get(admin, "/healthz", timeout=1))["status"] == "ok")


def metric(admin: int, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` on /metrics whose labels include ``labels``."""
    total = 0.0
    for line in admin_get(admin, "/metrics").splitlines():
        head, _, value = line.rpartition(" ")
        if head == name or (head.startswith(name + "{") and all(
                f'{k}="{v}"' in head for k, v in labels.items())):
            total += float(value)
    return total
