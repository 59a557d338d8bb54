"""The charging engine: reserve, commit, release, direct debit, refund, enquiries.

Protocol-agnostic. Every write is an operation ``fn(tx)`` run by the group-commit writer
(or directly in a CLI transaction); the caller is answered only after the commit.
Every operation first looks its ``request_key`` up in the stored answers and replays the
answer when found, so retries never charge twice (invariant 5). Money is checked and
moved inside the write transaction, so prepaid never goes below zero under any
concurrency (invariant 3). Each settling operation writes its CDR into the journal in
the same transaction (invariant 4).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import msgspec

from ocs import messaging
from ocs.charging.model import (
    BIND_TTL_S,
    Adjusted,
    AdjustRequest,
    BalanceView,
    CommitRequest,
    Debit,
    DebitRequest,
    ExpireRequest,
    Grant,
    Identity,
    IdKind,
    PriceQuote,
    Refund,
    RefundRequest,
    Refusal,
    Released,
    ReleaseRequest,
    ReserveRequest,
    Settlement,
    SmppBindRequest,
    SmppBindsOf,
    SmsOutcomeRequest,
    StoredAnswer,
    SubmitSmsRequest,
    TrimRequest,
    status_refusal,
)
from ocs.charging.plans import PlanBook, PlanCache
from ocs.errors import ChargingPaused
from ocs.fraud.cases import local_hour
from ocs.fraud.rules import HOME, FraudSettings
from ocs.fraud.rules import Event as FraudEvent
from ocs.ledger.account import Account, drop_expiry, session_owner, stored_answer
from ocs.rating.engine import (
    UsageContext,
    cost,
    cycle_of,
    is_zero_rated,
    max_units,
    rate_usage,
    select_rate,
)
from ocs.rating.plans import SERVICE_OF, TIMED, Mode, Plan, Rate, Service
from ocs.store.env import (
    ANSWER_EXPIRY,
    ANSWERS,
    BALANCES,
    ENDED_PREFIX,
    IDX_IMSI,
    IDX_USERNAME,
    META,
    META_SMPP_BINDS,
    SUBSCRIBERS,
    Store,
    StoreError,
    pack_u64,
    session_part,
    unpack_u64,
)
from ocs.store.records import (
    Allowance,
    Balance,
    CdrRecord,
    RateSnapshot,
    Reservation,
    Subscriber,
    dec_balance,
    dec_reservation,
    dec_subscriber,
    encode,
)
from ocs.store.tx import StorePort, Tx
from ocs.store.writer import Writer

T = TypeVar("T")
A = TypeVar("A", Grant, Settlement, Released, Debit, Refund)

_enc = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineSettings:
    node: str = "ocs-1"
    home_networks: frozenset[str] = frozenset()
    default_data_grant_bytes: int = 10_000_000
    default_voice_grant_s: int = 300
    default_validity_s: int = 900
    fraud: dict[str, Any] | None = None
    """The ``[fraud]`` config as plain data (it crosses to the writer process); None =
    no fraud rules."""
    max_usage_bytes: int = 100_000_000_000
    max_usage_seconds: int = 7 * 86400
    max_usage_events: int = 10_000
    """Plausibility limits of one report (bytes; seconds; messages or events)."""

    def max_usage(self, service: Service | str) -> int:
        """The plausibility limit of one report of ``service`` (or its value)."""
        service = Service(service)
        if service is Service.DATA:
            return self.max_usage_bytes
        if service in TIMED:
            return self.max_usage_seconds
        return self.max_usage_events

    def default_units(self, service: Service) -> int:
        if service is Service.DATA:
            return self.default_data_grant_bytes
        if service is Service.VOICE or service is Service.TIME:
            return self.default_voice_grant_s
        return 1




def settings_data(settings: EngineSettings) -> dict[str, Any]:
    """``settings`` as plain data (what crosses to the writer process)."""
    data = dataclasses.asdict(settings)
    data["home_networks"] = sorted(settings.home_networks)
    return data


def settings_from_data(data: dict[str, Any]) -> EngineSettings:
    return EngineSettings(**{**data, "home_networks": frozenset(data["home_networks"])})


def rate_snapshot(plan: Plan, rate: Rate) -> RateSnapshot:
    """The terms a reservation keeps (its price does not move under it)."""
    return RateSnapshot(plan_id=plan.id, rate_id=rate.id, service=rate.service.value,
                        price=rate.price, unit_size=rate.unit_size,
                        first_increment_s=rate.first_increment_s,
                        increment_s=rate.increment_s, connect_fee=rate.connect_fee,
                        plan_version=plan.version)


def reservation_key(session_id: str, service: Service, rating_group: int | None) -> bytes:
    unit = str(rating_group) if rating_group is not None else service.value
    return session_part(session_id) + b"\x00" + unit.encode()


_ENDED = ENDED_PREFIX
_dec_adjusted = msgspec.msgpack.Decoder(Adjusted)


def digest(*parts: object) -> bytes:
    """Of a request's content, to tell a retransmission from a reused request key. A
    CRC, not a cryptographic hash: it only has to notice a client's mistake or trick
    (a collision would replay the first answer, which is what a retransmission gets), and
    it runs in the writer for every operation."""
    return zlib.crc32(_enc.encode(parts)).to_bytes(4, "big")


def _key_text(key: bytes) -> str:
    return key.decode("ascii", "backslashreplace")


def _now(now: int | None) -> int:
    return int(time.time()) if now is None else now


# -- allowance buckets -------------------------------------------------------------------

_ALW_FIELDS = {
    Service.DATA: ("data_used", "data_reserved"),
    Service.VOICE: ("voice_used", "voice_reserved"),
    Service.SMS: ("sms_used", "sms_reserved"),
}


def allowance_free(alw: Allowance, plan: Plan, service: Service) -> int:
    names = _ALW_FIELDS.get(service)
    if names is None:
        return 0
    total = plan.allowances.for_service(service)
    used: int = getattr(alw, names[0])
    reserved: int = getattr(alw, names[1])
    return max(0, total - used - reserved)


def event_uses_allowance(plan: Plan, ctx: UsageContext) -> bool:
    """Whether a one-off event (not zero-rated) takes from the plan's allowance: at home,
    for a service the plan has an allowance of."""
    return not ctx.roaming and plan.allowances.for_service(ctx.service) > 0


def _alw_add(alw: Allowance, service: Service, used: int = 0, reserved: int = 0) -> None:
    names = _ALW_FIELDS.get(service)
    if names is None:
        return
    if used:
        setattr(alw, names[0], max(0, getattr(alw, names[0]) + used))
    if reserved:
        setattr(alw, names[1], max(0, getattr(alw, names[1]) + reserved))


def _bind_holder(node: str, worker: int) -> bytes:
    """The holder part of a bind entry's key (``META_SMPP_BINDS system_id NUL``
    first): ``node NUL worker`` (u16)."""
    return node.encode() + b"\x00" + worker.to_bytes(2, "big")


def _bind_live(value: bytes, now: int) -> bool:
    """A bind entry's holder was heard from lately (an entry of the older form, count
    only, is of this node's own workers: live)."""
    return len(value) < 16 or unpack_u64(value[8:16]) + BIND_TTL_S >= now


def _binds_of(tx: Tx, req: SmppBindsOf) -> list[tuple[bytes, bytes]]:
    """The bind entries (every account's) of the holder(s) ``req`` names; entries of the
    older form (no node) are of this node's own workers."""
    out: list[tuple[bytes, bytes]] = []
    node = req.node.encode()
    for k, v in tx.scan(META, META_SMPP_BINDS, META_SMPP_BINDS[:-1] + b"\x01"):
        holder = k[len(META_SMPP_BINDS):].partition(b"\x00")[2]
        of_node = holder[:-3] if len(holder) > 2 else node
        worker = int.from_bytes(holder[-2:], "big")
        if of_node == node and (req.worker < 0 or worker == req.worker):
            out.append((k, v))
    return out


OPERATIONS: dict[str, tuple[type[Any], Any]] = {
    "reserve": (ReserveRequest, Grant),
    "commit": (CommitRequest, Settlement),
    "release": (ReleaseRequest, Released),
    "debit": (DebitRequest, Debit),
    "refund": (RefundRequest, Refund),
    "expire": (ExpireRequest, bool),
    "trim_answers": (TrimRequest, int),
    "submit_sms": (SubmitSmsRequest, Debit),
    "sms_outcome": (SmsOutcomeRequest, bool),
    "fraud_rules": (bool, bool),
    "smpp_bind": (SmppBindRequest, bool),
    "smpp_binds_reset": (SmppBindsOf, int),
    "smpp_binds_touch": (SmppBindsOf, int),
    "reconfigure": (dict, bool),
}
"""Write operations by name -> (request type, result type); ``ChargingEngine.op_<name>``
runs one inside a transaction. Names and types are what crosses to a writer process."""


NEW_CHARGES = frozenset({"reserve", "debit", "submit_sms"})
"""Operations that start new charging (refused while charging is paused)."""


class WriteBackend(Protocol):
    """Where write operations run: a writer thread here, or the writer process."""

    def submit(self, name: str, req: Any) -> asyncio.Future[Any]: ...


class ThreadBackend:
    """Runs named operations on a :class:`Writer` thread of this process."""

    def __init__(self, writer: Writer, engine: ChargingEngine):
        self.writer = writer
        self._engine = engine

    def submit(self, name: str, req: Any) -> asyncio.Future[Any]:
        op = getattr(self._engine, "op_" + name)
        return self.writer.submit(lambda tx: op(tx, req))


class ChargingEngine:
    """Facade the protocol agents call. Async methods return after the durable commit."""

    def __init__(self, store: StorePort, writer: Writer | None, settings: EngineSettings, *,
                 backend: WriteBackend | None = None):
        """``writer``: a writer thread of this process; or ``backend``: where named
        operations go otherwise (the server's writer process). Neither: sync use only."""
        self.store = store
        self.writer = writer
        self.settings = settings
        self.plans = PlanCache()
        self.reconfigure(settings)
        self.paused = ""
        """Why new charging is refused ("" = it is not): set by the server's health
        checks, e.g. while the CDR directory is full."""
        self.backend: WriteBackend | None = backend or (
            ThreadBackend(writer, self) if writer is not None else None)

    # -- running operations -----------------------------------------------------------

    def submit(self, name: str, req: Any) -> asyncio.Future[Any]:
        """Queue write operation ``name``; the future resolves after the durable commit.
        While charging is paused, new charges raise :class:`ChargingPaused` (settling what
        was already used still goes through)."""
        if self.backend is None:
            raise RuntimeError("engine has no writer (use the *_sync methods)")
        if self.paused and name in NEW_CHARGES:
            raise ChargingPaused(self.paused)
        return self.backend.submit(name, req)

    def _run_sync(self, fn: Callable[[Tx], T]) -> T:
        if self.writer is not None:
            return self.writer.run(fn)
        return self.store.run_write(fn)

    def reserve_sync(self, req: ReserveRequest) -> Grant:
        return self._run_sync(lambda tx: self.op_reserve(tx, req))

    def commit_sync(self, req: CommitRequest) -> Settlement:
        return self._run_sync(lambda tx: self.op_commit(tx, req))

    def release_sync(self, req: ReleaseRequest) -> Released:
        return self._run_sync(lambda tx: self.op_release(tx, req))

    def debit_sync(self, req: DebitRequest) -> Debit:
        return self._run_sync(lambda tx: self.op_debit(tx, req))

    def refund_sync(self, req: RefundRequest) -> Refund:
        return self._run_sync(lambda tx: self.op_refund(tx, req))

    # -- shared pieces inside a transaction -----------------------------------------

    def _idempotent(self, acct: Account, key: bytes, now: int | None,
                    compute: Callable[[int], A], content: bytes = b"") -> A:
        """Replay the stored answer for ``key``, or compute it, save the account, store
        the answer and return it. A key stored with another ``content`` digest is a
        different request reusing the key: refused (REQUEST_MISMATCH), nothing changes."""
        stored = acct.answer(key)
        if stored is not None:
            if content and stored.digest and stored.digest != content:
                return type(stored.answer)(  # type: ignore[return-value]
                    ok=False, refusal=Refusal.REQUEST_MISMATCH)
            return msgspec.structs.replace(  # type: ignore[return-value]
                stored.answer, replayed=True)
        ts = _now(now)
        answer = compute(ts)
        acct.save()
        acct.keep_answer(key, StoredAnswer(ts, answer, content))
        return answer

    @staticmethod
    def _mark_ended(acct: Account, key: bytes, now: int) -> None:
        acct.keep_answer(_ENDED + key, StoredAnswer(now, Settlement(
            ok=False, refusal=Refusal.SESSION_ENDED, msisdn=acct.msisdn)))

    @staticmethod
    def find_subscriber(tx: Tx, ids: Identity) -> Subscriber | None:
        for kind, value in ids:
            if not value:
                continue
            if kind is IdKind.MSISDN:
                msisdn: bytes | None = value.encode()
            elif kind is IdKind.IMSI:
                msisdn = tx.get(IDX_IMSI, value.encode())
            else:
                msisdn = tx.get(IDX_USERNAME, value.encode())
            if msisdn is None:
                continue
            raw = tx.get(SUBSCRIBERS, msisdn)
            if raw is not None:
                return dec_subscriber.decode(raw)
        return None

    def _account(self, tx: Tx, ids: Identity) -> Account:
        """The account of the subscriber ``ids`` name (an empty one when nobody)."""
        sub = self.find_subscriber(tx, ids)
        return Account(tx, sub.msisdn if sub is not None else "", sub)

    @staticmethod
    def _balance(tx: Tx, msisdn: bytes) -> Balance:
        raw = tx.get(BALANCES, msisdn)
        return dec_balance.decode(raw) if raw is not None else Balance()

    @staticmethod
    def allowance_in(tx: Tx, msisdn: bytes, cycle: str) -> Allowance:
        """The buckets as they count in ``cycle`` (read-only callers: enquiries)."""
        raw = tx.get(BALANCES, msisdn)
        alw = dec_balance.decode(raw).allowance if raw is not None else None
        if alw is None or alw.cycle != cycle:
            alw = Allowance(cycle=cycle)  # a new cycle: buckets start full again
        return alw

    def rating_context(self, book: PlanBook, service: Service, at: int,
                       rating_group: int | None, destination: str, visited_network: str,
                       slice_: str = "") -> UsageContext:
        roaming = bool(visited_network) and visited_network not in self.settings.home_networks
        return UsageContext(
            service=service,
            at=at,
            rating_group=rating_group,
            destination=destination,
            zone=book.zone_of_network.get(visited_network) if roaming else None,
            roaming=roaming,
            slice=slice_,
        )

    @staticmethod
    def _available(sub: Subscriber, bal: Balance) -> int:
        avail = bal.balance - bal.reserved
        if sub.mode == Mode.POSTPAID:
            avail += sub.credit_limit
        return max(0, avail)

    @staticmethod
    def _no_money(sub: Subscriber) -> Refusal:
        return Refusal.CREDIT_LIMIT_REACHED if sub.mode == Mode.POSTPAID else Refusal.OUT_OF_CREDIT

    def check_subscriber(self, sub: Subscriber | None, roaming: bool) -> Refusal | None:
        refusal = status_refusal(sub)
        if refusal is not None or sub is None:
            return refusal
        if roaming and not sub.roaming:
            return Refusal.ROAMING_NOT_ALLOWED
        return None

    def _payer(self, acct: Account, service: Service, now: int, rating_group: int | None,
               destination: str, visited_network: str, slice_: str = "") -> tuple[
                   UsageContext, Subscriber | None, Plan | None, Refusal | None]:
        """Who pays, on which plan, in which rating context; or why nobody can."""
        book = self.plans.in_tx(acct.tx)
        ctx = self.rating_context(book, service, now, rating_group, destination,
                                  visited_network, slice_)
        sub = acct.subscriber()
        refusal = self.check_subscriber(sub, ctx.roaming)
        plan = None
        if refusal is None and sub is not None:
            plan = book.plan_at(sub.plan_id, now)
            if plan is None:
                refusal = Refusal.RATING_FAILED
        if refusal is Refusal.ROAMING_NOT_ALLOWED and sub is not None:  # a fraud indicator
            self._fraud(acct, sub, book.plan_at(sub.plan_id, now), "refused_roaming", now,
                        service=service, visited_network=visited_network, roaming=True)
        return ctx, sub, plan, refusal

    # -- fraud rules (in the same transaction as the charge) ----------------------------

    def _fraud(self, acct: Account, sub: Subscriber, plan: Plan | None, kind: str, at: int,
               *, service: Service, session_id: str = "", units: int = 0, charge: int = 0,
               session_total: int = 0, destination: str = "", visited_network: str = "",
               roaming: bool = False) -> str:
        """allow | review | block for this rated event (block: ``sub`` is now suspended).
        The rules' state is in the account's balance, saved with it."""
        if not self.fraud.enabled:
            return "allow"
        ev = FraudEvent(kind, at, local_hour(plan.timezone if plan else "UTC", at),
                        service.value, session_id, units, charge, session_total,
                        destination, visited_network if roaming else HOME, roaming)
        return acct.fraud_check(self.fraud, sub, ev)

    # -- reserve ----------------------------------------------------------------------

    def op_reserve(self, tx: Tx, req: ReserveRequest) -> Grant:
        tx.expect(ANSWERS, req.request_key)
        acct = self._account(tx, req.subscriber)
        return self._idempotent(acct, req.request_key, req.now,
                                lambda now: self._reserve(acct, req, now),
                                digest(req.subscriber, req.units, req.rating_group,
                                       req.destination, req.visited_network, req.owner,
                                       req.slice))

    def _reserve(self, acct: Account, req: ReserveRequest, now: int) -> Grant:
        ctx, sub, plan, refusal = self._payer(acct, req.service, now, req.rating_group,
                                              req.destination, req.visited_network,
                                              req.slice)
        if refusal is not None or sub is None or plan is None:
            return Grant(ok=False, refusal=refusal or Refusal.UNKNOWN_SUBSCRIBER,
                         msisdn=sub.msisdn if sub else "")
        validity = req.validity_s or self.settings.default_validity_s
        if is_zero_rated(plan, ctx):
            return Grant(ok=True, msisdn=sub.msisdn, zero_rated=True, validity_s=validity)
        rate = select_rate(plan, ctx)
        if rate is None:
            return Grant(ok=False, refusal=Refusal.RATING_FAILED, msisdn=sub.msisdn)
        key = reservation_key(req.session_id, req.service, req.rating_group)
        bal = acct.balance()
        if self._fraud(acct, sub, plan, "start", now, service=req.service,
                       session_id=req.session_id, destination=req.destination,
                       visited_network=req.visited_network, roaming=ctx.roaming) == "block":
            return Grant(ok=False, refusal=Refusal.SUSPENDED, msisdn=sub.msisdn)
        cycle = cycle_of(plan, now)
        uses_allowance = plan.allowances.for_service(req.service) > 0
        alw = acct.allowance(cycle) if uses_allowance else Allowance(cycle=cycle)
        owner = session_owner(acct.tx, key)
        if owner is not None and owner != sub.msisdn:
            return Grant(ok=False, refusal=Refusal.SESSION_CONFLICT, msisdn=sub.msisdn)
        res = acct.reservation(key) if owner is not None else None
        expired_at = None
        if res is not None:
            if req.owner and res.owner and req.owner != res.owner:
                return Grant(ok=False, refusal=Refusal.NOT_OWNER)
            expired_at = res.expires_at
            self._drop_holds(res, bal, alw)
        else:
            res = Reservation(
                key=key,
                session_id=req.session_id,
                msisdn=sub.msisdn,
                imsi=sub.imsi,
                service=req.service.value,
                rating_group=req.rating_group,
                destination=req.destination,
                visited_network=req.visited_network,
                roaming=ctx.roaming,
                protocol=req.protocol,
                rate=rate_snapshot(plan, rate),
                mode=sub.mode,
                currency=sub.currency,
                cycle=cycle,
                allowance_ok=not ctx.roaming and uses_allowance,
                started_at=now,
                last_at=now,
                expires_at=now + validity,
                owner=req.owner,
                slice=req.slice,
                dnn=req.dnn,
                callback=req.callback,
            )
        requested = req.units if req.units is not None and req.units > 0 else (
            self.settings.default_units(req.service))
        grant = self._grant(sub, plan, bal, alw, res, requested, validity, now)
        if not grant.ok:
            # nothing written (an earlier grant on this key stays as it was) but the
            # rules' state, on the stored balance
            if self.fraud.enabled:
                acct.revert_balance().fraud = bal.fraud
            return grant
        acct.keep_reservation(res, expired_at=expired_at)
        acct.touch()
        return grant

    @staticmethod
    def _drop_holds(res: Reservation, bal: Balance, alw: Allowance) -> None:
        bal.reserved -= res.money_reserved
        if res.cycle == alw.cycle:
            _alw_add(alw, SERVICE_OF[res.service], reserved=-res.allowance_reserved)
        res.money_reserved = 0
        res.allowance_reserved = 0
        res.granted_units = 0


    def _grant(self, sub: Subscriber, plan: Plan, bal: Balance, alw: Allowance,
               res: Reservation, requested: int, validity: int, now: int) -> Grant:
        service = SERVICE_OF[res.service]
        from_allowance = 0
        if res.allowance_ok and res.cycle == alw.cycle:
            from_allowance = min(requested, allowance_free(alw, plan, service))
        rest = requested - from_allowance
        avail = self._available(sub, bal)
        terms = res.rate
        base = cost(terms, res.chargeable_total)
        need = cost(terms, res.chargeable_total + rest) - base
        final = False
        if avail <= 0 and res.charged_total < base:
            # Capped earlier: the rounding slack of cost(total) was never paid either.
            units, money, final = 0, 0, True
        elif need <= avail:
            units, money = rest, need
        else:
            total = max_units(terms, base + avail, res.chargeable_total + rest)
            units = max(0, total - res.chargeable_total)
            money = cost(terms, res.chargeable_total + units) - base if units else 0
            final = True
        granted = from_allowance + units
        if granted <= 0:
            return Grant(ok=False, refusal=self._no_money(sub), msisdn=sub.msisdn, final=True,
                         rate_id=terms.rate_id)
        res.granted_units = granted
        res.money_reserved = money
        res.allowance_reserved = from_allowance
        res.expires_at = now + validity
        bal.reserved += money
        _alw_add(alw, service, reserved=from_allowance)
        return Grant(
            ok=True,
            msisdn=sub.msisdn,
            granted_units=granted,
            final=final,
            validity_s=validity,
            rate_id=terms.rate_id,
            money_reserved=money,
            allowance_reserved=from_allowance,
        )

    # -- commit -----------------------------------------------------------------------

    def op_commit(self, tx: Tx, req: CommitRequest) -> Settlement:
        tx.expect(ANSWERS, req.request_key)
        key = reservation_key(req.session_id, req.service, req.rating_group)
        acct = Account(tx, session_owner(tx, key) or "")
        return self._idempotent(acct, req.request_key, req.now,
                                lambda now: self._commit(acct, key, req, now),
                                digest(req.rating_group, req.used_units, req.cumulative_units,
                                       req.final, req.next_units, req.owner))

    def _commit(self, acct: Account, key: bytes, req: CommitRequest, now: int) -> Settlement:
        res = acct.reservation(key) if acct.msisdn else None
        if res is None:
            ended = acct.answer(_ENDED + key)
            if ended is not None and isinstance(ended.answer, Settlement):
                return ended.answer
            return Settlement(ok=False, refusal=Refusal.UNKNOWN_RESERVATION)
        if req.owner and res.owner and req.owner != res.owner:
            return Settlement(ok=False, refusal=Refusal.NOT_OWNER)
        if req.cumulative_units is not None:
            used = max(0, req.cumulative_units - res.used_total)
        else:
            used = max(0, req.used_units)
        limit = self._max_usage[res.service]
        excess = 0
        if used > limit:
            if not req.clamp_excess:
                return Settlement(ok=False, refusal=Refusal.IMPLAUSIBLE_USAGE,
                                  msisdn=res.msisdn)
            used, excess = limit, used - limit
        expired_at = res.expires_at
        sub = acct.subscriber()
        book = self.plans.in_tx(acct.tx)
        plan = book.plan_at(res.rate.plan_id, now)
        bal = acct.balance()
        uses_allowance = res.allowance_ok or (
            plan is not None and not res.roaming
            and plan.allowances.for_service(SERVICE_OF[res.service]) > 0)
        cycle = cycle_of(plan, now) if plan is not None else res.cycle
        alw = acct.allowance(cycle) if uses_allowance else Allowance(cycle=cycle)
        acct.touch()
        settled = self._settle(acct, res, plan, bal, alw, used, now, req.bytes_in,
                               req.bytes_out, "final" if req.final else "interim",
                               write_cdr=used > 0 or req.final)
        if excess:  # acknowledged, never charged (a later report must not charge it)
            res.used_total += excess
            settled = msgspec.structs.replace(settled, excess_units=excess)
        next_grant: Grant | None = None
        service = SERVICE_OF[res.service]
        if sub is not None and self._fraud(
                acct, sub, plan, "end" if req.final else "usage", now, service=service,
                session_id=res.session_id, units=used, charge=settled.charged,
                session_total=res.used_total, destination=res.destination,
                visited_network=res.visited_network, roaming=res.roaming) == "block":
            sub = msgspec.structs.replace(sub, status="suspended")
        if req.final or sub is None or plan is None:
            acct.end_reservation(res, expired_at=expired_at)
            if req.final and req.remember_end:
                self._mark_ended(acct, key, now)
        else:
            refusal = self.check_subscriber(sub, res.roaming)
            validity = req.validity_s or self.settings.default_validity_s
            if refusal is not None:
                next_grant = Grant(ok=False, refusal=refusal, msisdn=sub.msisdn)
            elif req.next_units is not None:
                requested = req.next_units or self.settings.default_units(service)
                res.cycle = alw.cycle
                if plan.version != (res.rate.plan_version or 1):  # (0: from before versions)
                    self._adopt_version(book, plan, res, now)
                next_grant = self._grant(sub, plan, bal, alw, res, requested, validity, now)
            if next_grant is None or not next_grant.ok:
                res.expires_at = now + validity  # keep the session open until told otherwise
            acct.keep_reservation(res, expired_at=expired_at)
        return msgspec.structs.replace(settled, next_grant=next_grant)

    @staticmethod
    def _adopt_version(book: PlanBook, plan: Plan, res: Reservation, now: int) -> None:
        """A session's next quota is rated with the plan version in effect now: the
        rate that version picks for the session's event at this time. Usage so far
        stays priced as it was, and the running total carries on (one connect fee, no
        block paid twice). If the new version prices it no more, the old terms stay."""
        ctx = UsageContext(service=SERVICE_OF[res.service], at=now,
                           rating_group=res.rating_group, destination=res.destination,
                           zone=book.zone_of_network.get(res.visited_network)
                           if res.roaming else None, roaming=res.roaming, slice=res.slice)
        rate = select_rate(plan, ctx)
        if rate is not None:
            res.rate = rate_snapshot(plan, rate)

    def _settle(self, acct: Account, res: Reservation, plan: Plan | None, bal: Balance,
                alw: Allowance, used: int, now: int, bytes_in: int, bytes_out: int,
                result: str, *, write_cdr: bool) -> Settlement:
        """Charge ``used`` units against a reservation; its holds are dropped."""
        service = SERVICE_OF[res.service]
        same_cycle = res.cycle == alw.cycle
        held = res.allowance_reserved
        self._drop_holds(res, bal, alw)
        from_held = min(used, held)
        # Units granted from an earlier cycle's allowance stay free but count in that cycle.
        if same_cycle:
            _alw_add(alw, service, used=from_held)
        extra = 0
        if used > from_held and res.allowance_ok and plan is not None:
            extra = min(used - from_held, allowance_free(alw, plan, service))
            _alw_add(alw, service, used=extra)
        from_allowance = from_held + extra
        chargeable = used - from_allowance
        terms = res.rate
        need = cost(terms, res.chargeable_total + chargeable) - cost(terms, res.chargeable_total)
        charged = need
        if res.mode == Mode.PREPAID:
            charged = min(need, max(0, bal.balance - bal.reserved))
        bal.balance -= charged
        bal.charged_total += charged
        res.used_total += used
        res.chargeable_total += chargeable
        res.charged_total += charged
        res.commits += 1
        capped = charged < need
        record_id = ""
        if write_cdr:
            seq, record_id = acct.next_cdr(self.settings.node)
            acct.keep_cdr(seq, CdrRecord(
                record_id=record_id,
                session_id=res.session_id,
                msisdn=res.msisdn,
                imsi=res.imsi,
                service=res.service,
                rating_group=res.rating_group,
                destination=res.destination,
                start_time=res.last_at,
                end_time=now,
                duration_s=used if service in TIMED else max(0, now - res.last_at),
                bytes_in=bytes_in,
                bytes_out=bytes_out,
                units=used,
                charge=charged,
                currency=res.currency,
                plan_id=terms.plan_id,
                rate_id=terms.rate_id,
                roaming=res.roaming,
                visited_network=res.visited_network,
                protocol=res.protocol,
                result="capped" if capped else result,
                allowance_units=from_allowance,
                slice=res.slice,
                dnn=res.dnn,
                plan_version=terms.plan_version,
            ))
        res.last_at = now
        return Settlement(
            ok=True,
            msisdn=res.msisdn,
            used_units=used,
            allowance_used=from_allowance,
            charged=charged,
            capped=capped,
            record_id=record_id,
        )

    # -- release and expiry -----------------------------------------------------------

    # -- release and expiry -----------------------------------------------------------

    def op_release(self, tx: Tx, req: ReleaseRequest) -> Released:
        tx.expect(ANSWERS, req.request_key)
        key = reservation_key(req.session_id, req.service, req.rating_group)
        acct = Account(tx, session_owner(tx, key) or "")
        return self._idempotent(acct, req.request_key, req.now,
                                lambda now: self._release(acct, key))

    def _release(self, acct: Account, key: bytes) -> Released:
        res = acct.reservation(key) if acct.msisdn else None
        if res is None:
            return Released(ok=False, refusal=Refusal.UNKNOWN_RESERVATION)
        alw = acct.allowance(res.cycle, roll=False)
        money, units = res.money_reserved, res.allowance_reserved
        acct.end_reservation(res, expired_at=res.expires_at)
        self._drop_holds(res, acct.balance(), alw)
        acct.touch()
        return Released(ok=True, msisdn=res.msisdn, money_released=money,
                        allowance_released=units)

    def op_expire(self, tx: Tx, req: ExpireRequest) -> bool:
        """Reaper: settle a reservation whose validity ran out (nothing more is charged)."""
        key, expires_at, now = req.key, req.expires_at, req.now
        owner = session_owner(tx, key)
        acct = Account(tx, owner) if owner is not None else None
        res = acct.reservation(key) if acct is not None else None
        if acct is None or res is None or res.expires_at != expires_at:
            drop_expiry(tx, key, expires_at)  # stale: the reservation ended or moved on
            return False
        if res.expires_at > now:
            return False  # refreshed since the scan
        alw = acct.allowance(res.cycle, roll=False)
        self._settle(acct, res, None, acct.balance(), alw, 0, now, 0, 0, "expired",
                     write_cdr=True)
        acct.end_reservation(res, expired_at=expires_at)
        acct.touch()
        acct.save()
        return True

    def expired_reservations(self, now: int, limit: int = 10_000) -> list[tuple[bytes, int]]:
        """(reservation key, expires_at) of reservations due for the reaper."""
        return self.store.expiries(now, limit)

    @staticmethod
    def op_trim_answers(tx: Tx, req: TrimRequest) -> int:
        """Forget stored answers older than ``req.before`` (idempotency window)."""
        n, limit = 0, req.limit
        for k, _ in tx.scan(ANSWER_EXPIRY, b"", pack_u64(req.before)):
            tx.delete(ANSWERS, k[8:])
            tx.delete(ANSWER_EXPIRY, k)
            n += 1
            if n >= limit:
                break
        return n

    # -- direct debit and refund ------------------------------------------------------

    @staticmethod
    def _debit_digest(req: DebitRequest, *more: object) -> bytes:
        return digest(req.subscriber, req.service.value, req.units, req.rating_group,
                      req.destination, req.visited_network, req.characters, req.slice,
                      *more)

    def op_debit(self, tx: Tx, req: DebitRequest) -> Debit:
        tx.expect(ANSWERS, req.request_key)
        acct = self._account(tx, req.subscriber)
        return self._idempotent(acct, req.request_key, req.now,
                                lambda now: self._debit(acct, req, now),
                                self._debit_digest(req))

    def _debit(self, acct: Account, req: DebitRequest, now: int) -> Debit:
        ctx, sub, plan, refusal = self._payer(acct, req.service, now, req.rating_group,
                                              req.destination, req.visited_network,
                                              req.slice)
        if refusal is not None or sub is None or plan is None:
            return Debit(ok=False, refusal=refusal or Refusal.UNKNOWN_SUBSCRIBER,
                         msisdn=sub.msisdn if sub else "")
        units = max(0, req.units)
        if units > self._max_usage[req.service]:
            return Debit(ok=False, refusal=Refusal.IMPLAUSIBLE_USAGE, msisdn=sub.msisdn)
        zero = is_zero_rated(plan, ctx)
        rate = None if zero else select_rate(plan, ctx)
        if rate is None and not zero:
            return Debit(ok=False, refusal=Refusal.RATING_FAILED, msisdn=sub.msisdn)
        cycle = cycle_of(plan, now)
        bal = acct.balance()
        from_allowance = 0
        alw: Allowance | None = None
        if not zero and event_uses_allowance(plan, ctx):
            alw = acct.allowance(cycle)
            from_allowance = min(units, allowance_free(alw, plan, req.service))
        need = cost(rate, units - from_allowance) if rate is not None else 0
        if need > self._available(sub, bal):
            return Debit(ok=False, refusal=self._no_money(sub), msisdn=sub.msisdn,
                         rate_id=rate.id if rate else "")
        if self._fraud(acct, sub, plan, "event", now, service=req.service,
                       session_id=req.session_id, units=units, charge=need,
                       session_total=units, destination=req.destination,
                       visited_network=req.visited_network, roaming=ctx.roaming) == "block":
            return Debit(ok=False, refusal=Refusal.SUSPENDED, msisdn=sub.msisdn)
        bal.balance -= need
        bal.charged_total += need
        acct.touch()
        if alw is not None:  # (in the balance record)
            _alw_add(alw, req.service, used=from_allowance)
        rate_id = rate.id if rate is not None else "zero-rated"
        seq, record_id = acct.next_cdr(self.settings.node)
        acct.keep_cdr(seq, CdrRecord(
            record_id=record_id,
            session_id=req.session_id or _key_text(req.request_key),
            msisdn=sub.msisdn,
            imsi=sub.imsi,
            service=req.service.value,
            rating_group=req.rating_group,
            destination=req.destination,
            start_time=now,
            end_time=now,
            duration_s=units if req.service in TIMED else 0,
            bytes_in=0,
            bytes_out=units if req.service is Service.DATA else 0,
            units=units,
            charge=need,
            currency=sub.currency,
            plan_id=plan.id,
            rate_id=rate_id,
            roaming=ctx.roaming,
            visited_network=req.visited_network,
            protocol=req.protocol,
            result="event",
            allowance_units=from_allowance,
            characters=req.characters,
            slice=req.slice,
            dnn=req.dnn,
            plan_version=plan.version,
        ))
        return Debit(
            ok=True,
            msisdn=sub.msisdn,
            service=req.service.value,
            units=units,
            allowance_used=from_allowance,
            charged=need,
            rate_id=rate_id,
            cycle=cycle,
            record_id=record_id,
            session_id=req.session_id or _key_text(req.request_key),
            zero_rated=zero,
        )

    def op_refund(self, tx: Tx, req: RefundRequest) -> Refund:
        tx.expect(ANSWERS, req.request_key)
        acct = self._debit_account(tx, req.original_key)
        return self._idempotent(acct, req.request_key, req.now,
                                lambda now: self._refund(acct, req, now),
                                digest(req.original_key))

    @staticmethod
    def _debit_account(tx: Tx, debit_key: bytes) -> Account:
        """The account a debit's answer names (the one its refund goes to)."""
        orig = stored_answer(tx, debit_key)
        msisdn = getattr(orig.answer, "msisdn", "") if orig is not None else ""
        return Account(tx, msisdn)

    def _refund(self, acct: Account, req: RefundRequest, now: int) -> Refund:
        stored = acct.answer(req.original_key)
        orig = stored.answer if stored is not None else None
        if not isinstance(orig, Debit) or not orig.ok or orig.msisdn != acct.msisdn:
            return Refund(ok=False, refusal=Refusal.NOT_REFUNDABLE)
        if acct.refunded(req.original_key):
            return Refund(ok=False, refusal=Refusal.ALREADY_REFUNDED, msisdn=orig.msisdn)
        sub = acct.subscriber()
        if sub is None:
            return Refund(ok=False, refusal=Refusal.UNKNOWN_SUBSCRIBER, msisdn=orig.msisdn)
        bal = acct.balance()
        bal.balance += orig.charged
        bal.charged_total -= orig.charged
        acct.touch()
        restored = 0
        if orig.allowance_used and bal.allowance is not None:  # (no buckets: none used)
            alw = acct.allowance(orig.cycle, roll=False)
            if alw.cycle == orig.cycle:
                restored = orig.allowance_used
                _alw_add(alw, SERVICE_OF[orig.service], used=-restored)  # (touched above)
        seq, record_id = acct.next_cdr(self.settings.node)
        acct.keep_cdr(seq, CdrRecord(
            record_id=record_id,
            session_id=orig.session_id,
            msisdn=orig.msisdn,
            imsi=sub.imsi,
            service=orig.service,
            rating_group=None,
            destination="",
            start_time=now,
            end_time=now,
            duration_s=0,
            bytes_in=0,
            bytes_out=0,
            units=-orig.units,
            charge=-orig.charged,
            currency=sub.currency,
            plan_id=sub.plan_id,
            rate_id=orig.rate_id,
            roaming=False,
            visited_network="",
            protocol="refund",
            result="refund",
            allowance_units=-restored,
        ))
        acct.mark_refunded(req.original_key, req.request_key)
        return Refund(ok=True, msisdn=orig.msisdn, refunded=orig.charged,
                      allowance_restored=restored, record_id=record_id)

    # -- re-rating adjustments ------------------------------------------------------------

    def adjust_sync(self, req: AdjustRequest) -> Adjusted:
        return self._run_sync(lambda tx: self.op_adjust(tx, req))

    def op_adjust(self, tx: Tx, req: AdjustRequest) -> Adjusted:
        """Move a re-rating run's difference for one subscriber, as a CDR (result
        ``rerate``, the run id as session, the period as destination) in the same
        transaction: balances, billing and reconciliation see it like any charge. Once
        per (run, subscriber), for ever; a prepaid debit stops at the money available."""
        acct = Account(tx, req.msisdn)
        done = acct.adjustment(req.run_id)
        if done is not None:
            return msgspec.structs.replace(_dec_adjusted.decode(done), replayed=True)
        sub = acct.subscriber()
        if sub is None:
            return Adjusted(ok=False, refusal=Refusal.UNKNOWN_SUBSCRIBER)
        bal = acct.balance()
        amount = req.amount
        if amount > 0 and sub.mode == Mode.PREPAID:
            amount = min(amount, self._available(sub, bal))
        now = _now(req.now)
        bal.balance -= amount
        bal.charged_total += amount
        seq, record_id = acct.next_cdr(self.settings.node)
        acct.keep_cdr(seq, CdrRecord(
            record_id=record_id, session_id=req.run_id, msisdn=sub.msisdn, imsi=sub.imsi,
            service="rerate", rating_group=None, destination=req.period, start_time=now,
            end_time=now, duration_s=0, bytes_in=0, bytes_out=0, units=0, charge=amount,
            currency=sub.currency, plan_id=sub.plan_id, rate_id="", roaming=False,
            visited_network="", protocol="rerate", result="rerate"))
        acct.touch()
        acct.save()
        out = Adjusted(ok=True, amount=amount, capped=amount != req.amount,
                       record_id=record_id)
        acct.keep_adjustment(req.run_id, encode(out))
        return out

    # -- SMS store-and-forward ---------------------------------------------------------

    def op_submit_sms(self, tx: Tx, req: SubmitSmsRequest) -> Debit:
        """Debit the SMS and, when charged, queue it for delivery (same transaction)."""

        tx.expect(ANSWERS, req.debit.request_key)
        acct = self._account(tx, req.debit.subscriber)

        def compute(now: int) -> Debit:
            d = self._debit(acct, req.debit, now)
            if d.ok:
                messaging.enqueue(tx, messaging.SmsMessage(
                    message_id=d.record_id, kind="message", submitter=req.submitter,
                    route=req.route, source=req.source, destination=req.destination,
                    data_coding=req.data_coding, esm_class=req.esm_class, payload=req.payload,
                    registered_delivery=req.registered_delivery, submitted_at=now,
                    expires_at=now + req.validity_s, next_try=now,
                    debit_key=req.debit.request_key))
            return d

        return self._idempotent(acct, req.debit.request_key, req.debit.now, compute,
                                self._debit_digest(req.debit, req.destination, req.payload,
                                                   req.data_coding, req.esm_class,
                                                   req.registered_delivery))

    def op_sms_outcome(self, tx: Tx, req: SmsOutcomeRequest) -> bool:
        msg = messaging.load(tx, req.message_id)
        if msg is None or msg.state != "enroute":
            return False
        if req.expect_next_try >= 0 and msg.next_try != req.expect_next_try:
            return False  # another worker claimed or rescheduled it meanwhile
        now = req.now
        if req.outcome == "claim":
            if msg.lease > now:
                return False  # another worker is delivering it (a fresh bind saw it too)
            messaging.lease(tx, msg, req.lease_until)
        elif req.outcome == "delivered":
            messaging.settle(tx, msg, "delivered", now)
            if msg.kind == "message" and msg.registered_delivery & 0x01:
                self._queue_receipt(tx, msg, "DELIVRD", 2, now)
        elif req.outcome == "retry":
            messaging.reschedule(tx, msg, now + messaging.backoff(msg.attempts + 1))
        elif req.outcome == "expire":
            messaging.settle(tx, msg, "expired", now)
            if msg.kind == "message":
                if req.refund_expired and msg.debit_key:
                    acct = self._debit_account(tx, msg.debit_key)
                    self._refund(acct, RefundRequest(request_key=b"expired:" + msg.debit_key,
                                                     original_key=msg.debit_key), now)
                    acct.save()
                if msg.registered_delivery & 0x03:  # receipt on success or failure / failure
                    self._queue_receipt(tx, msg, "EXPIRED", 3, now)
        else:
            raise ValueError(f"unknown SMS outcome {req.outcome!r}")
        return True

    @staticmethod
    def op_smpp_bind(tx: Tx, req: SmppBindRequest) -> bool:
        """Count SMPP binds per account over every worker of every node (``ocs serve
        --workers``, a cluster). An entry per holder: (count, last heard); a holder
        not heard from for ``BIND_TTL_S`` (its node died) counts no more."""
        prefix = META_SMPP_BINDS + req.system_id.encode() + b"\x00"
        key = prefix + _bind_holder(req.node, req.worker)
        raw = tx.get(META, key)
        mine = unpack_u64(raw[:8]) if raw is not None else 0
        if req.release:
            if mine:
                tx.put(META, key, pack_u64(mine - 1) + (raw or b"")[8:16])
            return True
        held = sum(unpack_u64(v[:8]) for k, v in tx.scan(META, prefix, prefix + b"\xff")
                   if k != key and _bind_live(v, req.now))
        if held + mine >= req.max_binds:
            return False
        tx.put(META, key, pack_u64(mine + 1) + pack_u64(req.now))
        return True

    @staticmethod
    def op_smpp_binds_reset(tx: Tx, req: SmppBindsOf) -> int:
        """Forget the binds ``req`` names (it just started: its connections died with its
        last run); worker -1: every worker's of the node (the node starts)."""
        n = 0
        for k, _v in _binds_of(tx, req):
            tx.delete(META, k)
            n += 1
        return n

    @staticmethod
    def op_smpp_binds_touch(tx: Tx, req: SmppBindsOf) -> int:
        """The holder ``req`` names still holds its binds at ``req.now``."""
        n = 0
        for k, v in _binds_of(tx, req):
            tx.put(META, k, v[:8] + pack_u64(req.now))
            n += 1
        return n

    @staticmethod
    def _queue_receipt(tx: Tx, msg: messaging.SmsMessage, stat: str, state: int,
                       now: int) -> None:
        messaging.enqueue(tx, messaging.SmsMessage(
            message_id=msg.message_id + "-r", kind="receipt", submitter=msg.submitter,
            route=msg.submitter, source=msg.destination, destination=msg.source,
            data_coding=0, esm_class=0x04, payload=b"", registered_delivery=0,
            submitted_at=now, expires_at=msg.expires_at + 86400, next_try=now,
            receipted_id=msg.message_id, receipt_state=state, receipt_stat=stat,
            original_submitted_at=msg.submitted_at,
            original_text=messaging.message_text(msg)[:20]))

    # -- fraud rules ---------------------------------------------------------------------

    def reconfigure(self, settings: EngineSettings) -> None:
        """Take ``settings`` (start-up, or a config reload): grants, plausibility limits,
        home networks, the fraud rules. Open reservations keep what they were given."""
        self.settings = settings
        self.fraud = FraudSettings.of(settings.fraud)
        self._max_usage = {s.value: settings.max_usage(s) for s in Service}
        """Plausibility limit by the service value a reservation stores."""

    def op_reconfigure(self, tx: Tx, conf: dict[str, Any]) -> bool:
        """The writer's copy of :meth:`reconfigure` (settings as :func:`settings_data`)."""
        self.reconfigure(settings_from_data(conf))
        return True

    def op_fraud_rules(self, tx: Tx, enabled: bool) -> bool:
        """Switch the real-time fraud rules on or off in this process (maintenance; the
        benchmark compares both). Returns the previous state."""
        before = self.fraud.enabled
        self.fraud = dataclasses.replace(self.fraud, enabled=enabled and bool(
            self.settings.fraud))
        return before

    # -- read-only enquiries (never block: LMDB readers) ------------------------------

    def find_subscriber_now(self, ids: Identity) -> Subscriber | None:
        """Read-only lookup outside any write (never blocks)."""
        with self.store.view() as view:
            return self.find_subscriber(view, ids)

    def check_balance(self, ids: Identity, now: int | None = None) -> BalanceView | None:
        with self.store.view() as view:
            sub = self.find_subscriber(view, ids)
            if sub is None:
                return None
            bal = self._balance(view, sub.msisdn.encode())
        book = self.plans.in_store(self.store)
        plan = book.plan_at(sub.plan_id, _now(now))
        allowances: dict[str, dict[str, int]] = {}
        if plan is not None:
            cycle = cycle_of(plan, _now(now))
            alw = bal.allowance
            if alw is None or alw.cycle != cycle:
                alw = Allowance(cycle=cycle)
            for svc, (used_f, res_f) in _ALW_FIELDS.items():
                total = plan.allowances.for_service(svc)
                if total:
                    used, reserved = getattr(alw, used_f), getattr(alw, res_f)
                    allowances[svc.value] = {
                        "total": total,
                        "used": used,
                        "reserved": reserved,
                        "remaining": max(0, total - used - reserved),
                    }
        return BalanceView(
            msisdn=sub.msisdn,
            plan_id=sub.plan_id,
            mode=sub.mode,
            status=sub.status,
            currency=sub.currency,
            balance=bal.balance,
            reserved=bal.reserved,
            available=self._available(sub, bal),
            credit_limit=sub.credit_limit,
            allowances=allowances,
        )

    def price_enquiry(self, ids: Identity, service: Service, units: int, *,
                      rating_group: int | None = None, destination: str = "",
                      visited_network: str = "", now: int | None = None,
                      slice_: str = "") -> PriceQuote:
        with self.store.view() as view:
            sub = self.find_subscriber(view, ids)
        if sub is None:
            return PriceQuote(ok=False, refusal=Refusal.UNKNOWN_SUBSCRIBER)
        book = self.plans.in_store(self.store)
        plan = book.plan_at(sub.plan_id, _now(now))
        if plan is None:
            return PriceQuote(ok=False, refusal=Refusal.RATING_FAILED)
        ctx = self.rating_context(book, service, _now(now), rating_group, destination,
                                  visited_network, slice_)
        if is_zero_rated(plan, ctx):
            return PriceQuote(ok=True, units=units, zero_rated=True, explanation="zero-rated")
        rated = rate_usage(plan, ctx, units)
        if rated is None:
            return PriceQuote(ok=False, refusal=Refusal.RATING_FAILED)
        return PriceQuote(ok=True, rate_id=rated.rate.id, units=units,
                          billed_units=rated.billed_units, charge=rated.charge,
                          explanation=rated.explain())

    def reservations_with_prefix(self, prefix: str) -> list[Reservation]:
        """Open reservations whose session id starts with ``prefix`` (of at most
        MAX_SESSION_KEY bytes), found through the session owner index."""
        return self._reservations_from(prefix.encode())

    def lmdb(self, what: str) -> Store:
        """The LMDB store, for ``what`` only it keeps so far (StoreError on Redis)."""
        if not isinstance(self.store, Store):
            raise StoreError(f"{what}: not on the redis backend yet")
        return self.store

    def _reservations_from(self, start: bytes) -> list[Reservation]:
        return [dec_reservation.decode(raw) for raw in self.store.open_reservations(start)]

    def session_reservations(self, session_id: str) -> list[Reservation]:
        """Open reservations of one session (every rating group / service)."""
        return self._reservations_from(session_part(session_id) + b"\x00")

    def plan_of(self, sub: Subscriber) -> Plan | None:
        return self.plans.in_store(self.store).plan_at(sub.plan_id, _now(None))

    def affordable_units(self, sub: Subscriber, service: Service, cap: int, *,
                         rating_group: int | None = None, visited_network: str = "",
                         now: int | None = None, slice_: str = "") -> int | None:
        """How many units (<= cap) the subscriber's available money buys now, at the
        rate that would apply; None when no rate prices it. Allowances not counted."""
        book = self.plans.in_store(self.store)
        plan = book.plan_at(sub.plan_id, _now(now))
        if plan is None:
            return None
        ctx = self.rating_context(book, service, _now(now), rating_group, "",
                                  visited_network, slice_)
        rate = select_rate(plan, ctx)
        if rate is None:
            return None
        view = self.check_balance(((IdKind.MSISDN, sub.msisdn),), now)
        return max_units(rate, view.available if view else 0, cap)
