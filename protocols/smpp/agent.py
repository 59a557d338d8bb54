"""SMPP agent: authenticates binds and charges submits through the charging API.

A submit_sm / data_sm is charged as SMS events (one per part) against the sender
(source_addr = MSISDN) and answered only after the durable commit, with the CDR's record
id as message_id. A destination no ``[[smpp.routes]]`` prefix matches is refused with
ESME_RINVDSTADR and nothing is charged. The retry of a PDU (same bind, same sequence
number) replays the stored answer and charges nothing.

Refusals (documented in the README):
unknown sender ESME_RINVSRCADR 0x0A; suspended, blocked, deleted or roaming barred
ESME_RX_P_APPN 0x65; out of credit / credit limit ESME_RSUBMITFAIL 0x45; no rate for the
destination ESME_RX_R_APPN 0x66; no route ESME_RINVDSTADR 0x0B; overloaded ESME_RTHROTTLED
0x58; store failure ESME_RSYSERR 0x08.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import Counter
from typing import Any

import structlog

from ocs import metrics
from ocs.charging.api import (
    ChargeEvent,
    ChargingBusy,
    ChargingError,
    ChargingPaused,
    ChargingService,
    IdKind,
    Refusal,
    RequestRef,
    Service,
    SmppBind,
    SubmitSms,
)
from ocs.config import SmppConfig
from ocs.text import count_characters
from protocols.authguard import FailureThrottle
from protocols.smpp.pdu import Bind, PduError, Status, Submit, count_parts, parse_validity

log = structlog.get_logger(__name__)

_NO_PASSWORD = "\x00" * 9
"""Compared against for an unknown system_id (as long as a real check)."""

REFUSAL_STATUS: dict[str, Status] = {
    Refusal.UNKNOWN_SUBSCRIBER: Status.RINVSRCADR,
    Refusal.SUSPENDED: Status.RX_P_APPN,
    Refusal.BLOCKED: Status.RX_P_APPN,
    Refusal.TERMINATED: Status.RX_P_APPN,
    Refusal.ROAMING_NOT_ALLOWED: Status.RX_P_APPN,
    Refusal.OUT_OF_CREDIT: Status.RSUBMITFAIL,
    Refusal.CREDIT_LIMIT_REACHED: Status.RSUBMITFAIL,
    Refusal.RATING_FAILED: Status.RX_R_APPN,
    Refusal.REQUEST_MISMATCH: Status.RSYSERR,
}


def _text_of(sm: Submit) -> bytes:
    """The message body without its User Data Header (esm_class 0x40)."""
    body = sm.payload
    if sm.esm_class & 0x40 and body:
        return body[1 + body[0]:]
    return body


def _digits(addr: str) -> str:
    return "".join(c for c in addr if c.isascii() and c.isdigit())


class SmppAgent:
    def __init__(self, charging: ChargingService, cfg: SmppConfig):
        self.charging = charging
        self.reconfigure(cfg)
        self.binds: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.on_queued: Any = None
        """Called when a message was queued (wakes the delivery worker)."""
        self.worker: int | None = None
        """With several workers or nodes (a cluster): this one's index, and binds are
        counted in the store over all of them; None: counted here."""
        self.node = ""
        """This node's name (binds counted in the store are held by node and worker)."""
        self._releases: set[asyncio.Task[Any]] = set()
        self.guard = FailureThrottle()
        """Bind failures per source address."""


    def reconfigure(self, cfg: SmppConfig) -> None:
        """Take ``cfg`` (start-up, or a config reload): accounts and routes; binds made
        from now on use them (and the throttle), binds already up go on."""
        self.cfg = cfg
        self.accounts = {a.system_id: a for a in cfg.accounts}
        self.routes = sorted(cfg.routes, key=lambda r: len(r.prefix), reverse=True)
    def authenticate(self, bind: Bind, source: str = "") -> Status:
        """Credentials, then (one worker) the bind limit counted here. An unknown system_id
        and a wrong password get the same status (ESME_RINVPASWD); a source address that
        keeps failing is held off (refused unchecked, see :mod:`protocols.authguard`)."""
        now = time.monotonic()
        if self.guard.held(source, now):
            self.counters["bind_throttled"] += 1
            metrics.AUTH_FAILURES.labels("smpp", "throttled").inc()
            return Status.RINVPASWD
        acct = self.accounts.get(bind.system_id)
        expected = acct.password if acct is not None else _NO_PASSWORD
        good = hmac.compare_digest(bind.password.encode(), expected.encode())
        if acct is None or not good:
            self.counters["bind_unknown_system_id" if acct is None else "bind_bad_password"] += 1
            metrics.AUTH_FAILURES.labels("smpp", "bad_credentials").inc()
            held = self.guard.failed(source, now)
            log.warning("smpp_bind_failed", source=source, system_id=bind.system_id,
                     held_s=round(held, 1))
            return Status.RINVPASWD
        self.guard.succeeded(source)
        if self.worker is None:
            return self._counted(self.binds[bind.system_id] < acct.max_binds, bind)
        return Status.ROK

    async def authenticate_shared(self, bind: Bind, source: str = "") -> Status:
        """With several workers: credentials, then the bind limit over all of them, counted
        in the store."""
        status = self.authenticate(bind, source)
        if status != Status.ROK or self.worker is None:
            return status
        try:
            ok = await self.charging.smpp_bind(SmppBind(
                system_id=bind.system_id, worker=self.worker, node=self.node,
                max_binds=self.accounts[bind.system_id].max_binds, now=int(time.time())))
        except Exception as exc:  # the store is busy or away: no bind now
            log.warning("smpp_bind_not_counted", system_id=bind.system_id, error=str(exc))
            self.counters["bind_failed"] += 1
            return Status.RBINDFAIL
        return self._counted(bool(ok), bind)

    def _counted(self, ok: bool, bind: Bind) -> Status:
        if not ok:
            self.counters["bind_limit"] += 1
            return Status.RBINDFAIL
        self.binds[bind.system_id] += 1
        return Status.ROK

    def unbound(self, system_id: str) -> None:
        if self.binds[system_id] > 0:
            self.binds[system_id] -= 1
        if self.worker is not None:
            task = asyncio.ensure_future(self._release(system_id))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def _release(self, system_id: str) -> None:
        assert self.worker is not None
        try:
            await self.charging.smpp_bind(SmppBind(
                system_id=system_id, worker=self.worker, node=self.node, release=True,
                now=int(time.time())))
        except Exception as exc:  # counted too high until this worker restarts
            log.warning("smpp_unbind_not_counted", system_id=system_id, error=str(exc))

    def route(self, destination: str) -> str | None:
        for r in self.routes:
            if destination.startswith(r.prefix):
                return r.system_id
        return None

    async def submit(self, system_id: str, bind_id: str, seq: int, sm: Submit) -> tuple[
            Status, str]:
        dest = _digits(sm.destination_addr)
        if not dest or self.route(dest) is None:
            self.counters["submit_no_route"] += 1
            return Status.RINVDSTADR, ""
        source = _digits(sm.source_addr)
        if not source:
            return Status.RINVSRCADR, ""
        route = self.route(dest)
        assert route is not None
        try:
            validity = parse_validity(sm.validity_period, int(time.time()),
                                      self.cfg.default_validity_s)
        except PduError as e:
            return e.status, ""
        parts = count_parts(sm)
        req = SubmitSms(
            charge=ChargeEvent(request=RequestRef(f"smpp:{system_id}", bind_id, seq),
                               subscriber=((IdKind.MSISDN, source),), service=Service.SMS,
                               units=parts, destination=dest, protocol="smpp",
                               session_id=f"smpp:{system_id}:{bind_id}:{seq}",
                               characters=count_characters(_text_of(sm), sm.data_coding),
                               now=int(time.time())),
            submitter=system_id, route=route, source=sm.source_addr,
            destination=sm.destination_addr, data_coding=sm.data_coding,
            esm_class=sm.esm_class & ~0x04, payload=sm.payload,
            registered_delivery=sm.registered_delivery, validity_s=validity)
        try:
            debit = await self.charging.submit_sms(req)
        except ChargingBusy:
            self.counters["submit_overloaded"] += 1
            return Status.RTHROTTLED, ""
        except ChargingPaused:  # e.g. no room for CDRs (an alarm is raised): try later
            self.counters["submit_paused"] += 1
            return Status.RSYSERR, ""
        except (ChargingError, OSError) as exc:
            log.error("smpp_submit_failed", system_id=system_id, error=str(exc))
            return Status.RSYSERR, ""
        if not debit.ok:
            self.counters[f"submit_refused_{debit.refusal}"] += 1
            return REFUSAL_STATUS.get(debit.refusal, Status.RSUBMITFAIL), ""
        self.counters["submit_charged"] += 1
        if self.on_queued is not None:
            self.on_queued()
        return Status.ROK, str(debit.record_id)


