"""The REST API under ``/api/v1``: Litestar routes over the same core as the CLI.

Litestar because it speaks msgspec natively (our records and the request bodies are
msgspec structs: validation and OpenAPI from one declaration) and generates the OpenAPI
document itself. Every handler is a plain function run on a thread (:func:`threaded`):
store reads, CDR file reads and provisioning writes (the same operations as ``ocs
subscriber ...``, each one LMDB transaction) never run on the event loop that answers
charging requests. Answers are the CLI's ``--json`` shapes (:mod:`ocs.views`); errors are
RFC 9457 problem details naming the field.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import datetime as dt
import functools
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal, ParamSpec, Protocol, TypeVar

import anyio.to_thread
import msgspec
import structlog
from litestar import Litestar, Request, Response, delete, get, patch, post
from litestar.connection import ASGIConnection
from litestar.datastructures import ResponseHeader, State
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import Parameter
from litestar.response import File
from litestar.static_files import create_static_files_router

from ocs import build_version, views
from ocs.api.tokens import lookup
from ocs.billing.run import BillingError, check_period
from ocs.charging.engine import ChargingEngine
from ocs.config import Config
from ocs.errors import ChargingError
from ocs.fraud.cases import decode_case, load_case
from ocs.fraud.cases import resolve as resolve_case
from ocs.fraud.cases import to_json as case_json
from ocs.noc import alarms as noc
from ocs.provisioning import (
    Conflict,
    Credited,
    CreditRequest,
    NewSubscriber,
    NotFound,
    ProvisioningError,
    SubscriberChange,
    all_plans,
    op_ensure_subscriber,
    op_set_status,
    op_set_subscriber,
    run_credit,
    validate_msisdn,
)
from ocs.store.env import ALARMS, SUBSCRIBERS, Store
from ocs.store.records import ApiToken, dec_subscriber
from ocs.store.tx import StorePort, Tx

PROBLEM = "application/problem+json"
BASE = "/api/v1"
T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")

# -- roles ----------------------------------------------------------------------------------
# admin passes every route; a route names the other roles it admits.
EVERYONE = frozenset({"care", "noc", "readonly"})
CARE_READ = frozenset({"care", "readonly"})
CARE = frozenset({"care"})
NOC = frozenset({"noc"})
ADMIN: frozenset[str] = frozenset()


def threaded(fn: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """A handler's work on a worker thread (Litestar's own ``sync_to_thread`` breaks a GET
    that shares its path with a DELETE: litestar 2.x answers it with an unawaited
    coroutine). The signature stays, for Litestar's parameters and the OpenAPI document."""

    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    return run


class Submitter(Protocol):
    """Where write operations go by name (the server's writer process)."""

    def submit(self, name: str, req: Any) -> Awaitable[Any]: ...


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What the routes work on: the node's config, store and charging engine (reads), and
    its writer (top-ups, group-committed with charging). With ``[store] backend =
    "redis"``, ``cluster`` is the Redis Cluster: subscribers, plans, balances and fraud
    cases are there (``store`` keeps the node's alarms, tokens and CDR journal)."""

    cfg: Config
    store: Store
    engine: ChargingEngine
    writer: Submitter
    max_page: int = 500
    cluster: Any = None

    @property
    def ledger(self) -> StorePort:
        """Where subscribers, plans and balances are."""
        return self.cluster if self.cluster is not None else self.store

    def write(self, op: Callable[[Tx], T]) -> T:
        """One operation on the node's own records (alarms) in its own transaction."""
        return self.store.run_write(op)

    def write_ledger(self, op: Callable[[Tx], T]) -> T:
        """One provisioning operation (subscribers, fraud cases) in its own transaction,
        as the CLI runs it (the rare writes)."""
        return self.ledger.run_write(op)


# -- request bodies (msgspec: validated, and described in the OpenAPI document) -------------

Msisdn = Annotated[str, msgspec.Meta(pattern=r"^\+?[1-9][0-9]{5,14}$",
                                     description="E.164 digits")]
Amount = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,12}(\.[0-9]{1,6})?$",
                                     description="a decimal amount, e.g. \"10.00\"")]
Line = Annotated[str, msgspec.Meta(max_length=253, pattern=r"^[^\x00-\x1f\x7f]*$")]


AlarmId = Annotated[int, Parameter(ge=1, le=2**63 - 1)]
Limit = Annotated[int, Parameter(ge=1, le=5000)]
"""How many items a list answers at most (the answer stays bounded however long the
history grows)."""
CaseId = Annotated[int, Parameter(ge=1, le=2**63 - 1)]


class NewSubscriberBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    msisdn: Msisdn
    plan: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    imsi: Annotated[str, msgspec.Meta(pattern=r"^([0-9]{14,15})?$")] = ""
    username: Line = ""
    password: Annotated[str, msgspec.Meta(max_length=128)] = ""
    balance: Amount | Literal[""] = ""
    postpaid: bool = False
    credit_limit: Amount | Literal[""] = ""
    roaming: bool = True
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""
    address: Annotated[str, msgspec.Meta(max_length=500)] = ""


class SubscriberPatchBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Only the members given change; "" clears IMSI, user name or password."""

    imsi: Annotated[str, msgspec.Meta(pattern=r"^([0-9]{14,15})?$")] | None = None
    username: Line | None = None
    password: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    plan: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    credit_limit: Amount | Literal[""] | None = None
    roaming: bool | None = None
    status: Literal["active", "suspended", "blocked"] | None = None
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    address: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class TopUpBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    amount: Amount
    reference: Annotated[str, msgspec.Meta(min_length=1, max_length=128,
                                           pattern=r"^[^\x00-\x1f\x7f]+$",
                                           description="the payment's id: the same one "
                                           "again credits nothing")]


class ResolveBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reinstate: bool = False
    note: Annotated[str, msgspec.Meta(max_length=500)] = ""


# -- errors as RFC 9457 problem details ------------------------------------------------------


class ProblemField(msgspec.Struct):
    field: str
    detail: str


class Problem(msgspec.Struct, kw_only=True):
    """RFC 9457 problem details; ``errors`` names the fields at fault."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    errors: list[ProblemField] = []


def _problems(*codes: int) -> dict[int, ResponseSpec]:
    return {code: ResponseSpec(Problem, generate_examples=False, media_type=PROBLEM,
                               description=HTTPStatus(code).phrase) for code in codes}


READ_ERRORS = _problems(400, 401, 403, 404, 500, 503)
WRITE_ERRORS = _problems(400, 401, 403, 404, 409, 413, 422, 500, 503)


def problem(status: int, detail: str = "", *, field: str = "",
            errors: list[dict[str, str]] | None = None,
            headers: dict[str, str] | None = None) -> Response[Any]:
    """A problem document: the status's phrase as title; ``errors`` (or the one
    ``field``) name the members at fault."""
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status).phrase,
                            "status": status}
    if detail:
        body["detail"] = detail
    if field and errors is None:
        errors = [{"field": field, "detail": detail}]
    if errors:
        body["errors"] = errors
    return Response(content=body, status_code=status, media_type=PROBLEM, headers=headers)


def _provisioning_error(_req: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, ProvisioningError)
    status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 422
    return problem(status, str(exc), field=exc.field)


_FIELD_RE = re.compile(r"at `\$\.([A-Za-z0-9_.\[\]]+)`|field `([A-Za-z0-9_]+)`")


def _field(error: dict[str, Any]) -> str:
    """The member a validation error is about: a query or path parameter's name, or the
    body member msgspec names in its message (``at `$.amount```)."""
    key = str(error.get("key") or "")
    if key and key != "data":
        return key
    m = _FIELD_RE.search(str(error.get("message", "")))
    return (m.group(1) or m.group(2)) if m else key


def _validation_error(_req: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, ValidationException)
    errors = []
    for e in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(e, dict):
            errors.append({"field": _field(e), "detail": str(e.get("message", ""))})
    if not errors:  # a missing parameter: named in the detail only
        m = re.search(r"parameter '([A-Za-z0-9_]+)'", str(exc.detail))
        errors.append({"field": m.group(1) if m else "", "detail": str(exc.detail)})
    return problem(400, errors[0]["detail"], errors=errors)


def _http_error(_req: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, HTTPException)
    field = exc.extra.get("field", "") if isinstance(exc.extra, dict) else ""
    return problem(exc.status_code, str(exc.detail), field=field, headers=exc.headers)


MAX_DEPTH = 8
"""Our bodies are flat objects; a body nested deeper is refused before it is decoded (a
decoder recursing 30,000 levels down was a 500, or a dropped connection)."""


def nesting(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text go (brackets inside strings do not
    count)."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return MAX_DEPTH  # cannot be deeper (the usual case: no scan)
    depth = deepest = 0
    in_string = escaped = False
    for ch in body:
        if in_string:
            if escaped:
                escaped = False
            elif ch == 0x5C:  # backslash
                escaped = True
            elif ch == 0x22:  # quote
                in_string = False
        elif ch == 0x22:
            in_string = True
        elif ch in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif ch in (0x5D, 0x7D):
            depth -= 1
    return deepest


async def _check_body(request: Request[Any, Any, Any]) -> None:
    """Before a body is decoded: refuse one nested too deep."""
    if request.method in ("POST", "PATCH", "PUT") and nesting(await request.body()) > MAX_DEPTH:
        raise bad_request(f"the body nests deeper than {MAX_DEPTH} levels", "body")


def _unavailable(_req: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return problem(503, f"the store cannot take this now ({exc}); "
                   "send it again (the same reference credits once)",
                   headers={"Retry-After": "1"})


def _internal_error(_req: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    structlog.get_logger(__name__).error("api_error", error=type(exc).__name__,
                                         message=str(exc))
    return problem(500, "the error is in the server's log")


def not_found(detail: str, field: str = "") -> HTTPException:
    return HTTPException(status_code=404, detail=detail, extra={"field": field})


def bad_request(detail: str, field: str) -> HTTPException:
    return HTTPException(status_code=400, detail=detail, extra={"field": field})


# -- authentication and roles --------------------------------------------------------------


async def _authorize(conn: ASGIConnection[Any, Any, Any, Any],
                     handler: BaseRouteHandler) -> None:
    """The bearer token's role against the route's (one LMDB read, on the event loop: a
    sync guard would cost a thread hop per request)."""
    roles: frozenset[str] | None = handler.opt.get("roles")
    if roles is None:  # public (the OpenAPI document)
        return
    ctx: ApiContext = conn.app.state["ctx"]
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    rec = lookup(ctx.store, token.strip()) if scheme.lower() == "bearer" else None
    if rec is None:
        raise NotAuthorizedException(detail="a valid bearer token is needed "
                                     "(ocs api token create)",
                                     headers={"WWW-Authenticate": "Bearer"})
    if rec.role != "admin" and rec.role not in roles:
        raise PermissionDeniedException(detail=f"role {rec.role} may not do this")
    conn.scope["state"]["token"] = rec


def _actor(request: Request[Any, Any, Any]) -> str:
    rec: ApiToken = request.scope["state"]["token"]
    return f"api:{rec.token_id}" + (f":{rec.name}" if rec.name else "")


def _ctx(request: Request[Any, Any, Any]) -> ApiContext:
    ctx: ApiContext = request.app.state["ctx"]
    return ctx


_SCAN = threading.Lock()
"""One scan at a time: of every CDR file (a usage history, a KPI report: seconds of
DuckDB over months of files) or, on a cluster, of every primary's keys (a page of
subscribers); a second one meanwhile is told to come back rather than queued, so API
callers cannot stack scans against the cores charging needs."""


@contextlib.contextmanager
def _one_scan(what: str = "the CDR files") -> Iterator[None]:
    if not _SCAN.acquire(blocking=False):
        raise HTTPException(status_code=503, detail=f"a scan of {what} is already "
                            "running; try again shortly", headers={"Retry-After": "2"})
    try:
        yield
    finally:
        _SCAN.release()


def _msisdn(text: str) -> str:
    try:
        return validate_msisdn(text)
    except ProvisioningError as exc:
        raise not_found(str(exc), "msisdn") from None


def _time(text: str | None, name: str) -> int | None:
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise bad_request(f"{text!r} is not an ISO 8601 time", name) from None
    if t.tzinfo is None:
        raise bad_request(f"{text!r} has no time zone (add Z or +01:00)", name)
    return int(t.timestamp())


# -- subscribers ------------------------------------------------------------------------------

_CURSOR_RE = re.compile(r"^[1-9][0-9]{5,14}$")


def _cursor(text: str) -> str:
    if not text:
        return ""
    try:
        after = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        after = ""
    if not _CURSOR_RE.match(after):
        raise bad_request("not a cursor this API gave", "cursor")
    return after


def _next_cursor(after: str) -> str | None:
    return base64.urlsafe_b64encode(after.encode()).decode().rstrip("=") if after else None


@get(f"{BASE}/subscribers", opt={"roles": CARE_READ}, responses=READ_ERRORS)
@threaded
def list_subscribers(request: Request[Any, Any, Any], cursor: str = "",
                     limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
                     status: Literal["active", "suspended", "blocked", "terminated"]
                     | None = None,
                     q: Annotated[str, Parameter(max_length=253)] = "") -> dict[str, Any]:
    """Subscribers in MSISDN order, a page at a time (``next_cursor`` is the next page's
    ``cursor``); ``q`` finds one by MSISDN, IMSI or user name."""
    ctx = _ctx(request)
    if q:
        return {"items": views.find_subscribers(ctx.ledger, q), "next_cursor": None}
    if ctx.cluster is not None:  # a page is a scan of every primary's keys: one at a time
        with _one_scan("the cluster's subscribers"):
            items, last = views.cluster_subscriber_items(
                ctx.cluster, after=_cursor(cursor), limit=min(limit, ctx.max_page),
                status=status or "")
    else:
        items, last = views.subscriber_items(ctx.store, after=_cursor(cursor),
                                             limit=min(limit, ctx.max_page),
                                             status=status or "")
    return {"items": items, "next_cursor": _next_cursor(last)}


@post(f"{BASE}/subscribers", opt={"roles": CARE}, status_code=201, responses=WRITE_ERRORS)
@threaded
def create_subscriber(request: Request[Any, Any, Any],
                      data: NewSubscriberBody) -> Response[dict[str, Any]]:
    """Create by MSISDN: the same request again answers 200 with the subscriber; the same
    MSISDN with other terms is a 409."""
    ctx = _ctx(request)
    new = NewSubscriber(msisdn=data.msisdn, plan_id=data.plan, imsi=data.imsi,
                        username=data.username, password=data.password,
                        balance=data.balance, postpaid=data.postpaid,
                        credit_limit=data.credit_limit, roaming=data.roaming,
                        name=data.name, address=data.address)
    sub, created = ctx.write_ledger(op_ensure_subscriber(new))
    item = views.subscriber(ctx.engine, sub.msisdn)
    assert item is not None
    return Response(item, status_code=201 if created else 200,
                    headers={"Location": f"{BASE}/subscribers/{sub.msisdn}"})


@get(f"{BASE}/subscribers/{{msisdn:str}}", opt={"roles": CARE_READ}, responses=READ_ERRORS)
async def get_subscriber(request: Request[Any, Any, Any], msisdn: str) -> dict[str, Any]:
    """(On the event loop: three LMDB reads, cheaper than a hop to a thread and back.)"""
    ctx = _ctx(request)
    item = views.subscriber(ctx.engine, _msisdn(msisdn))
    if item is None:
        raise not_found(f"no subscriber {msisdn}", "msisdn")
    return item


_STATUS_ACTION = {"active": "resume", "suspended": "suspend", "blocked": "block"}


@patch(f"{BASE}/subscribers/{{msisdn:str}}", opt={"roles": CARE}, responses=WRITE_ERRORS)
@threaded
def patch_subscriber(request: Request[Any, Any, Any], msisdn: str,
                     data: SubscriberPatchBody) -> dict[str, Any]:
    """Identities (a SIM swap), password, plan, credit limit, roaming and status in one
    transaction; ``changed`` lists what changed."""
    ctx = _ctx(request)
    key = _msisdn(msisdn)
    change = SubscriberChange(imsi=data.imsi, username=data.username,
                              password=data.password, plan_id=data.plan,
                              credit_limit=data.credit_limit, roaming=data.roaming,
                              name=data.name, address=data.address)
    set_terms = op_set_subscriber(key, change)

    def op(tx: Tx) -> list[str]:
        _new, changed = set_terms(tx)
        if data.status is not None:
            raw = tx.get(SUBSCRIBERS, key.encode())
            assert raw is not None  # set_terms found it
            current = dec_subscriber.decode(raw)
            if current.status != data.status:
                op_set_status(key, _STATUS_ACTION[data.status])(tx)
                changed.append("status")
        return changed

    changed = ctx.write_ledger(op)
    item = views.subscriber(ctx.engine, key)
    assert item is not None
    return {**item, "changed": changed}


@delete(f"{BASE}/subscribers/{{msisdn:str}}", opt={"roles": ADMIN},
        status_code=200, responses=WRITE_ERRORS)
@threaded
def delete_subscriber(request: Request[Any, Any, Any], msisdn: str) -> dict[str, Any]:
    """The subscriber is terminated (``ocs subscriber delete``): kept for billing, its
    IMSI and user name free again. Deleting a terminated subscriber again is the same
    answer."""
    ctx = _ctx(request)
    key = _msisdn(msisdn)
    delete_op = op_set_status(key, "delete")

    def op(tx: Tx) -> str:
        raw = tx.get(SUBSCRIBERS, key.encode())
        if raw is None:
            raise NotFound(f"no subscriber {key}", field="msisdn")
        if dec_subscriber.decode(raw).status != "terminated":
            delete_op(tx)
        return "terminated"

    return {"msisdn": key, "status": ctx.write_ledger(op)}


@post(f"{BASE}/subscribers/{{msisdn:str}}/topups", opt={"roles": CARE},
      status_code=201, responses=WRITE_ERRORS)
async def topup(request: Request[Any, Any, Any], msisdn: str,
                data: TopUpBody) -> Response[dict[str, Any]]:
    """Credit the balance. The same ``reference`` again credits nothing and answers the
    first top-up (200, ``replayed``); with another amount it is a 409. (Through the
    writer process, in the group commit of the charging operations: a transaction of its
    own would hold the store's write lock, and charging, for an fsync per top-up.)"""
    ctx = _ctx(request)
    key = _msisdn(msisdn)
    req = CreditRequest(msisdn=key, amount=data.amount, reference=data.reference,
                        actor=_actor(request))
    res: Credited
    if ctx.cluster is not None:  # one checked transaction on the cluster
        res = await anyio.to_thread.run_sync(
            ctx.cluster.run_write, functools.partial(run_credit, req=req))
    else:
        res = await ctx.writer.submit("credit", req)
    top = res.top_up()
    return Response(views.topup(key, top, data.reference),
                    status_code=200 if top.replayed else 201)


@get(f"{BASE}/subscribers/{{msisdn:str}}/usage", opt={"roles": CARE_READ},
     responses=READ_ERRORS)
@threaded
def usage(request: Request[Any, Any, Any], msisdn: str,
          since: Annotated[str | None, Parameter(query="from")] = None,
          until: Annotated[str | None, Parameter(query="to")] = None) -> list[dict[str, Any]]:
    """Top-ups and charges (from the CDRs) in time order within [from, to)."""
    ctx = _ctx(request)
    key = _msisdn(msisdn)
    start, end = _time(since, "from"), _time(until, "to")
    with _one_scan():
        items = views.history(ctx.ledger, views.subscriber_cdrs(
            ctx.cfg.under_data(ctx.cfg.cdr.dir), ctx.store, key), key, since=start,
            until=end)
    if items is None:
        raise not_found(f"no subscriber {key}", "msisdn")
    return items


# -- plans ------------------------------------------------------------------------------------


@get(f"{BASE}/plans", opt={"roles": EVERYONE}, responses=READ_ERRORS)
@threaded
def list_plans(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    return [views.plan(t) for _, t in sorted(all_plans(_ctx(request).ledger).items())]


@get(f"{BASE}/plans/{{plan_id:str}}", opt={"roles": EVERYONE}, responses=READ_ERRORS)
@threaded
def get_plan(request: Request[Any, Any, Any], plan_id: str) -> dict[str, Any]:
    table = all_plans(_ctx(request).ledger).get(plan_id)
    if table is None:
        raise not_found(f"no plan {plan_id!r}", "plan_id")
    return views.plan(table)


# -- alarms -----------------------------------------------------------------------------------


@get(f"{BASE}/alarms", opt={"roles": EVERYONE}, responses=READ_ERRORS)
@threaded
def list_alarms(request: Request[Any, Any, Any], active: bool = False,
                limit: Limit = 500) -> list[dict[str, Any]]:
    """Newest first, at most ``limit``; ``active=true`` for the ones not cleared."""
    store = _ctx(request).store
    with store.read() as txn:
        items = [noc.decode(v) for _k, v in txn.cursor(db=store.dbs[ALARMS])]
    items = [a for a in items if a.active or not active]
    items.sort(key=lambda a: (-a.last_seen, -a.alarm_id))
    return [noc.to_json(a) for a in items[:limit]]


def _alarm_action(request: Request[Any, Any, Any], alarm_id: AlarmId,
                  action: str) -> dict[str, Any]:
    ctx = _ctx(request)
    act = noc.OperatorAction(alarm_id=alarm_id, action=action, at=int(time.time()),
                             user=_actor(request))
    try:
        alarm = ctx.write(lambda tx: noc.operator(tx, act))
    except ValueError as exc:  # the only one an ack or clear raises: no such alarm
        raise not_found(str(exc), "alarm_id") from None
    return noc.to_json(alarm)


@post(f"{BASE}/alarms/{{alarm_id:int}}/ack", opt={"roles": NOC},
      status_code=200, responses=WRITE_ERRORS)
@threaded
def ack_alarm(request: Request[Any, Any, Any], alarm_id: AlarmId) -> dict[str, Any]:
    return _alarm_action(request, alarm_id, "ack")


@post(f"{BASE}/alarms/{{alarm_id:int}}/clear", opt={"roles": NOC},
      status_code=200, responses=WRITE_ERRORS)
@threaded
def clear_alarm(request: Request[Any, Any, Any], alarm_id: AlarmId) -> dict[str, Any]:
    return _alarm_action(request, alarm_id, "clear")


# -- fraud cases ------------------------------------------------------------------------------


@get(f"{BASE}/fraud/cases", opt={"roles": CARE_READ}, responses=READ_ERRORS)
@threaded
def list_cases(request: Request[Any, Any, Any], open_only: Annotated[
        bool, Parameter(query="open")] = False, limit: Limit = 500) -> list[dict[str, Any]]:
    """Most recently updated first, at most ``limit``; ``open=true`` for the open ones."""
    items = [decode_case(v) for v in _ctx(request).ledger.fraud_cases()]
    items = [c for c in items if c.status == "open" or not open_only]
    items.sort(key=lambda c: (-c.updated_at, -c.case_id))
    return [case_json(c) for c in items[:limit]]


@get(f"{BASE}/fraud/cases/{{case_id:int}}", opt={"roles": CARE_READ}, responses=READ_ERRORS)
@threaded
def get_case(request: Request[Any, Any, Any], case_id: CaseId) -> dict[str, Any]:
    with _ctx(request).ledger.view() as view:
        case = load_case(view, case_id)
    if case is None:
        raise not_found(f"no fraud case {case_id}", "case_id")
    return case_json(case)


@post(f"{BASE}/fraud/cases/{{case_id:int}}/resolve", opt={"roles": CARE},
      status_code=200, responses=WRITE_ERRORS)
@threaded
def resolve(request: Request[Any, Any, Any], case_id: CaseId,
            data: ResolveBody | None = None) -> dict[str, Any]:
    """Close a case; ``reinstate`` lifts the measure it took (suspension, block)."""
    ctx = _ctx(request)
    data = data or ResolveBody()
    note = data.note or f"by {_actor(request)}"
    try:
        case = ctx.write_ledger(lambda tx: resolve_case(tx, case_id, reinstate=data.reinstate,
                                                 note=note, at=int(time.time())))
    except KeyError:
        raise not_found(f"no fraud case {case_id}", "case_id") from None
    except ValueError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    return case_json(case)


# -- invoices ---------------------------------------------------------------------------------

_INVOICE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def _period_dir(ctx: ApiContext, period: str) -> Path:
    try:
        check_period(period)
    except BillingError as exc:
        raise bad_request(str(exc), "period") from None
    return ctx.cfg.under_data(ctx.cfg.billing.invoice_dir) / period


@get(f"{BASE}/invoices", opt={"roles": CARE_READ}, responses=READ_ERRORS)
@threaded
def list_invoices(request: Request[Any, Any, Any],
                  period: Annotated[str, Parameter(pattern=r"^[0-9]{4}-[0-9]{2}$")],
                  msisdn: str = "") -> list[dict[str, Any]]:
    """A billed period's invoices (``ocs bill run``), one line each."""
    path = _period_dir(_ctx(request), period) / "summary.csv"
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise not_found(f"no invoices for {period} (ocs bill run)", "period") from None
    return [r for r in rows if not msisdn or r["msisdn"] == msisdn]


@get(f"{BASE}/invoices/{{period:str}}/{{invoice_id:str}}", opt={"roles": CARE_READ},
     responses=READ_ERRORS)
@threaded
def get_invoice(request: Request[Any, Any, Any], period: str, invoice_id: str,
                fmt: Annotated[Literal["json", "html", "pdf"], Parameter(query="format")]
                = "json") -> Response[Any]:
    """One invoice as JSON, or as the customer's HTML page (``format=html``) or PDF
    (``format=pdf``: the run's file, else drawn now from the JSON, the same)."""
    if not _INVOICE_RE.match(invoice_id) or invoice_id.startswith("."):
        raise not_found(f"no invoice {invoice_id!r}", "invoice_id")
    base = _period_dir(_ctx(request), period) / invoice_id
    try:
        if fmt == "pdf":
            from ocs.billing.pdf import invoice_pdf  # fpdf2: imported when first asked for

            pdf = base.with_name(base.name + ".pdf")
            body = pdf.read_bytes() if pdf.exists() else invoice_pdf(json.loads(
                base.with_name(base.name + ".json").read_bytes()))
            return Response(body, media_type="application/pdf", headers={
                "Content-Disposition": f'inline; filename="{invoice_id}.pdf"'})
        body = base.with_name(f"{base.name}.{fmt}").read_bytes()
    except FileNotFoundError:
        raise not_found(f"no invoice {invoice_id} in {period}", "invoice_id") from None
    if fmt == "html":
        return Response(body, media_type="text/html; charset=utf-8")
    return Response(json.loads(body))


# -- who am I, and the portal ------------------------------------------------------------


@get(f"{BASE}/whoami", opt={"roles": EVERYONE}, responses=READ_ERRORS)
async def whoami(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The presented token's id, role and name (the portal shows what it may do)."""
    rec: ApiToken = request.scope["state"]["token"]
    return {"token_id": rec.token_id, "role": rec.role, "name": rec.name}


PORTAL = Path(__file__).parent / "portal"


@get("/", include_in_schema=False)
async def portal_page() -> File:
    """The portal: a page of its own assets (no CDN) over this API."""
    return File(PORTAL / "index.html", filename="index.html", media_type="text/html",
                content_disposition_type="inline")


SECURITY_HEADERS = [
    ResponseHeader(name="Content-Security-Policy", value="default-src 'self'; img-src 'self' "
                   "data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="Referrer-Policy", value="no-referrer"),
    ResponseHeader(name="Cache-Control", value="no-store"),
]
"""On every answer: the portal runs only its own scripts and is never framed; API
answers (balances, identities) are not cached by anything in between."""


# -- KPIs -------------------------------------------------------------------------------------


@get(f"{BASE}/kpis", opt={"roles": EVERYONE}, responses=READ_ERRORS)
@threaded
def kpis(request: Request[Any, Any, Any],
         period: Annotated[str, Parameter(pattern=r"^[0-9]{4}-[0-9]{2}$")]) -> dict[str, Any]:
    """``ocs report kpis --json``: a month's revenue and usage by service and day, active
    subscribers, ARPU, top destinations, roaming share, fraud cases, alarm MTTR."""
    from ocs.billing.kpis import compute  # DuckDB: imported when first asked for

    ctx = _ctx(request)
    try:
        with _one_scan():
            return compute(ctx.cfg.under_data(ctx.cfg.cdr.dir), ctx.store, period,
                           ledger=ctx.ledger)
    except BillingError as exc:
        raise bad_request(str(exc), "period") from None


ROUTES: list[Any] = [list_subscribers, create_subscriber, get_subscriber, patch_subscriber,
          delete_subscriber, topup, usage, list_plans, get_plan, list_alarms, ack_alarm,
          clear_alarm, list_cases, get_case, resolve, list_invoices, get_invoice, kpis, whoami,
          portal_page, create_static_files_router(path="/portal", directories=[PORTAL])]


def create_app(ctx: ApiContext, *, max_body: int = 64 * 1024) -> Litestar:
    return Litestar(
        route_handlers=ROUTES,
        guards=[_authorize],
        state=State({"ctx": ctx}),
        exception_handlers={
            ProvisioningError: _provisioning_error,
            ValidationException: _validation_error,
            HTTPException: _http_error,
            ChargingError: _unavailable,
            Exception: _internal_error,
        },
        openapi_config=OpenAPIConfig(
            title="OCS REST API", version=build_version(), path=BASE,
            render_plugins=[JsonRenderPlugin(path="/openapi.json")],
            components=Components(security_schemes={
                "bearer": SecurityScheme(type="http", scheme="bearer",
                                         description="ocs api token create --role ROLE")}),
            security=[{"bearer": []}],
            operation_id_creator=lambda handler, _method, _path: handler.handler_name,
        ),
        request_max_body_size=max_body,
        before_request=_check_body,
        response_headers=SECURITY_HEADERS,
        debug=False,
    )
