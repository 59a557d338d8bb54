"""Fuzz the agent: authentic packets with arbitrary attributes get a reply or a counted
drop, never an exception, and never a negative prepaid balance."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests_support import CONFIG_DIR, add

from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import IdKind
from ocs.charging.service import EngineChargingService
from ocs.config import RadiusClient, RadiusConfig
from ocs.provisioning import op_load_plans
from ocs.rating.plans import load_plans_file
from ocs.store import Store, Writer
from protocols.radius.agent import RadiusAgent
from protocols.radius.codec import Attr, Code, Drop, decode, encode_request

SECRET = b"testing123"
INTERESTING = [Attr.ACCT_STATUS_TYPE, Attr.ACCT_SESSION_ID, Attr.USER_NAME,
               Attr.ACCT_INPUT_OCTETS, Attr.ACCT_INPUT_GIGAWORDS, Attr.ACCT_OUTPUT_OCTETS,
               Attr.ACCT_OUTPUT_GIGAWORDS, Attr.USER_PASSWORD, Attr.MESSAGE_AUTHENTICATOR,
               Attr.CALLING_STATION_ID, Attr.VENDOR_SPECIFIC, Attr.NAS_IP_ADDRESS,
               Attr.PROXY_STATE, Attr.EAP_MESSAGE]

attribute = st.tuples(
    st.one_of(st.sampled_from(INTERESTING), st.integers(0, 255)),
    st.one_of(
        st.binary(max_size=40),
        st.integers(0, 9).map(lambda n: n.to_bytes(4, "big")),
        st.sampled_from([b"bob", b"s1", b"\x00\x00\x28\xaf\x01\x11228010000000001"]),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([Code.ACCOUNTING_REQUEST, Code.ACCESS_REQUEST]),
                          st.lists(attribute, max_size=10)), min_size=1, max_size=6))
def test_agent_never_crashes(packets: list[tuple[Code, list[tuple[int, bytes]]]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = Store(Path(d), map_size_mb=32)
        store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
        add(store, "41790000001", balance="0.05", username="bob", password="pw")
        writer = Writer(store, max_ops=32, max_delay_ms=0.2)
        writer.start()
        eng = ChargingEngine(store, writer, EngineSettings(node="f"))
        agent = RadiusAgent(EngineChargingService(eng), RadiusConfig(
            clients=(RadiusClient(address="127.0.0.1", secret="testing123"),),
            rating_group=10, require_message_authenticator=False))
        client = agent.client_for("127.0.0.1")
        assert client is not None

        async def run() -> None:
            for i, (code, attrs) in enumerate(packets):
                try:
                    raw = encode_request(code, i, SECRET, attrs)
                except ValueError:
                    continue
                pkt = decode(raw)
                handler = agent.accounting if code == Code.ACCOUNTING_REQUEST else agent.access
                try:
                    reply = await handler(client, pkt)
                except Drop:
                    continue
                assert decode(reply).identifier == i

        try:
            asyncio.run(run())
        finally:
            writer.stop()
        v = eng.check_balance(((IdKind.MSISDN, "41790000001"),))
        assert v is not None and v.balance >= 0 and v.balance - v.reserved >= 0
        store.close()
