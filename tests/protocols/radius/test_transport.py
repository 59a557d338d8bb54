"""The UDP transport on real loopback sockets: unknown clients, retransmissions."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from tests_support import CONFIG_DIR, add

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import IdKind
from ocs.charging.service import EngineChargingService
from ocs.config import RadiusClient, RadiusConfig
from ocs.provisioning import op_load_plans
from ocs.rating.plans import load_plans_file
from ocs.store import Store, Writer
from protocols.radius.agent import RadiusAgent
from protocols.radius.codec import AcctStatus, Attr, Code, attr, encode_request
from protocols.radius.transport import RadiusListener

SECRET = b"testing123"


def test_unknown_source_dropped_and_duplicates_answered_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "d", map_size_mb=64)
    store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
    add(store, "41790000001", balance="1.00", username="bob")
    writer = Writer(store, max_ops=64, max_delay_ms=0.5)
    writer.start()
    eng = ChargingEngine(store, writer, EngineSettings(node="t"))
    cfg = RadiusConfig(clients=(RadiusClient(address="127.0.0.1", secret="testing123"),),
                       rating_group=10)
    agent = RadiusAgent(EngineChargingService(eng), cfg)

    start = encode_request(Code.ACCOUNTING_REQUEST, 1, SECRET, [
        attr(Attr.ACCT_STATUS_TYPE, AcctStatus.START), attr(Attr.ACCT_SESSION_ID, "d1"),
        attr(Attr.USER_NAME, "bob")])
    interim = encode_request(Code.ACCOUNTING_REQUEST, 2, SECRET, [
        attr(Attr.ACCT_STATUS_TYPE, AcctStatus.INTERIM_UPDATE),
        attr(Attr.ACCT_SESSION_ID, "d1"), attr(Attr.USER_NAME, "bob"),
        attr(Attr.ACCT_INPUT_OCTETS, 1_500_000), attr(Attr.ACCT_INPUT_GIGAWORDS, 0)])

    async def main() -> tuple[list[bytes | None], bytes | None]:
        listener = RadiusListener(agent)
        await listener.start(("127.0.0.1", 0), ("127.0.0.1", 0), 30.0)
        acct_addr = listener.address("acct")
        loop = asyncio.get_running_loop()

        def exchange(data: bytes, src: str, times: int) -> list[bytes | None]:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((src, 0))
            s.settimeout(1.0)
            out: list[bytes | None] = []
            for _ in range(times):
                s.sendto(data, acct_addr)
                try:
                    out.append(s.recvfrom(4096)[0])
                except TimeoutError:
                    out.append(None)
            s.close()
            return out

        stranger = await loop.run_in_executor(None, exchange, start, "127.0.0.2", 1)
        await loop.run_in_executor(None, exchange, start, "127.0.0.1", 1)
        replies = await loop.run_in_executor(None, exchange, interim, "127.0.0.1", 2)
        await listener.close()
        return replies, stranger[0]

    replies, stranger = asyncio.run(main())
    writer.stop()
    assert stranger is None
    assert agent.counters["drop_unknown_client"] == 1
    assert replies[0] is not None and replies[0] == replies[1]  # the cached reply, resent
    assert agent.counters[f"acct_{AcctStatus.INTERIM_UPDATE}"] == 1  # processed once
    v = eng.check_balance(((IdKind.MSISDN, "41790000001"),))
    assert v is not None
    assert v.balance == 985_000  # 1.5 MB at 0.01/MB
    store.close()
