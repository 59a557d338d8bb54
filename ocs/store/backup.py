"""Hot backups of the store: a consistent, compacted copy taken while the server runs.

LMDB copies from one read transaction (``mdb_env_copy2`` with MDB_CP_COMPACT): writers
go on meanwhile and the copy is the store as of that transaction's start — every
balance with exactly the CDRs committed with it (the CDR journal is in the same file).
A restore is the copy put back as ``DATA_DIR/ocs.lmdb`` with the server stopped.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ocs.store.env import (
    BALANCES,
    CDR_JOURNAL,
    META,
    META_CDR_SEQ,
    SCHEMA_VERSION,
    STORE_FILE,
    SUBSCRIBERS,
    Store,
    StoreError,
    unpack_u64,
)

MANIFEST = "backup.json"


def backup(store: Store, dest: str | Path, *, source: str = "") -> dict[str, Any]:
    """Copy ``store`` into the new or empty directory ``dest`` (``dest/ocs.lmdb`` and
    ``dest/backup.json``); returns the manifest. StoreError when ``dest`` is not usable."""
    out = Path(dest)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StoreError(f"{out}: exists and is not an empty directory")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = out / STORE_FILE
    started = time.time()
    try:
        store.env.copy(str(target), compact=True)
    except Exception as exc:  # lmdb.Error, OSError: one line for the operator
        raise StoreError(f"{target}: backup failed: {exc}") from exc
    os.chmod(target, 0o600)
    with Store(out, create=False) as copy, copy.read() as txn:
        seq = txn.get(META_CDR_SEQ, db=copy.dbs[META])
        manifest = {
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "source": source or str(store.path),
            "file": STORE_FILE,
            "bytes": target.stat().st_size,
            "schema_version": SCHEMA_VERSION,
            "subscribers": txn.stat(copy.dbs[SUBSCRIBERS])["entries"],
            "balances": txn.stat(copy.dbs[BALANCES])["entries"],
            "cdr_seq": unpack_u64(seq) if seq else 0,
            "cdr_journal": txn.stat(copy.dbs[CDR_JOURNAL])["entries"],
        }
    lock = out / f"{STORE_FILE}-lock"
    lock.unlink(missing_ok=True)  # opened once to read the figures: not part of the copy
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    os.chmod(out / MANIFEST, 0o600)
    return manifest
