"""Atomic, rerun-safe Parquet tables under a data dir.

A commit writes one Parquet file under a hidden temporary name and renames it into place, so a
reader (or a crash) never sees half a file. The committed files *are* the checkpoint: a run's plan
anti-joins its staged input against them in DuckDB (tasks/runtime/planning.py; `committed_keys()` is
the small, in-memory form of the same question) and skips what already has records, which makes reruns
add nothing and a killed run resume where it stopped. (Ray Data's CheckpointConfig resumes one failed
execution and deletes its checkpoint on success; it needs an id that passes 1:1 through every
operator, while a generator fans one source row out into many records, and it does not make the
next run incremental. The table-as-checkpoint does both.)

Layout: <data_dir>/<table>/run_id=<run_id>/part-<time>-<uuid>.parquet, where the data dir is a local
path, a shared filesystem or an object-store URI (schemas/datadir.py).

A damaged part (truncated by a full disk, or by a crash on a filesystem without atomic rename) cannot
take the table down: when a read fails on Parquet it cannot decode, `read()` checks each file, moves
the damaged ones to `<table>/_quarantine/` (listed in `quarantined`, for the run to report) and reads
the rest; their source rows are then missing, so the run that read them redoes them. I/O errors are
raised as they are (a flaky mount must not quarantine good files). `damaged()` is the footer check
`datagen sql` uses to leave such files out of its views without moving anything.

Compaction (`compact()`, `datagen compact`, and every run's own folder when the run ends): a run commits
one small part per finished batch; compaction rewrites a run's parts as one file (or one per `max_rows`)
with the same rows, record ids and lineage. The new files are written into a hidden staging folder,
which then trades places with the run's folder in one atomic step (renameat2 RENAME_EXCHANGE), so a
reader sees the old parts or the new file, never both and never neither; the old parts wait under
`<table>/_compacted/` for `COMPACTED_GRACE_S` (a query that listed them may still be reading) and the
next compaction deletes them. A crash leaves either the old folder or the new one, plus at most a hidden
staging folder that no reader lists and the next compaction removes. Local and shared POSIX data dirs
only: an object store has no atomic folder swap, and its parts are left as they are.

Example:
    store = TableStore("./datasets", MATH_PROGRAMS)
    store.commit(rows, run_id="20261127-231501-ab12")
    store.committed_keys(["source_id", "pass"], config_hash="9f3a...")  # {("gsm8k-1", "fixed"), ...}
    with store.lease("9f3a...", {"run_id": run_id}): ...   # one writer per config (schemas/lease.py)
"""
from __future__ import annotations

import ctypes
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from schemas.tables import TableSchema

from .datadir import DataDir
from .lease import acquire_lease

QUARANTINE = "_quarantine"
COMPACTED = "_compacted"
COMPACTED_GRACE_S = 600  # old parts are kept this long after a compaction, for readers mid-scan
STAGING = ".compact-"


def only_runs(condition: pads.Expression, run_ids=None, config_hashes=None, exclude_records=None) -> pads.Expression:
    """`condition`, narrowed to the given runs and config hashes (each left open when not given), without
    the records in `exclude_records` (the ones a cleaning step flagged: schemas/flags.py)."""
    if exclude_records:
        condition &= ~pads.field("record_id").isin(list(exclude_records))
    if run_ids:
        condition &= pads.field("run_id").isin(list(run_ids))
    if config_hashes:
        condition &= pads.field("config_hash").isin(list(config_hashes))
    return condition


class TableStore:
    def __init__(self, data_dir: str | Path | DataDir, table: TableSchema):
        self.data_dir = DataDir(data_dir)
        self.table = table
        self.root = self.data_dir.join(table.name)
        self.quarantined: list[dict] = []  # {"file", "moved_to", "why"} of every part this store moved aside

    def lease(self, key: str, holder: dict, **options):
        """Context manager: the one-writer lease on (this table, `key`) — see schemas/lease.py."""
        return acquire_lease(self.data_dir, self.table.name, key, holder, **options)

    def run_dir(self, run_id: str) -> str:
        return f"{self.root}/run_id={run_id}"

    def to_arrow(self, rows: Sequence[dict]) -> pa.Table:
        """Rows -> Arrow table with the table's explicit schema (raises on a missing/mistyped column)."""
        return pa.Table.from_pylist(list(rows), schema=self.table.arrow)

    def commit(self, rows: Sequence[dict] | pa.Table, run_id: str, name: str | None = None) -> str | None:
        """Atomically write `rows` as one new file of run `run_id`. Nothing is written for no rows.

        `name` fixes the file name (a later commit with the same name replaces it atomically);
        by default every commit gets a new, unique name. Returns the file's path in the data dir's
        filesystem.
        """
        table = rows if isinstance(rows, pa.Table) else self.to_arrow(rows)
        if table.num_rows == 0:
            return None
        table = table.cast(self.table.arrow)
        name = name or f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"
        return self.data_dir.write_parquet(table, f"{self.run_dir(run_id)}/{name}")

    def files(self) -> list[str]:
        return [f for f in self.data_dir.list_files(self.root) if "/run_id=" in f and f"/{QUARANTINE}/" not in f]

    def dataset(self, files: list[str] | None = None) -> pads.Dataset:
        files = self.files() if files is None else files
        return pads.dataset(files, schema=self.table.arrow, format="parquet", filesystem=self.data_dir.fs)

    def read(self, columns: Iterable[str] | None = None, filter=None) -> pa.Table:
        """All committed rows (only `columns`, rows matching a pyarrow `filter` expression)."""
        return retry_vanished(lambda: self._read(columns, filter))

    def _read(self, columns: Iterable[str] | None = None, filter=None) -> pa.Table:
        files = self.files()
        schema = self.table.arrow
        if not files:
            names = list(columns) if columns else schema.names
            return pa.schema([schema.field(n) for n in names]).empty_table()
        try:
            return self.dataset(files).to_table(columns=list(columns) if columns else None, filter=filter)
        except pa.ArrowInvalid:  # undecodable Parquet (OSError, an I/O failure, is not caught)
            if not self.quarantine(self.damaged(files, whole=True)):
                raise
            return self._read(columns, filter)

    def damaged(self, files: list[str] | None = None, whole: bool = False) -> dict[str, str]:
        """file -> why, for committed files that are not readable Parquet: the footer (cheap: what
        `datagen sql` checks), or with `whole` every page too."""
        found = {}
        for path in self.files() if files is None else files:
            try:
                if whole:
                    pq.read_table(path, filesystem=self.data_dir.fs)
                else:
                    pq.read_metadata(path, filesystem=self.data_dir.fs)
            except FileNotFoundError:  # a compaction moved it since it was listed: not damaged
                continue
            except pa.ArrowInvalid as exc:
                found[path] = str(exc).split(": ")[-1].splitlines()[0][:200]
        return found

    def quarantine(self, damaged: dict[str, str]) -> list[dict]:
        """Move `damaged` files (file -> why) to <table>/_quarantine/, keeping their run folder."""
        moved = []
        for path, why in damaged.items():
            target = f"{self.root}/{QUARANTINE}/{path[len(self.root) + 1:]}"
            self.data_dir.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            self.data_dir.fs.move(path, target)
            moved.append({"file": self.data_dir.url(path), "moved_to": self.data_dir.url(target), "why": why})
        self.quarantined += moved
        return moved

    def compact(self, run_ids: Iterable[str] | None = None, max_rows: int = 1_000_000) -> dict[str, tuple[int, int]]:
        """Rewrite each run's part files (only `run_ids`, when given) as few files of at most
        `max_rows` rows; run_id -> (files before, files after) for every run compacted. The caller
        makes sure nobody is writing those runs (a finished run, or the run itself at its end)."""
        if not self.data_dir.local:
            raise CompactionUnsupported(f"{self.data_dir.url(self.root)}: compaction needs a local or shared POSIX "
                                        "data dir (an object store has no atomic folder swap)")
        self._sweep()
        by_run: dict[str, list[str]] = {}
        for path in self.files():
            run_dir = path.rsplit("/", 1)[0]
            by_run.setdefault(run_dir.rsplit("/run_id=", 1)[1], []).append(path)
        wanted = None if run_ids is None else set(run_ids)
        done = {}
        for run_id, files in sorted(by_run.items()):
            if (wanted is None or run_id in wanted) and len(files) > 1:
                needed = -(-self.dataset(files).count_rows() // max_rows)  # from the footers
                if len(files) > needed:
                    done[run_id] = (len(files), self._compact_run(run_id, files, max_rows))
        return done

    def _compact_run(self, run_id: str, files: list[str], max_rows: int) -> int:
        # New names every time: a reader that listed the old files finds every one of them gone after the
        # swap (and lists again), never the same name with other contents.
        tag = uuid.uuid4().hex[:12]
        run_dir, staging = self.run_dir(run_id), f"{self.root}/{STAGING}{tag}"
        os.makedirs(staging)
        try:
            written, rows, writer = 0, 0, None
            for batch in self.dataset(files).to_batches(batch_size=4_096):  # never a whole run in memory
                if writer is None or rows >= max_rows:
                    if writer is not None:
                        writer.close()
                    writer = pq.ParquetWriter(f"{staging}/part-compacted-{tag}-{written:05d}.parquet", self.table.arrow,
                                              compression="zstd")
                    written, rows = written + 1, 0
                writer.write_batch(batch)
                rows += batch.num_rows
            if writer is not None:
                writer.close()
            for name in os.listdir(staging):
                with open(f"{staging}/{name}", "rb") as fh:
                    os.fsync(fh.fileno())
            before = self.dataset(files).count_rows()
            after = self.dataset([f"{staging}/{n}" for n in os.listdir(staging)]).count_rows()
            if after != before:  # never swap in fewer (or more) rows than the parts hold
                raise RuntimeError(f"compacting {run_dir}: {after} rows written, the parts hold {before}")
            _exchange(staging, run_dir)  # staging now holds the old parts
            os.makedirs(f"{self.root}/{COMPACTED}", exist_ok=True)
            kept = f"{self.root}/{COMPACTED}/{run_id}-{uuid.uuid4().hex[:8]}"
            os.rename(staging, kept)
            os.utime(kept)  # its grace period starts now, not at the run's last commit
            return written
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _sweep(self) -> None:
        """Delete old parts past their grace period, and staging folders a crash left behind."""
        now = time.time()
        for name in os.listdir(self.root) if os.path.isdir(self.root) else ():
            if name.startswith(STAGING) and now - os.path.getmtime(f"{self.root}/{name}") > COMPACTED_GRACE_S:
                shutil.rmtree(f"{self.root}/{name}", ignore_errors=True)
        old = f"{self.root}/{COMPACTED}"
        for name in os.listdir(old) if os.path.isdir(old) else ():
            if now - os.path.getmtime(f"{old}/{name}") > COMPACTED_GRACE_S:
                shutil.rmtree(f"{old}/{name}", ignore_errors=True)

    def committed_keys(self, key_columns: Sequence[str], **equals) -> set[tuple]:
        """Distinct tuples of `key_columns` among committed rows whose columns equal `equals`."""
        condition = None
        for column, value in equals.items():
            term = pads.field(column) == value
            condition = term if condition is None else condition & term
        table = self.read(columns=list(key_columns), filter=condition)
        return set(zip(*(table.column(c).to_pylist() for c in key_columns))) if table.num_rows else set()


def vanished(exc: BaseException) -> bool:
    """Whether `exc` is a file that was listed and then gone when opened (a compaction swapped the
    run's folder in between): pyarrow's FileNotFoundError, DuckDB's IOException."""
    return isinstance(exc, FileNotFoundError) or "No such file or directory" in str(exc)


def retry_vanished(read, attempts: int = 5):
    """`read()`, listed and read again when a file vanished in between (see `vanished`)."""
    for attempt in range(attempts):
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 - only a vanished file is retried; the rest re-raised
            if not vanished(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


class CompactionUnsupported(RuntimeError):
    """The data dir cannot swap folders atomically (an object store)."""


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> None:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE, glibc >= 2.28)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        raise CompactionUnsupported("this C library has no renameat2 (Linux with glibc >= 2.28 has)")
    if libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot swap {a} and {b} atomically: {os.strerror(err)}")
