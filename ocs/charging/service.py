"""The :class:`~ocs.charging.api.ChargingService` over the charging engine and its store.

Here, and only here, a request's name becomes its idempotency key:
``origin NUL session NUL number NUL rating-group-or-"-" NUL kind[:step]``, where ``kind``
says which operation it is (``r`` reserve, ``c`` commit, ``d`` debit, ``refund``,
``release``). A refund finds the debit it reverses by building that debit's key from its
:class:`RequestRef` the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from ocs import metrics
from ocs.charging.api import (
    BalanceView,
    ChargeEvent,
    ChargingBusy,
    ChargingError,
    CloseSession,
    DeliveryOutcome,
    Identity,
    OpenSession,
    PriceEnquiry,
    PriceQuote,
    RefundEvent,
    ReleaseSession,
    RequestRef,
    SessionHold,
    SmppBind,
    SmppBindsOf,
    SmsMessage,
    SubmitSms,
    Subscriber,
    UpdateSession,
)
from ocs.charging.engine import OPERATIONS, ChargingEngine
from ocs.charging.model import (
    CommitRequest,
    Debit,
    DebitRequest,
    Grant,
    Refund,
    RefundRequest,
    Released,
    ReleaseRequest,
    ReserveRequest,
    Settlement,
    SubmitSmsRequest,
)
from ocs.messaging import due, due_in_cluster
from ocs.rating.plans import SERVICE_OF, Service
from ocs.store.cluster import ClusterStore
from ocs.store.records import Reservation

MAX_KEY = 400
"""Longer keys (peers choose session ids and origins) are shortened to a digest: LMDB
takes keys of at most 511 bytes, and ANSWER_EXPIRY puts 8 more in front."""


def request_key(ref: RequestRef, rating_group: int | None, kind: str) -> bytes:
    """The store's idempotency key of one operation made for request ``ref``."""
    rg = "-" if rating_group is None else str(rating_group)
    tail = f"{kind}:{ref.step}" if ref.step else kind
    key = f"{ref.origin}\x00{ref.session}\x00{ref.number}\x00{rg}\x00{tail}".encode()
    if len(key) <= MAX_KEY:
        return key
    return b"\x00long\x00" + hashlib.blake2b(key, digest_size=32).digest()


def _hold(r: Reservation) -> SessionHold:
    return SessionHold(session_id=r.session_id, msisdn=r.msisdn, service=SERVICE_OF[r.service],
                       rating_group=r.rating_group, owner=r.owner, expires_at=r.expires_at,
                       destination=r.destination, visited_network=r.visited_network,
                       callback=r.callback)


_COUNTERS: dict[tuple[str, str], Any] = {}
COUNTED = frozenset(OPERATIONS)
"""The charging engine's operations (the writer also runs the NOC's)."""


def count_operation(op: str, result: Any) -> None:
    """``ocs_charging_operations_total{op, outcome}``: ok, the refusal, or the error's
    type. Called as each answer resolves (the writer client's result hook), so counting
    costs no callback of its own per operation."""
    if op not in COUNTED:
        return
    if isinstance(result, BaseException):
        outcome = type(result).__name__
    else:
        ok = result if isinstance(result, bool | int) else getattr(result, "ok", True)
        outcome = "ok" if ok else (getattr(result, "refusal", "") or "refused")
    counter = _COUNTERS.get((op, outcome))
    if counter is None:
        counter = _COUNTERS[op, outcome] = metrics.CHARGING_OPS.labels(op, outcome)
    counter.inc()


MAX_PREFIX_SCANS = 16
"""Session prefix scans (Accounting-On/Off) a process keeps waiting at most."""


class EngineChargingService:
    """Charging for the agents of one process, run by ``engine`` (its writer thread or
    the writer process)."""

    def __init__(self, engine: ChargingEngine):
        self.engine = engine
        self._prefix_scans: dict[str, asyncio.Future[list[SessionHold]]] = {}
        self._scan_turn = asyncio.Lock()

    def _op(self, op: str, request: Any) -> asyncio.Future[Any]:
        try:
            fut: asyncio.Future[Any] = self.engine.submit(op, request)
        except ChargingError as exc:  # busy, unavailable: refused before it was queued
            count_operation(op, exc)
            raise
        return fut

    # -- writes -----------------------------------------------------------------------

    def open_session(self, cmd: OpenSession) -> asyncio.Future[Grant]:
        return self._op("reserve", ReserveRequest(
            request_key=request_key(cmd.request, cmd.rating_group, "r"),
            session_id=cmd.session_id, subscriber=cmd.subscriber, service=cmd.service,
            units=cmd.units, rating_group=cmd.rating_group, destination=cmd.destination,
            visited_network=cmd.visited_network, protocol=cmd.protocol,
            validity_s=cmd.validity_s, now=cmd.now, owner=cmd.owner, slice=cmd.slice,
            dnn=cmd.dnn, callback=cmd.callback))

    def update_session(self, cmd: UpdateSession) -> asyncio.Future[Settlement]:
        return self._op("commit", CommitRequest(
            request_key=request_key(cmd.request, cmd.rating_group, "c"),
            session_id=cmd.session_id, service=cmd.service, rating_group=cmd.rating_group,
            used_units=cmd.used_units, cumulative_units=cmd.cumulative_units,
            bytes_in=cmd.bytes_in, bytes_out=cmd.bytes_out, final=False,
            next_units=cmd.next_units, validity_s=cmd.validity_s, now=cmd.now,
            owner=cmd.owner, clamp_excess=cmd.clamp_excess))

    def close_session(self, cmd: CloseSession) -> asyncio.Future[Settlement]:
        return self._op("commit", CommitRequest(
            request_key=request_key(cmd.request, cmd.rating_group, "c"),
            session_id=cmd.session_id, service=cmd.service, rating_group=cmd.rating_group,
            used_units=cmd.used_units, cumulative_units=cmd.cumulative_units,
            bytes_in=cmd.bytes_in, bytes_out=cmd.bytes_out, final=True, now=cmd.now,
            owner=cmd.owner, clamp_excess=cmd.clamp_excess,
            remember_end=cmd.remember_end))

    def release_session(self, cmd: ReleaseSession) -> asyncio.Future[Released]:
        return self._op("release", ReleaseRequest(
            request_key=request_key(cmd.request, cmd.rating_group, "release"),
            session_id=cmd.session_id, service=cmd.service, rating_group=cmd.rating_group,
            now=cmd.now))

    def _debit(self, cmd: ChargeEvent) -> DebitRequest:
        return DebitRequest(
            request_key=request_key(cmd.request, cmd.rating_group, "d"),
            subscriber=cmd.subscriber, service=cmd.service, units=cmd.units,
            session_id=cmd.session_id, rating_group=cmd.rating_group,
            destination=cmd.destination, visited_network=cmd.visited_network,
            protocol=cmd.protocol, characters=cmd.characters, now=cmd.now,
            slice=cmd.slice, dnn=cmd.dnn)

    def charge_event(self, cmd: ChargeEvent) -> asyncio.Future[Debit]:
        return self._op("debit", self._debit(cmd))

    def refund(self, cmd: RefundEvent) -> asyncio.Future[Refund]:
        return self._op("refund", RefundRequest(
            request_key=request_key(cmd.request, cmd.rating_group, "refund"),
            original_key=request_key(cmd.original, cmd.rating_group, "d"), now=cmd.now))

    def submit_sms(self, cmd: SubmitSms) -> asyncio.Future[Debit]:
        return self._op("submit_sms", SubmitSmsRequest(
            debit=self._debit(cmd.charge), submitter=cmd.submitter, route=cmd.route,
            source=cmd.source, destination=cmd.destination, data_coding=cmd.data_coding,
            esm_class=cmd.esm_class, payload=cmd.payload,
            registered_delivery=cmd.registered_delivery, validity_s=cmd.validity_s))

    def delivery_outcome(self, cmd: DeliveryOutcome) -> asyncio.Future[bool]:
        return self._op("sms_outcome", cmd)

    def smpp_bind(self, cmd: SmppBind) -> asyncio.Future[bool]:
        return self._op("smpp_bind", cmd)

    def smpp_binds_reset(self, holder: SmppBindsOf) -> asyncio.Future[int]:
        return self._op("smpp_binds_reset", holder)

    def smpp_binds_touch(self, holder: SmppBindsOf) -> asyncio.Future[int]:
        return self._op("smpp_binds_touch", holder)

    # -- reads ------------------------------------------------------------------------

    def subscriber(self, ids: Identity) -> Subscriber | None:
        return self.engine.find_subscriber_now(ids)

    def balance(self, ids: Identity) -> BalanceView | None:
        return self.engine.check_balance(ids)

    def price(self, enquiry: PriceEnquiry) -> PriceQuote:
        return self.engine.price_enquiry(
            enquiry.subscriber, enquiry.service, enquiry.units,
            rating_group=enquiry.rating_group, destination=enquiry.destination,
            visited_network=enquiry.visited_network, now=enquiry.now,
            slice_=enquiry.slice)

    def affordable_units(self, sub: Subscriber, service: Service, cap: int, *,
                         rating_group: int | None = None,
                         visited_network: str = "", slice_: str = "") -> int | None:
        return self.engine.affordable_units(sub, service, cap, rating_group=rating_group,
                                            visited_network=visited_network, slice_=slice_)

    def prices(self, sub: Subscriber, service: Service) -> bool:
        plan = self.engine.plan_of(sub)
        return plan is not None and len(plan.tries[service]) > 0

    def max_usage(self, service: Service) -> int:
        return self.engine.settings.max_usage(service)

    def session_holds(self, session_id: str) -> list[SessionHold]:
        return [_hold(r) for r in self.engine.session_reservations(session_id)]

    async def sessions_with_prefix(self, prefix: str) -> list[SessionHold]:
        """Off the event loop (on a Redis Cluster it scans every primary's keys), one
        scan at a time in this process; callers asking for a prefix being scanned share
        that scan; with MAX_PREFIX_SCANS prefixes waiting, ChargingBusy (a NAS sending
        Accounting-On under many names must not queue scans without bound)."""
        running = self._prefix_scans.get(prefix)
        if running is None:
            if len(self._prefix_scans) >= MAX_PREFIX_SCANS:
                raise ChargingBusy(f"{len(self._prefix_scans)} session scans waiting")
            running = asyncio.ensure_future(self._scan_prefix(prefix))
            self._prefix_scans[prefix] = running
            running.add_done_callback(lambda _: self._prefix_scans.pop(prefix, None))
        return await asyncio.shield(running)

    async def _scan_prefix(self, prefix: str) -> list[SessionHold]:
        async with self._scan_turn:
            found = await asyncio.to_thread(self.engine.reservations_with_prefix, prefix)
        return [_hold(r) for r in found]

    async def due_messages(self, now: int, *, fresh_routes: set[str], skip: set[str],
                           limit: int = 500, receivers: bool = True) -> list[SmsMessage]:
        store = self.engine.store
        if isinstance(store, ClusterStore):  # network reads: off the event loop
            return await asyncio.to_thread(due_in_cluster, store, now,
                                           fresh_routes=fresh_routes, skip=set(skip),
                                           limit=limit, receivers=receivers)
        return due(self.engine.lmdb("the SMS queue"), now, fresh_routes=fresh_routes,
                   skip=skip, limit=limit)

