"""NOC alarms as the rest of the node uses them: :class:`AlarmService` for the sources
(the server's health checks, the SNMP trap receiver), :class:`AlarmOps` for the writer
that runs them — the charging engine has no part in either."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec

from ocs.noc import alarms
from ocs.noc.alarms import ExpireAlarms, Expired, Limits, Notification, TrimAlarms
from ocs.store.tx import Tx

OPERATIONS: dict[str, tuple[type[Any], Any]] = {
    "alarm_notify": (Notification, str),
    "alarm_trim": (TrimAlarms, int),
    "alarm_expire": (ExpireAlarms, Expired),
    "alarm_limits": (Limits, bool),
}
"""The writer's alarm operations by name -> (request type, result type)."""


class Submitter(Protocol):
    """Where write operations go by name (the writer process, or a writer thread)."""

    def submit(self, name: str, req: Any) -> Awaitable[Any]: ...


class AlarmOps:
    """The alarm operations, run in the writer inside a transaction."""

    def __init__(self, limits: Limits):
        self.limits = limits

    def alarm_notify(self, tx: Tx, n: Notification) -> str:
        """Raise, repeat or clear an alarm; new alarms past the configured caps are
        counted on the cap's summary alarm."""
        outcome, _alarm = alarms.notify(tx, n, self.limits)
        return outcome

    @staticmethod
    def alarm_trim(tx: Tx, req: TrimAlarms) -> int:
        return alarms.trim(tx, req)

    def alarm_expire(self, tx: Tx, req: ExpireAlarms) -> Expired:
        return alarms.expire(tx, msgspec.structs.replace(req, limits=self.limits))

    def alarm_limits(self, tx: Tx, limits: Limits) -> bool:
        """New caps (a config reload)."""
        self.limits = limits
        return True

    def table(self) -> dict[str, tuple[type[Any], Any, Any]]:
        """(request type, result type, function) by operation name, for the writer."""
        return {name: (req_t, res_t, getattr(self, name))
                for name, (req_t, res_t) in OPERATIONS.items()}


class AlarmService:
    """Raise and clear alarms; each call resolves after the durable commit."""

    def __init__(self, writer: Submitter, *, committed: Callable[[], None] | None = None,
                 raised: Callable[[Notification], None] | None = None):
        self._writer = writer
        self._committed = committed
        """Called once an alarm change is durable (the server wakes the stream writer)."""
        self._raised = raised
        """Called with the notification once it raised a new alarm (auto-remediation)."""

    def notify(self, n: Notification) -> Awaitable[str]:
        """The outcome: raised, repeated, cleared, clear_unmatched, capped ..."""
        result: Awaitable[str] = self._writer.submit("alarm_notify", n)
        if isinstance(result, asyncio.Future) and (self._committed or self._raised):
            result.add_done_callback(lambda f: self._after(n, f))
        return result

    def _after(self, n: Notification, f: asyncio.Future[str]) -> None:
        if f.cancelled() or f.exception() is not None:
            return
        if self._committed is not None:
            self._committed()
        if self._raised is not None and f.result() == "raise":
            self._raised(n)

    def trim(self, req: TrimAlarms) -> Awaitable[int]:
        result: Awaitable[int] = self._writer.submit("alarm_trim", req)
        return result

    def expire(self, req: ExpireAlarms) -> Awaitable[Expired]:
        result: Awaitable[Expired] = self._writer.submit("alarm_expire", req)
        return result

    def set_limits(self, limits: Limits) -> Awaitable[bool]:
        result: Awaitable[bool] = self._writer.submit("alarm_limits", limits)
        return result
