"""The text fields of each table and the records a check has not seen yet, streamed in batches.

A check (one evaluation file and its settings, or one dedup setting) writes one row per record it
checked, keyed by `check_id`. The records still to check are the table's records with no such row:
an anti-join that DuckDB runs over the Parquet files (it spills to disk past its memory limit), read
back as Arrow record batches, so neither side is ever loaded into Python at once.

Example:
    con = connect("./datasets")
    for batch in unchecked(con, "math_programs", ["question", "program"], "contamination", "3f2a..."):
        batch.column("record_id"), batch.column("question")   # up to 8,192 rows at a time
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import duckdb
import pyarrow as pa


@dataclass(frozen=True)
class Profile:
    """What to check in a table. `prompt`: the columns a record was made from (the question, the
    prompt); `output`: what the model wrote (program, rewrite, query, responses). Decontamination
    reads both (`fields`); dedup compares outputs among records whose prompts are the same. `kept`:
    a SQL expression true for rows the generator kept (dedup prefers them as representatives)."""

    prompt: tuple[str, ...]
    output: tuple[str, ...]
    kept: str = "true"

    @property
    def fields(self) -> tuple[str, ...]:
        return self.prompt + self.output


PROFILES = {
    "math_programs": Profile(("question",), ("program",), "correct"),
    "cot_rewrites": Profile(("question",), ("rewritten_text",), "kept"),
    "retrieval_queries": Profile((), ("query",), "coalesce(kept, false)"),
    "preference_labels": Profile(("prompt",), ("response_a", "response_b")),
}
BATCH_ROWS = 8192
MEMORY_LIMIT = "256MB"  # DuckDB's own; past it the joins spill to its temp directory (bench/clean.py)


class CleanError(ValueError):
    """A cleaning command that cannot run as asked (unknown table, missing column): one line."""


def connect(data_dir) -> duckdb.DuckDBPyConnection:
    from schemas.catalog import connect as catalog

    con = catalog(data_dir)
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    # DuckDB's default spill folder is `.tmp` in the working directory: the system's temp folder instead.
    spill = os.path.join(tempfile.gettempdir(), f"datagen-duckdb-{os.getpid()}")
    con.execute(f"SET temp_directory = '{spill}'")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")
    return con


def views(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}


def columns_of(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    return {r[0]: r[1] for r in con.sql(f'DESCRIBE "{table}"').fetchall()}


def profile_for(con: duckdb.DuckDBPyConnection, data_dir, table: str, fields: list[str] | None = None) -> Profile:
    """The table's profile (`fields` given: those are its outputs, with no prompt), checked against its
    columns."""
    if table not in views(con):
        raise CleanError(f"table {table!r} has no committed rows in {data_dir}")
    profile = PROFILES.get(table)
    if fields:
        profile = Profile((), tuple(fields), profile.kept if profile else "true")
    if profile is None:
        raise CleanError(f"table {table!r} is not a built-in table: name its text columns with --fields")
    have = columns_of(con, table)
    for column in ("record_id", *profile.fields):
        if column not in have:
            raise CleanError(f"table {table!r} has no column {column!r} (it has {', '.join(sorted(have))})")
        if column != "record_id" and have[column] != "VARCHAR":
            raise CleanError(f"table {table!r}: column {column!r} is {have[column]}, not text")
    return profile


def unchecked(con: duckdb.DuckDBPyConnection, table: str, select: list[str], ledger: str, check_id: str,
              batch_rows: int = BATCH_ROWS) -> pa.RecordBatchReader:
    """Batches of `record_id` and the `select` expressions of `table`'s records that have no `ledger`
    row for `check_id`, streamed (no sort or de-duplication that would hold the table in memory)."""
    columns = ", ".join(select)
    skip = ""
    if ledger in views(con):
        skip = (f"WHERE NOT EXISTS (SELECT 1 FROM {ledger} l WHERE l.check_id = $check "
                f"AND l.record_id = t.record_id)")
    sql = (f'SELECT t.record_id, {columns} FROM "{table}" t {skip}')
    return con.sql(sql, params={"check": check_id} if skip else None).to_arrow_reader(batch_rows)
