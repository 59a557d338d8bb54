"""The NMS poller of ``ocs serve``: every ``[nms] poll_interval_s`` (each element at its
own jittered offset, a bounded number at once) it polls the ``[[nms.elements]]``,
derives the figures (:mod:`ocs.nms.derive`), raises and clears X.733 alarms through the
NOC (thresholds with hysteresis; an element that does not answer is a
communicationsAlarm until it does), and publishes the figures on /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from ocs import metrics
from ocs.config import NmsConfig, NmsElement
from ocs.nms.derive import Figures, Limits, Poll, derive, health, thresholds
from ocs.nms.history import IfSample, NmsSample
from ocs.nms.poller import Poller, Unreachable
from ocs.noc.alarms import Notification, Severity
from ocs.noc.service import AlarmService

log = structlog.get_logger(__name__)

KIND = {
    "cpu": ("processingErrorAlarm", "cpuCyclesLimitExceeded"),
    "memory": ("processingErrorAlarm", "storageCapacityProblem"),
    "capacity": ("qualityOfServiceAlarm", "thresholdCrossed"),
    "packet-loss": ("qualityOfServiceAlarm", "thresholdCrossed"),
    "link": ("communicationsAlarm", "lossOfSignal"),
}
"""Threshold resource kind -> (X.733 alarm type, probable cause)."""
AGENT = "snmp-agent"
"""The resource of an element's reachability alarm."""


def limits_of(cfg: NmsConfig) -> Limits:
    t = cfg.thresholds
    return Limits(cpu_pct=t.cpu_pct, memory_pct=t.memory_pct, capacity_pct=t.capacity_pct,
                  packet_loss_pct=t.packet_loss_pct)


@dataclass
class ElementState:
    last: Poll | None = None
    figures: Figures | None = None
    active: set[str] = field(default_factory=set)
    reachable: bool | None = None
    score: int | None = None
    explained: list[dict[str, object]] = field(default_factory=list)
    error: str = ""


class NmsMonitor:
    def __init__(self, cfg: NmsConfig, alarms: AlarmService, poller: Poller, *,
                 record: Callable[[NmsSample], Awaitable[bool]] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.record = record
        """Where samples go for the history (the writer's ``nms_record``)."""
        self.cfg = cfg
        self.alarms = alarms
        self.poller = poller
        self.clock = clock
        self.wall = wall
        self.state: dict[str, ElementState] = {e.id: ElementState() for e in cfg.elements}
        self._sem = asyncio.Semaphore(cfg.max_concurrent)
        self._task: asyncio.Task[None] | None = None

    def reconfigure(self, cfg: NmsConfig) -> None:
        """A config reload: elements, interval, thresholds, timeouts (from the next poll)."""
        self.cfg = cfg
        self.poller.timeout_s = cfg.timeout_s
        self.poller.retries = cfg.retries
        for e in cfg.elements:
            self.state.setdefault(e.id, ElementState())

    async def _notify(self, el: NmsElement, resource: str, kind: tuple[str, str],
                      severity: str, text: str, varbinds: dict[str, str]) -> None:
        await self.alarms.notify(Notification(
            element=el.id, resource=resource, alarm_type=kind[0], probable_cause=kind[1],
            severity=severity, text=text, varbinds=varbinds, at=int(self.wall())))

    async def poll_once(self, el: NmsElement) -> ElementState:
        """Poll ``el`` now: figures, alarms, gauges. Returns its state."""
        st = self.state.setdefault(el.id, ElementState())
        async with self._sem:
            try:
                cur = await self.poller.poll(el.address, community=el.community,
                                             v3_user=el.v3_user, clock=self.clock)
            except Unreachable as exc:
                metrics.NMS_POLLS.labels("unreachable").inc()
                metrics.NMS_REACHABLE.labels(el.id).set(0)
                st.error = str(exc)
                if st.reachable is not False:
                    st.reachable = False
                    log.warning("nms_element_unreachable", element=el.id, error=str(exc))
                    await self._notify(el, AGENT, ("communicationsAlarm",
                                                   "communicationsSubsystemFailure"),
                                       Severity.MAJOR, f"{el.id} does not answer SNMP",
                                       {"address": el.address})
                return st
        metrics.NMS_POLLS.labels("ok").inc()
        metrics.NMS_REACHABLE.labels(el.id).set(1)
        st.error = ""
        if st.reachable is False:
            await self._notify(el, AGENT, ("communicationsAlarm",
                                           "communicationsSubsystemFailure"),
                               Severity.CLEARED, f"{el.id} answers again",
                               {"address": el.address})
        st.reachable = True
        f = derive(st.last, cur, el.capacity_mbps)
        st.last, st.figures = cur, f
        limits = limits_of(self.cfg)
        for c in thresholds(f, limits, frozenset(st.active)):
            kind = KIND[c.resource.rsplit("/", 1)[-1]]
            await self._notify(el, c.resource, kind, c.severity, c.text,
                               {"value": f"{c.value:.2f}", "limit": f"{c.limit:g}"})
            if c.severity == Severity.CLEARED:
                st.active.discard(c.resource)
            else:
                st.active.add(c.resource)
        st.score, st.explained = health(f, limits)
        self._publish(el, f, st.score)
        if self.record is not None:
            await self.record(NmsSample(
                element=el.id, at=int(self.wall()), cpu_pct=f.cpu_pct,
                memory_pct=f.memory_pct, health=st.score,
                interfaces=tuple(IfSample(i.descr, i.in_mbps, i.out_mbps, i.utilization_pct,
                                          i.packet_loss_pct, i.oper_up, i.admin_up)
                                 for i in f.interfaces),
                history_s=self.cfg.history_days * 86400))
        return st

    @staticmethod
    def _publish(el: NmsElement, f: Figures, score: int) -> None:
        metrics.NMS_HEALTH.labels(el.id).set(score)
        if f.cpu_pct is not None:
            metrics.NMS_CPU.labels(el.id).set(f.cpu_pct)
        if f.memory_pct is not None:
            metrics.NMS_MEMORY.labels(el.id).set(f.memory_pct)
        for i in f.interfaces:
            if i.in_mbps is not None and i.out_mbps is not None:
                metrics.NMS_MBPS.labels(el.id, i.descr, "in").set(i.in_mbps)
                metrics.NMS_MBPS.labels(el.id, i.descr, "out").set(i.out_mbps)
            if i.utilization_pct is not None:
                metrics.NMS_UTILIZATION.labels(el.id, i.descr).set(i.utilization_pct)
            if i.packet_loss_pct is not None:
                metrics.NMS_LOSS.labels(el.id, i.descr).set(i.packet_loss_pct)

    async def _element_loop(self, el_id: str) -> None:
        # spread the elements over the interval, then jitter each round by up to 10 %
        await asyncio.sleep(random.uniform(0, self.cfg.poll_interval_s))
        while True:
            el = next((e for e in self.cfg.elements if e.id == el_id), None)
            if el is None:
                return  # removed by a reload
            try:
                await self.poll_once(el)
            except Exception as exc:  # an alarm write failing: poll again next time
                log.warning("nms_poll_failed", element=el_id, error=str(exc))
            interval = self.cfg.poll_interval_s
            await asyncio.sleep(interval * random.uniform(0.95, 1.05))

    async def run(self) -> None:
        tasks: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                for e in self.cfg.elements:
                    if e.id not in tasks or tasks[e.id].done():
                        tasks[e.id] = asyncio.create_task(self._element_loop(e.id),
                                                          name=f"nms-{e.id}")
                await asyncio.sleep(5.0)  # elements added by a reload start soon
        finally:
            for t in tasks.values():
                t.cancel()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="nms")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.poller.close()
