"""Atomic, rerun-safe Parquet tables under a data dir.

A commit writes one Parquet file under a hidden temporary name and renames it into place, so a
reader (or a crash) never sees half a file. The committed files *are* the checkpoint: a run asks
`committed_keys()` which source rows already have records and skips them, which makes reruns add
nothing and a killed run resume where it stopped. (Ray Data's CheckpointConfig resumes one failed
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

Example:
    store = TableStore("./datasets", MATH_PROGRAMS)
    store.commit(rows, run_id="20261127-231501-ab12")
    store.committed_keys(["source_id", "pass"], config_hash="9f3a...")  # {("gsm8k-1", "fixed"), ...}
    with store.lease("9f3a...", {"run_id": run_id}): ...   # one writer per config (schemas/lease.py)
"""
from __future__ import annotations

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
            return self.read(columns, filter)

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

    def committed_keys(self, key_columns: Sequence[str], **equals) -> set[tuple]:
        """Distinct tuples of `key_columns` among committed rows whose columns equal `equals`."""
        condition = None
        for column, value in equals.items():
            term = pads.field(column) == value
            condition = term if condition is None else condition & term
        table = self.read(columns=list(key_columns), filter=condition)
        return set(zip(*(table.column(c).to_pylist() for c in key_columns))) if table.num_rows else set()
