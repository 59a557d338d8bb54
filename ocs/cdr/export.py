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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import structlog

from ocs.cdr.fileformat import HEADER, format_row
from ocs.store.env import CDR_JOURNAL, META, META_CDR_EXPORT, Store, pack_u64
from ocs.store.records import CdrExportState, dec_cdr, dec_export_state, encode

if TYPE_CHECKING:
    from ocs.config import Config
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
    """Drains one journal sub-database into rotated files (``<prefix>_<node>_<UTC>_<seq>``).

    With ``confirm_every_s`` > 0 (the server's exporter) new rows are written to the
    ``.part`` at once — a NOC tool tailing it sees them — and confirmed (fsync, position
    saved) at most that often, and the rows of a closed file leave the journal by
    :meth:`trim_step`, between rounds: neither an fsync, a store write nor a trim of a
    whole file stands between a journal record and its line. Unconfirmed rows are what
    a crash may cut from the ``.part``; the restart writes them again, byte-identical.
    With 0 (``ocs cdr flush``, tests), every append is confirmed and a close trims.
    """

    def __init__(self, store: Store, out_dir: Path, node: str, *, rotate_s: int,
                 rotate_records: int, batch: int = 20_000, journal: bytes = CDR_JOURNAL,
                 state_key: bytes = META_CDR_EXPORT, prefix: str = "cdr", suffix: str = ".csv",
                 header: bytes = _HEADER_BYTES,
                 format_record: Callable[[bytes], bytes] | None = None,
                 confirm_every_s: float = 0.0):
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
        self.confirm_every_s = confirm_every_s
        self.dir.mkdir(parents=True, exist_ok=True)
        self._leftovers_trimmed = False
        self._trim_below = 0
        """Journal records below this are in closed files: :meth:`trim_step` drops them."""
        self._mine: CdrExportState | None = None
        """Our position, ahead of the stored one by the unconfirmed rows..."""
        self._saved: CdrExportState | None = None
        """...valid while the stored one is still what we saved (``ocs cdr flush`` may
        have exported in between: then the stored one is the truth)."""
        self._unconfirmed_since: float | None = None

    # -- state ------------------------------------------------------------------------

    def state(self) -> CdrExportState:
        raw = self.store.get(META, self.state_key)
        return dec_export_state.decode(raw) if raw is not None else CdrExportState()

    def _current(self) -> CdrExportState:
        stored = self.state()
        if self._mine is not None and stored == self._saved:
            return self._mine
        self._unconfirmed_since = None  # another process moved on: its rows count
        self._saved = msgspec.structs.replace(stored)
        return stored

    def _save(self, st: CdrExportState) -> None:
        self.store.run_write(lambda tx: tx.put(META, self.state_key, encode(st)))
        self._saved = msgspec.structs.replace(st)

    def _confirm(self, st: CdrExportState) -> None:
        """fsync the rows written since the last confirmation, then record them."""
        if self._unconfirmed_since is None:
            return
        with self._part(st).open("rb") as f:
            os.fsync(f.fileno())
        self._save(st)
        self._unconfirmed_since = None

    def confirm_due_in(self, now: float) -> float | None:
        """Seconds (monotonic ``now``) until unconfirmed rows are due; None if none."""
        if self._unconfirmed_since is None:
            return None
        return max(0.0, self._unconfirmed_since + self.confirm_every_s - now)

    @property
    def trim_pending(self) -> bool:
        return self._trim_below > 0

    def trim_step(self, chunk: int = TRIM_CHUNK) -> bool:
        """Drop up to ``chunk`` journal records of closed files; True if more remain."""
        if not self._trim_below:
            return False
        if self._delete_below(self._trim_below, chunk) < chunk:
            self._trim_below = 0
        return self.trim_pending

    def _trim(self, below: int) -> int:
        """Drop the journal entries below ``below`` (all in closed files), ``TRIM_CHUNK``
        a transaction: one transaction deleting a whole file's rows would hold the store's
        write lock, and so every charging answer, for a noticeable time."""
        total = 0
        while (n := self._delete_below(below, TRIM_CHUNK)) > 0:
            total += n
            if n < TRIM_CHUNK:
                break
        return total

    def _delete_below(self, below: int, chunk: int) -> int:
        """One transaction: delete up to ``chunk`` journal entries below ``below``."""
        journal, stop = self.journal, pack_u64(below)

        def op(tx: Tx) -> int:
            n = 0
            for k, _ in tx.scan(journal, b"", stop, limit=chunk):
                tx.delete(journal, k)
                n += 1
            return n

        return self.store.run_write(op)

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

    def _forget_on_error(self) -> None:
        """After a failed round our position may be half moved: the next round starts
        from the stored (confirmed) one again and repairs the ``.part`` to it."""
        self._mine = None
        self._saved = None
        self._unconfirmed_since = None

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
            if self._unconfirmed_since is not None:  # the rows so far must be on disk
                with self._part(st).open("rb") as f:  # before the name says "closed"
                    os.fsync(f.fileno())
                self._unconfirmed_since = None
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
        self._drop_closed(end_seq)  # after the state: a crash between leaves only leftovers
        log.info("journal_file_closed", file=final.name, records=end_seq - closed_first)
        return final.name

    def _append(self, st: CdrExportState, stop: int | None, *, lazy: bool = False) -> int:
        """Append the rows after ``written_seq`` (up to ``stop``); fsync and record them
        now, or (``lazy``) leave that to :meth:`_confirm`."""
        recs = self._records(st.written_seq + 1, stop, self.batch)
        if not recs:
            return 0
        part = self._part(st)
        with part.open("ab") as f:
            if st.part_bytes == 0:
                f.write(self.header)
            f.write(b"".join(r for _, r in recs))
            f.flush()
            if not lazy:
                os.fsync(f.fileno())
            st.part_bytes = f.tell()
        st.written_seq = recs[-1][0]
        if lazy:
            if self._unconfirmed_since is None:
                self._unconfirmed_since = time.monotonic()
        else:
            self._save(st)
            self._unconfirmed_since = None
        return len(recs)

    def _drop_closed(self, below: int) -> None:
        if self.confirm_every_s > 0:
            self._trim_below = max(self._trim_below, below)
        else:
            self._trim(below)

    def _run(self, now: int, force_close: bool, confirm: bool = False) -> ExportResult:
        try:
            return self._round(now, force_close, confirm)
        except BaseException:
            self._forget_on_error()
            raise

    def _round(self, now: int, force_close: bool, confirm: bool) -> ExportResult:
        st = self._current()
        closed: list[str] = []
        rows = 0
        if not self._leftovers_trimmed:  # rows of closed files a crash left behind
            self._drop_closed(st.first_seq)
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
            n = self._append(st, limit, lazy=self.confirm_every_s > 0)
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
        if self._unconfirmed_since is not None and (
                confirm or time.monotonic() - self._unconfirmed_since >= self.confirm_every_s):
            self._confirm(st)
        self._mine = st
        return ExportResult(rows=rows, closed=tuple(closed))

    def flush(self, now: int) -> ExportResult:
        """Drain the whole journal and close the open file now (``ocs cdr flush``)."""
        with self.locked(wait=True):
            total = 0
            closed: list[str] = []
            while True:
                r = self._run(now, force_close=False, confirm=True)
                total += r.rows
                closed.extend(r.closed)
                if r.rows == 0:
                    break
            r = self._run(now, force_close=True, confirm=True)
            while self.trim_step():
                pass
            return ExportResult(rows=total + r.rows, closed=tuple(closed + list(r.closed)))

    def closed_files(self) -> list[Path]:
        return sorted(self.dir.glob(f"{self.prefix}_*{self.suffix}"))


class CdrExporter(JournalExporter):
    """The CDR journal into ``cdr_<node>_<UTC start>_<seq>.csv`` files."""

    @classmethod
    def of(cls, cfg: Config, store: Store) -> CdrExporter:
        """The exporter of node config ``cfg`` over its ``store``."""
        return cls(store, cfg.under_data(cfg.cdr.dir), cfg.node.name,
                   rotate_s=cfg.cdr.rotate_s, rotate_records=cfg.cdr.rotate_records)
