"""The Redis Cluster adapter of the store port: one subscriber's operation, one hash slot.

Every record of a subscriber sits under the hash tag ``{msisdn}`` (the subscriber, the
balance with its allowance buckets and fraud state, the open reservations, the stored
answers and refund marks, the CDR counter), so one operation's records live in one slot.
An operation runs as a **checked transaction**: the engine's unchanged ``fn(tx)`` runs on
a :class:`ClusterTx` that reads from Redis and buffers its writes; then one call of the
Lua function ``ocs_apply`` compares every record the operation read with what is stored
now and, only if none changed, applies the writes (else the operation runs again on fresh
reads). ``WAIT wait_replicas wait_timeout_ms`` follows on the same connection before the
answer goes out; too few acknowledgements are an error (:class:`StoreError`), never a
silent success.

Beside the account, in the same slot (keys whose tag hashes to the subscriber's slot, one
short tag per slot): the reservation expiry set and the CDR outbox. Outside it, lookups
that start from something else are **hints**: the IMSI and username indexes, the session
owner hash (one per session: rating group -> subscriber) and the owner of a debit's
answer are written before the operation that needs them (and acknowledged by the
replicas), withdrawn after it only if they still name that subscriber, and checked
against the account whenever they are read (a stale hint is nobody's). When a session
ends, an ``end:`` key names its subscriber for as long as answers are kept: a report
re-sent after the end finds the stored answer there. Plans, zones and the other shared
settings sit under ``{ocs}``; a charging operation reads them without checking them (at
most a second old), as the LMDB writer reads a plan version current at its batch.

Fraud cases are kept in their account (ids ``msisdn * CASE_SPAN + n``), and so are
the SMS messages it submitted (ids ``msisdn-n``, receipts ``msisdn-n-r``: a message id
names its account), with a due set per slot (score: the next try) that every serving
node reads (:meth:`ClusterStore.sms_due`); a settled message is kept as long as answers.
The SMPP bind counts are shared (``{ocs}:smppbinds``). What stays each node's own in its
LMDB store: alarms, NMS history, billing runs and API tokens.

The blocking calls here serve the command line, the drain and the reaper (threads) and
the protocol agents' read-only views; charging operations of a serving node run on its
event loop through :mod:`ocs.store.cluster_loop`.
"""

from __future__ import annotations

import contextlib
import functools
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from redis.cluster import ClusterNode, RedisCluster
from redis.connection import Connection
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TimeoutError,
)

from ocs.store.env import (
    ANSWER_EXPIRY,
    ANSWERS,
    BALANCES,
    CDR_JOURNAL,
    FRAUD_CASES,
    IDX_IMSI,
    IDX_USERNAME,
    LEDGER,
    LEDGER_REFS,
    META,
    META_CDR_SEQ,
    META_LEDGER_SEQ,
    META_SMPP_BINDS,
    PLAN_VERSIONS,
    PLANS,
    REFUNDS,
    RES_EXPIRY,
    RESERVATIONS,
    SESSION_OWNERS,
    SMS,
    SMS_DUE,
    SUBSCRIBERS,
    ZONES,
    StoreError,
    pack_u64,
    unpack_u64,
)
from ocs.store.records import dec_balance, dec_cdr, dec_reservation, dec_subscriber
from ocs.store.tx import Tx

T = TypeVar("T")

SLOTS = 16384
NOBODY = b"~"
"""The tag of answers to requests that name no known subscriber."""
SHARED = b"{ocs}"
SHARED_TTL_S = 1.0
"""How long a charging operation may use a shared record (the plans version) it read."""
FLUSH = SHARED + b":flush"
"""The number of the last ``ocs cdr flush`` asked for, cluster-wide."""
NODES = SHARED + b":nodes"
"""Hash: node -> "<last heard, ms>:<last flush done>" (each serving node's first worker)."""
LEASE = SHARED + b":lease:"
"""+ job (expiry | outbox): the process that scans every slot for it (``ocs_lease``)."""
OWNER_HINTS = 200_000
"""Session owners a process remembers (the oldest forgotten first)."""

_ACCOUNT_STR = {SUBSCRIBERS: b":sub", BALANCES: b":bal"}
"""Records keyed by the MSISDN alone: one string key each."""
_ACCOUNT_HASH = {RESERVATIONS: b":res", LEDGER: b":led", LEDGER_REFS: b":ledref"}
"""Records keyed ``msisdn NUL rest``: one hash per subscriber, ``rest`` its field."""
_BOUND_STR = {ANSWERS: b":ans:", REFUNDS: b":rf:"}
"""Records keyed by a request key: under the tag of the operation's subscriber."""
_SHARED_HASH = {PLANS: SHARED + b":plans", PLAN_VERSIONS: SHARED + b":planv",
                ZONES: SHARED + b":zones", META: SHARED + b":meta"}
_INDEX = {IDX_IMSI: b"idx:imsi:", IDX_USERNAME: b"idx:user:"}
"""Indexes to a subscriber: a string key per entry."""
_ANSWER_OWNER = b"ans:"
"""Index: a debit's request key -> the subscriber whose account holds its answer."""
_FRAUD_SEQ = b"fraud_case_seq"
"""The fraud case counter (ocs.fraud.cases.META_FRAUD_SEQ): per account here, its ids
``msisdn * CASE_SPAN + n`` (unique cluster-wide, and naming their account)."""
_FRAUD_SEQ_HERE = b"fraud_case_seq\x00account"
CASE_SPAN = 1000
"""Fraud case ids per subscriber (the last one is reused beyond: a case id always fits
in a signed 64-bit integer, and fraud never stops charging)."""
_BOUND_META = {META_CDR_SEQ: b":cdrseq", META_LEDGER_SEQ: b":ledseq",
               _FRAUD_SEQ_HERE: b":fraudseq"}
"""Counters of the shared meta table that are per subscriber here (record ids, ledger
entries and fraud cases are numbered per account, so no two slots share a counter)."""
_RERATE = b"rerate\x00"
_BINDS = SHARED + b":smppbinds"
"""The SMPP bind counts (engine ``op_smpp_bind``): field = key after META_SMPP_BINDS."""
SMS_SCAN_S = 1.0
"""How often a process with receivers bound reads every slot's SMS due set (a message
submitted on another node, for a receiver bound here, is found then)."""
SMS_IDLE_SCAN_S = 10.0
"""How often a process with no receiver bound does (what waits for nobody is expired or
put off by whoever looks first; a full look costs Redis ~13 ms of CPU)."""

LIBRARY = """#!lua name=ocs
-- ocs_apply: check what an operation read, then write what it decided (one slot).
-- ARGV: n, then n checks (kind G|H|N, key index, [field], has 0|1, value), then writes.
local function apply(keys, argv)
  local n = tonumber(argv[1])
  local a = 2
  for _ = 1, n do
    local kind, k = argv[a], keys[tonumber(argv[a + 1])]
    a = a + 2
    local cur
    if kind == 'G' then
      cur = redis.call('GET', k)
    elseif kind == 'H' then
      cur = redis.call('HGET', k, argv[a])
      a = a + 1
    elseif kind == 'N' then
      cur = tostring(redis.call('HLEN', k))
    else
      return redis.error_reply('ocs_apply: bad check ' .. tostring(kind))
    end
    if argv[a] == '0' then
      if cur then return 0 end
    elseif cur ~= argv[a + 1] then
      return 0
    end
    a = a + 2
  end
  local widths = {S = 3, D = 1, HS = 3, HD = 2, ZA = 3, ZR = 2, RP = 2}
  local b = a
  while b <= #argv do  -- validate every write before the first one (no rollback)
    local op = argv[b]
    local w = widths[op]
    if not w or not keys[tonumber(argv[b + 1])] or b + w > #argv
        or (op == 'S' and not tonumber(argv[b + 3]))
        or (op == 'ZA' and not tonumber(argv[b + 2])) then
      return redis.error_reply('ocs_apply: bad write ' .. tostring(op))
    end
    b = b + 1 + w
  end
  while a <= #argv do
    local op, k = argv[a], keys[tonumber(argv[a + 1])]
    if op == 'S' then
      local ttl = tonumber(argv[a + 3])
      if ttl > 0 then
        redis.call('SET', k, argv[a + 2], 'PX', ttl)
      else
        redis.call('SET', k, argv[a + 2])
      end
    elseif op == 'D' then
      redis.call('DEL', k)
    elseif op == 'HS' then
      redis.call('HSET', k, argv[a + 2], argv[a + 3])
    elseif op == 'HD' then
      redis.call('HDEL', k, argv[a + 2])
    elseif op == 'ZA' then
      redis.call('ZADD', k, argv[a + 2], argv[a + 3])
    elseif op == 'ZR' then
      redis.call('ZREM', k, argv[a + 2])
    elseif op == 'RP' then
      redis.call('RPUSH', k, argv[a + 2])
    end
    a = a + 1 + widths[op]
  end
  return 1
end

-- ocs_cas: KEYS[1] := ARGV[3] if it holds ARGV[2] (ARGV[1] = 1) or nothing (ARGV[1] =
-- 0) now: an index entry taken only if nobody took it since the operation read it.
local function cas(keys, argv)
  local cur = redis.call('GET', keys[1])
  if argv[1] == '0' then
    if cur then return 0 end
  elseif cur ~= argv[2] then
    return 0
  end
  redis.call('SET', keys[1], argv[3])
  return 1
end

-- ocs_lease: KEYS[1] names ARGV[1] for ARGV[2] ms, unless it names someone else now
-- (a cluster-wide job's lease: taken, or renewed by its holder).
local function lease(keys, argv)
  local cur = redis.call('GET', keys[1])
  if cur and cur ~= argv[1] then return 0 end
  redis.call('SET', keys[1], argv[1], 'PX', argv[2])
  return 1
end

-- ocs_cad: delete KEYS[1] if it still holds ARGV[1] (an index entry that is ours).
local function cad(keys, argv)
  if redis.call('GET', keys[1]) ~= argv[1] then return 0 end
  return redis.call('DEL', keys[1])
end

-- ocs_unown: a session's unit ARGV[1] ends for ARGV[2]: out of the session's owner hash
-- KEYS[1] if still theirs, and KEYS[2] names them for ARGV[3] ms (its ended marker).
local function unown(keys, argv)
  if redis.call('HGET', keys[1], argv[1]) ~= argv[2] then return 0 end
  redis.call('HDEL', keys[1], argv[1])
  redis.call('SET', keys[2], argv[2], 'PX', argv[3])
  return 1
end

-- claim: a node takes up to ARGV[1] CDRs from the slot's outbox KEYS[1] into its
-- claimed list KEYS[2] (or gets back what it claimed before and has not finished).
local function claim(keys, argv)
  if redis.call('LLEN', keys[2]) > 0 then return redis.call('LRANGE', keys[2], 0, -1) end
  local rows = redis.call('LRANGE', keys[1], 0, tonumber(argv[1]) - 1)
  if #rows == 0 then return rows end
  redis.call('LTRIM', keys[1], #rows, -1)
  redis.call('RPUSH', keys[2], unpack(rows))
  return rows
end

-- unclaim: the claimed list KEYS[1] is in the node's journal: drop it, if its last
-- row is still ARGV[1] (not a newer claim).
local function unclaim(keys, argv)
  if redis.call('LINDEX', keys[1], -1) ~= argv[1] then return 0 end
  return redis.call('DEL', keys[1])
end

-- ocs_scan: which of the lists (ARGV[1] = L: LLEN) or sorted sets (Z: the earliest
-- score) named in ARGV[2..] are not empty, on this node: index, value, index, value...
local function scan(keys, argv)
  local out = {}
  for i = 2, #argv do
    if argv[1] == 'L' then
      local n = redis.call('LLEN', argv[i])
      if n > 0 then out[#out + 1] = i - 1; out[#out + 1] = n end
    else
      local first = redis.call('ZRANGE', argv[i], 0, 0, 'WITHSCORES')
      if #first > 0 then out[#out + 1] = i - 1; out[#out + 1] = tonumber(first[2]) end
    end
  end
  return out
end

-- ocs_claim_many / ocs_unclaim_many: those two for many slots of this node in one call
-- (ARGV: the limit, then pairs outbox key, claimed key / pairs claimed key, last row);
-- a key another node serves (a slot moved) is an error: the caller asks again.
local function claim_many(keys, argv)
  local out = {}
  for i = 2, #argv, 2 do out[#out + 1] = claim({argv[i], argv[i + 1]}, {argv[1]}) end
  return out
end

local function unclaim_many(keys, argv)
  local n = 0
  for i = 1, #argv, 2 do n = n + unclaim({argv[i]}, {argv[i + 1]}) end
  return n
end

-- ocs_sms_due: the SMS due sets named in ARGV[4..] (this node's): for each that is not
-- empty, {its index, its size, its earliest score, the messages due at ARGV[1] (ARGV[3]
-- = 1: whenever due)}, at most ARGV[2] messages in all (members name message keys).
local function sms_due(keys, argv)
  local left, all = tonumber(argv[2]), argv[3] == '1'
  local out = {}
  for i = 4, #argv do
    local n = redis.call('ZCARD', argv[i])
    if n > 0 then
      local first = redis.call('ZRANGE', argv[i], 0, 0, 'WITHSCORES')
      local msgs, ids = {}, {}
      if left > 0 then
        if all then
          ids = redis.call('ZRANGE', argv[i], 0, left - 1)
        else
          ids = redis.call('ZRANGEBYSCORE', argv[i], '-inf', argv[1], 'LIMIT', 0, left)
        end
      end
      for _, id in ipairs(ids) do
        local m = redis.call('GET', id)
        if m then msgs[#msgs + 1] = m end
      end
      left = left - #ids
      out[#out + 1] = {i - 3, n, tonumber(first[2]), msgs}
    end
  end
  return out
end

redis.register_function('ocs_apply', apply)
redis.register_function{function_name = 'ocs_sms_due', callback = sms_due,
                        flags = {'no-writes', 'allow-cross-slot-keys'}}
redis.register_function{function_name = 'ocs_claim_many', callback = claim_many,
                        flags = {'allow-cross-slot-keys'}}
redis.register_function{function_name = 'ocs_unclaim_many', callback = unclaim_many,
                        flags = {'allow-cross-slot-keys'}}
redis.register_function{function_name = 'ocs_scan', callback = scan,
                        flags = {'no-writes', 'allow-cross-slot-keys'}}
redis.register_function('ocs_unown', unown)
redis.register_function('ocs_cad', cad)
redis.register_function('ocs_cas', cas)
redis.register_function('ocs_lease', lease)
"""


slot_of: Callable[[bytes], int] = functools.lru_cache(maxsize=1 << 14)(key_slot)
"""The hash slot of a key (remembered: an operation asks for the same few many times)."""


@functools.cache
def slot_tags() -> tuple[bytes, ...]:
    """For each hash slot, a short tag that hashes to it (computed once)."""
    tags: list[bytes | None] = [None] * SLOTS
    left, n = SLOTS, 0
    while left:
        cand = b"%x" % n
        s = key_slot(cand)
        if tags[s] is None:
            tags[s] = cand
            left -= 1
        n += 1
    return tuple(t for t in tags if t is not None)


def account_tag(msisdn: bytes) -> bytes:
    return b"{" + (msisdn or NOBODY) + b"}"


def owner_keys(unit: bytes) -> tuple[bytes, bytes, bytes]:
    """(owner hash, field, ended key) of reservation unit ``session NUL tail``.

    A session's units share one hash (``own:{session}``, field: the rating group or
    service, value: the MSISDN), so the units of a session are one read, whichever node
    opened it. The ended key ``end:{session}tail`` names the subscriber whose account
    holds the session's ended marker, for as long as answers are kept; the same tag puts
    it in the hash's slot."""
    session, _, tail = unit.rpartition(b"\x00")
    tag = b"{s" + _escape(session) + b"}"  # never empty: "{}" is no hash tag
    return b"own:" + tag, tail, b"end:" + tag + tail


def _escape(session: bytes) -> bytes:
    """A session id without braces (a peer's braces would choose the hash tag)."""
    return session.replace(b"\\", b"\\\\").replace(b"{", b"\\(").replace(b"}", b"\\)")


def _unescape(tag: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(tag):
        if tag[i] == 0x5C and i + 1 < len(tag):
            out += {0x28: b"{", 0x29: b"}"}.get(tag[i + 1], b"\\")
            i += 2
        else:
            out.append(tag[i])
            i += 1
    return bytes(out)


def expiry_key(slot: int) -> bytes:
    """The slot's reservation expiry set (score: expires at; member: the LMDB key)."""
    return b"{" + slot_tags()[slot] + b"}:resexp"


def outbox_key(slot: int) -> bytes:
    """The slot's CDR outbox (a list of encoded CDR records, oldest first)."""
    return b"{" + slot_tags()[slot] + b"}:outbox"


def sms_due_key(slot: int) -> bytes:
    """The slot's SMS due set (score: the next try; member: the message's key)."""
    return b"{" + slot_tags()[slot] + b"}:smsdue"


def sms_key(message_id: bytes) -> bytes:
    """The key of SMS message ``message_id`` (``msisdn-n``, a receipt ``msisdn-n-r``)
    in its account."""
    base = message_id[:-2] if message_id.endswith(b"-r") else message_id
    owner, sep, n = base.rpartition(b"-")
    if not sep or not owner or not n.isdigit():
        raise StoreError(f"SMS message id {message_id!r} names no account")
    return b"{" + owner + b"}:sms:" + message_id


def claimed_key(slot: int, node: str) -> bytes:
    """The CDRs of the slot's outbox that ``node`` took and has not journalled yet."""
    return b"{" + slot_tags()[slot] + b"}:claimed:" + node.encode()


def as_map(reply: Any) -> dict[bytes, bytes]:
    """An HGETALL reply as a dict (RESP2 gives a flat list, RESP3 a map)."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


def pre_ok(cmd: tuple[Any, ...], reply: Any) -> bool:
    """Whether a hint written before an operation took: an index entry taken with
    ``ocs_cas`` may have been taken by another node since it was read (0)."""
    return not (cmd[0] == "FCALL" and not int(reply))


class SlotTimes:
    """Slot -> the earliest score of one sorted set per slot (the reservation expiry
    sets, the SMS due sets), as this process last read or wrote it: which slots to
    look at, and when. A look's reading replaces what was known, unless this process
    wrote to the slot while it read (then the earlier of the two counts)."""

    def __init__(self) -> None:
        self.at: dict[int, int] = {}
        self._written: dict[int, int] = {}
        """Slot -> the number of this process's last write to it (``_writes``)."""
        self._writes = 0
        self._lock = threading.Lock()

    def wrote(self, slot: int, at: int) -> None:
        """This process added a member scored ``at`` to the slot's set."""
        with self._lock:
            self.at[slot] = min(at, self.at.get(slot, at))
            self._writes += 1
            self._written[slot] = self._writes

    def saw(self, found: dict[int, int]) -> None:
        """Slot -> earliest score, from a look at many slots (kept with what is known)."""
        with self._lock:
            for slot, at in found.items():
                self.at[slot] = min(at, self.at.get(slot, at))

    def due(self, now: int, *, everything: bool = False) -> tuple[list[int], int]:
        """The slots with something due at ``now`` (``everything``: with anything), in
        order, and the mark a look at them passes to :meth:`looked`."""
        with self._lock:
            return sorted(s for s, at in self.at.items() if everything or at <= now), \
                self._writes

    def mark(self) -> int:
        """The mark of a look at slots chosen otherwise (every slot)."""
        with self._lock:
            return self._writes

    def looked(self, slot: int, earliest: int | None, mark: int) -> None:
        """A look (begun at ``mark``) read the slot's earliest score (None: empty)."""
        with self._lock:
            if self._written.get(slot, 0) > mark:  # written while the look read
                if earliest is not None:
                    self.at[slot] = min(earliest, self.at.get(slot, earliest))
            elif earliest is None:
                self.at.pop(slot, None)
            else:  # (what is due now is looked at again: settled by then, or not)
                self.at[slot] = earliest


class Miss(Exception):
    """An operation on the event loop needs reads it does not have yet: the driver
    fetches them and runs the operation again (reads it has are answered the same)."""

    def __init__(self, slot_key: bytes, cmds: tuple[tuple[Any, ...], ...],
                 tag: bytes | None):
        super().__init__(slot_key)
        self.slot_key, self.cmds, self.tag = slot_key, cmds, tag


class ClusterTx(Tx):
    """The store's ``Tx`` interface over a Redis Cluster for one operation.

    Reads go to Redis (once per record) and are remembered for the check; writes are
    buffered and applied by :meth:`ClusterStore.run_write` in one ``ocs_apply`` call.
    """

    def __init__(self, store: ClusterStore, *, read_only: bool = False,
                 replies: dict[tuple[bytes, tuple[tuple[Any, ...], ...]], list[Any]]
                 | None = None):
        self.batch = 0
        self._store = store
        self._replies = replies
        """Event-loop mode: read replies by (slot key, commands); None: blocking reads."""
        self._read_only = read_only
        self._view: dict[tuple[bytes, bytes | None], bytes | None] = {}
        self._checks: dict[tuple[bytes, bytes | None], bytes | None] = {}
        self._lens: dict[bytes, int] = {}
        self._writes: list[tuple[Any, ...]] = []
        self._pre: list[tuple[bytes, tuple[Any, ...]]] = []
        """(key, command) of hints written (and acknowledged) before the operation."""
        self._post: list[tuple[bytes, tuple[Any, ...]]] = []
        """(key, command) of hints withdrawn after it."""
        self._bound: bytes | None = None
        self._held: threading.Lock | None = None
        self._expected: list[bytes] = []
        """Keys of the answers this operation will read (with its account's first read)."""
        self._fetched: set[bytes] = set()
        """Accounts whose subscriber, balance and expected answers have been read."""
        self._index_raw: dict[bytes, bytes | None] = {}
        """Index entries as read (before the check against the account)."""
        self._owned: list[tuple[bytes, bytes]] = []
        """(unit, subscriber) of session owner entries this operation writes."""
        self._unowned: list[bytes] = []
        self._ended: bytes | None = None
        """The subscriber a session this operation reports on ended for (its answers
        and ended marker are in their account), when it has no open reservation."""

    # -- the subscriber this operation is about ----------------------------------------

    def bind(self, msisdn: str) -> None:
        """The operation works on ``msisdn``'s account ("" = nobody's answers)."""
        tag = msisdn.encode() or NOBODY
        if self._bound is not None and self._bound != tag:
            raise StoreError(f"one operation touches two accounts ({self._bound!r}, {tag!r})")
        self._set_bound(tag)
        if msisdn:
            self._account_reads(tag)

    def _set_bound(self, tag: bytes) -> None:
        """This operation is about account ``tag``: writing operations of one account in
        this process take turns from here to their apply (no conflicts among them;
        only another node's write to the account makes one run again)."""
        if self._bound is None:
            self._lock_for(tag)
        self._bound = tag

    def _lock_for(self, tag: bytes) -> None:
        """Take the turn of account ``tag`` (before reading it: its records then cannot
        change under the operation, but by another node); one account at a time."""
        if self._read_only or self._replies is not None:
            return  # (on the event loop the driver takes turns: see Miss.tag)
        lock = self._store.account_lock(tag)
        if self._held is lock:
            return
        if self._held is not None:
            self._held.release()  # a candidate that was not the operation's account
            self._held = None
        lock.acquire()
        self._held = lock

    def _account_reads(self, tag: bytes, unit: bytes | None = None) -> None:
        """Account ``tag``'s subscriber and balance records, its CDR counter, the answers
        the operation expects there and (``unit``) one reservation, in one round trip:
        every operation on an account reads the first two, and most the others."""
        prefix = b"{" + tag + b"}"
        strs: list[tuple[bytes, bytes | None]] = []
        if tag not in self._fetched:
            self._fetched.add(tag)
            strs = [(prefix + _ACCOUNT_STR[SUBSCRIBERS], None),
                    (prefix + _ACCOUNT_STR[BALANCES], None),
                    (prefix + _BOUND_META[META_CDR_SEQ], None)]
            strs += [(prefix + _BOUND_STR[ANSWERS] + k, None) for k in self._expected]
            strs = [w for w in strs if w not in self._view]
        cmds: list[tuple[Any, ...]] = []
        if strs:
            cmds.append(("MGET", *[k for k, _ in strs]))
        res: tuple[bytes, bytes | None] | None = None
        if unit is not None:
            res = (prefix + _ACCOUNT_HASH[RESERVATIONS], unit)
            if res in self._view:
                res = None
            else:
                cmds.append(("HGET", res[0], unit))
        if not cmds:
            return
        replies = self._fetch(prefix, tuple(cmds), tag)
        found = list(zip(strs, replies[0], strict=True)) if strs else []
        if res is not None:
            found.append((res, replies[-1]))
        for where, value in found:
            self._view[where] = value
            self._checks[where] = value

    def expect(self, db: bytes, key: bytes) -> None:
        if db == ANSWERS:
            self._expected.append(key)

    def history(self, db: bytes, key: bytes) -> None:
        """Record ``key``, written by this operation, expires with the answers."""
        rkey, field = self._locate(db, key)
        if field is not None:
            raise StoreError(f"{db.decode()}: a hash field cannot expire")
        for i in range(len(self._writes) - 1, -1, -1):
            w = self._writes[i]
            if w[0] == "S" and w[1] == rkey:
                self._writes[i] = (*w[:3], str(self._store.answer_ttl_ms))
                return
        raise StoreError(f"{db.decode()}: {key!r} was not written by this operation")

    def index_answer(self, key: bytes, msisdn: bytes) -> None:
        """The debit answer ``key`` is in ``msisdn``'s account: an index entry (kept as
        long as the answer) written before it, for the refund that names only the key."""
        self._writable()
        self._pre.append((_ANSWER_OWNER + key, ("SET", _ANSWER_OWNER + key, msisdn, "PX",
                                                 self._store.answer_ttl_ms)))

    def record_id(self, node: str, seq: int) -> str:
        """A CDR's record id: numbered per account here, so unique across the nodes."""
        del node
        return f"{self._tag().decode()}-{seq}"

    def _case_base(self) -> int:
        tag = self._tag()
        if not tag.isdigit() or len(tag) > 15:
            raise StoreError(f"fraud cases need an E.164 account, not {tag!r}")
        return int(tag) * CASE_SPAN

    def _tag(self) -> bytes:
        if self._bound is None:
            raise StoreError("no account bound for a per-account record")
        return self._bound

    # -- where a record lives ----------------------------------------------------------

    def _locate(self, db: bytes, key: bytes) -> tuple[bytes, bytes | None]:
        """(Redis key, hash field or None) of record ``key`` of table ``db``."""
        suffix = _ACCOUNT_STR.get(db)
        if suffix is not None:
            return b"{" + key + b"}" + suffix, None
        suffix = _ACCOUNT_HASH.get(db)
        if suffix is not None:
            msisdn, sep, rest = key.partition(b"\x00")
            if not sep:
                raise StoreError(f"{db.decode()}: key without a subscriber")
            return b"{" + msisdn + b"}" + suffix, rest
        suffix = _BOUND_STR.get(db)
        if suffix is not None:
            return b"{" + self._tag() + b"}" + suffix + key, None
        if db == FRAUD_CASES:  # the case id names its account
            owner = str(unpack_u64(key) // CASE_SPAN).encode()
            return b"{" + owner + b"}:fraud", key
        if db == SMS:
            return sms_key(key), None
        if db == META:
            suffix = _BOUND_META.get(key)
            if suffix is not None:
                return b"{" + self._tag() + b"}" + suffix, None
            if key.startswith(META_SMPP_BINDS):
                return _BINDS, key[len(META_SMPP_BINDS):]
            if key.startswith(_RERATE):
                return b"{" + key.rpartition(b"\x00")[2] + b"}:rerate", key
        shared = _SHARED_HASH.get(db)
        if shared is not None:
            return shared, key
        raise StoreError(f"table {db.decode()!r} is not kept on the redis backend yet")

    # -- the Tx interface ----------------------------------------------------------------

    def get(self, db: bytes, key: bytes) -> bytes | None:
        if db == META and key == _FRAUD_SEQ:  # the account's counter, as a case id
            raw = self.get(META, _FRAUD_SEQ_HERE)
            n = min(unpack_u64(raw) if raw is not None else 0, CASE_SPAN - 2)
            return pack_u64(self._case_base() + n)
        if db == SESSION_OWNERS:
            return self._owner_get(key)
        index = _INDEX.get(db)
        if index is not None:
            return self._index_get(db, index + key)
        if db == ANSWERS and self._bound is None:
            return self._indexed_answer(key)
        if db == SMS and self._bound is None:  # (an outcome: the message's account)
            try:
                self._set_bound(sms_key(key)[1:].partition(b"}")[0])
            except StoreError:
                return None  # an id no message of this backend has
        if db == ANSWERS and self._bound == NOBODY and self._ended is not None:
            # a report on a session that ended: its answers and its ended marker are in
            # the account of the subscriber it ended for (immutable: read, not checked)
            value = self._read(b"{" + self._ended + b"}" + _BOUND_STR[ANSWERS] + key, None)
            if value is not None:
                return value
        where = self._locate(db, key)
        if where in self._view:
            return self._view[where]
        rkey, field = where
        if rkey.startswith(SHARED) and (self._read_only or self._bound is not None):
            # plans and settings, read on the way to an account (never checked there):
            # kept for a second by the store, as the LMDB writer reads them per batch
            value = self._read_shared(rkey, field)
            self._view[where] = value
            return value
        if db in _ACCOUNT_STR and key:
            if self._bound is None:
                self._lock_for(key)
            self._account_reads(key)  # with the rest of the account's first read
            value = self._view[where]
        else:
            value = self._read(rkey, field)
            self._view[where] = value
            self._checks[where] = value
        if db == SUBSCRIBERS and value is not None and self._bound is None:
            self._set_bound(key)  # the account this operation found first is its account
        return value

    def put(self, db: bytes, key: bytes, value: bytes) -> None:
        self._writable()
        if db == META and key == _FRAUD_SEQ:
            n = unpack_u64(value) - self._case_base()
            if not 0 < n < CASE_SPAN:
                raise StoreError(f"fraud case id {unpack_u64(value)} is not the account's")
            self.put(META, _FRAUD_SEQ_HERE, pack_u64(n))
            return
        if db == SESSION_OWNERS:
            own, tail, _ = owner_keys(key)
            self._pre.append((own, ("HSET", own, tail, value)))
            self._owned.append((key, value))
            return
        index = _INDEX.get(db)
        if index is not None:
            rkey = index + key
            if rkey in self._index_raw:  # as read: nobody may have taken it since
                raw = self._index_raw[rkey]
                self._pre.append((rkey, ("FCALL", "ocs_cas", 1, rkey,
                                         "0" if raw is None else "1", raw or b"", value)))
            else:
                self._pre.append((rkey, ("SET", rkey, value)))
            return
        if db == ANSWER_EXPIRY:
            return  # answers carry their own TTL here
        if db == RES_EXPIRY:
            self._writes.append(("ZA", expiry_key(self._slot()), str(unpack_u64(key[:8])),
                                 key))
            return
        if db == CDR_JOURNAL:
            self._writes.append(("RP", outbox_key(self._slot()), value))
            return
        if db == SMS_DUE:
            msg = sms_key(key[8:])
            self._writes.append(("ZA", sms_due_key(slot_of(msg)), str(unpack_u64(key[:8])),
                                 msg))
            return
        where = self._locate(db, key)
        if self._bound is None and (db in _ACCOUNT_STR or db in _ACCOUNT_HASH):
            self._set_bound(key.partition(b"\x00")[0])  # a new account's first record
        self._view[where] = value
        rkey, field = where
        if field is None:
            ttl = self._store.answer_ttl_ms if db == ANSWERS else 0
            self._writes.append(("S", rkey, value, str(ttl)))
        else:
            self._writes.append(("HS", rkey, field, value))

    def delete(self, db: bytes, key: bytes) -> None:
        self._writable()
        if db == SESSION_OWNERS:
            own, tail, end = owner_keys(key)
            self._post.append((own, ("FCALL", "ocs_unown", 2, own, end, tail, self._tag(),
                                     self._store.answer_ttl_ms)))
            self._unowned.append(key)
            return
        index = _INDEX.get(db)
        if index is not None:
            rkey = index + key
            self._post.append((rkey, ("FCALL", "ocs_cad", 1, rkey, self._tag())))
            return
        if db == ANSWER_EXPIRY:
            return
        if db == RES_EXPIRY:
            self._writes.append(("ZR", expiry_key(self._slot()), key))
            return
        if db == SMS_DUE:
            msg = sms_key(key[8:])
            self._writes.append(("ZR", sms_due_key(slot_of(msg)), msg))
            return
        where = self._locate(db, key)
        self._view[where] = None
        rkey, field = where
        self._writes.append(("D", rkey) if field is None else ("HD", rkey, field))

    def scan(self, db: bytes, start: bytes = b"", stop: bytes | None = None, *,
             limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Entries of a shared table, or of one subscriber's hash (``start`` names the
        subscriber), in key order."""
        checked = db in _ACCOUNT_HASH
        if db in _ACCOUNT_HASH:
            msisdn = start.partition(b"\x00")[0]
            rkey = b"{" + msisdn + b"}" + _ACCOUNT_HASH[db]
            prefix = msisdn + b"\x00"
        elif db == META and start.startswith(META_SMPP_BINDS):
            # the bind counts: every entry checked (two nodes' binds must not both pass)
            rkey, prefix, checked = _BINDS, META_SMPP_BINDS, True
        elif db in _SHARED_HASH:
            rkey, prefix = _SHARED_HASH[db], b""
        else:
            raise StoreError(f"table {db.decode()!r} cannot be scanned on the redis backend")
        entries = as_map(self._fetch(rkey, (("HGETALL", rkey),))[0])
        if checked:
            self._lens[rkey] = len(entries)  # checked: an append-only hash did not grow
        for field, value in entries.items():
            self._view.setdefault((rkey, field), value)
            if rkey == _BINDS:
                self._checks.setdefault((rkey, field), value)
        rows = sorted((prefix + f, self._view[(rkey, f)]) for f in entries)
        out: list[tuple[bytes, bytes]] = []
        for k, v in rows:
            if k < start or (stop is not None and k >= stop) or v is None:
                continue
            if limit is not None and len(out) >= limit:
                break
            out.append((k, v))
        return iter(out)

    # -- hints outside the account ---------------------------------------------------

    def _index_get(self, db: bytes, rkey: bytes) -> bytes | None:
        """An index entry, if the account it names agrees (else it is stale: None)."""
        where = (rkey, None)
        if where in self._view:
            return self._view[where]
        owner = self._index_raw[rkey] = self._read(rkey, None)
        if owner is not None:
            # the account it names, read whole (the operation reads it next)
            if self._bound is None:
                self._lock_for(owner)
            self._account_reads(owner)
            raw = self._view[(b"{" + owner + b"}" + _ACCOUNT_STR[SUBSCRIBERS], None)]
            sub = dec_subscriber.decode(raw) if raw is not None else None
            if sub is None or (sub.imsi if db == IDX_IMSI else sub.username).encode() \
                    != rkey[len(_INDEX[db]):]:
                owner = None
        self._view[where] = owner
        return owner

    def _owner_get(self, unit: bytes) -> bytes | None:
        """Whose open reservation ``unit`` is: this process's last word on it, else the
        session's owner hash, either checked against the account it names (read whole,
        with that reservation, in one round trip: the operation reads it next); a stale
        entry is nobody's."""
        own, tail, end = owner_keys(unit)
        where = (own, tail)
        if where in self._view:
            return self._view[where]
        owner = self._store.owner_hint(unit)
        if owner is not None and not self._holds(owner, unit):
            self._store.forget_owner(unit)
            owner = None
        if owner is None:
            owner, ended = self._fetch(own, (("HGET", own, tail), ("GET", end)))
            if owner is not None and self._holds(owner, unit):
                self._store.remember_owner(unit, owner)
            else:
                owner, self._ended = None, ended
        self._view[where] = owner
        return owner

    def _holds(self, owner: bytes, unit: bytes) -> bool:
        """Whether account ``owner`` holds an open reservation ``unit``."""
        if self._bound is None:
            self._lock_for(owner)
        self._account_reads(owner, unit)
        return self._view[(b"{" + owner + b"}" + _ACCOUNT_HASH[RESERVATIONS], unit)] \
            is not None

    def _indexed_answer(self, key: bytes) -> bytes | None:
        """A debit's answer found by its key alone (a refund looks for its account)."""
        owner = self._read(_ANSWER_OWNER + key, None)
        if owner is None:
            return None
        return self._read(b"{" + owner + b"}" + _BOUND_STR[ANSWERS] + key, None)

    # -- reads: blocking, or (on the event loop) from what the driver fetched ----------

    def _fetch(self, slot_key: bytes, cmds: tuple[tuple[Any, ...], ...],
               tag: bytes | None = None) -> list[Any]:
        """The replies of read commands ``cmds`` of ``slot_key``'s slot. Blocking, or,
        for the event loop's driver (``ocs.store.cluster_loop.LoopDriver.run_write``), the
        replies it fetched for the same commands in an earlier run; else :class:`Miss`
        (``tag``: the account those reads are of, whose turn the driver takes first)."""
        if self._replies is None:
            return self._store.read_batch(slot_key, list(cmds))
        got = self._replies.get((slot_key, cmds))
        if got is None:
            raise Miss(slot_key, cmds, tag)
        return got

    def _read(self, rkey: bytes, field: bytes | None) -> bytes | None:
        value: bytes | None = self._fetch(
            rkey, (("HGET", rkey, field) if field is not None else ("GET", rkey),))[0]
        return value

    def _read_shared(self, rkey: bytes, field: bytes | None) -> bytes | None:
        """A shared record (plans version, settings) as read at most a second ago."""
        hit = self._store.shared_hit(rkey, field)
        if hit is not None:
            return hit[0]
        value = self._read(rkey, field)
        self._store.shared_put(rkey, field, value)
        return value

    def _writable(self) -> None:
        if self._read_only:
            raise StoreError("write in a read-only view")

    def _slot(self) -> int:
        return slot_of(b"{" + self._tag() + b"}")

    # -- what run_write sends ----------------------------------------------------------

    def apply_command(self) -> tuple[Any, ...] | None:
        """This operation's ``FCALL ocs_apply`` (None: it wrote nothing)."""
        plan = self.plan()
        if plan is None:
            return None
        keys, argv = plan
        return ("FCALL", "ocs_apply", len(keys), *keys, *argv)

    def plan(self) -> tuple[list[bytes], list[bytes | str]] | None:
        """KEYS and ARGV of this operation's ``ocs_apply`` (None: it wrote nothing)."""
        if not self._writes:
            return None
        slot = slot_of(self._writes[0][1])
        keys: list[bytes] = []
        index: dict[bytes, str] = {}

        def ki(k: bytes) -> str:
            i = index.get(k)
            if i is None:
                if slot_of(k) != slot:
                    raise StoreError(f"an operation writes two hash slots ({k!r})")
                keys.append(k)
                i = index[k] = str(len(keys))
            return i

        for w in self._writes:
            ki(w[1])
        checks: list[bytes | str] = []
        n = 0
        for (rkey, field), value in self._checks.items():
            if slot_of(rkey) != slot:
                continue  # read on the way to the account (a stale candidate): a hint
            n += 1
            if field is None:
                checks += ["G", ki(rkey)]
            else:
                checks += ["H", ki(rkey), field]
            checks += ["0", ""] if value is None else ["1", value]
        for rkey, length in self._lens.items():
            if slot_of(rkey) == slot:
                n += 1
                checks += ["N", ki(rkey), "1", str(length)]
        argv: list[bytes | str] = [str(n), *checks]
        for w in self._writes:
            argv += [w[0], ki(w[1]), *w[2:]]
        return keys, argv


class ClusterStore:
    """A connection to the Redis Cluster that holds the store (one per process)."""

    def __init__(self, nodes: tuple[str, ...] | list[str], *, username: str = "",
                 password: str = "", wait_replicas: int = 1, wait_timeout_ms: int = 100,
                 answer_retention_s: int = 86400, attempts: int = 64,
                 deadline_s: float = 10.0, read_deadline_s: float = 0.2):
        node: Any = ClusterNode  # (redis-py's cluster classes are not fully typed)
        seeds = []
        for n in nodes:
            host, _, port = n.rpartition(":")
            seeds.append(node(host, int(port)))
        self.io_timeout_s = wait_timeout_ms / 1000 + 1.0
        """Socket timeout: a reply may take the WAIT it follows."""
        try:
            self.rc: Any = RedisCluster(startup_nodes=seeds, username=username or None,
                                       password=password or None,
                                       socket_timeout=self.io_timeout_s,
                                       socket_connect_timeout=1.0)
        except (RedisError, RedisClusterException) as exc:
            raise StoreError(f"redis cluster {', '.join(nodes)}: {exc}") from exc
        self.auth = (username or None, password or None)
        self._local = threading.local()
        self._conns: list[Any] = []
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.answer_ttl_ms = answer_retention_s * 1000
        self.attempts = attempts
        self.deadline_s = deadline_s
        """How long an operation waits out a failover (its answer is late, not lost)."""
        self.read_deadline_s = read_deadline_s
        """How long a read-only view does: the protocol agents read subscribers and
        plans on their event loop, which must not stall for a failover."""
        self._refresher: threading.Thread | None = None
        self.conflicts = 0
        """Operations run again because a record they read changed (a counter)."""
        self.round_trips = 0
        """Exchanges with Redis (a batch of pipelined commands counts once)."""
        self._shared: dict[tuple[bytes, bytes | None], tuple[float, bytes | None]] = {}
        self.shared_ttl_s = SHARED_TTL_S
        self._owners: dict[bytes, bytes] = {}
        """Session unit -> subscriber, as this process last wrote or found it (a gateway
        sends a session's reports to one node: one round trip less for each)."""
        self.full_scan_s = 60.0
        """Scans of every slot's outbox and expiry set (for what other nodes, perhaps
        gone, left) happen at most this often; in between, only the slots this process
        wrote to are looked at."""
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(1024)]
        self._outbox_slots: set[int] = set()
        self._expiry_slots = SlotTimes()
        """The earliest expiry in each slot's reservation expiry set."""
        self._sms_slots = SlotTimes()
        """The earliest next try in each slot's SMS due set."""
        self._last_sms_scan = -SMS_IDLE_SCAN_S
        self.sms_queued = 0
        """SMS messages waiting for delivery in the cluster, at the last full look."""
        self._next_full = {"outbox": 0.0, "expiry": 0.0}
        self.lease_name = ""
        """Set by a serving process (node and worker): the scans of every slot are then
        done by the holder of the cluster's lease only, every ``full_scan_s``."""
        self.lease_ttl_s = 3 * self.full_scan_s
        self.load_functions()

    @classmethod
    def from_config(cls, cfg: Any) -> ClusterStore:
        """The store of ``cfg`` (an :class:`ocs.config.Config` with backend redis)."""
        r = cfg.store.redis
        return cls(r.nodes, username=r.username, password=r.password,
                   wait_replicas=r.wait_replicas, wait_timeout_ms=r.wait_timeout_ms,
                   answer_retention_s=cfg.store.answer_retention_s)

    def close(self) -> None:
        if self.lease_name:  # handed on at once, not when they run out
            with self._reading():  # (not waiting out a failover: they run out then)
                for what in ("expiry", "outbox"):
                    key = LEASE + what.encode()
                    with contextlib.suppress(StoreError, RedisError, RedisClusterException):
                        self._one(key, ("FCALL", "ocs_cad", 1, key, self.lease_name))
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.disconnect()
        self.rc.close()

    def __enter__(self) -> ClusterStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load_functions(self) -> None:
        self.rc.execute_command("FUNCTION", "LOAD", "REPLACE", LIBRARY,
                                target_nodes=RedisCluster.PRIMARIES)

    # -- reads -------------------------------------------------------------------------

    def read(self, rkey: bytes, field: bytes | None) -> bytes | None:
        value: bytes | None = self._one(rkey, ("HGET", rkey, field) if field is not None
                                        else ("GET", rkey))
        return value

    def read_batch(self, slot_key: bytes, cmds: list[tuple[Any, ...]]) -> list[Any]:
        """Reads of ``slot_key``'s slot, pipelined in one round trip; their replies."""
        return self._retrying(lambda: self._exec_checked(slot_key, *cmds))

    def owner_hint(self, unit: bytes) -> bytes | None:
        """The subscriber this process last saw open reservation ``unit`` in (a hint:
        the reader checks the account)."""
        return self._owners.get(unit)

    def remember_owner(self, unit: bytes, msisdn: bytes) -> None:
        with self._lock:
            if len(self._owners) >= OWNER_HINTS:
                self._owners.pop(next(iter(self._owners)))  # the oldest
            self._owners[unit] = msisdn

    def forget_owner(self, unit: bytes) -> None:
        with self._lock:
            self._owners.pop(unit, None)

    def read_hash(self, rkey: bytes) -> dict[bytes, bytes]:
        return as_map(self._one(rkey, ("HGETALL", rkey)))

    def shared_hit(self, rkey: bytes, field: bytes | None) -> tuple[bytes | None] | None:
        """(value,) of a shared record read less than ``shared_ttl_s`` ago, else None."""
        hit = self._shared.get((rkey, field))
        if hit is not None and time.monotonic() - hit[0] < self.shared_ttl_s:
            return (hit[1],)
        return None

    def shared_put(self, rkey: bytes, field: bytes | None, value: bytes | None) -> None:
        self._shared[(rkey, field)] = (time.monotonic(), value)

    def _one(self, slot_key: bytes, cmd: tuple[Any, ...]) -> Any:
        """One command to the primary of ``slot_key``'s slot (a read, or a write that is
        safe to repeat), retried over failovers; its reply."""
        return self.read_batch(slot_key, [cmd])[0]

    def _link(self, slot: int) -> Any:
        """This thread's connection to the primary serving ``slot``: commands go
        straight to it (the cluster client's per-command routing costs four times the
        round trip's CPU), the slot map is the cluster client's."""
        nodes = self.rc.nodes_manager.slots_cache.get(slot)
        if not nodes:
            raise ClusterDownError(f"no node serves slot {slot}")
        node = nodes[0]
        links: dict[str, Any] | None = getattr(self._local, "links", None)
        if links is None:
            links = self._local.links = {}
        conn = links.get(node.name)
        if conn is None:
            make: Any = Connection  # (redis-py's connection class is not fully typed)
            conn = links[node.name] = make(
                host=node.host, port=node.port, username=self.auth[0],
                password=self.auth[1], socket_timeout=self.io_timeout_s,
                socket_connect_timeout=1.0)
            with self._lock:
                self._conns.append(conn)
        return conn

    def _exec(self, slot_key: bytes, *cmds: tuple[Any, ...]) -> list[Any]:
        """``cmds`` pipelined on one connection to the primary of ``slot_key``'s slot
        (so a WAIT among them covers the writes before it); error replies come back in
        the list. A broken connection is dropped and raises ConnectionError."""
        conn = self._link(slot_of(slot_key))
        self.round_trips += 1
        try:
            conn.send_packed_command(conn.pack_commands(cmds), check_health=False)
            out: list[Any] = []
            for _ in cmds:
                try:
                    out.append(conn.read_response())
                except ResponseError as exc:
                    out.append(exc)
            return out
        except (ConnectionError, TimeoutError, OSError) as exc:
            conn.disconnect()
            raise ConnectionError(str(exc)) from exc

    def _exec_checked(self, slot_key: bytes, *cmds: tuple[Any, ...]) -> list[Any]:
        """:meth:`_exec`, an error reply raised (:meth:`_raise`)."""
        out = self._exec(slot_key, *cmds)
        for r in out:
            if isinstance(r, ResponseError):
                self._raise(r)
        return out

    def _raise(self, reply: ResponseError) -> None:
        """An error reply: the slot moved or its shard fails over (retried), a library
        missing on a new primary (loaded, retried), or an error of ours."""
        msg = str(reply)
        if msg.startswith(("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "LOADING",
                           "READONLY")) or "non local key" in msg:
            raise ClusterDownError(msg)
        if "Function not found" in msg:
            self.load_functions()
            raise ClusterDownError(msg)
        raise StoreError(f"redis: {msg}")

    def _retrying(self, fn: Callable[[], T]) -> T:
        """``fn`` again while the cluster fails over or moves slots, up to the deadline.
        A view (on the event loop) does not wait for the slot map to be read again: it
        is read in the background, and the view gives up after ``read_deadline_s``."""
        reading = getattr(self._local, "deadline_s", None)
        deadline = time.monotonic() + (reading if reading is not None else self.deadline_s)
        delay = 0.01
        while True:
            try:
                return fn()
            except (ConnectionError, TimeoutError, ClusterDownError) as exc:
                if reading is not None:
                    self._refresh_soon()
                if time.monotonic() + delay > deadline:
                    raise StoreError(f"redis cluster unavailable: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
            if reading is None:
                self._refresh()

    def _refresh_soon(self) -> None:
        """The slot map read again in a thread of its own (one at a time)."""
        with self._lock:
            if self._refresher is not None and self._refresher.is_alive():
                return
            self._refresher = threading.Thread(target=self._refresh, daemon=True,
                                               name="redis-slots")
            self._refresher.start()

    def _refresh(self) -> None:
        try:
            self.rc.nodes_manager.initialize()
        except (ConnectionError, TimeoutError, ClusterDownError, ResponseError):
            pass  # the next attempt tries again

    # -- writes ----------------------------------------------------------------------

    def _durable(self, slot_key: bytes, *cmds: tuple[Any, ...]) -> Any:
        """Run ``cmds`` on the slot's primary then WAIT for the replicas; the first
        command's reply. Slot moves and failovers are retried (the commands must be safe
        to repeat); too few acknowledgements raise :class:`StoreError`."""
        return self._retrying(lambda: self._durable_once(slot_key, *cmds))

    def _durable_once(self, slot_key: bytes, *cmds: tuple[Any, ...]) -> Any:
        wait = ("WAIT", self.wait_replicas, self.wait_timeout_ms)
        out = self._exec_checked(slot_key, *cmds, *((wait,) if self.wait_replicas else ()))
        if self.wait_replicas and int(out[-1]) < self.wait_replicas:
            raise StoreError(f"redis: {out[-1]} of {self.wait_replicas} replicas "
                             f"acknowledged within {self.wait_timeout_ms} ms")
        return out[0]

    def _per_primary(self, slots: list[int], cmd: Callable[[list[int]], tuple[Any, ...]],
                     chunk: int = 512, *, durable: bool = True
                     ) -> list[tuple[list[int], Any]]:
        """``cmd(group)`` durably (or, a read, not) on each primary for the ``slots`` it
        serves (in groups of at most ``chunk``): (group, reply) each. All again after a
        slot moved (the commands must be safe to repeat)."""
        def run(part: list[int]) -> Any:
            if durable:
                return self._durable_once(outbox_key(part[0]), cmd(part))
            return self._exec_checked(outbox_key(part[0]), cmd(part))[0]

        def once() -> list[tuple[list[int], Any]]:
            groups: dict[str, list[int]] = {}
            for slot in slots:
                nodes = self.rc.nodes_manager.slots_cache.get(slot)
                if not nodes:
                    raise ClusterDownError(f"no node serves slot {slot}")
                groups.setdefault(nodes[0].name, []).append(slot)
            out = []
            for group in groups.values():
                for i in range(0, len(group), chunk):
                    part = group[i:i + chunk]
                    out.append((part, run(part)))
            return out

        return self._retrying(once)

    def run_write(self, fn: Callable[[Tx], T]) -> T:
        """Run one operation as a checked transaction: ``fn`` on fresh reads, then its
        writes if nothing it read has changed; again (bounded) when something did.

        A connection lost while the writes were in flight leaves it unknown whether they
        were applied: the operation runs again, and its stored answer (written with the
        charge) makes the second run a replay instead of a second charge."""
        for attempt in range(self.attempts):
            tx = ClusterTx(self)
            try:
                result = fn(tx)
                applied = 1
                for rkey, cmd in tx._pre:
                    if not pre_ok(cmd, self._durable(rkey, cmd)):
                        applied = 0  # another node took the index entry meanwhile
                        break
                apply = tx.apply_command() if applied else None
                # Re-sent after a lost connection, it finds its own writes: refused.
                if apply is not None:
                    applied = int(self._durable(apply[3], apply))
            finally:
                if tx._held is not None:
                    tx._held.release()
            if not applied:
                self.conflicts += 1
                # another node wrote the account meanwhile: back off a little, at random
                time.sleep(self.backoff_s(attempt))
                continue
            for rkey, cmd in self.after_apply(tx, apply is not None):
                self._durable(rkey, cmd)
            self.applied(tx)
            return result
        raise StoreError(f"redis: gave up after {self.attempts} conflicting attempts")

    @staticmethod
    def backoff_s(attempt: int) -> float:
        """How long an operation waits after its ``attempt``-th conflict (at random)."""
        return random.uniform(0, min(0.05, 0.001 * 2 ** attempt))

    def after_apply(self, tx: ClusterTx, wrote: bool) -> list[tuple[bytes, tuple[Any, ...]]]:
        """What follows an operation's apply, durably and in order: a replay's sync
        write, then the hints withdrawn."""
        out: list[tuple[bytes, tuple[Any, ...]]] = []
        if wrote:
            self._note_slots(tx._writes)
        elif tx._bound is not None and self.wait_replicas:
            # A replay: the answer it read may be a write the replicas have not
            # acknowledged yet (its first run lost its WAIT). A write of our own on
            # that primary makes WAIT cover everything before it.
            sync = b"{" + (tx._ended or tx._bound) + b"}:sync"
            out.append((sync, ("INCR", sync)))
        return out + tx._post

    def applied(self, tx: ClusterTx) -> None:
        """An operation is done: the session owners it wrote or ended, remembered."""
        for unit, msisdn in tx._owned:
            self.remember_owner(unit, msisdn)
        for unit in tx._unowned:
            self.forget_owner(unit)

    def account_lock(self, tag: bytes) -> threading.Lock:
        """The lock the writing operations of account ``tag`` take turns on in this
        process (one of 1,024 stripes)."""
        return self._stripes[slot_of(tag) % len(self._stripes)]

    def _note_slots(self, writes: list[tuple[Any, ...]]) -> None:
        """Remember the outboxes and expiry sets an applied operation wrote to."""
        for w in writes:
            if w[0] == "RP":
                with self._lock:
                    self._outbox_slots.add(slot_of(w[1]))
            elif w[0] == "ZA":
                times = self._sms_slots if w[1].endswith(b":smsdue") else self._expiry_slots
                times.wrote(slot_of(w[1]), int(w[2]))

    def _full_scan(self, what: str) -> bool:
        """Whether this process looks at every slot (``what``: expiry sets or outboxes)
        now: once a ``full_scan_s``, and, when it serves (``lease_name``), only while it
        holds the cluster's lease for that job (one process of the cluster does it; when
        it stops, or dies and its lease runs out, another takes over)."""
        now = time.monotonic()
        with self._lock:
            if now < self._next_full[what]:
                return False
            self._next_full[what] = now + self.full_scan_s
        return not self.lease_name or self._lease(what)

    def _lease(self, what: str) -> bool:
        key = LEASE + what.encode()
        try:
            return bool(self._one(key, ("FCALL", "ocs_lease", 1, key, self.lease_name,
                                        int(self.lease_ttl_s * 1000))))
        except StoreError:
            return False  # asked again at the next scan

    def flush_asked(self) -> int:
        """Ask every serving node to close its open CDR file: the request's number."""
        n: int = self._one(FLUSH, ("INCR", FLUSH))
        return n

    def flush_wanted(self) -> int:
        """The number of the last flush asked for (0: none yet)."""
        raw = self.read(FLUSH, None)
        return int(raw) if raw is not None else 0

    def node_report(self, node: str, flushed: int) -> None:
        """``node`` is serving and has done the flushes up to number ``flushed``."""
        self._one(NODES, ("HSET", NODES, node, f"{int(time.time() * 1000)}:{flushed}"))

    def node_gone(self, node: str) -> None:
        """``node`` stopped (its files closed): no flush waits for it."""
        with self._reading():
            self._one(NODES, ("HDEL", NODES, node))

    def nodes(self) -> dict[str, tuple[float, int]]:
        """Node -> (last heard, epoch seconds; the last flush it did)."""
        out: dict[str, tuple[float, int]] = {}
        for k, v in self.read_hash(NODES).items():
            heard, _, done = v.decode().partition(":")
            out[k.decode("utf-8", "replace")] = (int(heard) / 1000, int(done or 0))
        return out

    def lease_holder(self, what: str) -> str | None:
        """Who holds the cluster's lease for job ``what`` (expiry | outbox), if anyone."""
        raw = self.read(LEASE + what.encode(), None)
        return raw.decode("utf-8", "replace") if raw is not None else None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Reads in this block give up after ``read_deadline_s`` (StoreError) rather
        than wait out a failover: the protocol agents read on their event loop."""
        before = getattr(self._local, "deadline_s", None)
        self._local.deadline_s = self.read_deadline_s
        try:
            yield
        finally:
            if before is None:
                del self._local.deadline_s
            else:
                self._local.deadline_s = before

    @contextlib.contextmanager
    def view(self) -> Iterator[Tx]:
        """A read-only view (each record as stored when first read; reads give up after
        ``read_deadline_s``)."""
        with self._reading():
            yield ClusterTx(self, read_only=True)

    # -- cluster-wide scans ------------------------------------------------------------

    def expiries(self, now: int, limit: int = 10_000) -> list[tuple[bytes, int]]:
        """(reservation key, expires_at) due at ``now``: from the expiry sets of the slots
        this process wrote reservations to, and of every slot once a ``full_scan_s``
        (what other nodes, perhaps gone, left)."""
        if self._full_scan("expiry"):
            self._expiry_slots.saw(self.scan_slots(expiry_key, "Z"))
        slots, mark = self._expiry_slots.due(now)
        out: list[tuple[bytes, int]] = []
        for slot in slots:
            k = expiry_key(slot)
            members, first = self.read_batch(k, [
                ("ZRANGEBYSCORE", k, "-inf", now, "LIMIT", 0, limit),
                ("ZRANGE", k, 0, 0, "WITHSCORES")])
            out += [(bytes(m[8:]), unpack_u64(bytes(m[:8]))) for m in members]
            if first and isinstance(first[0], list):  # RESP3: [[member, score]]
                first = first[0]
            self._expiry_slots.looked(slot, int(float(first[1])) if first else None, mark)
        out.sort(key=lambda e: e[1])
        return out[:limit]

    def sms_due(self, now: int, *, everything: bool = False, limit: int = 500,
                receivers: bool = True) -> list[bytes]:
        """SMS messages (encoded) whose next try has come at ``now`` (``everything``:
        whenever due, for a receiver that just bound), at most ``limit``: from the due
        sets of the slots this process knows to hold some, and of every slot once an
        ``SMS_SCAN_S`` (every serving process looks: a message waits for the node its
        receiver is bound to; without ``receivers`` bound here, nor a receiver that
        just bound, once an ``SMS_IDLE_SCAN_S``). One call per primary."""
        mono = time.monotonic()
        every = SMS_SCAN_S if receivers or everything else SMS_IDLE_SCAN_S
        with self._lock:
            full = mono >= self._last_sms_scan + every
            if full:
                self._last_sms_scan = mono
        if full:
            slots, mark = list(range(SLOTS)), self._sms_slots.mark()
        else:
            slots, mark = self._sms_slots.due(now, everything=everything)
        if not slots:
            return []

        def cmd(part: list[int]) -> tuple[Any, ...]:
            return ("FCALL", "ocs_sms_due", 0, now, limit, "1" if everything else "0",
                    *[sms_due_key(x) for x in part])

        try:
            replies = self._per_primary(slots, cmd, chunk=SLOTS, durable=False)
        except StoreError:
            if full:
                with self._lock:
                    self._last_sms_scan = -SMS_IDLE_SCAN_S
            raise
        out: list[bytes] = []
        queued = 0
        found: dict[int, int] = {}
        for part, reply in replies:
            for index, count, earliest, msgs in reply:
                found[part[int(index) - 1]] = int(earliest)
                queued += int(count)
                out += [bytes(m) for m in msgs]
        for slot in slots:
            self._sms_slots.looked(slot, found.get(slot), mark)
        if full:
            self.sms_queued = queued
        return out[:limit]

    def open_reservations(self, start: bytes) -> list[bytes]:
        """The open reservations (encoded) of units starting with ``start``: one session
        (``session NUL``: one read of its owner hash) or a session id prefix (a scan of
        every primary's keys, for rare events such as a NAS restarting: it takes time
        in proportion to the keys stored). Reads give up after ``read_deadline_s``."""
        with self._reading():
            return self._open_reservations(start)

    def _open_reservations(self, start: bytes) -> list[bytes]:
        if start.endswith(b"\x00"):
            owns = [owner_keys(start)[0]]
        else:
            pattern = b"own:{s" + bytes(
                c for b in _escape(start) for c in ((92, b) if b in b"*?[]\\" else (b,))
            ) + b"*"

            owns = [k for keys in self.scan_keys(pattern) for k in keys]
        out: list[bytes] = []
        for own in owns:
            session = _unescape(own[len(b"own:{s"):-1])
            for tail, owner in self.read_hash(own).items():
                raw = self.read(b"{" + owner + b"}" + _ACCOUNT_HASH[RESERVATIONS],
                                session + b"\x00" + tail)
                if raw is not None:
                    out.append(raw)
        return out

    def scan_keys(self, pattern: bytes | None) -> list[list[bytes]]:
        """The keys matching ``pattern`` (None: every key), one list per primary (its
        keys, so they can be read from it together): SCAN, in proportion to the keys
        stored."""
        def scan() -> list[list[bytes]]:
            out: list[list[bytes]] = []
            for node in self.rc.get_primaries():
                conn = self.rc.get_redis_connection(node)
                out.append([bytes(k) for k in conn.scan_iter(match=pattern, count=1000)])
            return out

        return self._retrying(scan)

    def verify(self, *, undrained: bool = False) -> list[str]:
        """The records against each other (as ``ocs store verify`` on LMDB), one line per
        difference: balances hold what their reservations hold, a prepaid balance is
        never below zero, every reservation has its expiry entry and its owner entry and
        every expiry entry its reservation; with ``undrained`` (no node has drained the
        outboxes), every subscriber's CDRs there charge what the engine moved. A scan of
        every key: for a quiet store (tests, maintenance), not a snapshot of a busy one."""
        keys = [k for part in self.scan_keys(None) for k in part]
        out: list[str] = []
        held: dict[str, int] = {}
        due: dict[bytes, int] = {}
        for k in keys:
            if k.endswith(b":resexp"):
                reply = self._one(k, ("ZRANGE", k, 0, -1, "WITHSCORES"))
                pairs = (reply if reply and isinstance(reply[0], list)  # RESP3: pairs
                         else zip(reply[::2], reply[1::2], strict=True))
                for member, score in pairs:
                    due[bytes(member)] = int(float(score))
        charged: dict[str, int] = {}
        for raw in self.outbox() if undrained else ():
            rec = dec_cdr.decode(raw)
            charged[rec.msisdn] = charged.get(rec.msisdn, 0) + rec.charge
        for k in sorted(keys):
            if not (k.startswith(b"{") and k.endswith(b"}:res")):
                continue
            msisdn = k[1:-5]
            for unit, raw in sorted(self.read_hash(k).items()):
                res = dec_reservation.decode(raw)
                name = unit.decode("utf-8", "replace").replace("\x00", "/")
                held[res.msisdn] = held.get(res.msisdn, 0) + res.money_reserved
                if res.msisdn.encode() != msisdn or res.key != unit:
                    out.append(f"reservation {name}: stored under {msisdn!r}")
                own, tail, _ = owner_keys(unit)
                if self.read(own, tail) != msisdn:
                    out.append(f"reservation {name}: the session owner index names "
                               f"{self.read(own, tail)!r}")
                entry = pack_u64(res.expires_at) + unit
                if due.pop(entry, None) != res.expires_at:
                    out.append(f"reservation {name}: no expiry entry at {res.expires_at}")
        for entry, at in sorted(due.items()):
            out.append(f"expiry entry {at} for reservation {entry[8:]!r} that does not "
                       "exist")
        for k in sorted(keys):
            if not (k.startswith(b"{") and k.endswith(b"}:bal")):
                continue
            who = k[1:-5].decode()
            bal = dec_balance.decode(self.read(k, None) or b"")
            sub_raw = self.read(b"{" + k[1:-5] + b"}:sub", None)
            if bal.reserved != held.get(who, 0):
                out.append(f"{who}: balance holds {bal.reserved} micro reserved, its "
                           f"open reservations {held.get(who, 0)}")
            if sub_raw is None:
                out.append(f"{who}: a balance without a subscriber")
            elif dec_subscriber.decode(sub_raw).mode == "prepaid" and bal.balance < 0:
                out.append(f"{who}: prepaid balance below zero ({bal.balance})")
            if undrained and charged.get(who, 0) != bal.charged_total:
                out.append(f"{who}: CDRs charge {charged.get(who, 0)} micro, the "
                           f"engine moved {bal.charged_total}")
        return out

    # -- the CDR outboxes -------------------------------------------------------------

    def scan_slots(self, key: Callable[[int], bytes], kind: str) -> dict[int, int]:
        """Slot -> length (``kind`` L: lists) or earliest score (Z: sorted sets) of
        ``key(slot)``, for every slot where it is not empty: one ``ocs_scan`` call per
        primary, over the slots it serves."""
        def cmd(part: list[int]) -> tuple[Any, ...]:
            return ("FCALL", "ocs_scan", 0, kind, *[key(x) for x in part])

        out: dict[int, int] = {}
        for part, reply in self._per_primary(list(range(SLOTS)), cmd, chunk=SLOTS,
                                             durable=False):
            for i in range(0, len(reply), 2):
                out[part[int(reply[i]) - 1]] = int(reply[i + 1])
        return out

    def slots_with(self, key: Callable[[int], bytes]) -> list[int]:
        """The slots whose list ``key(slot)`` is not empty."""
        return sorted(self.scan_slots(key, "L"))

    def note_outbox(self, slots: set[int]) -> None:
        """Look at these outboxes again at the next :meth:`outbox_slots`."""
        with self._lock:
            self._outbox_slots |= slots

    def outbox_slots(self) -> list[int]:
        """Slots whose outbox may hold CDRs: the ones this process wrote to since the
        last call, and once a ``full_scan_s`` every slot's that is not empty."""
        with self._lock:
            mine, self._outbox_slots = self._outbox_slots, set()
        if self._full_scan("outbox"):
            try:
                return sorted(mine | set(self.slots_with(outbox_key)))
            except StoreError:
                with self._lock:
                    self._outbox_slots |= mine
                    self._next_full["outbox"] = 0.0
                raise
        return sorted(mine)

    def claim_many(self, slots: list[int], node: str, limit: int) -> dict[int, list[bytes]]:
        """Slot -> up to ``limit`` CDRs of its outbox, now ``node``'s (or the ones it
        claimed before and did not finish: those, again): one call per primary (and
        512 slots)."""
        def cmd(part: list[int]) -> tuple[Any, ...]:
            argv: list[Any] = [limit]
            for slot in part:
                argv += [outbox_key(slot), claimed_key(slot, node)]
            return ("FCALL", "ocs_claim_many", 0, *argv)

        out: dict[int, list[bytes]] = {}
        for part, reply in self._per_primary(slots, cmd):
            for slot, rows in zip(part, reply, strict=True):
                out[slot] = [bytes(r) for r in rows]
        return out

    def unclaim_many(self, lasts: dict[int, bytes], node: str) -> None:
        """The claimed CDRs of each slot, ending with ``lasts[slot]``, are in ``node``'s
        journal: dropped (one call per primary)."""
        def cmd(part: list[int]) -> tuple[Any, ...]:
            argv: list[Any] = []
            for slot in part:
                argv += [claimed_key(slot, node), lasts[slot]]
            return ("FCALL", "ocs_unclaim_many", 0, *argv)

        self._per_primary(sorted(lasts), cmd)

    def subscriber_records(self) -> list[tuple[bytes, bytes, bytes | None]]:
        """(MSISDN, subscriber record, balance record) of every subscriber, in MSISDN
        order: a scan of every primary's keys (what ``ocs subscriber list`` costs)."""
        out: list[tuple[bytes, bytes, bytes | None]] = []
        for keys in self.scan_keys(b"{*}:sub"):  # (a primary's: 500 of them per exchange)
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                replies = self.read_batch(part[0], [
                    c for k in part for c in (("GET", k), ("GET", k[:-4] + b":bal"))])
                for j, k in enumerate(part):
                    if replies[2 * j] is not None:  # (deleted since the scan)
                        out.append((k[1:-5], replies[2 * j], replies[2 * j + 1]))
        return sorted(out)

    def subscribers(self) -> list[bytes]:
        """Every subscriber record (encoded), in MSISDN order (a scan of the keys)."""
        return [sub for _m, sub, _b in self.subscriber_records()]

    def fraud_cases(self) -> list[bytes]:
        """Every fraud case (encoded): a scan of every primary's keys."""
        return [bytes(v) for keys in self.scan_keys(b"{*}:fraud") for k in keys
                for v in self.read_hash(k).values()]

    def claimed_elsewhere(self, node: str) -> dict[str, int]:
        """Node -> CDRs it claimed and has not journalled yet (other nodes than
        ``node``)."""
        out: dict[str, int] = {}
        for k in (k for keys in self.scan_keys(b"*:claimed:*") for k in keys):
            owner = k.partition(b"}:claimed:")[2].decode("utf-8", "replace")
            if owner != node:
                out[owner] = out.get(owner, 0) + int(self._one(k, ("LLEN", k)))
        return {n: c for n, c in out.items() if c}

    def outbox(self) -> list[bytes]:
        """Every CDR waiting in the slots' outboxes (for the drain and the tests)."""
        def scan() -> list[Any]:
            pipe = self.rc.pipeline()
            for slot in range(SLOTS):
                pipe.lrange(outbox_key(slot), 0, -1)
            return list(pipe.execute())

        return [bytes(v) for rows in self._retrying(scan) for v in rows]
