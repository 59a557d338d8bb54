"""Delivery: deliver_sm to receiver binds, store-and-forward until one binds, delivery
receipts with the submit's message_id, expiry with refund — smpplib as the ESMEs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import smpplib.client
import smpplib.consts
from tests_support import OCS, Smsc, free_tcp_port, serving

from ocs.cdr.fileformat import COLUMNS

CONFIG = """
[node]
name = "dl"
data_dir = "{data}"
log_format = "json"
[smpp]
listen = "127.0.0.1:{port}"
[[smpp.accounts]]
system_id = "esme"
password = "secret"
[[smpp.accounts]]
system_id = "other"
password = "secret2"
[[smpp.routes]]
prefix = "417"
system_id = "esme"
[[smpp.routes]]
prefix = "418"
system_id = "other"
[admin]
enabled = false
"""





@pytest.fixture(scope="module")
def smsc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Smsc]:
    cwd = tmp_path_factory.mktemp("dl")
    port = free_tcp_port()
    cfg = cwd / "dl.toml"
    cfg.write_text(CONFIG.format(data=cwd / "data", port=port))
    srv = Smsc(cwd, cfg, port)
    srv.ocs("init", "--plans", str(Path(__file__).resolve().parents[3] / "config" /
                                   "plans.toml"))
    for msisdn in ("41790000001", "41790000002", "41790000003"):
        srv.ocs("subscriber", "add", "--msisdn", msisdn, "--plan", "prepaid-basic",
                "--balance", "1.00")
    with serving(cfg, cwd, "smpp_listening"):
        yield srv


def read_until(c: Any, n: int, timeout: float = 8.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while len(c.received) < n and time.monotonic() < deadline:
        c.read_once()
    return list(c.received)


def test_delivery_and_receipt(smsc: Smsc) -> None:
    c = smsc.esme("transceiver")
    c.send_message(source_addr_ton=1, source_addr="41790000001", dest_addr_ton=1,
                   destination_addr="41791234567", short_message=b"hello there",
                   registered_delivery=1)
    resp = c.read_pdu()
    assert resp.status == 0
    message_id = resp.message_id
    got = read_until(c, 2)
    assert len(got) == 2
    mt, receipt = got
    assert mt.short_message == b"hello there" and mt.destination_addr == b"41791234567"
    assert mt.esm_class == 0
    assert receipt.esm_class == 0x04
    text = receipt.short_message.decode()
    assert text.startswith(f"id:{message_id.decode()} sub:001 dlvrd:001 submit date:")
    assert " stat:DELIVRD err:000 text:hello there" in text
    assert receipt.receipted_message_id == message_id
    assert receipt.message_state == smpplib.consts.SMPP_MESSAGE_STATE_DELIVERED
    assert smsc.balance("41790000001") == "0.9500"
    c.unbind()
    c.disconnect()
    # the CDR counts the characters of the message (11) besides the 1 part charged
    smsc.ocs("cdr", "flush")
    rows = [ln.split(",") for f in sorted((smsc.cwd / "data" / "cdr").glob("*.csv"))
            for ln in f.read_text().splitlines()[1:]]
    (row,) = [r for r in rows if r[2] == "41790000001"]
    col = {name: i for i, name in enumerate(COLUMNS)}
    assert (row[col["units"]], row[col["characters"]], row[col["protocol"]]) == ("1", "11", "smpp")


def test_store_and_forward_until_a_receiver_binds(smsc: Smsc) -> None:
    tx = smsc.esme("transmitter")
    tx.send_message(source_addr_ton=1, source_addr="41790000002", dest_addr_ton=1,
                    destination_addr="41881234567", short_message=b"waiting for you")
    assert tx.read_pdu().status == 0
    time.sleep(1.0)  # nobody of "other" is bound: the message waits in the store
    rx = smsc.esme("receiver", "other", "secret2")
    got = read_until(rx, 1)
    assert [p.short_message for p in got] == [b"waiting for you"]
    assert smsc.balance("41790000002") == "0.9500"
    rx.disconnect()
    tx.disconnect()


def test_expiry_refunds(smsc: Smsc) -> None:
    tx = smsc.esme("transmitter")
    tx.send_message(source_addr_ton=1, source_addr="41790000003", dest_addr_ton=1,
                    destination_addr="41881111111", short_message=b"too late",
                    validity_period="000000000002000R", registered_delivery=1)
    assert tx.read_pdu().status == 0
    assert smsc.balance("41790000003") == "0.9500"
    deadline = time.monotonic() + 10
    while smsc.balance("41790000003") != "1.0000":
        assert time.monotonic() < deadline, "not refunded"
        time.sleep(0.3)
    tx.disconnect()
    # the EXPIRED receipt waits for the submitter's receiver bind
    rx = smsc.esme("receiver")
    got = read_until(rx, 1)
    assert got and got[-1].esm_class == 0x04
    assert " stat:EXPIRED " in got[-1].short_message.decode()
    rx.disconnect()


def test_restart_with_queued_messages_loses_none(tmp_path: Path) -> None:
    port = free_tcp_port()
    cfg = tmp_path / "r.toml"
    cfg.write_text(CONFIG.format(data=tmp_path / "data", port=port).replace('"dl"', '"rs"'))
    srv = Smsc(tmp_path, cfg, port)
    srv.ocs("init", "--plans", str(Path(__file__).resolve().parents[3] / "config" /
                                   "plans.toml"))
    srv.ocs("subscriber", "add", "--msisdn", "41790000009", "--plan", "prepaid-basic",
            "--balance", "1.00")

    def serve() -> subprocess.Popen[bytes]:
        log = (tmp_path / "serve.log").open("a")
        proc = subprocess.Popen([OCS, "serve", "--config", str(cfg)], cwd=tmp_path,
                                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:  # ready when the SMPP port accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)

    proc = serve()
    tx = srv.esme("transmitter")
    for i in range(5):
        tx.send_message(source_addr_ton=1, source_addr="41790000009", dest_addr_ton=1,
                        destination_addr="41881234567", short_message=b"queued %d" % i)
        assert tx.read_pdu().status == 0
    tx.disconnect()
    os.kill(proc.pid, signal.SIGKILL)  # no goodbye: what was accepted must survive
    proc.wait(10)
    time.sleep(0.5)  # its writer child notices the closed socket and exits
    proc = serve()
    try:
        rx = srv.esme("receiver", "other", "secret2")
        got = read_until(rx, 5)
        assert sorted(p.short_message for p in got) == [b"queued %d" % i for i in range(5)]
        rx.disconnect()
        assert srv.balance("41790000009") == "0.7500"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
