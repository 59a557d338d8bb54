"""Dynamic Authorization (RFC 5176) against a pyrad NAS: Disconnect-Request when the
credit is gone or the subscriber is suspended; ACK, NAK 503 (session gone), timeouts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests_support import CONFIG_DIR, add, free_udp_port, start_nas

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import IdKind
from ocs.charging.service import EngineChargingService
from ocs.config import RadiusClient, RadiusConfig
from ocs.provisioning import op_load_plans, op_set_status
from ocs.rating.plans import Service, load_plans_file
from ocs.store import Store, Writer
from protocols.radius.agent import LiveSession, RadiusAgent
from protocols.radius.codec import AcctStatus, Attr, Code, attr, decode, encode_request
from protocols.radius.dae import DaeClient, DaeOutcome, DaeTarget, SessionRef

SECRET = b"testing123"




def test_disconnects(tmp_path: Path) -> None:
    port = free_udp_port()
    nas = start_nas(port)
    store = Store(tmp_path / "d", map_size_mb=64)
    store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    add(store, "41790000001", balance="0.01", username="bob")
    add(store, "41790000002", balance="0.01", username="ann")
    add(store, "41790000003", balance="5.00", username="sam")
    writer = Writer(store, max_ops=64, max_delay_ms=0.5)
    writer.start()
    eng = ChargingEngine(store, writer, EngineSettings(node="t"))
    cfg = RadiusConfig(clients=(RadiusClient(address="127.0.0.1", secret="testing123",
                                             coa_port=port),), rating_group=10)
    agent = RadiusAgent(EngineChargingService(eng), cfg, dae=DaeClient(timeout_s=0.5, attempts=2))
    client = agent.client_for("127.0.0.1")
    assert client is not None

    async def acct(status: AcctStatus, sid: str, user: str, octets: int | None = None) -> None:
        attrs = [attr(Attr.ACCT_STATUS_TYPE, status), attr(Attr.ACCT_SESSION_ID, sid),
                 attr(Attr.USER_NAME, user), attr(Attr.NAS_IP_ADDRESS, b"\x7f\x00\x00\x01")]
        if octets is not None:
            attrs.append(attr(Attr.ACCT_INPUT_OCTETS, octets))
        await agent.accounting(client, decode(encode_request(
            Code.ACCOUNTING_REQUEST, int(time.monotonic_ns()) % 256, SECRET, attrs)))

    def reserved(msisdn: str) -> int:
        v = eng.check_balance(((IdKind.MSISDN, msisdn),))
        assert v is not None
        return v.reserved

    async def main() -> None:
        # 1. credit gone at an interim -> Disconnect-Request -> ACK
        await acct(AcctStatus.START, "s1", "bob")
        await acct(AcctStatus.INTERIM_UPDATE, "s1", "bob", 5_000_000)
        await agent.drain()
        assert nas.received[-1]["Acct-Session-Id"] == ["s1"]
        assert nas.received[-1]["User-Name"] == ["bob"]
        assert nas.received[-1]["NAS-IP-Address"] == ["127.0.0.1"]
        assert "Event-Timestamp" in nas.received[-1]
        assert agent.dae is not None and agent.dae.counters["disconnect_ack"] == 1
        # 2. the NAS says the session is gone (NAK 503): settled here
        nas.answer = "nak"
        await acct(AcctStatus.START, "s2", "ann")
        assert reserved("41790000002") > 0
        await acct(AcctStatus.INTERIM_UPDATE, "s2", "ann", 5_000_000)
        await agent.drain()
        assert agent.dae.counters["disconnect_session_gone"] == 1
        assert reserved("41790000002") == 0
        assert "radius:127.0.0.1:127.0.0.1:s2" not in agent.sessions
        # 3. suspended while connected -> the sweep disconnects
        nas.answer = "ack"
        await acct(AcctStatus.START, "s3", "sam")
        assert await agent.sweep() == 0
        store.run_write(op_set_status("41790000003", "suspend"))
        assert await agent.sweep() == 1
        await agent.drain()
        assert nas.received[-1]["Acct-Session-Id"] == ["s3"]
        assert agent.dae.counters["disconnect_ack"] == 2
        # a session whose reservation is gone (its Stop was lost, the reaper settled it)
        # is forgotten by the sweep
        sent = len(nas.received)
        agent.sessions["radius:127.0.0.1:127.0.0.1:ghost"] = LiveSession(
            session_id="radius:127.0.0.1:127.0.0.1:ghost", client=client,
            ref=SessionRef("ghost", "bob"), identity=((IdKind.USERNAME, "bob"),),
            service=Service.DATA)
        await agent.sweep()
        await agent.drain()
        assert "radius:127.0.0.1:127.0.0.1:ghost" not in agent.sessions
        assert len(nas.received) == sent  # forgotten, not disconnected
        # 4. a NAS that never answers: bounded retries, then timeout
        nas.answer = "silent"
        dae = DaeClient(timeout_s=0.2, attempts=3)
        out = await dae.send(Code.DISCONNECT_REQUEST, DaeTarget("127.0.0.1", port, SECRET),
                             SessionRef("s9", "bob"))
        assert out is DaeOutcome.TIMEOUT and dae.counters["disconnect_sent"] == 3
        dae.close()
        agent.dae.close()

    try:
        asyncio.run(main())
    finally:
        writer.stop()
        store.close()
