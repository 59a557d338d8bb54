"""Polling one network element over SNMP (pysnmp, v2c or a USM user): sysUpTime,
HOST-RESOURCES-MIB (processor load, RAM) and IF-MIB (ifTable, ifXTable), walked with
GETBULK, into a :class:`~ocs.nms.derive.Poll`."""

from __future__ import annotations

import time
from typing import Any

from ocs.nms.derive import Interface, Poll

SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
HR_PROCESSOR_LOAD = "1.3.6.1.2.1.25.3.3.1.2"
HR_STORAGE = "1.3.6.1.2.1.25.2.3.1"
HR_STORAGE_RAM = "1.3.6.1.2.1.25.2.1.2"
IF_TABLE = "1.3.6.1.2.1.2.2.1"
IF_X_TABLE = "1.3.6.1.2.1.31.1.1.1"
_END = frozenset({"EndOfMibView", "NoSuchObject", "NoSuchInstance"})
MAX_ROWS = 4096
"""Rows of one table walked at most (an agent answering without end is cut off)."""


class Unreachable(Exception):
    """The element did not answer (timeout, refused, an SNMP error status)."""


class Poller:
    """Polls elements from one pysnmp engine (its transport and USM state shared)."""

    def __init__(self, *, timeout_s: float = 2.0, retries: int = 1,
                 v3_users: dict[str, Any] | None = None):
        from pysnmp.hlapi.v3arch.asyncio import SnmpEngine

        self.engine = SnmpEngine()
        self.timeout_s = timeout_s
        self.retries = retries
        self.v3_users = v3_users or {}
        """``[[snmp.v3_users]]`` by name (for elements with a ``v3_user``)."""

    def close(self) -> None:
        self.engine.close_dispatcher()

    def _auth(self, community: str, v3_user: str) -> Any:
        from pysnmp.entity import config
        from pysnmp.hlapi.v3arch.asyncio import CommunityData, UsmUserData

        auth_of = {"": config.USM_AUTH_NONE, "NONE": config.USM_AUTH_NONE,
                   "MD5": config.USM_AUTH_HMAC96_MD5, "SHA": config.USM_AUTH_HMAC96_SHA,
                   "SHA224": config.USM_AUTH_HMAC128_SHA224,
                   "SHA256": config.USM_AUTH_HMAC192_SHA256,
                   "SHA384": config.USM_AUTH_HMAC256_SHA384,
                   "SHA512": config.USM_AUTH_HMAC384_SHA512}
        priv_of = {"": config.USM_PRIV_NONE, "NONE": config.USM_PRIV_NONE,
                   "DES": config.USM_PRIV_CBC56_DES, "AES": config.USM_PRIV_CFB128_AES,
                   "AES128": config.USM_PRIV_CFB128_AES, "AES192": config.USM_PRIV_CFB192_AES,
                   "AES256": config.USM_PRIV_CFB256_AES}
        if not v3_user:
            return CommunityData(community, mpModel=1)
        u = self.v3_users[v3_user]
        return UsmUserData(u.name, u.auth_key or None, u.priv_key or None,
                           authProtocol=auth_of[u.auth_protocol.upper().replace("-", "")]
                           if u.auth_key else auth_of[""],
                           privProtocol=priv_of[u.priv_protocol.upper().replace("-", "")]
                           if u.priv_key else priv_of[""])

    async def poll(self, address: str, *, community: str = "public", v3_user: str = "",
                   clock: Any = time.monotonic) -> Poll:
        from pysnmp.hlapi.v3arch.asyncio import (
            ContextData,
            ObjectIdentity,
            ObjectType,
            UdpTransportTarget,
            get_cmd,
        )

        host, _, port = address.rpartition(":")
        try:
            target = await UdpTransportTarget.create((host.strip("[]"), int(port)),
                                                     timeout=self.timeout_s,
                                                     retries=self.retries)
        except Exception as exc:  # an address that does not resolve
            raise Unreachable(f"{address}: {exc}") from None
        auth = self._auth(community, v3_user)
        err, status, _idx, vbs = await get_cmd(self.engine, auth, target, ContextData(),
                                               ObjectType(ObjectIdentity(SYS_UPTIME)),
                                               lookupMib=False)
        if err or status:
            raise Unreachable(f"{address}: {err or status.prettyPrint()}")
        at = clock()
        uptime = int(vbs[0][1])
        cpu = await self._column(auth, target, HR_PROCESSOR_LOAD)
        storage = await self._table(auth, target, HR_STORAGE, (2, 4, 5, 6))
        iftable = await self._table(auth, target, IF_TABLE, (2, 7, 8, 10, 11, 13, 14, 16))
        ifx = await self._table(auth, target, IF_X_TABLE, (6, 7, 10, 15))
        mem_used = mem_size = 0
        for row in storage.values():
            if row.get(2) == HR_STORAGE_RAM:
                unit = int(row.get(4, 1) or 1)
                mem_size += int(row.get(5, 0)) * unit
                mem_used += int(row.get(6, 0)) * unit
        interfaces = []
        for index, row in sorted(iftable.items()):
            x = ifx.get(index, {})
            hc = 6 in x and 10 in x
            interfaces.append(Interface(
                index=index, descr=str(row.get(2, f"if{index}")),
                admin_up=int(row.get(7, 2)) == 1, oper_up=int(row.get(8, 2)) == 1,
                in_octets=int(x[6] if hc else row.get(10, 0)),
                out_octets=int(x[10] if hc else row.get(16, 0)), hc=hc,
                in_packets=int(x[7] if hc and 7 in x else row.get(11, 0)),
                in_errors=int(row.get(14, 0)), in_discards=int(row.get(13, 0)),
                speed_mbps=int(x.get(15, 0))))
        return Poll(at=at, uptime_cs=uptime, cpu_loads=tuple(int(v) for v in cpu.values()),
                    mem_used=mem_used, mem_size=mem_size, interfaces=tuple(interfaces))

    async def _walk(self, auth: Any, target: Any, *bases: str) -> list[tuple[str, Any]]:
        """The columns ``bases`` side by side: each GETBULK carries rows of every column
        still going (a column ends when the agent leaves its subtree). Numeric OIDs in and
        out (no MIB lookups: most of pysnmp's CPU otherwise)."""
        from pysnmp.hlapi.v3arch.asyncio import ContextData, ObjectIdentity, ObjectType, bulk_cmd

        out: list[tuple[str, Any]] = []
        current = list(bases)
        active = list(range(len(bases)))
        while active:
            err, status, _idx, vbs = await bulk_cmd(
                self.engine, auth, target, ContextData(), 0, max(4, 48 // len(active)),
                *(ObjectType(ObjectIdentity(current[c])) for c in active), lookupMib=False)
            if err or status:
                raise Unreachable(str(err or status.prettyPrint()))
            ended: set[int] = set()
            before = {c: current[c] for c in active}
            for k, (oid, value) in enumerate(vbs):
                col = active[k % len(active)]
                if col in ended:
                    continue
                text = str(oid)
                if (not text.startswith(bases[col] + ".")
                        or type(value).__name__ in _END):
                    ended.add(col)
                    continue
                out.append((text, value))
                current[col] = text
            ended |= {c for c in active if current[c] == before[c]}  # no progress: done
            active = [c for c in active if c not in ended]
            if len(out) > MAX_ROWS * 24:
                break
        return out

    async def _column(self, auth: Any, target: Any, base: str) -> dict[int, Any]:
        return {int(oid.rsplit(".", 1)[1]): v for oid, v in await self._walk(auth, target, base)
                if oid.startswith(base + ".")}

    async def _table(self, auth: Any, target: Any, base: str,
                     columns: tuple[int, ...]) -> dict[int, dict[int, Any]]:
        """{row index: {column: value}} of ``columns`` of a table indexed by one integer."""
        rows: dict[int, dict[int, Any]] = {}
        for oid, value in await self._walk(auth, target, *(f"{base}.{c}" for c in columns)):
            rest = oid[len(base) + 1:].split(".")
            if len(rest) != 2 or not rest[0].isdigit() or not rest[1].isdigit():
                continue
            col, index = int(rest[0]), int(rest[1])
            if len(rows) >= MAX_ROWS and index not in rows:
                continue
            text = value.prettyPrint() if hasattr(value, "prettyPrint") else str(value)
            rows.setdefault(index, {})[col] = _plain(value, text)
        return rows


def _plain(value: Any, text: str) -> Any:
    """An int for numbers, the dotted string for OIDs, else the text."""
    cls = type(value).__name__
    if cls == "ObjectIdentifier" or cls == "ObjectName":
        return str(value)
    if cls == "OctetString" or cls == "DisplayString":
        return text
    try:
        return int(value)
    except (TypeError, ValueError):
        return text
