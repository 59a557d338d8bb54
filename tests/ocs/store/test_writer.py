"""The group-commit writer on a real LMDB store."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from ocs.store import Overloaded, Store, Tx, Writer, WriterStopped
from ocs.store.env import META, SUBSCRIBERS


def _put(key: bytes, value: bytes):  # type: ignore[no-untyped-def]
    def op(tx: Tx) -> bytes:
        tx.put(SUBSCRIBERS, key, value)
        return key

    return op


def test_group_commit_batches_and_answers_after_commit(store: Store) -> None:
    batches: list[int] = []
    w = Writer(store, max_ops=64, max_delay_ms=5, on_batch=lambda n, c, b: batches.append(n))
    w.start()
    try:
        futs = [w.submit_sync(_put(b"k%05d" % i, b"v")) for i in range(1000)]
        assert [f.result(10) for f in futs] == [b"k%05d" % i for i in range(1000)]
    finally:
        w.stop()
    assert sum(batches) == 1000
    assert max(batches) <= 64
    assert len(batches) < 1000  # operations were grouped
    # every acknowledged write is visible to a fresh reader
    with store.read() as txn:
        assert txn.stat(store.dbs[SUBSCRIBERS])["entries"] == 1000


def test_failed_item_leaves_no_partial_writes(store: Store) -> None:
    def bad(tx: Tx) -> None:
        tx.put(SUBSCRIBERS, b"partial", b"x")
        raise ValueError("refused")

    w = Writer(store, max_ops=16, max_delay_ms=20)
    w.start()
    try:
        f1 = w.submit_sync(_put(b"a", b"1"))
        f2 = w.submit_sync(bad)
        f3 = w.submit_sync(_put(b"b", b"2"))
        assert f1.result(5) == b"a" and f3.result(5) == b"b"
        with pytest.raises(ValueError, match="refused"):
            f2.result(5)
    finally:
        w.stop()
    assert store.get(SUBSCRIBERS, b"partial") is None
    assert store.get(SUBSCRIBERS, b"a") == b"1"
    assert store.get(SUBSCRIBERS, b"b") == b"2"


def test_write_rejected_by_lmdb_redoes_batch_without_it(store: Store) -> None:
    def too_long_key(tx: Tx) -> None:
        tx.put(SUBSCRIBERS, b"ok-part", b"x")
        tx.put(SUBSCRIBERS, b"k" * 1000, b"x")  # over LMDB's max key size

    w = Writer(store, max_ops=16, max_delay_ms=20)
    w.start()
    try:
        f1 = w.submit_sync(_put(b"a", b"1"))
        f2 = w.submit_sync(too_long_key)
        f3 = w.submit_sync(_put(b"b", b"2"))
        assert f1.result(5) == b"a" and f3.result(5) == b"b"
        with pytest.raises(Exception, match="write rejected"):
            f2.result(5)
    finally:
        w.stop()
    assert store.get(SUBSCRIBERS, b"ok-part") is None
    assert store.get(SUBSCRIBERS, b"a") == b"1"


def test_map_full_grows_instead_of_crashing(tmp_path: Path) -> None:
    s = Store(tmp_path / "small", map_size_mb=1)
    try:
        w = Writer(s, max_ops=32, max_delay_ms=1)
        w.start()
        try:
            value = b"x" * 2000
            futs = [w.submit_sync(_put(b"key%06d" % i, value)) for i in range(3000)]
            for f in futs:
                f.result(30)
        finally:
            w.stop()
        assert s.env.info()["map_size"] > 1024 * 1024
        with s.read() as txn:
            assert txn.stat(s.dbs[SUBSCRIBERS])["entries"] == 3000
        # direct (CLI) writes grow the map too
        s.run_write(lambda tx: [tx.put(SUBSCRIBERS, b"cli%06d" % i, value) for i in range(2000)])
    finally:
        s.close()


def test_overload_and_stop(store: Store) -> None:
    gate = threading.Event()
    taken = threading.Event()

    def slow(tx: Tx) -> None:
        taken.set()
        gate.wait(5)

    w = Writer(store, max_ops=1, max_delay_ms=0, queue_size=3)
    w.start()
    try:
        first = w.submit_sync(slow)
        assert taken.wait(5)
        queued = [w.submit_sync(_put(b"q%d" % i, b"v")) for i in range(3)]
        with pytest.raises(Overloaded):
            w.submit_sync(_put(b"z", b"v"))
    finally:
        gate.set()
    first.result(5)
    w.stop()
    # everything accepted before stop was committed
    assert all(f.result(5) for f in queued)
    with pytest.raises(WriterStopped):
        w.submit_sync(_put(b"late", b"v"))


def test_asyncio_submit(store: Store) -> None:
    w = Writer(store, max_ops=128, max_delay_ms=1)
    w.start()

    async def main() -> list[bytes]:
        return await asyncio.gather(*[w.submit(_put(b"a%d" % i, b"v")) for i in range(500)])

    try:
        got = asyncio.run(main())
    finally:
        w.stop()
    assert len(got) == 500


def test_concurrent_process_writes(store: Store, tmp_path: Path) -> None:
    """The CLI (another process) and the server's writer share the store."""
    import subprocess
    import sys

    w = Writer(store, max_ops=32, max_delay_ms=1)
    w.start()
    code = (
        "import sys; from ocs.store import Store; from ocs.store.env import SUBSCRIBERS\n"
        f"s = Store({str(store.data_dir)!r}, map_size_mb=64)\n"
        "for i in range(300):\n"
        "    s.run_write(lambda tx, i=i: tx.put(SUBSCRIBERS, b'p%05d' % i, b'x'))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        futs = [w.submit_sync(_put(b"w%05d" % i, b"y")) for i in range(300)]
        for f in futs:
            f.result(30)
        assert proc.wait(60) == 0
    finally:
        w.stop()
    with store.read() as txn:
        assert txn.stat(store.dbs[SUBSCRIBERS])["entries"] == 600


def test_schema_version_checked(tmp_path: Path) -> None:
    from ocs.store.env import META_SCHEMA, StoreError, pack_u64

    s = Store(tmp_path / "d", map_size_mb=8)
    s.run_write(lambda tx: tx.put(META, META_SCHEMA, pack_u64(99)))
    s.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store(tmp_path / "d", map_size_mb=8)
    with pytest.raises(StoreError, match="ocs init"):
        Store(tmp_path / "missing", create=False)


def test_an_operation_sees_its_own_writes_and_scans_them_in_order(store: Store) -> None:
    """Reads and scans inside an operation see its own writes (puts and deletes, in key
    order, the limit counted after them); they reach the store when it returns."""
    store.run_write(lambda tx: [tx.put(META, b"s:%d" % i, b"old") for i in range(6)])

    def op(tx: Tx) -> tuple[object, ...]:
        tx.put(META, b"s:1", b"new")
        tx.delete(META, b"s:2")
        tx.put(META, b"s:35", b"ins")
        tx.delete(META, b"s:9")  # never stored
        got = tx.get(META, b"s:1"), tx.get(META, b"s:2"), tx.get(META, b"s:3")
        return got, list(tx.scan(META, b"s:", b"s:5")), list(tx.scan(META, b"s:", limit=3))

    w = Writer(store, max_ops=16, max_delay_ms=1)
    w.start()
    try:
        got, scanned, limited = w.submit_sync(op).result(5)
    finally:
        w.stop()
    assert got == (b"new", None, b"old")
    assert scanned == [(b"s:0", b"old"), (b"s:1", b"new"), (b"s:3", b"old"),
                       (b"s:35", b"ins"), (b"s:4", b"old")]
    assert limited == scanned[:3]
    assert store.get(META, b"s:2") is None and store.get(META, b"s:35") == b"ins"

