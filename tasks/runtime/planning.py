"""Staged rows and planning: what is left to do, found by DuckDB, never as a Python set of the table.

A run's source rows are staged to Parquet (`stage_rows`: chunks of 4,096 rows, one file per input,
columns `seq`, `source_id`, `payload` — the row's JSON, the same two columns the Ray stages carry). A
pass's plan is an anti-join in DuckDB between those staged files and the committed table's Parquet
files (filtered by config hash, and by pass / correct for math-programs), written as a staged Parquet
file again: the driver never holds the source nor the table, only file paths and counts, so a 1M-row
input plans in seconds in flat memory and Ray reads the plan with `ray.data.read_parquet`.

Example:
    files = stage_rows(rows, folder)                      # [".../source-3f2a.parquet"]
    todo = anti_join(files, store, folder, done=[{"config_hash": "9f3a...", "pass": "fixed"}])
    todo.files, todo.count                                # [".../todo-8c1e/data_0.parquet"], 812
    count_matching(files, store, [{"config_hash": "9f3a..."}])   # source rows already committed

Damaged committed parts are handled as `TableStore.read` handles them: moved to `_quarantine/` (their
rows are then planned again); a part that vanished between listing and reading (a compaction swapped
the run's folder) is listed and read again.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CHUNK_ROWS = 4_096  # rows per staged row group: what a staging writer or a plan reader holds at once
STAGED = pa.schema([("seq", pa.int64()), ("source_id", pa.string()), ("payload", pa.string())])
# DuckDB's own working memory while planning; beyond it DuckDB spills to the staging folder, so a huge
# table plans in bounded memory instead of growing the driver.
DUCKDB_MEMORY = os.environ.get("DATAGEN_PLAN_MEMORY", "256MB")


@dataclass
class Staged:
    """Staged Parquet files and how many rows they hold; `folder`, when it is a StagingFolder, lives
    (and so the files do) as long as this does."""

    files: list[str]
    count: int
    folder: str | None = field(default=None, repr=False)


class StagingFolder(str):
    """A new temporary folder (under $DATAGEN_STAGING, else the system's temp dir), deleted when the
    last reference to it goes, or at `cleanup()`: staged files never outlive the Source and plans
    that use them, and a reading outside a run (an eval, a test) leaves nothing behind."""

    def __new__(cls, prefix: str = "datagen-staged-"):
        path = tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("DATAGEN_STAGING"))
        folder = super().__new__(cls, path)
        folder._remover = _Remover(path)
        return folder

    def cleanup(self) -> None:
        self._remover.remove()


class _Remover:
    def __init__(self, path: str):
        self.path = path

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __del__(self):
        self.remove()


def stage_rows(rows: Iterable[dict], folder: str, name: str = "source", flag: str | None = None) -> Staged:
    """Write rows (dicts with a `source_id`) to one Parquet file under `folder`, 4,096 rows at a time.
    `flag`: a boolean key taken out of each row into its own column `flag` (a verdict kept beside it)."""
    os.makedirs(folder, exist_ok=True)
    path = f"{folder}/{name}-{uuid.uuid4().hex[:12]}.parquet"
    schema = STAGED.append(pa.field("flag", pa.bool_())) if flag else STAGED
    count = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for chunk in chunked(rows, CHUNK_ROWS):
            writer.write_table(staged_table(chunk, start=count, flag=flag), row_group_size=CHUNK_ROWS)
            count += len(chunk)
    return Staged([path], count, folder)


def staged_table(rows: Sequence[dict], start: int = 0, flag: str | None = None) -> pa.Table:
    columns = {"seq": pa.array(range(start, start + len(rows)), pa.int64())}
    if flag:
        flags = pa.array([bool(r.pop(flag)) for r in rows], pa.bool_())
    columns["source_id"] = pa.array([str(r["source_id"]) for r in rows], pa.string())
    columns["payload"] = pa.array([json.dumps(r) for r in rows], pa.string())
    if flag:
        columns["flag"] = flags
    return pa.table(columns)


def chunked(rows: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def read_staged(files: Sequence[str], batch_rows: int = CHUNK_ROWS) -> Iterator[list[dict]]:
    """The staged rows back as dicts, `batch_rows` at a time, in staging order."""
    for path in files:
        with pq.ParquetFile(path) as f:
            for batch in f.iter_batches(batch_size=batch_rows, columns=["payload"]):
                yield [json.loads(p) for p in batch.column(0).to_pylist()]


def connect(folder: str):
    import duckdb

    con = duckdb.connect(":memory:")
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")
    con.execute(f"SET temp_directory = {sql_literal(folder + '/duckdb-tmp')}")
    con.execute("SET threads = 2")
    con.execute("SET preserve_insertion_order = false")  # order comes from ORDER BY seq where it matters
    return con


def sql_literal(value) -> str:
    """A Python value as a DuckDB literal (the values here are config hashes, pass names, booleans)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def where_sql(conditions: Sequence[dict]) -> str:
    """[{"config_hash": h, "pass": "fixed"}, {...}] -> `(config_hash = 'h' AND "pass" = 'fixed') OR (...)`."""
    terms = []
    for equals in conditions:
        parts = [f'"{column}" = {sql_literal(value)}' for column, value in equals.items()]
        terms.append("(" + (" AND ".join(parts) or "TRUE") + ")")
    return " OR ".join(terms) or "FALSE"


def files_sql(files: Sequence[str]) -> str:
    return "[" + ", ".join(sql_literal(f) for f in files) + "]"


def with_committed(store, folder: str, key_column: str, conditions: Sequence[dict], query,
                   done_key_sql: str | None = None):
    """`query(con, done_sql)` where `done_sql` selects the distinct `key_column` values (as `key`) of the
    committed rows matching any of `conditions`, straight from the table's Parquet files. A damaged
    part is quarantined (TableStore.quarantine) and the query run again; a vanished one is re-listed."""
    from schemas.store import retry_vanished

    def attempt():
        files = store.files()
        con = connect(folder)
        try:
            if not files:
                return query(con, "SELECT NULL::VARCHAR AS key WHERE FALSE")
            if store.data_dir.local:
                scan = f"read_parquet({files_sql(files)}, union_by_name = true)"
            else:  # an object store: pyarrow's filesystem streams the files to DuckDB, batch by batch
                columns = sorted({key_column, *(c for equals in conditions for c in equals)})
                con.register("committed_scan", store.dataset(files).scanner(columns=columns,
                                                                            batch_size=65_536).to_reader())
                scan = "committed_scan"
            key = done_key_sql or f'CAST("{key_column}" AS VARCHAR)'
            done = f"SELECT DISTINCT {key} AS key FROM {scan} WHERE {where_sql(conditions)}"
            return query(con, done)
        except Exception as exc:  # noqa: BLE001 - only undecodable Parquet is handled here; the rest re-raised
            if _vanished(exc) or not _undecodable(exc):
                raise
            if not store.quarantine(store.damaged(files, whole=True)):
                raise
            return attempt()
        finally:
            con.close()

    return retry_vanished(attempt)


def _vanished(exc: BaseException) -> bool:
    from schemas.store import vanished

    return vanished(exc)


def _undecodable(exc: BaseException) -> bool:
    import duckdb

    return isinstance(exc, (pa.ArrowInvalid, duckdb.InvalidInputException, duckdb.IOException))


def anti_join(source_files: Sequence[str], store, folder: str, done: Sequence[dict],
              key_column: str = "source_id", key_sql: str = "s.source_id", done_key_sql: str | None = None) -> Staged:
    """The staged source rows with no committed record matching any of `done` (each a dict of column ->
    value, e.g. {"config_hash": h, "pass": "fixed"}), in staging order, as new staged Parquet files.
    `key_sql` / `done_key_sql`: the source row's and the committed row's keys as DuckDB computes them
    (default: the source id, the table's `key_column`; e.g. a prompt id cut from a pair id).

    DuckDB joins ids only (the payloads are never sorted nor hashed) and returns the staging positions
    of the rows already done, 8 bytes each; the rows are then copied through Arrow, 4,096 at a time."""

    def query(con, done_sql):
        return con.execute(f"SELECT s.seq FROM read_parquet({files_sql(source_files)}) s "
                           f"SEMI JOIN ({done_sql}) d ON {key_sql} = d.key ORDER BY s.seq").fetchnumpy()["seq"]

    if not source_files:  # every input row was rejected
        return Staged([], 0, folder)
    os.makedirs(folder, exist_ok=True)
    matched = with_committed(store, folder, key_column, done, query, done_key_sql)
    return copy_without(source_files, np.asarray(matched, dtype=np.int64), f"{folder}/todo-{uuid.uuid4().hex[:12]}",
                        folder)


FILE_ROWS = 262_144  # rows per staged plan file: several files, so Ray reads them in parallel


def copy_without(files: Sequence[str], drop_seqs: np.ndarray, prefix: str, folder: str | None = None) -> Staged:
    """The staged rows of `files` less those at the sorted positions `drop_seqs`, in order, renumbered,
    as files `<prefix>-00000.parquet` ... of at most FILE_ROWS rows."""
    written, count, rows_in_file, writer = [], 0, 0, None
    try:
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS, columns=["seq", "source_id", "payload"]):
                seqs = batch.column(0).to_numpy()
                if len(drop_seqs) and len(seqs):
                    lo, hi = np.searchsorted(drop_seqs, [seqs.min(), seqs.max() + 1])
                    if hi > lo:
                        batch = batch.filter(pa.array(~np.isin(seqs, drop_seqs[lo:hi])))
                n = batch.num_rows
                if not n:
                    continue
                if writer is None or rows_in_file >= FILE_ROWS:
                    if writer is not None:
                        writer.close()
                    written.append(f"{prefix}-{len(written):05d}.parquet")
                    writer, rows_in_file = pq.ParquetWriter(written[-1], STAGED, compression="zstd"), 0
                writer.write_table(pa.table({"seq": pa.array(np.arange(count, count + n), pa.int64()),
                                             "source_id": batch.column(1), "payload": batch.column(2)}, schema=STAGED),
                                   row_group_size=CHUNK_ROWS)
                count, rows_in_file = count + n, rows_in_file + n
    finally:
        if writer is not None:
            writer.close()
    return Staged(written, count, folder)


def count_matching(source_files: Sequence[str], store, folder: str, done: Sequence[dict],
                   key_column: str = "source_id", key_sql: str = "s.source_id") -> int:
    """How many staged source rows have a committed record matching any of `done` (the rows a plan skips)."""
    if not source_files:
        return 0
    os.makedirs(folder, exist_ok=True)
    return with_committed(store, folder, key_column, done, lambda con, done_sql: con.execute(
        f"SELECT count(*) FROM read_parquet({files_sql(source_files)}) s "
        f"SEMI JOIN ({done_sql}) d ON {key_sql} = d.key").fetchone()[0])


def count_rows(files: Sequence[str]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
