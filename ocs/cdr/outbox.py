"""From the Redis Cluster's CDR outboxes into this node's journal, exactly once.

With ``[store] backend = "redis"`` a charge's CDR is written to its slot's outbox in the
same atomic step as the balance change. Each node drains outboxes into its own LMDB
journal, and its exporter writes the journal into its ``[cdr] dir`` files as on one node
(``.part``, fsync, rename: after a crash export resumes and makes the same files).

A drain of one slot is three steps, each safe to repeat:

1. **claim** (Redis, one script): up to N rows move from the outbox to the node's claimed
   list in that slot; a node that finds a claimed list of its own (it stopped between
   steps) gets those rows back instead of new ones. Any node may drain any slot: a row
   is claimed by exactly one node.
2. **journal** (LMDB, one transaction): the rows are appended to the journal with a
   marker, per slot, of the last record id taken; rows whose last record id is already
   the marker were journalled before a crash and are not appended again.
3. **unclaim** (Redis): the claimed list is dropped, if it still ends with that row.

A node that dies between 1 and 3 leaves its rows claimed in Redis, not lost: it finishes
them when it starts again (its own DATA_DIR holds the marker). No record id reaches two
nodes' files.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ocs.store.cluster import ClusterStore, claimed_key
from ocs.store.env import (
    CDR_JOURNAL,
    META,
    META_CDR_SEQ,
    Store,
    StoreError,
    pack_u64,
    unpack_u64,
)
from ocs.store.records import dec_cdr
from ocs.store.tx import Tx

BATCH = 500
_MARK = b"cdr_claim\x00"
"""meta: + slot (u16) -> record id of the last row journalled from that slot."""


def op_journal(claims: list[tuple[int, list[bytes]]]) -> Callable[[Tx], int]:
    """Append the claimed rows of each slot to the journal (one transaction for them all),
    except a slot's rows journalled already (before the node stopped)."""
    marks = [(_MARK + struct.pack(">H", slot), rows,
              dec_cdr.decode(rows[-1]).record_id.encode()) for slot, rows in claims]

    def op(tx: Tx) -> int:
        raw = tx.get(META, META_CDR_SEQ)
        seq = start = unpack_u64(raw) if raw is not None else 0
        for mark, rows, last in marks:
            if tx.get(META, mark) == last:
                continue  # journalled before the node stopped; only the unclaim was missing
            for row in rows:
                seq += 1
                tx.put(CDR_JOURNAL, pack_u64(seq), row)
            tx.put(META, mark, last)
        if seq != start:
            tx.put(META, META_CDR_SEQ, pack_u64(seq))
        return seq - start

    return op


def drain(cluster: ClusterStore, local: Store, node: str, *, recover: bool = False,
          batch: int = BATCH, per_txn: int = 20_000, slots_per_round: int = 4096) -> int:
    """Journal the CDRs waiting in the outboxes this node wrote to (and in every slot's,
    once a ``cluster.full_scan_s``: what other nodes left; with ``recover``, also the
    ones this node claimed before it stopped); returns how many rows were appended.
    A round claims from up to ``slots_per_round`` slots at once (one call per primary)
    and journals what it claimed in one transaction (one fsync), at most about
    ``per_txn`` rows: fewer rows per slot when there are many slots."""
    todo = set(cluster.outbox_slots())
    if recover:
        todo |= set(cluster.slots_with(lambda s: claimed_key(s, node)))
    added = 0
    while todo:
        group = sorted(todo)[:slots_per_round]
        limit = max(1, min(batch, per_txn // len(group)))  # rows per slot this round
        try:
            claimed = cluster.claim_many(group, node, limit)
        except StoreError:
            cluster.note_outbox(todo)  # looked at again next time
            raise
        claims: list[tuple[int, list[bytes]]] = []
        for slot in group:
            rows = claimed.get(slot, [])
            if len(rows) < limit:
                todo.discard(slot)  # (a full batch: the slot may hold more)
            if rows:
                claims.append((slot, rows))
        if claims:
            added += local.run_write(op_journal(claims))
            cluster.unclaim_many({slot: rows[-1] for slot, rows in claims}, node)
    return added
