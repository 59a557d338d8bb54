"""Config reloads reach the listeners' own state (the SIGHUP test in tests/ocs covers
RADIUS over the wire): SMPP accounts for new binds, Diameter peers for new CERs, SNMP
communities."""

from __future__ import annotations

from fake_charging import Recorder

from ocs.config import (
    Config,
    DiameterConfig,
    SmppAccount,
    SmppConfig,
    SnmpConfig,
)
from protocols.diameter.peer import LocalNode
from protocols.diameter.transport import DiameterNode
from protocols.smpp.agent import SmppAgent
from protocols.smpp.pdu import Bind, Status
from protocols.snmp.transport import SnmpListener, TrapReceiver


def bind(system_id: str, password: str) -> Bind:
    return Bind(system_id=system_id, password=password, system_type="", interface_version=0x34,
                addr_ton=0, addr_npi=0, address_range="")


def test_smpp_accounts_reload() -> None:
    agent = SmppAgent(Recorder(), SmppConfig(accounts=(SmppAccount(system_id="a",
                                                                   password="old"),)))
    assert agent.authenticate(bind("a", "old")) == Status.ROK
    agent.unbound("a")
    agent.reconfigure(SmppConfig(accounts=(SmppAccount(system_id="a", password="new"),
                                           SmppAccount(system_id="b", password="bb"))))
    assert agent.authenticate(bind("a", "old"), "x") == Status.RINVPASWD
    assert agent.authenticate(bind("a", "new")) == Status.ROK
    assert agent.authenticate(bind("b", "bb")) == Status.ROK


def test_diameter_peers_and_snmp_communities_reload() -> None:
    node = DiameterNode(None, LocalNode(origin_host="ocs.test", origin_realm="test",  # type: ignore[arg-type]
                                        allowed_peers=("pgw1",)))
    node.reconfigure(Config(diameter=DiameterConfig(allowed_peers=("pgw2", "pgw3"),
                                                    relay_peers=("dra",))))
    assert (node.local.allowed_peers, node.local.relay_peers) == (("pgw2", "pgw3"), ("dra",))
    assert node.local.origin_host == "ocs.test"  # the rest as it was
    listener = SnmpListener(TrapReceiver(None, ("public",)))  # type: ignore[arg-type]
    listener.reconfigure(Config(snmp=SnmpConfig(communities=("noc", "ops"))))
    assert listener.receiver.communities == (b"noc", b"ops")
