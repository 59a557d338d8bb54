"""The compiled plans and zones a process rates with, reloaded when the store's
plans version changes (``ocs plan load`` bumps it)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ocs.rating.plans import Plan, compile_plan
from ocs.store.env import META, META_PLANS_VERSION, PLANS, ZONES, Store
from ocs.store.tx import Tx

_dec_table = msgspec.msgpack.Decoder(dict[str, Any])
_dec_networks = msgspec.msgpack.Decoder(list[str])


@dataclass(frozen=True, slots=True)
class PlanBook:
    version: bytes | None = None
    plans: dict[str, Plan] = field(default_factory=dict)
    zone_of_network: dict[str, str] = field(default_factory=dict)


def _build(version: bytes | None, plan_rows: list[tuple[bytes, bytes]],
           zone_rows: list[tuple[bytes, bytes]]) -> PlanBook:
    zone_of: dict[str, str] = {}
    for zid, raw in zone_rows:
        for net in _dec_networks.decode(raw):
            zone_of[net] = zid.decode()
    known = {z.decode() for z, _ in zone_rows}
    plans = {
        pid.decode(): compile_plan(_dec_table.decode(raw), where=f"plan {pid.decode()}",
                                   known_zones=known)
        for pid, raw in plan_rows
    }
    return PlanBook(version=version, plans=plans, zone_of_network=zone_of)


class PlanCache:
    """Thread-safe holder of the current :class:`PlanBook`."""

    def __init__(self) -> None:
        self._book = PlanBook()
        self._lock = threading.Lock()
        self._checked_batch = 0

    def in_tx(self, tx: Tx) -> PlanBook:
        if tx.batch and tx.batch == self._checked_batch:
            return self._book  # already checked inside this batch's transaction
        self._checked_batch = tx.batch
        version = tx.get(META, META_PLANS_VERSION)
        book = self._book
        if version == book.version and book.version is not None:
            return book
        with self._lock:
            book = _build(version, list(tx.scan(PLANS)), list(tx.scan(ZONES)))
            self._book = book
        return book

    def in_store(self, store: Store) -> PlanBook:
        with store.read() as txn:
            version = txn.get(META_PLANS_VERSION, db=store.dbs[META])
            book = self._book
            if version == book.version and book.version is not None:
                return book
            plan_rows = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=store.dbs[PLANS])]
            zone_rows = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=store.dbs[ZONES])]
        with self._lock:
            book = _build(version, plan_rows, zone_rows)
            self._book = book
        return book
