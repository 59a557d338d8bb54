"""SNMPv3 (USM) notifications through pysnmp's message processing, without its sockets.

The receiver's UDP socket stays ours: a v3 datagram is fed to a pysnmp engine through a
bridge transport, and whatever pysnmp wants to send back (the Report that answers an
inform's engine discovery, the Response to an inform) comes back out through the same
socket. USM does the rest: users from ``[[snmp.v3_users]]`` (authNoPriv / authPriv; MD5,
SHA and SHA-2 auth; DES and AES priv). For INFORMs our engine is authoritative (stable
engine ID, ``snmpEngineBoots`` counted up at every start and kept in the data dir); for
TRAPs the sender is, so a user that sends traps needs the sender's ``engine_id``.

A Response to an inform is held back until the caller says the alarm change is durable.
Everything pysnmp rejects (unknown user, wrong digest, outside the time window, unknown
engine) is counted by the usmStats counter that moved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.carrier.base import AbstractTransport, AbstractTransportDispatcher
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import ntfrcv
from pysnmp.proto.api import v2c

AUTH = {
    "": config.USM_AUTH_NONE, "NONE": config.USM_AUTH_NONE,
    "MD5": config.USM_AUTH_HMAC96_MD5, "SHA": config.USM_AUTH_HMAC96_SHA,
    "SHA224": config.USM_AUTH_HMAC128_SHA224, "SHA256": config.USM_AUTH_HMAC192_SHA256,
    "SHA384": config.USM_AUTH_HMAC256_SHA384, "SHA512": config.USM_AUTH_HMAC384_SHA512,
}
PRIV = {
    "": config.USM_PRIV_NONE, "NONE": config.USM_PRIV_NONE, "DES": config.USM_PRIV_CBC56_DES,
    "AES": config.USM_PRIV_CFB128_AES, "AES128": config.USM_PRIV_CFB128_AES,
    "AES192": config.USM_PRIV_CFB192_AES, "AES256": config.USM_PRIV_CFB256_AES,
}
USM_STATS = ("usmStatsUnsupportedSecLevels", "usmStatsNotInTimeWindows",
             "usmStatsUnknownUserNames", "usmStatsUnknownEngineIDs", "usmStatsWrongDigests",
             "usmStatsDecryptionErrors")


class UsmConfigError(ValueError):
    """A v3 user the receiver cannot set up (unknown protocol)."""


@dataclass(frozen=True, slots=True)
class V3Notification:
    varbinds: tuple[tuple[str, str], ...]
    confirmed: bool
    """An InformRequest (its Response is waiting to be sent)."""


def engine_id_for(node: str) -> bytes:
    """A stable RFC 3411 engine ID for a node: enterprise 8072 (net-snmp's, text format)."""
    return bytes.fromhex("80001f8804") + node.encode()[:27]


def next_boots(path: Path) -> int:
    """snmpEngineBoots: one more than last time, kept in ``path``."""
    try:
        boots = int(path.read_text().strip() or "0") + 1
    except (FileNotFoundError, ValueError):
        boots = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{boots}\n")
    tmp.replace(path)
    return boots


class _Dispatcher(AbstractTransportDispatcher):  # type: ignore[misc]
    """No sockets, no loop of its own: messages are fed in by :meth:`V3Receiver.feed`."""


class _Bridge(AbstractTransport):  # type: ignore[misc]
    PROTO_TRANSPORT_DISPATCHER = _Dispatcher

    def __init__(self) -> None:
        super().__init__()
        self.outgoing: list[tuple[bytes, Any]] = []

    def is_compatible_with_dispatcher(self, dispatcher: Any) -> bool:
        return isinstance(dispatcher, _Dispatcher)

    def send_message(self, outgoingMessage: Any, transportAddress: Any) -> None:
        self.outgoing.append((bytes(outgoingMessage), transportAddress))

    def feed(self, data: bytes, address: tuple[str, int]) -> None:
        self._callback_function(self, udp.UdpTransportAddress(address), data)


class V3Receiver:
    def __init__(self, users: list[Any], *, engine_id: bytes, boots: int):
        self.engine_id = engine_id
        self.snmp = engine.SnmpEngine(snmpEngineID=v2c.OctetString(engine_id))
        builder = self.snmp.get_mib_builder()
        (boots_var,) = builder.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineBoots")
        boots_var.syntax = boots_var.syntax.clone(boots)
        self.bridge = _Bridge()
        config.add_transport(self.snmp, udp.DOMAIN_NAME, self.bridge)
        self._levels: dict[str, int] = {}
        """The security level each user is configured for (1 noAuthNoPriv, 2 authNoPriv,
        3 authPriv): a message below it is dropped (RFC 3414 §3.2 step 5)."""
        for u in users:
            auth = AUTH.get(u.auth_protocol.upper().replace("-", ""))
            priv = PRIV.get(u.priv_protocol.upper().replace("-", ""))
            if auth is None or priv is None:
                raise UsmConfigError(f"snmp.v3_users {u.name}: unknown protocol "
                                     f"{u.auth_protocol}/{u.priv_protocol}")
            if not u.auth_key:
                auth = config.USM_AUTH_NONE
            if not u.priv_key or auth == config.USM_AUTH_NONE:
                priv = config.USM_PRIV_NONE
            self._levels[u.name] = (1 if auth == config.USM_AUTH_NONE
                                    else 2 if priv == config.USM_PRIV_NONE else 3)
            kw: dict[str, Any] = {}
            if auth != config.USM_AUTH_NONE:
                kw.update(authProtocol=auth, authKey=u.auth_key)
            if priv != config.USM_PRIV_NONE:
                kw.update(privProtocol=priv, privKey=u.priv_key)
            # informs: we are authoritative
            config.add_v3_user(self.snmp, u.name, **kw)
            if u.engine_id:  # traps: the sender is authoritative
                config.add_v3_user(self.snmp, u.name, securityEngineId=v2c.OctetString(
                    hexValue=u.engine_id.removeprefix("0x")), **kw)
        self._stats = [builder.import_symbols("__SNMP-USER-BASED-SM-MIB", n)[0]
                       for n in USM_STATS]
        self._got: list[V3Notification] = []
        self._below_level = False
        ntfrcv.NotificationReceiver(self.snmp, self._on_notification)

    def _on_notification(self, snmp: Any, state_ref: Any, ctx_engine: Any, ctx_name: Any,
                         varbinds: Any, cb_ctx: Any) -> None:
        try:
            ctx = snmp.observer.get_execution_context("rfc3412.receiveMessage:request")
            name, level = str(ctx["securityName"]), int(ctx["securityLevel"])
        except (KeyError, TypeError, ValueError):
            name, level = "", 0
        if level < self._levels.get(name, 3):
            self._below_level = True  # e.g. noAuthNoPriv for an authPriv user: a forgery
            return
        vbs = tuple((str(oid), _text(val)) for oid, val in varbinds)
        confirmed = bool(self.bridge.outgoing)  # pysnmp queued the inform's Response first
        self._got.append(V3Notification(varbinds=vbs, confirmed=confirmed))

    def _stat_values(self) -> list[int]:
        return [int(s.syntax) for s in self._stats]

    def feed(self, data: bytes, address: tuple[str, int]
             ) -> tuple[V3Notification | None, list[tuple[bytes, Any]], str]:
        """Process one v3 datagram: (notification or None, datagrams to send back, outcome).
        For an inform the Response is among the datagrams: send it once the alarm is
        durable. Outcome: notification | report | a usmStats name |
        below_user_security_level | dropped."""
        before = self._stat_values()
        self.bridge.outgoing = []
        self._got = []
        self._below_level = False
        try:
            self.snmp.transport_dispatcher.handle_timer_tick(time.time())
            self.bridge.feed(data, address)
        except Exception:  # pysnmp raises for malformed input in places: a counted drop
            return None, [], "malformed"
        out = [(msg, (str(addr[0]), int(addr[1]))) for msg, addr in self.bridge.outgoing]
        if self._below_level:
            return None, [], "below_user_security_level"
        if self._got:
            return self._got[0], out, "notification"
        moved = [name for name, a, b in zip(USM_STATS, before, self._stat_values(), strict=True)
                 if b > a]
        if moved:
            return None, out, moved[0]
        return None, out, "report" if out else "dropped"


def _text(value: Any) -> str:
    try:
        if isinstance(value, v2c.OctetString):
            raw = bytes(value)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw.hex()
        return str(value.prettyPrint())
    except Exception:
        return repr(value)


def load_receiver(users: list[Any], node: str, engine_id_hex: str, boots_file: Path
                  ) -> V3Receiver:
    eid = bytes.fromhex(engine_id_hex.removeprefix("0x")) if engine_id_hex else (
        engine_id_for(node))
    return V3Receiver(users, engine_id=eid, boots=next_boots(boots_file))
