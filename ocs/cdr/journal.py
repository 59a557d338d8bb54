"""The CDR journal: a sub-database written in the same transaction as the charge."""

from __future__ import annotations

from ocs.store.env import CDR_JOURNAL, META, META_CDR_SEQ, pack_u64, unpack_u64
from ocs.store.records import CdrRecord, encode
from ocs.store.tx import Tx


def next_seq(tx: Tx) -> int:
    raw = tx.get(META, META_CDR_SEQ)
    return (unpack_u64(raw) if raw is not None else 0) + 1


def append(tx: Tx, node: str, **fields: object) -> str:
    """Append one CDR to the journal inside ``tx``; returns its record_id."""
    seq = next_seq(tx)
    record_id = f"{node}-{seq}"
    rec = CdrRecord(record_id=record_id, **fields)  # type: ignore[arg-type]
    tx.put(CDR_JOURNAL, pack_u64(seq), encode(rec))
    tx.put(META, META_CDR_SEQ, pack_u64(seq))
    return record_id
