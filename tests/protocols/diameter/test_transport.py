"""The Diameter node's periodic sweep gives the event loop a turn between chunks of
sessions, so a large session table never stalls the answers for a whole pass."""

from __future__ import annotations

import asyncio

from ocs.charging.engine import ChargingEngine
from ocs.charging.model import IdKind
from ocs.charging.service import EngineChargingService
from ocs.rating.plans import Service
from protocols.diameter.gy import GyAgent, GySession, GySettings
from protocols.diameter.peer import LocalNode
from protocols.diameter.transport import SWEEP_CHUNK, DiameterNode


def test_sweep_runs_in_chunks_and_visits_every_session(engine: ChargingEngine) -> None:
    agent = GyAgent(EngineChargingService(engine),
                    GySettings(origin_host="ocs.test", origin_realm="test"), clock=lambda: 1000.0)
    node = DiameterNode(agent, LocalNode(origin_host="ocs.test", origin_realm="test"))
    total = 3 * SWEEP_CHUNK + 10
    for i in range(total):  # subscribers that do not exist: each would get an ASR
        agent.sessions[f"s{i}"] = GySession(
            session_id=f"s{i}", identity=((IdKind.MSISDN, f"4100{i:06d}"),),
            msisdn=f"4100{i:06d}", service=Service.DATA, origin_host="pgw",
            origin_realm="test", deadline=5000.0)
    notified: list[str] = []

    async def fake_notify(kind: str, sess: GySession) -> None:
        notified.append(sess.session_id)

    node._notify = fake_notify  # type: ignore[method-assign]

    async def run() -> int:
        turns = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal turns
            while not stop.is_set():
                turns += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = turns
        await node.sweep()
        stop.set()
        await t
        return turns - before

    turns = asyncio.run(run())
    assert turns >= 3  # the loop ran other work between the 4 chunks
    assert sorted(notified) == sorted(f"s{i}" for i in range(total))  # each once
