"""The LMDB environment: named sub-databases, read and write transactions, map growth.

One file ``DATA_DIR/ocs.lmdb`` (plus LMDB's ``-lock`` file). Several processes may open
it at once (the server and the ``ocs`` CLI): LMDB serialises their write transactions
with its lock file, and readers never block.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgspec

from ocs.errors import ChargingUnavailable, register
from ocs.store.records import Balance, dec_allowance, dec_balance, dec_reservation, encode
from ocs.store.tx import Tx

SCHEMA_VERSION = 2
"""2: reservations under their subscriber with the session owner index; the allowance
buckets in the balance record (a store of schema 1 is migrated when it is opened)."""
STORE_FILE = "ocs.lmdb"

T = TypeVar("T")

# Sub-database names. Keys are bytes; integers are big-endian fixed width for ordered scans.
SUBSCRIBERS = b"subscribers"  # msisdn -> Subscriber
IDX_IMSI = b"idx_imsi"  # imsi -> msisdn
IDX_USERNAME = b"idx_username"  # username -> msisdn
PLANS = b"plans"  # plan id -> plan document (msgpack of the validated TOML table)
PLAN_VERSIONS = b"plan_versions"  # plan id \0 u32 version -> PlanVersion (every load)
ZONES = b"zones"  # zone id -> zone document
BALANCES = b"balances"  # msisdn -> Balance (with the fraud rules' state)
ALLOWANCES = b"allowances"  # schema 1 only: msisdn -> Allowance (now in the balance)
RESERVATIONS = b"reservations"  # msisdn \0 session \0 unit -> Reservation
SESSION_OWNERS = b"session_owners"  # session \0 unit -> msisdn of its open reservation
RES_EXPIRY = b"res_expiry"  # u64 expires_at + session \0 unit -> b""
ANSWERS = b"answers"  # request key -> stored answer (idempotent replay)
ANSWER_EXPIRY = b"answer_expiry"  # u64 stored_at + request key -> b""
REFUNDS = b"refunds"  # original request key -> refund request key
CDR_JOURNAL = b"cdr_journal"  # u64 seq -> CdrRecord
META = b"meta"  # name -> value
BILLING = b"billing"  # b"run:" + period -> BillingRun; b"file:" + name -> billed-through period
SMS = b"sms"  # message id -> SmsMessage (store-and-forward queue and its history)
SMS_DUE = b"sms_due"  # u64 next try + message id -> b""
ALARMS = b"alarms"  # u64 alarm id -> Alarm (active and history)
ALARM_KEYS = b"alarm_keys"  # element \0 resource \0 alarm type -> u64 id of the latest alarm
ALARM_JOURNAL = b"alarm_journal"  # u64 seq -> one JSON line of the alarm stream
FRAUD_CASES = b"fraud_cases"  # u64 case id -> Case
NMS = b"nms"  # element \0 u64 time -> NmsSample (polled figures, ocs.nms.history)
LEDGER = b"ledger"  # msisdn \0 u64 seq -> LedgerEntry (top-ups, opening balances)
LEDGER_REFS = b"ledger_refs"  # msisdn \0 reference -> u64 seq of its entry
API_TOKENS = b"api_tokens"  # SHA-256 of a bearer token -> ApiToken (ocs.api.tokens)

ALL_DBS = (
    SUBSCRIBERS,
    IDX_IMSI,
    IDX_USERNAME,
    PLANS,
    PLAN_VERSIONS,
    ZONES,
    BALANCES,
    ALLOWANCES,
    RESERVATIONS,
    SESSION_OWNERS,
    RES_EXPIRY,
    ANSWERS,
    ANSWER_EXPIRY,
    REFUNDS,
    CDR_JOURNAL,
    META,
    BILLING,
    SMS,
    SMS_DUE,
    ALARMS,
    ALARM_KEYS,
    ALARM_JOURNAL,
    FRAUD_CASES,
    NMS,
    LEDGER,
    LEDGER_REFS,
    API_TOKENS,
)

META_SCHEMA = b"schema_version"
META_CDR_SEQ = b"cdr_seq"
META_PLANS_VERSION = b"plans_version"
META_CDR_EXPORT = b"cdr_export"
META_NODE = b"node_name"
META_LEDGER_SEQ = b"ledger_seq"
META_ALARM_SEQ = b"alarm_seq"
META_ALARM_STREAM_SEQ = b"alarm_stream_seq"
META_ALARM_EXPORT = b"alarm_export"
META_SMPP_BINDS = b"smpp_binds\x00"
"""+ system_id + NUL + worker (2 bytes) -> binds that worker holds (several workers)."""

ENDED_PREFIX = b"\x00ended\x00"
"""Prefix, in ANSWERS, of the marker a session's final commit leaves per reservation key
(kept as long as answers are): a later report for it is answered and charges nothing."""
MAX_SESSION_KEY = 400
"""Session ids longer than this (bytes) are kept in keys as their first 400 bytes and a
digest of the whole: peers choose them, LMDB takes keys of at most 511 bytes, and the
subscriber, the ended-session marker and the expiry index put up to 23 more in front."""

_U64 = struct.Struct(">Q")
pack_u64 = _U64.pack


def unpack_u64(b: bytes) -> int:
    return int(_U64.unpack(b)[0])


@register
class StoreError(ChargingUnavailable):
    """The store cannot be opened or used (wrong schema, missing, unwritable)."""


def session_part(session_id: str) -> bytes:
    """A session id as store keys hold it (reservations, their expiry and owner index
    entries, ended-session markers): itself, or when long its first bytes (prefix scans
    by RADIUS client and NAS still find it) and a digest of the whole."""
    sid = session_id.encode()
    if len(sid) <= MAX_SESSION_KEY:
        return sid
    return (sid[:MAX_SESSION_KEY] + b"\x00#"
            + hashlib.blake2b(sid, digest_size=16).hexdigest().encode())


def _migrate_1_to_2(txn: Any, dbs: dict[bytes, Any]) -> str:
    """Schema 1 -> 2: reservations were keyed by session NUL unit, now by msisdn NUL
    session NUL unit with the session owner index beside them; the allowance buckets had
    a record of their own, now they are in the balance record."""
    old = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=dbs[RESERVATIONS])]
    for key, raw in old:
        res = dec_reservation.decode(raw)
        msisdn = res.msisdn.encode()
        txn.delete(key, db=dbs[RESERVATIONS])
        unit = _short_unit(key, res.session_id)
        if unit != key:  # a session id longer than keys now hold it
            res.key = unit
            raw = encode(res)
            if txn.delete(pack_u64(res.expires_at) + key, db=dbs[RES_EXPIRY]):
                txn.put(pack_u64(res.expires_at) + unit, b"", db=dbs[RES_EXPIRY])
        txn.put(msisdn + b"\x00" + unit, raw, db=dbs[RESERVATIONS])
        txn.put(unit, msisdn, db=dbs[SESSION_OWNERS])
    ended = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=dbs[ANSWERS])
             if bytes(k).startswith(ENDED_PREFIX)]
    for key, raw in ended:
        rest = key[len(ENDED_PREFIX):]
        sid = rest.rpartition(b"\x00")[0]
        unit = _short_unit(rest, sid.decode("utf-8", "replace"))
        if unit != rest:
            stored_at = int(msgspec.msgpack.decode(raw)[0])
            txn.delete(key, db=dbs[ANSWERS])
            txn.put(ENDED_PREFIX + unit, raw, db=dbs[ANSWERS])
            txn.delete(pack_u64(stored_at) + key, db=dbs[ANSWER_EXPIRY])
            txn.put(pack_u64(stored_at) + ENDED_PREFIX + unit, b"", db=dbs[ANSWER_EXPIRY])
    buckets = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=dbs[ALLOWANCES])]
    for key, raw in buckets:
        braw = txn.get(key, db=dbs[BALANCES])
        bal = dec_balance.decode(braw) if braw is not None else Balance()
        bal.allowance = dec_allowance.decode(raw)
        txn.put(key, encode(bal), db=dbs[BALANCES])
        txn.delete(key, db=dbs[ALLOWANCES])
    return (f"schema 1 -> 2: {len(old)} open reservations moved, {len(buckets)} "
            "allowance records merged into balances")


def _short_unit(key: bytes, session_id: str) -> bytes:
    """A schema-1 reservation key (session id NUL unit) as schema 2 keeps it."""
    sid = session_id.encode()
    if len(sid) <= MAX_SESSION_KEY or not key.startswith(sid + b"\x00"):
        return key
    return session_part(session_id) + key[len(sid):]


class Store:
    """An open LMDB environment with its named sub-databases."""

    def __init__(self, data_dir: str | Path, *, map_size_mb: int = 4096, create: bool = True):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / STORE_FILE
        if not create and not self.path.exists():
            raise StoreError(f"{self.path}: no store here; run 'ocs init' first")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.env = lmdb.open(
                str(self.path),
                subdir=False,
                map_size=map_size_mb * 1024 * 1024,
                max_dbs=len(ALL_DBS) + 2,
                max_readers=512,
                sync=True,
                metasync=True,
                writemap=False,
                readahead=False,
                lock=True,
                mode=0o600,  # and the process umask: balances, password hashes, IMSIs
            )
        except lmdb.Error as exc:
            raise StoreError(f"{self.path}: cannot open store: {exc}") from exc
        self.dbs: dict[bytes, Any] = {}
        self.migrated = ""
        """What opening it migrated ("" = nothing), for the caller to log."""
        with self.env.begin(write=True) as txn:
            for name in ALL_DBS:
                self.dbs[name] = self.env.open_db(name, txn=txn, create=True)
            meta = self.dbs[META]
            raw = txn.get(META_SCHEMA, db=meta)
            if raw is None:
                txn.put(META_SCHEMA, pack_u64(SCHEMA_VERSION), db=meta)
            elif unpack_u64(raw) == 1:
                self.migrated = _migrate_1_to_2(txn, self.dbs)
                txn.put(META_SCHEMA, pack_u64(SCHEMA_VERSION), db=meta)
            elif unpack_u64(raw) != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: store schema version {unpack_u64(raw)}, "
                    f"this build needs {SCHEMA_VERSION}"
                )

    # -- transactions -------------------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[Any]:
        """A short read-only transaction (never blocks on writers)."""
        try:
            txn = self.env.begin(buffers=False)
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)  # another process grew the map: adopt its size
            txn = self.env.begin(buffers=False)
        try:
            yield txn
        finally:
            txn.abort()

    @contextlib.contextmanager
    def view(self) -> Iterator[Tx]:
        """A short read-only transaction as a :class:`Tx` (the store port's read view)."""
        with self.read() as txn:
            yield Tx(txn, self.dbs)

    def fraud_cases(self) -> list[bytes]:
        """Every fraud case (encoded), in case id order."""
        with self.read() as txn, txn.cursor(db=self.dbs[FRAUD_CASES]) as cur:
            return [bytes(v) for v in cur.iternext(keys=False, values=True)]

    def subscribers(self) -> list[bytes]:
        """Every subscriber record (encoded), in MSISDN order."""
        with self.read() as txn, txn.cursor(db=self.dbs[SUBSCRIBERS]) as cur:
            return [bytes(v) for v in cur.iternext(keys=False, values=True)]

    def expiries(self, now: int, limit: int = 10_000) -> list[tuple[bytes, int]]:
        """(reservation key, expires_at) of reservations due at ``now``, oldest first."""
        out: list[tuple[bytes, int]] = []
        stop = pack_u64(now + 1)
        with self.read() as txn, txn.cursor(db=self.dbs[RES_EXPIRY]) as cur:
            for k in cur.iternext(keys=True, values=False):
                if k >= stop or len(out) >= limit:
                    break
                out.append((bytes(k[8:]), unpack_u64(k[:8])))
        return out

    def open_reservations(self, start: bytes) -> list[bytes]:
        """The open reservations (encoded) of units starting with ``start`` (a session
        NUL, or a session id prefix), found through the session owner index."""
        with self.read() as txn:
            owners: list[tuple[bytes, bytes]] = []
            with txn.cursor(db=self.dbs[SESSION_OWNERS]) as cur:
                if cur.set_range(start):
                    for k, v in cur:
                        if not bytes(k).startswith(start):
                            break
                        owners.append((bytes(k), bytes(v)))
            out: list[bytes] = []
            for unit, msisdn in owners:
                raw = txn.get(msisdn + b"\x00" + unit, db=self.dbs[RESERVATIONS])
                if raw is not None:
                    out.append(bytes(raw))
        return out

    def get(self, db: bytes, key: bytes) -> bytes | None:
        with self.read() as txn:
            value: bytes | None = txn.get(key, db=self.dbs[db])
            return value

    def begin_write(self) -> Any:
        try:
            return self.env.begin(write=True)
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            return self.env.begin(write=True)

    def grow(self) -> None:
        """Double the map size (called when a write found the map full)."""
        info = self.env.info()
        self.env.set_mapsize(int(info["map_size"]) * 2)

    def run_write(self, fn: Callable[[Tx], T]) -> T:
        """Run one write operation in its own durable transaction (CLI, tools, tests).

        The server batches operations through :class:`ocs.store.writer.Writer` instead;
        both run the same ``fn(tx)`` functions.
        """
        while True:
            txn = self.begin_write()
            try:
                result = fn(Tx(txn, self.dbs))
                txn.commit()
                return result
            except lmdb.MapFullError:
                txn.abort()
                self.grow()
            except BaseException:
                txn.abort()
                raise

    def size_bytes(self) -> int:
        return os.path.getsize(self.path)

    def stat(self, db: bytes) -> dict[str, int]:
        with self.read() as txn:
            return dict(txn.stat(self.dbs[db]))

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
