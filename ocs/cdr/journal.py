"""The CDR journal: a sub-database written in the same transaction as the charge."""

from __future__ import annotations

from ocs.store.env import CDR_JOURNAL, META, META_CDR_SEQ, pack_u64, unpack_u64
from ocs.store.records import CdrRecord, encode
from ocs.store.tx import Tx


def next_seq(tx: Tx) -> int:
    raw = tx.get(META, META_CDR_SEQ)
    return (unpack_u64(raw) if raw is not None else 0) + 1


def put(tx: Tx, seq: int, rec: CdrRecord) -> None:
    """Journal ``rec`` under ``seq`` (from :func:`next_seq`) inside ``tx``."""
    tx.put(CDR_JOURNAL, pack_u64(seq), encode(rec))
    tx.put(META, META_CDR_SEQ, pack_u64(seq))
