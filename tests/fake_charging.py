"""An in-memory ChargingService that records the commands it gets and answers as told:
for testing the protocol agents as translators (the money is tested on the real store)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from ocs.charging.api import (
    BalanceView,
    ChargeEvent,
    ChargingBusy,
    CloseSession,
    Debit,
    DeliveryOutcome,
    Grant,
    Identity,
    OpenSession,
    PriceEnquiry,
    PriceQuote,
    Refund,
    RefundEvent,
    Refusal,
    Released,
    ReleaseSession,
    Service,
    SessionHold,
    Settlement,
    SmppBind,
    SmppBindsOf,
    SmsMessage,
    SubmitSms,
    Subscriber,
    UpdateSession,
)

SUB = Subscriber(msisdn="41790000001", plan_id="p", mode="prepaid", status="active",
                 currency="EUR")


def _done(value: Any) -> Awaitable[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


class Recorder:
    """A ChargingService that records the commands and answers as told."""

    def __init__(self) -> None:
        self.commands: list[Any] = []
        self.grant = Grant(ok=True, msisdn="41790000001", granted_units=1000)
        self.refusal: Refusal | None = None
        self.busy = False
        self.holds: list[SessionHold] = []
        self.unknown_sessions = False
        """Reports on a session are answered UNKNOWN_RESERVATION (no Start seen) unless
        their request has a step (the agent's second try, after opening it)."""

    def _answer(self, cmd: Any, value: Any) -> Awaitable[Any]:
        if self.busy:
            raise ChargingBusy("queue full")
        self.commands.append(cmd)
        return _done(value)

    def open_session(self, cmd: OpenSession) -> Awaitable[Grant]:
        if self.refusal is not None:
            return self._answer(cmd, Grant(ok=False, refusal=self.refusal))
        return self._answer(cmd, self.grant)

    def update_session(self, cmd: UpdateSession) -> Awaitable[Settlement]:
        if self.unknown_sessions and not cmd.request.step:
            return self._answer(cmd, Settlement(ok=False,
                                                refusal=Refusal.UNKNOWN_RESERVATION))
        return self._answer(cmd, Settlement(ok=True, used_units=cmd.used_units,
                                            next_grant=self.grant))

    def close_session(self, cmd: CloseSession) -> Awaitable[Settlement]:
        return self._answer(cmd, Settlement(ok=True, used_units=cmd.used_units))

    def release_session(self, cmd: ReleaseSession) -> Awaitable[Released]:
        return self._answer(cmd, Released(ok=True))

    def charge_event(self, cmd: ChargeEvent) -> Awaitable[Debit]:
        if self.refusal is not None:
            return self._answer(cmd, Debit(ok=False, refusal=self.refusal))
        return self._answer(cmd, Debit(ok=True, units=cmd.units))

    def refund(self, cmd: RefundEvent) -> Awaitable[Refund]:
        return self._answer(cmd, Refund(ok=True))

    def submit_sms(self, cmd: SubmitSms) -> Awaitable[Debit]:
        raise AssertionError("not used by these agents")

    def delivery_outcome(self, cmd: DeliveryOutcome) -> Awaitable[bool]:
        raise AssertionError("not used by these agents")

    def smpp_bind(self, cmd: SmppBind) -> Awaitable[bool]:
        raise AssertionError("not used by these agents")

    def smpp_binds_reset(self, holder: SmppBindsOf) -> Awaitable[int]:
        raise AssertionError("not used by these agents")

    def smpp_binds_touch(self, holder: SmppBindsOf) -> Awaitable[int]:
        raise AssertionError("not used by these agents")

    def subscriber(self, ids: Identity) -> Subscriber | None:
        return SUB if ("msisdn", "41790000001") in [(str(k), v) for k, v in ids] else None

    def balance(self, ids: Identity) -> BalanceView | None:
        return None

    def price(self, enquiry: PriceEnquiry) -> PriceQuote:
        return PriceQuote(ok=True, units=enquiry.units, charge=123)

    def affordable_units(self, sub: Subscriber, service: Service, cap: int, *,
                         rating_group: int | None = None,
                         visited_network: str = "", slice_: str = "") -> int | None:
        return cap

    def prices(self, sub: Subscriber, service: Service) -> bool:
        return True

    def max_usage(self, service: Service) -> int:
        return 10**9

    def session_holds(self, session_id: str) -> list[SessionHold]:
        return list(self.holds)

    async def sessions_with_prefix(self, prefix: str) -> list[SessionHold]:
        return []

    async def due_messages(self, now: int, *, fresh_routes: set[str], skip: set[str],
                           limit: int = 500, receivers: bool = True) -> list[SmsMessage]:
        return []
