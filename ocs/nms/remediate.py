"""Auto-remediation: ``[[nms.remediations]]`` acted on when a matching alarm is raised on
one of the ``[[nms.elements]]``.

A rule's ``alarm_type`` matches an alarm's X.733 alarm type, its probable cause, or the
condition name ``linkDown`` (probable cause lossOfSignal on an interface). The element
is found by id (alarms from polls) or by the address of its agent (alarms from traps,
whose element is the sender's address). Actions:

- ``set_admin_up``: SNMP SET ifAdminStatus.<ifIndex> = up(1) on the element (its
  community must have write access), the ifIndex from the alarm's resource
  (``ifIndex=N`` from a trap, ``<ifDescr>/link`` from a poll);
- ``exec``: run ``command`` (an argv, no shell) with the alarm in the environment
  (``OCS_ALARM_ELEMENT``, ``_RESOURCE``, ``_TYPE``, ``_CAUSE``, ``_SEVERITY``), at most
  30 s.

Only raises act (not repeats or clears), each (element, resource, rule) at most once per
``COOLDOWN_S``, a bounded number at once; every attempt is logged and counted
(``ocs_nms_remediations_total{action,outcome}``).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from typing import Any

import structlog

from ocs import metrics
from ocs.config import NmsConfig, NmsElement, NmsRemediation
from ocs.noc.alarms import Notification

log = structlog.get_logger(__name__)

COOLDOWN_S = 300.0
EXEC_TIMEOUT_S = 30.0
IF_ADMIN_STATUS = "1.3.6.1.2.1.2.2.1.7"
_IF_INDEX = re.compile(r"^ifIndex=(\d+)$")


def condition(n: Notification) -> str:
    return "linkDown" if n.probable_cause == "lossOfSignal" else ""


class Remediator:
    def __init__(self, cfg: NmsConfig, *, if_index: Callable[[str, str], int | None],
                 clock: Callable[[], float] = time.monotonic, max_running: int = 8):
        """``if_index(element id, ifDescr)``: the element's ifIndex of that interface
        (from its last poll), or None."""
        self.cfg = cfg
        self.if_index = if_index
        self.clock = clock
        self._last: dict[tuple[str, str, int], float] = {}
        self._running: set[asyncio.Task[None]] = set()
        self.max_running = max_running

    def _element(self, name: str) -> NmsElement | None:
        for e in self.cfg.elements:
            if e.id == name or e.address.rpartition(":")[0].strip("[]") == name:
                return e
        return None

    def offer(self, n: Notification) -> list[asyncio.Task[None]]:
        """A raised alarm: start the matching rules' actions (returns their tasks)."""
        el = self._element(n.element)
        if el is None:
            return []
        names = {n.alarm_type, n.probable_cause, condition(n)} - {""}
        started = []
        for number, rule in enumerate(self.cfg.remediations):
            if rule.alarm_type not in names:
                continue
            key = (el.id, n.resource, number)
            now = self.clock()
            if now - self._last.get(key, -COOLDOWN_S) < COOLDOWN_S:
                metrics.NMS_REMEDIATIONS.labels(rule.action, "cooldown").inc()
                continue
            if len(self._running) >= self.max_running:
                metrics.NMS_REMEDIATIONS.labels(rule.action, "busy").inc()
                log.warning("nms_remediation_skipped", element=el.id, resource=n.resource,
                            action=rule.action, reason="too many running")
                continue
            self._last[key] = now
            task = asyncio.ensure_future(self._act(el, rule, n))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            started.append(task)
        return started

    async def _act(self, el: NmsElement, rule: NmsRemediation, n: Notification) -> None:
        try:
            if rule.action == "set_admin_up":
                outcome, detail = await self._admin_up(el, n)
            else:
                outcome, detail = await self._exec(rule, n)
        except Exception as exc:  # a remediation must never take the server down
            outcome, detail = "failed", f"{type(exc).__name__}: {exc}"
        metrics.NMS_REMEDIATIONS.labels(rule.action, outcome).inc()
        (log.info if outcome == "done" else log.warning)(
            "nms_remediation", element=el.id, resource=n.resource, alarm_type=n.alarm_type,
            action=rule.action, outcome=outcome, detail=detail[:300])

    async def _admin_up(self, el: NmsElement, n: Notification) -> tuple[str, str]:
        m = _IF_INDEX.match(n.resource)
        index = int(m.group(1)) if m else None
        if index is None and n.resource.endswith("/link"):
            index = self.if_index(el.id, n.resource.rsplit("/", 1)[0])
        if index is None:
            return "skipped", f"no interface in resource {n.resource!r}"
        from pysnmp.hlapi.v3arch.asyncio import (
            CommunityData,
            ContextData,
            ObjectIdentity,
            ObjectType,
            SnmpEngine,
            UdpTransportTarget,
            set_cmd,
        )
        from pysnmp.proto.rfc1902 import Integer32

        host, _, port = el.address.rpartition(":")
        engine = SnmpEngine()
        try:
            target = await UdpTransportTarget.create((host.strip("[]"), int(port)),
                                                     timeout=self.cfg.timeout_s,
                                                     retries=self.cfg.retries)
            err, status, _i, _vb = await set_cmd(
                engine, CommunityData(el.community, mpModel=1), target, ContextData(),
                ObjectType(ObjectIdentity(f"{IF_ADMIN_STATUS}.{index}"), Integer32(1)))
        finally:
            engine.close_dispatcher()
        if err or status:
            return "failed", str(err or status.prettyPrint())
        return "done", f"ifAdminStatus.{index} = up"

    async def _exec(self, rule: NmsRemediation, n: Notification) -> tuple[str, str]:
        env = {**os.environ, "OCS_ALARM_ELEMENT": n.element, "OCS_ALARM_RESOURCE": n.resource,
               "OCS_ALARM_TYPE": n.alarm_type, "OCS_ALARM_CAUSE": n.probable_cause,
               "OCS_ALARM_SEVERITY": n.severity}
        proc = await asyncio.create_subprocess_exec(
            *rule.command, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), EXEC_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return "failed", f"{rule.command[0]}: still running after {EXEC_TIMEOUT_S:g} s"
        text = out.decode("utf-8", "replace").strip()
        if proc.returncode != 0:
            return "failed", f"exit {proc.returncode}: {text}"
        return "done", text


def descr_index(monitor: Any) -> Callable[[str, str], int | None]:
    """``if_index`` over an NmsMonitor's last polls."""
    def find(element: str, descr: str) -> int | None:
        st = monitor.state.get(element)
        last = st.last if st is not None else None
        if last is None:
            return None
        return next((i.index for i in last.interfaces if i.descr == descr), None)

    return find
