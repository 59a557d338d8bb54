"""Live sessions, for every protocol: one table with a deadline heap, reviewed against the
subscriber's status and credit, emitting typed events each protocol turns into its own
message.

A protocol keeps its own session type (a subclass of :class:`Session` with what its wire
needs: the Diameter peer, the RADIUS NAS). The table:

- drops sessions past their supervision deadline (Gy Tcc) in :meth:`SessionTable.expire`,
  from a heap (one entry per session; a deadline moved later is re-queued when its old
  one comes up, so a CCR-U costs an assignment, not a heap push);
- :meth:`SessionTable.review` reads, round robin, the subscriber of each session and says
  what must happen: :class:`AbortRequired` (blocked, terminated, deleted) or
  :class:`ReauthRequired` (suspended; or a credit-limited session whose subscriber can pay
  again). Gy sends ASR / RAR, RADIUS Disconnect / CoA, Nchf its notifications. The rule
  reading the status is :func:`ocs.charging.api.status_refusal`, in one place.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ocs.charging.api import (
    ChargingService,
    Identity,
    Refusal,
    Service,
    Subscriber,
    status_refusal,
)

__all__ = ["AbortRequired", "ReauthRequired", "Session", "SessionEvent", "SessionTable",
           "Turns", "all_answers", "answered"]


@dataclass(slots=True, kw_only=True)
class Session:
    """What every protocol keeps about a live session."""

    session_id: str
    identity: Identity
    service: Service
    msisdn: str = ""
    owner: str = ""
    """The peer that opened it (``diameter:<Origin-Host>``, ``radius:<client>``)."""
    rating_group: int | None = None
    """What its usage is priced under (the review's credit check)."""
    visited_network: str = ""
    deadline: float = math.inf
    """Supervision deadline (Gy Tcc): dropped when nothing comes before it."""
    limited: bool = False
    """The last grant was all the credit allowed: a top-up should re-authorise."""
    notified: str = ""
    """What was asked of the client and not yet answered ("rar", "asr", "disconnect"):
    not reviewed again meanwhile."""
    scheduled: float = math.inf
    """The deadline of this session's entry in the table's heap (inf: none)."""


S = TypeVar("S", bound=Session)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AbortRequired(Generic[S]):
    """End the session now: its subscriber is blocked, terminated or gone."""

    session: S
    refusal: Refusal


@dataclass(frozen=True, slots=True)
class ReauthRequired(Generic[S]):
    """Ask the client to re-authorise: the subscriber was suspended (``refusal``), or a
    credit-limited session can be paid again (``refusal`` None; ``subscriber`` given)."""

    session: S
    refusal: Refusal | None
    subscriber: Subscriber | None = None


SessionEvent = AbortRequired[S] | ReauthRequired[S]

_ABORT = frozenset({Refusal.UNKNOWN_SUBSCRIBER, Refusal.BLOCKED, Refusal.TERMINATED})


class SessionTable(Generic[S]):
    """Live sessions by id (a mapping), with deadlines and the review."""

    __slots__ = ("_by_id", "_heap", "_seq", "_stale")

    def __init__(self) -> None:
        self._by_id: dict[str, S] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._stale = 0
        """Heap entries left by sessions removed since the last compaction."""

    # -- the mapping ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_id

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __getitem__(self, session_id: str) -> S:
        return self._by_id[session_id]

    def get(self, session_id: str) -> S | None:
        return self._by_id.get(session_id)

    def items(self) -> list[tuple[str, S]]:
        return list(self._by_id.items())

    def __setitem__(self, session_id: str, sess: S) -> None:
        old = self._by_id.get(session_id)
        if old is not None and old is not sess:
            self._removed(old)
        self._by_id[session_id] = sess
        if sess.scheduled == math.inf:
            self._schedule(sess)

    def pop(self, session_id: str, default: T | None = None) -> S | T | None:
        sess = self._by_id.pop(session_id, None)
        if sess is None:
            return default
        self._removed(sess)
        return sess

    def __delitem__(self, session_id: str) -> None:
        self._removed(self._by_id.pop(session_id))

    def _removed(self, sess: S) -> None:
        """A session left the table: its heap entry is stale. Past as many stale entries
        as live sessions (and a floor), the heap is rebuilt from the live ones, so churn
        (sessions opened and closed well within their deadline) cannot grow it."""
        if sess.scheduled == math.inf:
            return
        sess.scheduled = math.inf
        self._stale += 1
        if self._stale > len(self._by_id) + 4096:
            self._heap = [(s.scheduled, next(self._seq), sid) for sid, s in self._by_id.items()
                          if s.scheduled < math.inf]
            heapq.heapify(self._heap)
            self._stale = 0

    # -- deadlines --------------------------------------------------------------------

    def touch(self, sess: S, deadline: float) -> None:
        """Move the session's deadline (activity)."""
        sess.deadline = deadline
        if deadline < sess.scheduled:
            self._schedule(sess)

    def _schedule(self, sess: S) -> None:
        if sess.deadline < math.inf:
            sess.scheduled = sess.deadline
            heapq.heappush(self._heap, (sess.deadline, next(self._seq), sess.session_id))

    def expire(self, now: float) -> list[S]:
        """Drop and return the sessions whose deadline has passed."""
        out: list[S] = []
        heap = self._heap
        while heap and heap[0][0] < now:
            at, _n, sid = heapq.heappop(heap)
            sess = self._by_id.get(sid)
            if sess is None or sess.scheduled != at:
                continue  # gone, or queued again since
            if now > sess.deadline:
                del self._by_id[sid]
                sess.scheduled = math.inf  # its entry was just taken: not stale
                out.append(sess)
            else:  # moved later meanwhile: one entry again, at the new deadline
                self._schedule(sess)
        return out

    @property
    def queued(self) -> int:
        """Heap entries (at most one live per session, plus stale ones of ended ones)."""
        return len(self._heap)

    # -- the review -------------------------------------------------------------------

    def review(self, charging: ChargingService, limit: int, *,
               keep: Callable[[S], bool] | None = None,
               credit_back: Callable[[S, Subscriber], bool] | None = None,
               ) -> list[SessionEvent[S]]:
        """Check up to ``limit`` sessions (round robin: the checked ones go to the end,
        the next call starts elsewhere) against their subscriber; sessions with a pending
        notification are passed over. ``keep``: False drops the session silently (ended
        elsewhere); ``credit_back``: whether a credit-limited session can be paid again
        (default: one unit of its service is affordable)."""
        out: list[SessionEvent[S]] = []
        for sid in list(itertools.islice(self._by_id, limit)):
            sess = self._by_id.get(sid)
            if sess is None:
                continue
            self._by_id[sid] = self._by_id.pop(sid)  # rotate
            if sess.notified:
                continue
            if keep is not None and not keep(sess):
                del self[sid]
                continue
            sub = charging.subscriber(sess.identity)
            refusal = status_refusal(sub)
            if sub is None or refusal in _ABORT:
                out.append(AbortRequired(sess, refusal or Refusal.UNKNOWN_SUBSCRIBER))
            elif refusal is not None:
                out.append(ReauthRequired(sess, refusal, sub))
            elif sess.limited and (credit_back(sess, sub) if credit_back is not None else bool(
                    charging.affordable_units(sub, sess.service, 1,
                                              rating_group=sess.rating_group,
                                              visited_network=sess.visited_network))):
                out.append(ReauthRequired(sess, None, sub))
        return out


class _Turn:
    __slots__ = ("key", "mine", "turns")

    def __init__(self, turns: Turns, key: str):
        self.turns = turns
        self.key = key
        self.mine: asyncio.Future[None] | None = None

    async def __aenter__(self) -> None:
        tails = self.turns._tails
        prev = tails.get(self.key)
        self.mine = asyncio.get_running_loop().create_future()
        tails[self.key] = self.mine
        if prev is not None:
            await prev

    async def __aexit__(self, *exc: object) -> None:
        assert self.mine is not None
        self.mine.set_result(None)
        tails = self.turns._tails
        if tails.get(self.key) is self.mine:
            del tails[self.key]


class Turns:
    """One request of a session at a time, in arrival order (``async with
    turns.of(session_id)``): a client's parallel requests for one session (Gy CCR-U per
    MSCC, RAR collisions, an SMF's parallel updates) are settled one after the other.
    Holds one future per session with a request in progress or waiting."""

    __slots__ = ("_tails",)

    def __init__(self) -> None:
        self._tails: dict[str, asyncio.Future[None]] = {}

    def of(self, session_id: str) -> _Turn:
        return _Turn(self, session_id)

    def __len__(self) -> int:
        return len(self._tails)


async def all_answers(pending: Iterable[Awaitable[T]]) -> list[T]:
    """Await charging's answers for one message (most carry one: a plain await, ~5 us less
    than ``asyncio.gather``)."""
    todo = list(pending)
    if len(todo) == 1:
        return [await todo[0]]
    return list(await asyncio.gather(*todo))


def answered(value: Any) -> asyncio.Future[Any]:
    """An answer that needs no charging (in a list of charging's answers)."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut
