"""Journal -> CSV files: write ``.part``, fsync, rename, then trim the journal.

The exporter's position lives in the store (meta ``cdr_export``), and a file's rows are
exactly the journal records between two sequence numbers, so after a crash at any point
the exporter resumes and produces byte-identical files (invariant 4). An ``flock`` on
``CDR_DIR/.export.lock`` lets the server and ``ocs cdr flush`` take turns.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from ocs.cdr.fileformat import HEADER, format_row
from ocs.store.env import CDR_JOURNAL, META, META_CDR_EXPORT, Store, pack_u64
from ocs.store.records import CdrExportState, dec_cdr, dec_export_state, encode
from ocs.store.tx import Tx

log = structlog.get_logger(__name__)

_HEADER_BYTES = HEADER.encode()


@dataclass(frozen=True, slots=True)
class ExportResult:
    rows: int
    closed: tuple[str, ...]


class ExportBusy(RuntimeError):
    """Another process holds the export lock."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stamp(ts: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")


TRIM_CHUNK = 2_000
"""Journal entries deleted per transaction once their file is closed."""

class JournalExporter:
    """Drains one journal sub-database into rotated files (``<prefix>_<node>_<UTC>_<seq>``)."""

    def __init__(self, store: Store, out_dir: Path, node: str, *, rotate_s: int,
                 rotate_records: int, batch: int = 20_000, journal: bytes = CDR_JOURNAL,
                 state_key: bytes = META_CDR_EXPORT, prefix: str = "cdr", suffix: str = ".csv",
                 header: bytes = _HEADER_BYTES,
                 format_record: Callable[[bytes], bytes] | None = None):
        self.store = store
        self.dir = out_dir
        self.node = node
        self.rotate_s = rotate_s
        self.rotate_records = rotate_records
        self.batch = batch
        self.journal = journal
        self.state_key = state_key
        self.prefix = prefix
        self.suffix = suffix
        self.header = header
        self.format_record = format_record or (lambda v: format_row(dec_cdr.decode(v)).encode())
        self.dir.mkdir(parents=True, exist_ok=True)
        self._leftovers_trimmed = False

    # -- state ------------------------------------------------------------------------

    def state(self) -> CdrExportState:
        raw = self.store.get(META, self.state_key)
        return dec_export_state.decode(raw) if raw is not None else CdrExportState()

    def _save(self, st: CdrExportState) -> None:
        self.store.run_write(lambda tx: tx.put(META, self.state_key, encode(st)))

    def _trim(self, below: int) -> int:
        """Drop the journal entries below ``below`` (all in closed files), ``TRIM_CHUNK``
        a transaction: one transaction deleting a whole file's rows would hold the store's
        write lock, and so every charging answer, for a noticeable time."""
        journal, total = self.journal, 0
        stop = pack_u64(below)

        def op(tx: Tx) -> int:
            n = 0
            for k, _ in tx.scan(journal, b"", stop, limit=TRIM_CHUNK):
                tx.delete(journal, k)
                n += 1
            return n

        while (n := self.store.run_write(op)) > 0:
            total += n
            if n < TRIM_CHUNK:
                break
        return total

    def _records(self, first: int, stop: int | None, limit: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        fmt = self.format_record
        with self.store.read() as txn, txn.cursor(db=self.store.dbs[self.journal]) as cur:
            if not cur.set_range(pack_u64(first)):
                return out
            for k, v in cur:
                seq = int.from_bytes(k, "big")
                if (stop is not None and seq >= stop) or len(out) >= limit:
                    break
                out.append((seq, fmt(bytes(v))))
        return out

    def pending(self) -> int:
        """Journal records not yet confirmed in a file."""
        st = self.state()
        with self.store.read() as txn, txn.cursor(db=self.store.dbs[self.journal]) as cur:
            if not cur.set_range(pack_u64(st.written_seq + 1)):
                return 0
            return sum(1 for _ in cur.iternext(keys=True, values=False))

    # -- locking ----------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, wait: bool) -> Iterator[None]:
        fd = os.open(self.dir / f".{self.prefix}-export.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError as exc:
                raise ExportBusy("CDR export lock is held by another process") from exc
            yield
        finally:
            os.close(fd)

    # -- the work ---------------------------------------------------------------------

    def run_once(self, now: int, *, force_close: bool = False, wait: bool = False) -> (
        ExportResult
    ):
        """Append new journal records to the open file; close it when due (or forced)."""
        with self.locked(wait):
            return self._run(now, force_close)

    def _part(self, st: CdrExportState) -> Path:
        return self.dir / (st.open_name + ".part")

    def _repair_part(self, st: CdrExportState) -> None:
        """Make the .part hold exactly the confirmed rows [first_seq, written_seq]."""
        part = self._part(st)
        size = part.stat().st_size if part.exists() else -1
        if size == st.part_bytes:
            return
        if size > st.part_bytes:
            with part.open("r+b") as f:
                f.truncate(st.part_bytes)
                f.flush()
                os.fsync(f.fileno())
            return
        # Shorter than confirmed (or missing): rebuild from the journal.
        with part.open("wb") as f:
            f.write(self.header)
            seq = st.first_seq
            while seq <= st.written_seq:
                recs = self._records(seq, st.written_seq + 1, self.batch)
                if not recs:
                    break
                f.write(b"".join(r for _, r in recs))
                seq = recs[-1][0] + 1
            f.flush()
            os.fsync(f.fileno())
            st.part_bytes = f.tell()
        self._save(st)

    def _close(self, st: CdrExportState, end_seq: int) -> str:
        """Close the open file at ``end_seq`` (exclusive): rename and trim the journal."""
        if st.closing_end_seq != end_seq:
            st.closing_end_seq = end_seq
            self._save(st)
        name = st.open_name
        part = self._part(st)
        final = self.dir / (name + self.suffix)
        if part.exists() or not final.exists():
            self._repair_part(st)
            if st.written_seq + 1 < end_seq:
                self._append(st, end_seq)
            os.replace(part, final)
            _fsync_dir(self.dir)
        closed_first = st.first_seq
        st.file_seq += 1
        st.open_name = ""
        st.open_started_at = 0
        st.first_seq = end_seq
        st.written_seq = end_seq - 1
        st.part_bytes = 0
        st.closing_end_seq = 0
        self._save(st)
        self._trim(end_seq)  # after the state: a crash between them leaves only leftovers
        log.info("journal_file_closed", file=final.name, records=end_seq - closed_first)
        return final.name

    def _append(self, st: CdrExportState, stop: int | None) -> int:
        """Append confirmed rows after ``written_seq`` (up to ``stop``), fsync, record."""
        recs = self._records(st.written_seq + 1, stop, self.batch)
        if not recs:
            return 0
        part = self._part(st)
        with part.open("ab") as f:
            if st.part_bytes == 0:
                f.write(self.header)
            f.write(b"".join(r for _, r in recs))
            f.flush()
            os.fsync(f.fileno())
            st.part_bytes = f.tell()
        st.written_seq = recs[-1][0]
        self._save(st)
        return len(recs)

    def _run(self, now: int, force_close: bool) -> ExportResult:
        st = self.state()
        closed: list[str] = []
        rows = 0
        if not self._leftovers_trimmed:  # rows of closed files a crash left behind
            self._trim(st.first_seq)
            self._leftovers_trimmed = True
        if st.closing_end_seq:
            closed.append(self._close(st, st.closing_end_seq))
        if st.open_name:
            self._repair_part(st)
        while True:
            if not st.open_name:
                if not self._records(st.written_seq + 1, None, 1):
                    break
                st.open_name = f"{self.prefix}_{self.node}_{_stamp(now)}_{st.file_seq:06d}"
                st.open_started_at = now
                st.first_seq = st.written_seq + 1
                st.part_bytes = 0
                self._save(st)
            limit = st.first_seq + self.rotate_records
            n = self._append(st, limit)
            rows += n
            in_file = st.written_seq - st.first_seq + 1
            if in_file >= self.rotate_records:
                closed.append(self._close(st, st.written_seq + 1))
                continue
            if n == self.batch:
                continue  # more is waiting
            break
        if st.open_name and st.written_seq >= st.first_seq and (
            force_close or now - st.open_started_at >= self.rotate_s
        ):
            closed.append(self._close(st, st.written_seq + 1))
        return ExportResult(rows=rows, closed=tuple(closed))

    def flush(self, now: int) -> ExportResult:
        """Drain the whole journal and close the open file now (``ocs cdr flush``)."""
        with self.locked(wait=True):
            total = 0
            closed: list[str] = []
            while True:
                r = self._run(now, force_close=False)
                total += r.rows
                closed.extend(r.closed)
                if r.rows == 0:
                    break
            r = self._run(now, force_close=True)
            return ExportResult(rows=total + r.rows, closed=tuple(closed + list(r.closed)))

    def closed_files(self) -> list[Path]:
        return sorted(self.dir.glob(f"{self.prefix}_*{self.suffix}"))


class CdrExporter(JournalExporter):
    """The CDR journal into ``cdr_<node>_<UTC start>_<seq>.csv`` files."""
