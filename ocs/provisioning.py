"""Provisioning: subscribers, plans and zones, top-ups, bulk import.

Each change is an operation on a :class:`~ocs.store.tx.Tx`, so the CLI (its own
transaction) and the server (its writer) run the same code. Invalid input raises
:class:`ProvisioningError` before anything is written.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from ocs.money import MoneyError, format_amount, parse_amount
from ocs.passwords import hash_password, verify_password
from ocs.rating.plans import Mode, PlansDocument
from ocs.store.env import (
    BALANCES,
    IDX_IMSI,
    IDX_USERNAME,
    LEDGER,
    LEDGER_REFS,
    META,
    META_LEDGER_SEQ,
    META_PLANS_VERSION,
    PLAN_VERSIONS,
    PLANS,
    SUBSCRIBERS,
    ZONES,
    Store,
    pack_u64,
    unpack_u64,
)
from ocs.store.records import (
    Balance,
    LedgerEntry,
    PlanVersion,
    Subscriber,
    dec_balance,
    dec_ledger_entry,
    dec_plan_version,
    dec_subscriber,
    encode,
    plan_version_key,
)
from ocs.store.tx import StorePort, Tx

_MSISDN_RE = re.compile(r"^[1-9][0-9]{5,14}$")
_IMSI_RE = re.compile(r"^[0-9]{14,15}$")
_USERNAME_RE = re.compile(r"^[^\s\x00-\x1f\x7f]{1,253}$")
_enc = msgspec.msgpack.Encoder()
_dec_table = msgspec.msgpack.Decoder(dict[str, Any])

# scrypt work factor: ~ a few ms per check, so RADIUS PAP stays fast enough while a
# stolen store does not give away passwords cheaply.


class ProvisioningError(ValueError):
    """Bad provisioning input; the message is the one line the CLI prints, ``field`` the
    input it is about when there is one (the API names it)."""

    def __init__(self, message: str, *, field: str = ""):
        super().__init__(message)
        self.field = field


class NotFound(ProvisioningError):
    """No such subscriber."""


class Conflict(ProvisioningError):
    """The change is well-formed but collides with what is stored (an IMSI or user name
    that is someone else's, a subscriber that exists with other terms, a reference used
    for another amount)."""


def validate_msisdn(value: str) -> str:
    v = value.strip().lstrip("+")
    if not _MSISDN_RE.match(v):
        raise ProvisioningError(f"invalid MSISDN {value!r}: expected E.164, 6-15 digits",
                                field="msisdn")
    return v


def validate_imsi(value: str) -> str:
    if not _IMSI_RE.match(value):
        raise ProvisioningError(f"invalid IMSI {value!r}: expected 14-15 digits",
                                field="imsi")
    return value


def validate_username(value: str) -> str:
    if not _USERNAME_RE.match(value):
        raise ProvisioningError(f"invalid username {value!r}", field="username")
    return value


def _amount(text: str | None, what: str) -> int:
    if text is None or text == "":
        return 0
    try:
        return parse_amount(text, field=what)
    except MoneyError as exc:
        raise ProvisioningError(str(exc), field=what.replace(" ", "_")) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class NewSubscriber:
    msisdn: str
    plan_id: str
    imsi: str = ""
    username: str = ""
    password: str = ""
    balance: str = ""
    postpaid: bool = False
    credit_limit: str = ""
    roaming: bool = True
    name: str = ""
    """The customer's name and billing address (newlines between lines), for invoices."""
    address: str = ""


MAX_NAME = 200
MAX_ADDRESS = 500


def validate_name(value: str) -> str:
    if len(value) > MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ProvisioningError(f"name: at most {MAX_NAME} characters, one line",
                                field="name")
    return value.strip()


def validate_address(value: str) -> str:
    if len(value) > MAX_ADDRESS or any((ord(c) < 32 and c != "\n") or ord(c) == 127
                                       for c in value):
        raise ProvisioningError(f"address: at most {MAX_ADDRESS} characters (lines "
                                "separated by newlines)", field="address")
    return "\n".join(line.strip() for line in value.strip().splitlines())


def plan_table(tx: Tx, plan_id: str) -> dict[str, Any] | None:
    raw = tx.get(PLANS, plan_id.encode())
    return _dec_table.decode(raw) if raw is not None else None


def prepare_subscriber(new: NewSubscriber, plans: dict[str, dict[str, Any]],
                       now: int, *, hash_fn: Callable[[str], str] = hash_password) -> tuple[
                           Subscriber, Balance]:
    """Validate input into records (no store access beyond the plans given)."""
    msisdn = validate_msisdn(new.msisdn)
    imsi = validate_imsi(new.imsi) if new.imsi else ""
    username = validate_username(new.username) if new.username else ""
    plan = plans.get(new.plan_id)
    if plan is None:
        raise ProvisioningError(f"unknown plan {new.plan_id!r}", field="plan")
    plan_mode = plan.get("mode", "prepaid")
    if new.postpaid and plan_mode != Mode.POSTPAID:
        raise ProvisioningError(f"plan {new.plan_id!r} is {plan_mode}, not postpaid",
                                field="postpaid")
    mode = Mode.POSTPAID if new.postpaid or plan_mode == Mode.POSTPAID else Mode.PREPAID
    balance = _amount(new.balance, "balance")
    credit_limit = _amount(new.credit_limit, "credit limit")
    if credit_limit and mode != Mode.POSTPAID:
        raise ProvisioningError("--credit-limit is for postpaid subscribers",
                                field="credit_limit")
    if balance and mode == Mode.POSTPAID:
        raise ProvisioningError("postpaid subscribers start without a balance; use topup",
                                field="balance")
    sub = Subscriber(
        msisdn=msisdn,
        imsi=imsi,
        username=username,
        password_hash=hash_fn(new.password) if new.password else "",
        plan_id=new.plan_id,
        mode=mode.value,
        currency=str(plan.get("currency", "EUR")),
        credit_limit=credit_limit,
        roaming=new.roaming,
        created_at=now,
        updated_at=now,
        customer_name=validate_name(new.name),
        billing_address=validate_address(new.address),
    )
    return sub, Balance(balance=balance, topped_up_total=balance)


def _insert(tx: Tx, sub: Subscriber, bal: Balance) -> None:
    key = sub.msisdn.encode()
    if tx.get(SUBSCRIBERS, key) is not None:
        raise Conflict(f"subscriber {sub.msisdn} already exists", field="msisdn")
    if sub.imsi and tx.get(IDX_IMSI, sub.imsi.encode()) is not None:
        raise Conflict(f"IMSI {sub.imsi} already belongs to another subscriber",
                       field="imsi")
    if sub.username and tx.get(IDX_USERNAME, sub.username.encode()) is not None:
        raise Conflict(f"username {sub.username!r} already belongs to another subscriber",
                       field="username")
    tx.put(SUBSCRIBERS, key, encode(sub))
    tx.put(BALANCES, key, encode(bal))
    if bal.topped_up_total:  # the opening balance is in the ledger
        _ledger_put(tx, sub.msisdn, lambda seq: LedgerEntry(
            seq=seq, at=sub.created_at, kind="opening", amount=bal.topped_up_total,
            actor="provisioning", balance_after=bal.balance))
    if sub.imsi:
        tx.put(IDX_IMSI, sub.imsi.encode(), key)
    if sub.username:
        tx.put(IDX_USERNAME, sub.username.encode(), key)


def op_add_subscriber(new: NewSubscriber, now: int | None = None) -> Callable[[Tx], Subscriber]:
    ts = int(time.time()) if now is None else now

    def op(tx: Tx) -> Subscriber:
        plans = {}
        t = plan_table(tx, new.plan_id)
        if t is not None:
            plans[new.plan_id] = t
        sub, bal = prepare_subscriber(new, plans, ts)
        _insert(tx, sub, bal)
        return sub

    return op


def op_ensure_subscriber(new: NewSubscriber, now: int | None = None) -> Callable[
        [Tx], tuple[Subscriber, bool]]:
    """Create by MSISDN, idempotently (the API's POST): a subscriber that exists with
    exactly these terms — plan, mode, identities, password, credit limit, roaming, opening
    balance — is the answer again (created False); with other terms it is a
    :class:`Conflict` and nothing changes."""
    add = op_add_subscriber(new, now)
    msisdn = validate_msisdn(new.msisdn)

    def op(tx: Tx) -> tuple[Subscriber, bool]:
        raw = tx.get(SUBSCRIBERS, msisdn.encode())
        if raw is None:
            return add(tx), True
        old = dec_subscriber.decode(raw)
        opening = next((e.amount for e in ledger_entries(tx, msisdn)
                        if e.kind == "opening" and e.actor == "provisioning"), 0)
        differ = [name for name, same in (
            ("plan", old.plan_id == new.plan_id),
            ("postpaid", not new.postpaid or old.mode == Mode.POSTPAID),
            ("imsi", old.imsi == new.imsi),
            ("username", old.username == new.username),
            ("credit_limit", old.credit_limit == _amount(new.credit_limit, "credit limit")),
            ("roaming", old.roaming == new.roaming),
            ("name", old.customer_name == validate_name(new.name)),
            ("address", old.billing_address == validate_address(new.address)),
            ("balance", opening == _amount(new.balance, "balance")),
            ("status", old.status != "terminated"),
            ("password", verify_password(new.password, old.password_hash) if new.password
             else not old.password_hash),
        ) if not same]
        if differ:
            raise Conflict(f"subscriber {msisdn} already exists with other terms "
                           f"({', '.join(differ)})", field=differ[0])
        return old, False

    return op


def get_subscriber(tx: Tx, msisdn: str) -> Subscriber:
    raw = tx.get(SUBSCRIBERS, validate_msisdn(msisdn).encode())
    if raw is None:
        raise NotFound(f"no subscriber {msisdn}", field="msisdn")
    return dec_subscriber.decode(raw)


@dataclass(frozen=True, slots=True)
class TopUp:
    entry: LedgerEntry
    balance: Balance
    replayed: bool = False
    """The reference was used before: this is that top-up, nothing credited now."""


MAX_REFERENCE = 128


def _ledger_put(tx: Tx, msisdn: str, entry_for: Callable[[int], LedgerEntry]) -> LedgerEntry:
    raw = tx.get(META, META_LEDGER_SEQ)
    seq = (unpack_u64(raw) if raw else 0) + 1
    tx.put(META, META_LEDGER_SEQ, pack_u64(seq))
    entry = entry_for(seq)
    tx.put(LEDGER, msisdn.encode() + b"\x00" + pack_u64(seq), encode(entry))
    return entry


def ledger_entries(tx: Tx, msisdn: str) -> list[LedgerEntry]:
    key = msisdn.encode()
    return [dec_ledger_entry.decode(v)
            for _k, v in tx.scan(LEDGER, key + b"\x00", key + b"\x01")]


def stored_ledger(store: Store, msisdn: str) -> list[LedgerEntry] | None:
    """A subscriber's ledger entries, oldest first; None if there is no such subscriber."""
    with store.read() as txn:
        tx = Tx(txn, store.dbs)
        if tx.get(SUBSCRIBERS, msisdn.encode()) is None:
            return None
        return ledger_entries(tx, msisdn)


def op_credit(msisdn: str, amount: str, *, reference: str = "", actor: str = "",
              now: int | None = None) -> Callable[[Tx], TopUp]:
    """A top-up: the balance and its ledger entry in one transaction. With a
    ``reference`` (a payment id) the same one again credits nothing and answers the first
    top-up; with another amount it is an error."""
    value = _amount(amount, "amount")
    if value <= 0:
        raise ProvisioningError("top-up amount must be positive", field="amount")
    if len(reference) > MAX_REFERENCE or any(c in reference for c in "\x00\r\n"):
        raise ProvisioningError(f"reference: at most {MAX_REFERENCE} characters, one line",
                                field="reference")

    def op(tx: Tx) -> TopUp:
        sub = get_subscriber(tx, msisdn)
        key = sub.msisdn.encode()
        raw = tx.get(BALANCES, key)
        bal = dec_balance.decode(raw) if raw is not None else Balance()
        ref_key = key + b"\x00" + reference.encode()
        if reference:
            seen = tx.get(LEDGER_REFS, ref_key)
            if seen is not None:
                first = tx.get(LEDGER, key + b"\x00" + seen)
                assert first is not None
                entry = dec_ledger_entry.decode(first)
                if entry.amount != value:
                    raise Conflict(
                        f"reference {reference!r} was a top-up of "
                        f"{format_amount(entry.amount)}, not {format_amount(value)}",
                        field="reference")
                return TopUp(entry=entry, balance=bal, replayed=True)
        if sub.status == "terminated":
            raise Conflict(f"subscriber {sub.msisdn} is terminated", field="status")
        at = int(time.time()) if now is None else now
        if bal.topped_up_total and not any(tx.scan(LEDGER, key + b"\x00", key + b"\x01",
                                                   limit=1)):
            # top-ups from before the ledger: one opening entry (dated when the
            # subscriber was created; the balance after it is not known), so they add up
            _ledger_put(tx, sub.msisdn, lambda seq: LedgerEntry(
                seq=seq, at=sub.created_at, kind="opening", amount=bal.topped_up_total,
                actor="ledger"))
        bal.balance += value
        bal.topped_up_total += value
        entry = _ledger_put(tx, sub.msisdn, lambda seq: LedgerEntry(
            seq=seq, at=at, kind="topup", amount=value, reference=reference, actor=actor,
            balance_after=bal.balance))
        if reference:
            tx.put(LEDGER_REFS, ref_key, pack_u64(entry.seq))
        tx.put(BALANCES, key, encode(bal))
        return TopUp(entry=entry, balance=bal)

    return op


class CreditRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A top-up as the writer process runs it (the REST API's: group-committed with the
    charging operations instead of a transaction of its own)."""

    msisdn: str
    amount: str
    reference: str = ""
    actor: str = ""


class Credited(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a :class:`CreditRequest`: the top-up, or why not (``refusal`` names
    the :class:`ProvisioningError` class, ``field`` its field) — a refusal is an answer,
    not a failed operation of the writer."""

    entry: LedgerEntry | None = None
    balance: Balance | None = None
    replayed: bool = False
    refusal: str = ""
    message: str = ""
    field: str = ""

    def top_up(self) -> TopUp:
        """The :class:`TopUp`, or the refusal raised as its error class."""
        if self.refusal:
            cls = {"NotFound": NotFound, "Conflict": Conflict}.get(self.refusal,
                                                                   ProvisioningError)
            raise cls(self.message, field=self.field)
        assert self.entry is not None and self.balance is not None
        return TopUp(entry=self.entry, balance=self.balance, replayed=self.replayed)


def run_credit(tx: Tx, req: CreditRequest) -> Credited:
    """:func:`op_credit` as a writer operation (``credit``)."""
    try:
        top = op_credit(req.msisdn, req.amount, reference=req.reference,
                        actor=req.actor)(tx)
    except ProvisioningError as exc:  # raised before anything is written
        return Credited(refusal=type(exc).__name__, message=str(exc), field=exc.field)
    return Credited(entry=top.entry, balance=top.balance, replayed=top.replayed)


OPERATIONS: dict[str, tuple[type[Any], type[Any], Callable[[Tx, Any], Any]]] = {
    "credit": (CreditRequest, Credited, run_credit),
}
"""Provisioning operations the writer process runs, by name: (request, result, function)."""


def op_topup(msisdn: str, amount: str) -> Callable[[Tx], Balance]:
    """A top-up without a reference (tests, tools): the new balance."""
    credit = op_credit(msisdn, amount, actor="internal")
    return lambda tx: credit(tx).balance


_TRANSITIONS = {
    "suspend": ({"active", "blocked"}, "suspended"),
    "block": ({"active", "suspended"}, "blocked"),
    "resume": ({"suspended", "blocked"}, "active"),
    "delete": ({"active", "suspended", "blocked"}, "terminated"),
}


def op_set_status(msisdn: str, action: str, now: int | None = None) -> Callable[
        [Tx], tuple[Subscriber, Subscriber]]:
    """suspend | block | resume | delete. Delete keeps the record (for billing) as
    ``terminated`` and frees its IMSI and username for reuse."""
    allowed, target = _TRANSITIONS[action]
    ts = int(time.time()) if now is None else now

    def op(tx: Tx) -> tuple[Subscriber, Subscriber]:
        sub = get_subscriber(tx, msisdn)
        if sub.status not in allowed:
            raise Conflict(f"subscriber {sub.msisdn} is {sub.status}; cannot {action}",
                           field="status")
        new = msgspec.structs.replace(sub, status=target, updated_at=ts)
        if action == "delete":
            if sub.imsi:
                tx.delete(IDX_IMSI, sub.imsi.encode())
            if sub.username:
                tx.delete(IDX_USERNAME, sub.username.encode())
        tx.put(SUBSCRIBERS, sub.msisdn.encode(), encode(new))
        return sub, new

    return op


def _on_plan(tx: Tx, sub: Subscriber, plan_id: str, ts: int) -> Subscriber:
    """``sub`` moved to another plan of its mode and currency from ``ts`` (its history
    keeps the one it leaves, for the pro rata monthly fees)."""
    plan = plan_table(tx, plan_id)
    if plan is None:
        raise ProvisioningError(f"unknown plan {plan_id!r}")
    mode = str(plan.get("mode", "prepaid"))
    if mode != sub.mode:
        raise ProvisioningError(f"plan {plan_id!r} is {mode}; subscriber {sub.msisdn} "
                                f"is {sub.mode}")
    if str(plan.get("currency", "EUR")) != sub.currency:
        raise ProvisioningError(f"plan {plan_id!r} is in {plan.get('currency')}, "
                                f"not {sub.currency}")
    since = sub.plan_since or sub.created_at
    return msgspec.structs.replace(sub, plan_id=plan_id, plan_since=ts, updated_at=ts,
                                   plan_history=(*sub.plan_history, (since, sub.plan_id)))


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriberChange:
    """``ocs subscriber set``: None leaves a field as it is; "" clears IMSI, username or
    password."""

    imsi: str | None = None
    username: str | None = None
    password: str | None = None
    plan_id: str | None = None
    credit_limit: str | None = None
    roaming: bool | None = None
    name: str | None = None
    address: str | None = None


def op_set_subscriber(msisdn: str, change: SubscriberChange, now: int | None = None,
                      *, hash_fn: Callable[[str], str] = hash_password) -> Callable[
                          [Tx], tuple[Subscriber, list[str]]]:
    """Change a subscriber's identities and terms in one transaction with their indexes
    (a SIM swap moves the IMSI index entry, refused if the IMSI is someone else's).
    Returns the new record and the fields that changed."""
    ts = int(time.time()) if now is None else now
    imsi = (validate_imsi(change.imsi) if change.imsi else "") if change.imsi is not None \
        else None
    username = (validate_username(change.username) if change.username else "") \
        if change.username is not None else None
    limit = _amount(change.credit_limit, "credit limit") if change.credit_limit else (
        0 if change.credit_limit == "" else None)
    password_hash = (hash_fn(change.password) if change.password else "") \
        if change.password is not None else None
    name = validate_name(change.name) if change.name is not None else None
    address = validate_address(change.address) if change.address is not None else None

    def op(tx: Tx) -> tuple[Subscriber, list[str]]:
        sub = get_subscriber(tx, msisdn)
        if sub.status == "terminated":
            raise Conflict(f"subscriber {sub.msisdn} is terminated", field="status")
        key = sub.msisdn.encode()
        new, changed = sub, []
        for field_name, value, index in (("imsi", imsi, IDX_IMSI),
                                         ("username", username, IDX_USERNAME)):
            old = getattr(sub, field_name)
            if value is None or value == old:
                continue
            if value:
                owner = tx.get(index, value.encode())
                if owner is not None and owner != key:
                    raise Conflict(f"{field_name} {value} already belongs to "
                                            f"subscriber {owner.decode()}", field=field_name)
                tx.put(index, value.encode(), key)
            if old:
                tx.delete(index, old.encode())
            new = msgspec.structs.replace(new, **{field_name: value})
            changed.append(field_name)
        if password_hash is not None:
            new = msgspec.structs.replace(new, password_hash=password_hash)
            changed.append("password")
        if change.plan_id is not None and change.plan_id != sub.plan_id:
            new = _on_plan(tx, new, change.plan_id, ts)
            changed.append("plan")
        if limit is not None and limit != sub.credit_limit:
            if sub.mode != Mode.POSTPAID:
                raise ProvisioningError("--credit-limit is for postpaid subscribers")
            new = msgspec.structs.replace(new, credit_limit=limit)
            changed.append("credit_limit")
        if change.roaming is not None and change.roaming != sub.roaming:
            new = msgspec.structs.replace(new, roaming=change.roaming)
            changed.append("roaming")
        for field_name, attr, value in (("name", "customer_name", name),
                                        ("address", "billing_address", address)):
            if value is not None and value != getattr(sub, attr):
                new = msgspec.structs.replace(new, **{attr: value})
                changed.append(field_name)
        if changed:
            new = msgspec.structs.replace(new, updated_at=ts)
            tx.put(SUBSCRIBERS, key, encode(new))
        return new, changed

    return op


def op_change_plan(msisdn: str, plan_id: str, now: int | None = None) -> Callable[
        [Tx], tuple[Subscriber, Subscriber]]:
    """Move a subscriber to another plan of the same mode and currency, from ``now``.

    Open sessions keep the terms they were granted under; new grants use the new plan.
    """
    ts = int(time.time()) if now is None else now

    def op(tx: Tx) -> tuple[Subscriber, Subscriber]:
        sub = get_subscriber(tx, msisdn)
        if sub.status == "terminated":
            raise Conflict(f"subscriber {sub.msisdn} is terminated", field="status")
        if plan_id == sub.plan_id:
            raise ProvisioningError(f"subscriber {sub.msisdn} is already on {plan_id!r}")
        new = _on_plan(tx, sub, plan_id, ts)
        tx.put(SUBSCRIBERS, sub.msisdn.encode(), encode(new))
        return sub, new

    return op


def plan_versions(tx: Tx, plan_id: str) -> list[PlanVersion]:
    """Every stored version of a plan, oldest first. A plan stored before versions
    existed is its version 1, effective from the start."""
    pid = plan_id.encode()
    out = [dec_plan_version.decode(v)
           for _k, v in tx.scan(PLAN_VERSIONS, pid + b"\x00", pid + b"\x01")]
    if not out:
        raw = tx.get(PLANS, plan_id.encode())
        if raw is not None:
            out = [PlanVersion(version=1, effective_at=0, loaded_at=0,
                               table=_dec_table.decode(raw))]
    return out


def stored_plan_versions(store: StorePort, plan_id: str) -> list[PlanVersion]:
    with store.view() as view:
        return plan_versions(view, plan_id)


def op_load_plans(doc: PlansDocument, *, effective_at: int | None = None,
                  now: int | None = None, report: dict[str, int] | None = None,
                  based_on: dict[str, int] | None = None) -> Callable[[Tx], int]:
    """Store every plan and zone of a validated document; bumps the plans version.

    A plan whose table differs from its latest version (or that is new) gets a new
    version, effective at ``effective_at``; by default a new plan from the start and a
    changed one from ``now`` (the load). A table the same as the plan's latest version
    adds nothing.
    ``report`` gets the new version number of each plan that has one. ``based_on``
    (plan id -> version): refuse if a plan's latest version is no longer that one (the
    table was derived from it, and someone loaded another meanwhile)."""

    def op(tx: Tx) -> int:
        at = int(time.time()) if now is None else now
        for zone in doc.zones:
            tx.put(ZONES, zone.id.encode(), _enc.encode(list(zone.networks)))
        for table in doc.plans:
            pid = str(table["id"])
            versions = plan_versions(tx, pid)
            if based_on is not None and pid in based_on and (
                    not versions or versions[-1].version != based_on[pid]):
                raise ProvisioningError(f"plan {pid} changed meanwhile (now version "
                                        f"{versions[-1].version if versions else 0}); "
                                        "run it again")
            if versions and _enc.encode(versions[-1].table) == _enc.encode(table):
                continue  # nothing new
            if versions and versions[0].loaded_at == 0:  # stored before versions: keep
                tx.put(PLAN_VERSIONS, plan_version_key(pid, 1), encode(versions[0]))
            number = versions[-1].version + 1 if versions else 1
            eff = effective_at if effective_at is not None else (at if versions else 0)
            tx.put(PLAN_VERSIONS, plan_version_key(pid, number), encode(PlanVersion(
                version=number, effective_at=eff, loaded_at=at, table=table)))
            tx.put(PLANS, pid.encode(), _enc.encode(table))
            if report is not None:
                report[pid] = number
        raw = tx.get(META, META_PLANS_VERSION)
        version = (unpack_u64(raw) if raw else 0) + 1
        tx.put(META, META_PLANS_VERSION, pack_u64(version))
        return version

    return op


def stored_zones(store: StorePort) -> dict[str, list[str]]:
    """Zone id -> its visited networks (MCC-MNC)."""
    with store.view() as view:
        return {k.decode(): msgspec.msgpack.decode(v, type=list[str])
                for k, v in view.scan(ZONES)}


def stored_zone_ids(store: StorePort) -> set[str]:
    with store.view() as view:
        return {k.decode() for k, _ in view.scan(ZONES)}


def all_plans(store: StorePort) -> dict[str, dict[str, Any]]:
    with store.view() as view:
        return {k.decode(): _dec_table.decode(v) for k, v in view.scan(PLANS)}


# -- bulk import ----------------------------------------------------------------------------

IMPORT_COLUMNS = ("msisdn", "plan", "imsi", "username", "password", "balance", "mode",
                  "credit_limit", "roaming")


def _rows(path: Path, on_bytes: Callable[[int], None] | None) -> Iterator[tuple[int, dict[
        str, str]]]:
    with path.open("rb") as raw_f:
        text = io.TextIOWrapper(raw_f, encoding="utf-8", newline="")
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            raise ProvisioningError(f"{path}: empty file") from None
        header = [h.strip().lower() for h in header]
        for h in header:
            if h not in IMPORT_COLUMNS:
                raise ProvisioningError(f"{path}:1: unknown column {h!r}")
        if "msisdn" not in header or "plan" not in header:
            raise ProvisioningError(f"{path}:1: columns msisdn and plan are required")
        n = 0
        for row in reader:
            n += 1
            if len(row) != len(header):
                raise ProvisioningError(
                    f"{path}:{reader.line_num}: expected {len(header)} fields, got {len(row)}")
            yield reader.line_num, dict(zip(header, row, strict=True))
            if on_bytes is not None and n % 4096 == 0:
                on_bytes(raw_f.tell())
        if on_bytes is not None:
            on_bytes(raw_f.tell())


def _row_to_new(row: dict[str, str]) -> NewSubscriber:
    mode = row.get("mode", "").strip().lower()
    if mode not in ("", "prepaid", "postpaid"):
        raise ProvisioningError(f"mode must be prepaid or postpaid, got {mode!r}")
    roaming = row.get("roaming", "").strip().lower()
    if roaming not in ("", "yes", "no", "true", "false", "1", "0"):
        raise ProvisioningError(f"roaming must be yes or no, got {roaming!r}")
    return NewSubscriber(
        msisdn=row["msisdn"],
        plan_id=row["plan"],
        imsi=row.get("imsi", ""),
        username=row.get("username", ""),
        password=row.get("password", ""),
        balance=row.get("balance", ""),
        postpaid=mode == "postpaid",
        credit_limit=row.get("credit_limit", ""),
        roaming=roaming not in ("no", "false", "0"),
    )


def import_subscribers(
    store: Store,
    path: Path,
    *,
    chunk: int = 20_000,
    progress: Callable[[str, int, int], None] | None = None,
) -> int:
    """Import a CSV of subscribers. The whole file is validated first (format, plans,
    duplicates in the file and in the store); only then is it written, in chunks of
    ``chunk`` rows per durable transaction. Returns the number imported."""
    size = path.stat().st_size
    plans = all_plans(store)
    now = int(time.time())
    seen_msisdn: set[str] = set()
    seen_imsi: set[str] = set()
    seen_user: set[str] = set()

    def tick(phase: str) -> Callable[[int], None] | None:
        return (lambda pos: progress(phase, pos, size)) if progress else None

    def no_hash(_pw: str) -> str:
        return ""

    count = 0
    with store.read() as txn:
        sdb, idb, udb = store.dbs[SUBSCRIBERS], store.dbs[IDX_IMSI], store.dbs[IDX_USERNAME]
        for line, row in _rows(path, tick("validate")):
            try:
                sub, _ = prepare_subscriber(_row_to_new(row), plans, now, hash_fn=no_hash)
            except ProvisioningError as exc:
                raise ProvisioningError(f"{path}:{line}: {exc}") from None
            key = sub.msisdn
            if key in seen_msisdn or txn.get(key.encode(), db=sdb) is not None:
                raise ProvisioningError(f"{path}:{line}: subscriber {key} already exists")
            seen_msisdn.add(key)
            if sub.imsi:
                if sub.imsi in seen_imsi or txn.get(sub.imsi.encode(), db=idb) is not None:
                    raise ProvisioningError(f"{path}:{line}: IMSI {sub.imsi} is taken")
                seen_imsi.add(sub.imsi)
            if sub.username:
                if sub.username in seen_user or txn.get(sub.username.encode(), db=udb):
                    raise ProvisioningError(
                        f"{path}:{line}: username {sub.username!r} is taken")
                seen_user.add(sub.username)
            count += 1
    del seen_msisdn, seen_imsi, seen_user
    batch: list[tuple[Subscriber, Balance]] = []

    def write(items: list[tuple[Subscriber, Balance]]) -> None:
        def op(tx: Tx) -> None:
            for sub, bal in items:
                _insert(tx, sub, bal)

        store.run_write(op)

    for _line, row in _rows(path, tick("write")):
        batch.append(prepare_subscriber(_row_to_new(row), plans, now))
        if len(batch) >= chunk:
            write(batch)
            batch = []
    if batch:
        write(batch)
    return count


def import_subscribers_each(
    ledger: StorePort,
    path: Path,
    *,
    threads: int = 16,
    progress: Callable[[str, int, int], None] | None = None,
) -> int:
    """:func:`import_subscribers` for a store whose transactions hold one subscriber (the
    Redis Cluster): the file validated first (format, plans, duplicates in the file),
    then every row checked against the store (the MSISDN, IMSI and user name free), then
    each subscriber added in a transaction of its own, ``threads`` at a time. A row
    taken meanwhile by someone else stops the import with what was added before it."""
    size = path.stat().st_size
    plans = all_plans(ledger)
    now = int(time.time())
    seen: tuple[set[str], set[str], set[str]] = (set(), set(), set())
    ids: list[tuple[int, str, str, str]] = []

    def tick(phase: str) -> Callable[[int], None] | None:
        return (lambda pos: progress(phase, pos, size)) if progress else None

    for line, row in _rows(path, tick("validate")):
        try:
            sub, _ = prepare_subscriber(_row_to_new(row), plans, now, hash_fn=lambda _p: "")
        except ProvisioningError as exc:
            raise ProvisioningError(f"{path}:{line}: {exc}") from None
        for value, used, what in ((sub.msisdn, seen[0], "subscriber"),
                                  (sub.imsi, seen[1], "IMSI"),
                                  (sub.username, seen[2], "username")):
            if value and value in used:
                raise ProvisioningError(f"{path}:{line}: {what} {value} twice in the file")
            used.add(value)
        ids.append((line, sub.msisdn, sub.imsi, sub.username))
    del seen

    def taken(item: tuple[int, str, str, str]) -> str:
        line, msisdn, imsi, username = item
        with ledger.view() as tx:
            if tx.get(SUBSCRIBERS, msisdn.encode()) is not None:
                return f"{path}:{line}: subscriber {msisdn} already exists"
            if imsi and tx.get(IDX_IMSI, imsi.encode()) is not None:
                return f"{path}:{line}: IMSI {imsi} is taken"
            if username and tx.get(IDX_USERNAME, username.encode()) is not None:
                return f"{path}:{line}: username {username!r} is taken"
        return ""

    def add(row: dict[str, str]) -> None:
        sub, bal = prepare_subscriber(_row_to_new(row), plans, now)
        ledger.run_write(lambda tx: _insert(tx, sub, bal))

    with ThreadPoolExecutor(threads) as pool:
        # in steps of a few hundred rows: Executor.map would hold a future for every row
        step = threads * 32
        for i in range(0, len(ids), step):
            problem = next((p for p in pool.map(taken, ids[i:i + step]) if p), "")
            if problem:
                raise ProvisioningError(problem)
        count = len(ids)
        del ids
        rows = (row for _line, row in _rows(path, tick("write")))
        while part := list(itertools.islice(rows, step)):
            list(pool.map(add, part))  # (an error in any row is raised here)
    return count
