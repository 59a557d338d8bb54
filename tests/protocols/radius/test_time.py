"""Time-rated access sessions: Acct-Session-Time charged per the plan, Session-Timeout
from the credit, and a CoA-Request with a longer Session-Timeout after a top-up."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests_support import CONFIG_DIR, WEDNESDAY_NOON, add, free_udp_port, start_nas

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import IdKind
from ocs.charging.service import EngineChargingService
from ocs.config import RadiusClient, RadiusConfig
from ocs.provisioning import op_load_plans, op_topup
from ocs.rating.plans import load_plans_file
from ocs.store import Store, Writer
from protocols.radius.agent import RadiusAgent
from protocols.radius.codec import AcctStatus, Attr, Code, attr, decode, encode_request
from protocols.radius.dae import DaeClient

SECRET = b"testing123"
WIFI = "41795550001"


def test_time_rated_session_and_coa_after_top_up(tmp_path: Path) -> None:
    port = free_udp_port()
    nas = start_nas(port)
    store = Store(tmp_path / "d", map_size_mb=64)
    store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    # wifi-hourly: 1.20 per hour in 60 s blocks = 0.02 per minute; 0.05 buys 2 minutes
    add(store, WIFI, plan="wifi-hourly", balance="0.05", username="guest", password="pw")
    writer = Writer(store, max_ops=64, max_delay_ms=0.5)
    writer.start()
    eng = ChargingEngine(store, writer, EngineSettings(node="w"))
    cfg = RadiusConfig(clients=(RadiusClient(address="127.0.0.1", secret="testing123",
                                             coa_port=port),))
    agent = RadiusAgent(EngineChargingService(eng), cfg, clock=lambda: WEDNESDAY_NOON,
                        dae=DaeClient(timeout_s=0.5, attempts=2))
    client = agent.client_for("127.0.0.1")
    assert client is not None

    def balance() -> tuple[int, int]:
        v = eng.check_balance(((IdKind.MSISDN, WIFI),))
        assert v is not None
        return v.balance, v.reserved

    async def acct(status: AcctStatus, seconds: int | None = None) -> None:
        attrs = [attr(Attr.ACCT_STATUS_TYPE, status), attr(Attr.ACCT_SESSION_ID, "w1"),
                 attr(Attr.USER_NAME, "guest"), attr(Attr.NAS_IP_ADDRESS, b"\x7f\x00\x00\x01")]
        if seconds is not None:
            attrs.append(attr(Attr.ACCT_SESSION_TIME, seconds))
        await agent.accounting(client, decode(encode_request(
            Code.ACCOUNTING_REQUEST, seconds or 0, SECRET, attrs)))

    async def main() -> None:
        acc = decode(await agent.access(client, decode(encode_request(
            Code.ACCESS_REQUEST, 1, SECRET, [attr(Attr.USER_NAME, "guest")],
            message_authenticator=True, password=b"pw"))))
        assert acc.code == Code.ACCESS_ACCEPT
        assert acc.integer(Attr.SESSION_TIMEOUT) == 120  # what 0.05 buys
        await acct(AcctStatus.START)
        assert balance() == (50_000, 40_000)  # 120 s held (the 300 s default is capped)
        assert agent.sessions["radius:127.0.0.1:127.0.0.1:w1"].limited
        await acct(AcctStatus.INTERIM_UPDATE, 90)  # 90 s -> two 60 s blocks = 0.04
        assert balance()[0] == 10_000
        store.run_write(op_topup(WIFI, "1.00"))
        await agent.sweep()
        await agent.drain()
        assert len(nas.coa) == 1
        coa = nas.coa[0]
        assert coa["Acct-Session-Id"] == ["w1"] and coa["User-Name"] == ["guest"]
        # the reservation holds 0.00 of the credit now; 1.01 buys 50 more minutes
        assert coa["Session-Timeout"] == [3000]
        assert agent.dae is not None and agent.dae.counters["coa_ack"] == 1
        assert not agent.sessions["radius:127.0.0.1:127.0.0.1:w1"].limited
        await acct(AcctStatus.STOP, 200)  # 200 s -> 240 s billed -> 0.08 in all
        assert balance() == (1_050_000 - 80_000, 0)
        agent.dae.close()

    try:
        asyncio.run(main())
    finally:
        writer.stop()
        store.close()
