"""The compiled plans and zones a process rates with, reloaded when the store's
plans version changes (``ocs plan load`` bumps it)."""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from ocs.rating.plans import Plan, compile_plan
from ocs.store.env import META, META_PLANS_VERSION, PLAN_VERSIONS, PLANS, ZONES
from ocs.store.records import PlanVersionHead, dec_plan_version, dec_plan_version_head
from ocs.store.tx import StorePort, Tx

_dec_table = msgspec.msgpack.Decoder(dict[str, Any])
_dec_networks = msgspec.msgpack.Decoder(list[str])
_FIRST = PlanVersionHead(version=1, effective_at=0, loaded_at=0)


class PlanBook:
    """The plans a process rates with: every version of every plan, and which version
    applies when (the highest version whose effective time has come)."""

    __slots__ = ("_compiled", "_known_zones", "_latest", "_sources", "_timelines", "version",
                 "zone_of_network")

    def __init__(self, version: bytes | None = None,
                 versions: dict[str, list[tuple[PlanVersionHead, bytes, bool]]] | None = None,
                 zone_of_network: dict[str, str] | None = None,
                 known_zones: set[str] | None = None,
                 compiled: dict[tuple[str, int], Plan] | None = None):
        self.version = version
        self.zone_of_network = zone_of_network or {}
        self._known_zones = known_zones or set()
        self._sources: dict[tuple[str, int], tuple[bytes, bool]] = {}
        """The stored bytes of each version (a PlanVersion, or for a plan stored before
        versions its bare table), decoded when the version is first compiled."""
        self._compiled: dict[tuple[str, int], Plan] = {} if compiled is None else compiled
        """Versions never change once stored: the book before this one hands over what
        it compiled, so a load compiles only its new versions (a 100,000-rate deck
        once, not at every load of any plan)."""
        self._timelines: dict[str, tuple[list[int], list[int]]] = {}
        self._latest: dict[str, int] = {}
        for pid, vs in (versions or {}).items():
            for head, raw, full in vs:
                self._sources[(pid, head.version)] = (raw, full)
            self._timelines[pid] = _timeline([head for head, _, _ in vs])
            self._latest[pid] = vs[-1][0].version

    def warm(self, now: int) -> int:
        """Compile every version that applies from ``now`` on (the current one and any
        scheduled); returns how many were compiled."""
        done = 0
        for pid, (starts, numbers) in self._timelines.items():
            first = max(0, bisect.bisect_right(starts, now) - 1)
            for number in numbers[first:]:
                if (pid, number) not in self._compiled:
                    self.plan_version(pid, number)
                    done += 1
        return done

    def only_version(self, plan_id: str) -> Plan | None:
        """The plan's one version when one version rates every time (none other was
        ever effective); None otherwise (ask :meth:`plan_at`)."""
        timeline = self._timelines.get(plan_id)
        if timeline is None or timeline[0] != [0]:
            return None
        return self.plan_version(plan_id, timeline[1][0])

    def has_plan(self, plan_id: str) -> bool:
        return plan_id in self._latest

    @property
    def plans(self) -> dict[str, Plan]:
        """Each plan's latest loaded version (compiled now if not yet: a plan with a
        rate deck takes a while, so rating compiles only the versions it uses)."""
        out: dict[str, Plan] = {}
        for pid, number in self._latest.items():
            plan = self.plan_version(pid, number)
            assert plan is not None
            out[pid] = plan
        return out

    def plan_version(self, plan_id: str, version: int) -> Plan | None:
        """One version of a plan (compiled once, when first asked for)."""
        key = (plan_id, version)
        plan = self._compiled.get(key)
        if plan is None:
            source = self._sources.get(key)
            if source is None:
                return None
            raw, full = source
            table = dec_plan_version.decode(raw).table if full else _dec_table.decode(raw)
            plan = compile_plan(table, where=f"plan {plan_id} version {version}",
                                known_zones=self._known_zones, version=version)
            self._compiled[key] = plan
        return plan

    def plan_at(self, plan_id: str, at: int) -> Plan | None:
        """The version of a plan that rates an event at ``at``; None if the plan is not
        loaded or none of its versions is effective yet."""
        timeline = self._timelines.get(plan_id)
        if timeline is None:
            return None
        starts, numbers = timeline
        if at >= starts[-1]:
            i = len(starts) - 1
        else:
            i = bisect.bisect_right(starts, at) - 1
            if i < 0:
                return None
        plan = self._compiled.get((plan_id, numbers[i]))
        return plan if plan is not None else self.plan_version(plan_id, numbers[i])


def _timeline(versions: list[PlanVersionHead]) -> tuple[list[int], list[int]]:
    """(times, version numbers): from each time on, that version applies — the highest
    version whose effective time has come."""
    starts: list[int] = []
    numbers: list[int] = []
    for t in sorted({v.effective_at for v in versions}):
        best = max(v.version for v in versions if v.effective_at <= t)
        if not numbers or best != numbers[-1]:
            starts.append(t)
            numbers.append(best)
    return starts, numbers


def _build(version: bytes | None, plan_rows: list[tuple[bytes, bytes]],
           version_rows: list[tuple[bytes, bytes]],
           zone_rows: list[tuple[bytes, bytes]], before: PlanBook) -> PlanBook:
    zone_of: dict[str, str] = {}
    for zid, raw in zone_rows:
        for net in _dec_networks.decode(raw):
            zone_of[net] = zid.decode()
    versions: dict[str, list[tuple[PlanVersionHead, bytes, bool]]] = {}
    for k, raw in version_rows:
        versions.setdefault(k.split(b"\x00", 1)[0].decode(), []).append(
            (dec_plan_version_head.decode(raw), raw, True))
    for pid, raw in plan_rows:  # a plan stored before versions: its version 1
        if pid.decode() not in versions:
            versions[pid.decode()] = [(_FIRST, raw, False)]
    known = {z.decode() for z, _ in zone_rows}
    same_zones = known == before._known_zones and zone_of == before.zone_of_network
    return PlanBook(version, {pid: sorted(vs, key=lambda v: v[0].version)
                              for pid, vs in versions.items()}, zone_of, known,
                    before._compiled if same_zones else None)


class PlanCache:
    """Thread-safe holder of the current :class:`PlanBook`."""

    def start_warming(self, store: StorePort, interval_s: float = 1.0) -> Callable[[], None]:
        """A daemon thread that, after every plans change, compiles the versions in
        effect and scheduled: a 100,000-rate deck is compiled here in the background
        (a couple of seconds, sharing the GIL), not by the first charge that needs it
        (which would hold every answer behind it). Call the returned function to stop
        it (before the store closes)."""
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                with contextlib.suppress(Exception):  # (a store closing under us)
                    self.in_store(store).warm(int(time.time()))
                stop.wait(interval_s)

        thread = threading.Thread(target=run, name="plan-warmer", daemon=True)
        thread.start()

        def halt() -> None:
            stop.set()
            thread.join(30)

        return halt

    def __init__(self) -> None:
        self._book = PlanBook()
        self._lock = threading.Lock()
        self._checked_batch = 0

    def in_tx(self, tx: Tx) -> PlanBook:
        if tx.batch and tx.batch == self._checked_batch:
            return self._book  # already checked inside this batch's transaction
        self._checked_batch = tx.batch
        return self._load(tx)

    def in_store(self, store: StorePort) -> PlanBook:
        with store.view() as view:
            return self._load(view)

    def _load(self, tx: Tx) -> PlanBook:
        version = tx.get(META, META_PLANS_VERSION)
        book = self._book
        if version == book.version and book.version is not None:
            return book
        with self._lock:
            book = _build(version, list(tx.scan(PLANS)), list(tx.scan(PLAN_VERSIONS)),
                          list(tx.scan(ZONES)), self._book)
            self._book = book
        return book
