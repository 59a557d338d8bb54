"""The CHF's Nchf_ConvergedCharging agent: HTTP requests in, charging commands out.

Sans-IO apart from awaiting charging: :meth:`ChfAgent.handle` takes a method, a path and
a body and returns an :class:`HttpAnswer`; the HTTP/2 and HTTP/1.1 adapter
(:mod:`protocols.nchf.transport`) only moves bytes. The mapping is Gy's (TS 32.290
§5.2.2): create = CCR-I (one reservation per rating group), update = CCR-U (settle the
used units and grant the next quota in one transaction), release = CCR-T.

Each charging command is named ``RequestRef("nchf", ChargingDataRef,
invocationSequenceNumber)`` (with its rating group), so a repeated request replays its
answer and charges nothing, even after a restart; the same number with other content is
a 400. A ChargingDataRef is derived from the create's body: a create sent again (a
timeout, another connection) finds the same resource instead of opening a second one,
and a ref is 128 bits nobody else can guess — it is what an update or release must
present (consumers are not authenticated on plain h2c; TLS is the way to do that).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog

from ocs import metrics
from ocs.charging.api import (
    ChargeEvent,
    ChargingBusy,
    ChargingPaused,
    ChargingService,
    ChargingUnavailable,
    CloseSession,
    Debit,
    Grant,
    Identity,
    IdKind,
    OpenSession,
    Refusal,
    RequestRef,
    Service,
    Settlement,
    Subscriber,
    UpdateSession,
    status_refusal,
)
from ocs.sessions import AbortRequired, Session, SessionTable, Turns, all_answers, answered
from protocols.nchf.messages import (
    JSON,
    PROBLEM_JSON,
    BadRequest,
    ChargingDataRequest,
    ChargingDataResponse,
    ChargingNotifyRequest,
    FinalUnitIndication,
    InvocationResult,
    MultipleUnitInformation,
    MultipleUnitUsage,
    ProblemDetails,
    Units,
    decode_request,
    encode,
    problem,
    timestamp,
    used_volume,
)

log = structlog.get_logger(__name__)

API = "/nchf-convergedcharging/v3"
BASE = API + "/chargingdata"

RESULT_OF = {
    Refusal.UNKNOWN_SUBSCRIBER: "USER_UNKNOWN",
    Refusal.SUSPENDED: "END_USER_SERVICE_DENIED",
    Refusal.BLOCKED: "END_USER_SERVICE_DENIED",
    Refusal.TERMINATED: "END_USER_SERVICE_DENIED",
    Refusal.ROAMING_NOT_ALLOWED: "END_USER_SERVICE_DENIED",
    Refusal.OUT_OF_CREDIT: "QUOTA_LIMIT_REACHED",
    Refusal.CREDIT_LIMIT_REACHED: "QUOTA_LIMIT_REACHED",
    Refusal.RATING_FAILED: "RATING_FAILED",
    Refusal.UNKNOWN_RESERVATION: "END_USER_SERVICE_REJECTED",
    Refusal.SESSION_ENDED: "END_USER_SERVICE_REJECTED",
    Refusal.SESSION_CONFLICT: "END_USER_SERVICE_REJECTED",
}
"""Refusal -> the rating group's resultCode (TS 32.291 ResultCode)."""
_CREDIT = frozenset({Refusal.OUT_OF_CREDIT, Refusal.CREDIT_LIMIT_REACHED})


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes = b""
    content_type: str = JSON
    location: str = ""
    retry_after: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ChfSettings:
    validity_s: int = 900
    """validityTime of a grant; the reservation and the session live 2 x this."""
    quota_threshold_percent: int = 20
    """volumeQuotaThreshold as a share of the grant (0 = none)."""
    failure_handling: str = "RETRY_AND_TERMINATE"
    """invocationResult.failureHandling in refusals of the whole request."""
    api_root: str = ""
    """``scheme://host:port`` for Location (empty: a path-absolute Location)."""


@dataclass(slots=True, kw_only=True)
class ChfSession(Session):
    """A charging data resource: one PDU session's charging."""

    notify_uri: str = ""
    groups: set[int] = field(default_factory=set)
    """Rating groups with a reservation."""
    asked: set[int] = field(default_factory=set)
    """Rating groups the consumer asked quota for (refused ones included)."""
    slice: str = ""
    dnn: str = ""
    seen: dict[int, bytes] = field(default_factory=dict)
    """Recent invocationSequenceNumber -> digest of the body (a repeat with other content
    is a 400 even where the store's per-operation check cannot see it)."""


def _identity(req: ChargingDataRequest) -> Identity:
    ids: list[tuple[IdKind, str]] = []
    sid = req.subscriberIdentifier
    if sid:
        kind, _, value = sid.partition("-")
        if kind == "imsi":
            ids.append((IdKind.IMSI, value))
        elif kind == "msisdn":
            ids.append((IdKind.MSISDN, value))
        elif kind == "nai":
            ids.append((IdKind.USERNAME, value))
    info = req.pDUSessionChargingInformation
    gpsi = info.userInformation.servedGPSI if info and info.userInformation else None
    if gpsi:
        ids.append((IdKind.MSISDN, gpsi.partition("-")[2]))
    return tuple(ids)


def _digest(req: ChargingDataRequest) -> bytes:
    """What makes a request this request: its decoded content without
    invocationTimeStamp (a consumer re-sending a request may stamp it anew)."""
    return hashlib.blake2b(encode(msgspec.structs.replace(req, invocationTimeStamp="")),
                           digest_size=16).digest()


def _ref(req: ChargingDataRequest, digest: bytes) -> str:
    """The ChargingDataRef of a create: its content (``digest``), with the time stamp
    unless the PDU session's chargingId tells sessions apart (then a create sent again
    with a new stamp still finds its resource)."""
    info = req.pDUSessionChargingInformation
    if info is not None and info.chargingId is not None:
        return digest.hex()
    return hashlib.blake2b(encode(req), digest_size=16).hexdigest()


class ChfAgent:
    """Runs Nchf requests through charging; holds the live charging data resources."""

    def __init__(self, charging: ChargingService, settings: ChfSettings, *,
                 clock: Callable[[], float] = time.time):
        self.charging = charging
        self.s = settings
        self.clock = clock
        self.sessions: SessionTable[ChfSession] = SessionTable()
        self.turns = Turns()
        self.counters: dict[str, int] = {}

    @property
    def tcc_s(self) -> int:
        return 2 * self.s.validity_s

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _now(self) -> int:
        return int(self.clock())

    # -- entry point ------------------------------------------------------------------

    async def handle(self, method: str, path: str, body: bytes) -> HttpAnswer:
        """The answer to one HTTP request (never raises for what a peer sends)."""
        op, ref = _route(path)
        if op == "":
            return _problem(404, "RESOURCE_URI_STRUCTURE_NOT_FOUND", f"no resource {path[:200]}")
        if method != "POST":
            return HttpAnswer(405, problem(405, "", f"{method[:16]} not allowed; POST"),
                              PROBLEM_JSON)
        try:
            req = decode_request(body)
        except BadRequest as exc:
            self._count("bad_request")
            return _problem(400, "MANDATORY_IE_INCORRECT" if exc.param else "INVALID_MSG_FORMAT",
                            exc.reason, param=exc.param, reason=exc.reason)
        limit = self.charging.max_usage(Service.DATA)
        for i, u in enumerate(req.usages):
            asked = u.requestedUnit.volume() if u.requestedUnit is not None else None
            if (asked or 0) > limit or used_volume(u)[0] > limit:
                self._count("implausible_usage")
                return _problem(400, "MANDATORY_IE_INCORRECT",
                                f"more than {limit} bytes in one report",
                                param=f"multipleUnitUsage[{i}]", reason="implausible usage")
        try:
            if op == "create":  # the ref is the body's: a create sent again finds it
                digest = _digest(req)
                async with self.turns.of(ref := _ref(req, digest)):
                    return await self._create(ref, req, digest)
            async with self.turns.of(ref):  # one request of a resource at a time
                if op == "update":
                    return await self._update(ref, req)
                return await self._release(ref, req)
        except ChargingBusy:
            self._count("busy")
            return HttpAnswer(503, problem(503, "NF_CONGESTION", "busy, retry"), PROBLEM_JSON,
                              retry_after=1)
        except (ChargingPaused, ChargingUnavailable) as exc:
            self._count("unavailable")
            log.warning("nchf_charging_unavailable", error=str(exc))
            return HttpAnswer(503, problem(503, "SYSTEM_FAILURE", "charging unavailable"),
                              PROBLEM_JSON, retry_after=1)

    # -- create -----------------------------------------------------------------------

    async def _create(self, ref: str, req: ChargingDataRequest, digest: bytes) -> HttpAnswer:
        self._count("create")
        identity = _identity(req)
        if not identity:
            return _problem(400, "MANDATORY_IE_MISSING", "no subscriber",
                            param="subscriberIdentifier", reason="required")
        sub = self.charging.subscriber(identity)
        refusal = status_refusal(sub)
        if sub is None:
            self._count("user_unknown")
            return _problem(404, "USER_UNKNOWN", "no such subscriber")
        if refusal is not None:
            self._count("denied")
            return self._refused_answer(req, refusal)
        now = self.clock()
        sess = ChfSession(session_id=ref, identity=identity, msisdn=sub.msisdn,
                          service=Service.DATA, notify_uri=req.notifyUri or "",
                          slice=req.slice, dnn=req.dnn, deadline=now + self.tcc_s)
        usages = req.usages or []
        grants = await all_answers(self._open(req, sess, u) for u in usages)
        if any(g.refusal == Refusal.REQUEST_MISMATCH for g in grants):
            return _problem(400, "INVALID_MSG_FORMAT", "invocationSequenceNumber reused",
                            param="invocationSequenceNumber", reason="reused with other content")
        infos = []
        for u, g in zip(usages, grants, strict=True):
            sess.asked.add(u.ratingGroup)
            if g.ok and not g.zero_rated:
                sess.groups.add(u.ratingGroup)
            if g.final or not g.ok:
                sess.limited = True
            infos.append(self._from_grant(u.ratingGroup, g))
        sess.seen[req.invocationSequenceNumber] = digest
        # kept while it holds quota or waits for credit (a top-up -> REAUTHORIZATION), as
        # Gy keeps a session: refused creates cannot fill the table; a create sent again
        # replays, and the resource goes on as it was
        if ref not in self.sessions and (sess.groups or any(
                not g.ok and g.refusal in _CREDIT for g in grants)):
            self.sessions[ref] = sess
        answer = ChargingDataResponse(
            invocationTimeStamp=timestamp(now),
            invocationSequenceNumber=req.invocationSequenceNumber,
            multipleUnitInformation=infos or None)
        return HttpAnswer(201, encode(answer), location=f"{self.s.api_root}{BASE}/{ref}")

    def _open(self, req: ChargingDataRequest, sess: ChfSession,
              u: MultipleUnitUsage) -> Awaitable[Grant]:
        asked = u.requestedUnit.volume() if u.requestedUnit is not None else None
        return self.charging.open_session(OpenSession(
            request=RequestRef("nchf", sess.session_id, req.invocationSequenceNumber),
            session_id=sess.session_id, subscriber=sess.identity, service=Service.DATA,
            units=asked or None, rating_group=u.ratingGroup, protocol="nchf",
            validity_s=self.tcc_s, now=self._now(), slice=sess.slice, dnn=sess.dnn,
            callback=sess.notify_uri))

    def _refused_answer(self, req: ChargingDataRequest, refusal: Refusal) -> HttpAnswer:
        """403: the subscriber may not be served (suspended, blocked, terminated)."""
        code = RESULT_OF.get(refusal, "END_USER_SERVICE_DENIED")
        answer = ChargingDataResponse(
            invocationTimeStamp=timestamp(self.clock()),
            invocationSequenceNumber=req.invocationSequenceNumber,
            multipleUnitInformation=[MultipleUnitInformation(ratingGroup=u.ratingGroup,
                                                             resultCode=code)
                                     for u in req.usages] or None,
            invocationResult=InvocationResult(
                error=ProblemDetails(status=403, cause=code),
                failureHandling=self.s.failure_handling))
        return HttpAnswer(403, encode(answer))

    def _from_grant(self, rg: int, g: Grant) -> MultipleUnitInformation:
        if g.ok and g.zero_rated:
            return MultipleUnitInformation(ratingGroup=rg,
                                           resultCode="QUOTA_MANAGEMENT_NOT_APPLICABLE")
        if g.ok:
            th = (g.granted_units * self.s.quota_threshold_percent // 100
                  if self.s.quota_threshold_percent and not g.final else 0)
            return MultipleUnitInformation(
                ratingGroup=rg, resultCode="SUCCESS",
                grantedUnit=Units(totalVolume=g.granted_units),
                validityTime=self.s.validity_s, volumeQuotaThreshold=th or None,
                finalUnitIndication=FinalUnitIndication("TERMINATE") if g.final else None)
        code = RESULT_OF.get(Refusal(g.refusal), "END_USER_SERVICE_REJECTED") if g.refusal else (
            "END_USER_SERVICE_REJECTED")
        return MultipleUnitInformation(
            ratingGroup=rg, resultCode=code,
            validityTime=self.s.validity_s if code == "QUOTA_LIMIT_REACHED" else None)

    # -- update -----------------------------------------------------------------------

    def _session(self, ref: str, req: ChargingDataRequest) -> ChfSession | None:
        """The live resource; re-attached from the store after a restart or when another
        worker served it last. None when unknown or past its deadline."""
        now = self.clock()
        sess = self.sessions.get(ref)
        if sess is not None and now <= sess.deadline:
            self.sessions.touch(sess, now + self.tcc_s)
            if req.notifyUri:
                sess.notify_uri = req.notifyUri
            return sess
        live = [h for h in self.charging.session_holds(ref) if h.expires_at > now]
        if not live:
            self.sessions.pop(ref, None)
            return None
        first = live[0]
        sess = ChfSession(session_id=ref, identity=((IdKind.MSISDN, first.msisdn),),
                          msisdn=first.msisdn, service=Service.DATA,
                          groups={h.rating_group for h in live if h.rating_group is not None},
                          notify_uri=req.notifyUri or first.callback, slice=req.slice,
                          dnn=req.dnn,
                          deadline=now + self.tcc_s)
        self.sessions[ref] = sess
        return sess

    def _repeat_mismatch(self, sess: ChfSession, req: ChargingDataRequest) -> bool:
        isn = req.invocationSequenceNumber
        d = _digest(req)
        seen = sess.seen.get(isn)
        if seen is not None and seen != d:
            return True
        sess.seen[isn] = d
        while len(sess.seen) > 8:
            del sess.seen[next(iter(sess.seen))]
        return False

    async def _update(self, ref: str, req: ChargingDataRequest) -> HttpAnswer:
        self._count("update")
        sess = self._session(ref, req)
        if sess is None:
            return _problem(404, "CHARGING_DATA_RESOURCE_NOT_FOUND", "no such charging data")
        if self._repeat_mismatch(sess, req):
            return self._mismatch()
        sess.notified = ""
        usages = req.usages or [MultipleUnitUsage(ratingGroup=g, requestedUnit=Units())
                                for g in sorted(sess.groups)]
        futs: list[Awaitable[Any]] = []
        for u in usages:
            if u.ratingGroup in sess.groups:
                futs.append(self._commit(req, sess, u, final=False))
            elif u.requestedUnit is not None:
                futs.append(self._open(req, sess, u))
            elif used_volume(u)[0] > 0:  # usage in a group without quota: charged as is
                futs.append(self._charge(req, sess, u))
            else:
                futs.append(answered(None))
        answers = await all_answers(futs)
        if any(getattr(a, "refusal", "") == Refusal.REQUEST_MISMATCH for a in answers):
            return self._mismatch()
        infos: list[MultipleUnitInformation] = []
        sess.limited = False
        for u, ans in zip(usages, answers, strict=True):
            if u.requestedUnit is not None:
                sess.asked.add(u.ratingGroup)
            info = self._update_info(sess, u, ans)
            if info is not None:
                infos.append(info)
        answer = ChargingDataResponse(
            invocationTimeStamp=timestamp(self.clock()),
            invocationSequenceNumber=req.invocationSequenceNumber,
            multipleUnitInformation=infos or None)
        return HttpAnswer(200, encode(answer))

    def _update_info(self, sess: ChfSession, u: MultipleUnitUsage,
                     ans: Any) -> MultipleUnitInformation | None:
        rg = u.ratingGroup
        if isinstance(ans, Settlement):
            if not ans.ok:  # settled by the reaper meanwhile
                sess.groups.discard(rg)
                return MultipleUnitInformation(ratingGroup=rg,
                                               resultCode="END_USER_SERVICE_REJECTED")
            g = ans.next_grant
            if g is None:
                return None  # a usage report: nothing to say about quota
            if g.final or not g.ok:
                sess.limited = True
            if not g.ok:
                sess.groups.discard(rg)
            return self._from_grant(rg, g)
        if isinstance(ans, Grant):
            if ans.ok and not ans.zero_rated:
                sess.groups.add(rg)
            if ans.final or not ans.ok:
                sess.limited = True
            return self._from_grant(rg, ans)
        if isinstance(ans, Debit) and not ans.ok:
            code = RESULT_OF.get(Refusal(ans.refusal), "END_USER_SERVICE_REJECTED") if (
                ans.refusal) else "END_USER_SERVICE_REJECTED"
            return MultipleUnitInformation(ratingGroup=rg, resultCode=code)
        return None

    def _commit(self, req: ChargingDataRequest, sess: ChfSession, u: MultipleUnitUsage, *,
                final: bool) -> Awaitable[Settlement]:
        used, up, down = used_volume(u)
        ref = RequestRef("nchf", sess.session_id, req.invocationSequenceNumber)
        if final:
            return self.charging.close_session(CloseSession(
                request=ref, session_id=sess.session_id, service=Service.DATA,
                rating_group=u.ratingGroup, used_units=used, bytes_in=up, bytes_out=down,
                now=self._now()))
        next_units = None
        if u.requestedUnit is not None:
            next_units = u.requestedUnit.volume() or 0
        return self.charging.update_session(UpdateSession(
            request=ref, session_id=sess.session_id, service=Service.DATA,
            rating_group=u.ratingGroup, used_units=used, bytes_in=up, bytes_out=down,
            next_units=next_units, validity_s=self.tcc_s, now=self._now()))

    def _charge(self, req: ChargingDataRequest, sess: ChfSession,
                u: MultipleUnitUsage) -> Awaitable[Debit]:
        return self.charging.charge_event(ChargeEvent(
            request=RequestRef("nchf", sess.session_id, req.invocationSequenceNumber),
            subscriber=sess.identity, service=Service.DATA, units=used_volume(u)[0],
            session_id=sess.session_id, rating_group=u.ratingGroup, protocol="nchf",
            now=self._now(), slice=sess.slice, dnn=sess.dnn))

    def _mismatch(self) -> HttpAnswer:
        self._count("request_mismatch")
        return _problem(400, "INVALID_MSG_FORMAT",
                        "invocationSequenceNumber reused with other content",
                        param="invocationSequenceNumber", reason="reused with other content")

    # -- release ----------------------------------------------------------------------

    async def _release(self, ref: str, req: ChargingDataRequest) -> HttpAnswer:
        self._count("release")
        sess = self._session(ref, req)
        known = sess is not None
        reported = {u.ratingGroup: u for u in req.usages}
        if sess is None:
            # a repeated release of a resource already closed replays its answers
            if not reported:
                return _problem(404, "CHARGING_DATA_RESOURCE_NOT_FOUND",
                                "no such charging data")
            sess = ChfSession(session_id=ref, identity=(), service=Service.DATA)
        elif self._repeat_mismatch(sess, req):
            return self._mismatch()
        futs: list[Awaitable[Settlement | Debit]] = []
        for g in sorted(sess.groups | set(reported)):
            u = reported.get(g) or MultipleUnitUsage(ratingGroup=g)
            if known and g not in sess.groups and used_volume(u)[0] > 0:
                futs.append(self._charge(req, sess, u))  # usage in a group without quota
            else:
                futs.append(self._commit(req, sess, u, final=True))
        answers = await all_answers(futs)
        if any(a.refusal == Refusal.REQUEST_MISMATCH for a in answers):
            return self._mismatch()
        found = any(a.ok for a in answers)
        if not known and not found:
            # A release sent again whose usage was charged as an event (a group without
            # quota): that debit exists under this request's name. Asked for with no
            # subscriber, an event never charged is refused (nobody pays), and one that
            # was is there under other content (its subscriber): found, nothing charged.
            again = [u for u in reported.values() if used_volume(u)[0] > 0]
            found = any(d.ok or d.refusal == Refusal.REQUEST_MISMATCH for d in await all_answers(
                self._charge(req, sess, u) for u in again))
        self.sessions.pop(ref, None)
        if not known and not found:
            return _problem(404, "CHARGING_DATA_RESOURCE_NOT_FOUND", "no such charging data")
        return HttpAnswer(204, b"", content_type="")

    # -- notifications ----------------------------------------------------------------

    def _can_afford(self, sess: ChfSession, sub: Subscriber) -> bool:
        groups: Iterable[int | None] = (sess.groups | sess.asked) or {None}
        return any(self.charging.affordable_units(sub, Service.DATA, 1, rating_group=g,
                                                  slice_=sess.slice)
                   for g in groups)

    def sweep(self, limit: int = 20000) -> list[tuple[str, ChfSession]]:
        """Resources to notify: ("ABORT_CHARGING", s) for a blocked or deleted subscriber,
        ("REAUTHORIZATION", s) for a suspended one, or a credit-limited one that can pay
        again. Drops resources past their deadline. Only those with a notifyUri."""
        expired = self.sessions.expire(self.clock())
        if expired:
            metrics.SESSION_EVENTS.labels("nchf", "expired").inc(len(expired))
        out: list[tuple[str, ChfSession]] = []
        for ev in self.sessions.review(self.charging, limit, credit_back=self._can_afford):
            if not ev.session.notify_uri:
                continue
            kind = "ABORT_CHARGING" if isinstance(ev, AbortRequired) else "REAUTHORIZATION"
            metrics.SESSION_EVENTS.labels("nchf", kind.lower()).inc()
            ev.session.notified = kind
            out.append((kind, ev.session))
        metrics.LIVE_SESSIONS.labels("nchf").set(len(self.sessions))
        return out

    def notify_body(self, kind: str) -> bytes:
        return encode(ChargingNotifyRequest(notificationType=kind,
                                            invocationTimeStamp=timestamp(self.clock())))


def _route(path: str) -> tuple[str, str]:
    """("create" | "update" | "release", ref) of a request path; ("", "") for others."""
    path = path.split("?", 1)[0]
    if path == BASE:
        return "create", ""
    if not path.startswith(BASE + "/"):
        return "", ""
    rest = path[len(BASE) + 1:].split("/")
    if len(rest) == 2 and rest[0] and rest[1] in ("update", "release") and len(rest[0]) <= 128:
        return rest[1], rest[0]
    return "", ""


def _problem(status: int, cause: str, detail: str, *, param: str = "",
             reason: str = "") -> HttpAnswer:
    return HttpAnswer(status, problem(status, cause, detail, param=param, reason=reason),
                      PROBLEM_JSON)
