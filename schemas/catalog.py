"""DuckDB views over the Parquet tables of a data dir.

`refresh_catalog(data_dir)` (re)writes `<data_dir>/catalog.duckdb` with one view per table that has
files, so any DuckDB client can `ATTACH`/open it and run `SELECT * FROM math_programs`.
`connect(data_dir)` gives an in-memory connection with the same views (what `datagen sql` uses:
it takes no lock on catalog.duckdb, so it works while a run is writing).

Example:
    con = connect("./datasets"); con.sql("SELECT exec_status, count(*) FROM math_programs GROUP BY 1").show()
"""
from __future__ import annotations

import logging
from pathlib import Path

import duckdb

from .tables import TABLES

log = logging.getLogger(__name__)
CATALOG_FILE = "catalog.duckdb"


def _table_glob(data_dir: Path, table: str) -> str | None:
    folder = data_dir / table
    if not any(folder.glob("**/*.parquet")):
        return None
    return str(folder.resolve() / "**" / "*.parquet")


def view_statements(data_dir: str | Path) -> dict[str, str]:
    """`CREATE OR REPLACE VIEW` statement per table that has committed files."""
    data_dir = Path(data_dir)
    statements = {}
    for name in TABLES:
        pattern = _table_glob(data_dir, name)
        if pattern is None:
            continue
        quoted = pattern.replace("'", "''")
        # The run folders are named run_id=..., and every file carries run_id itself:
        # hive_partitioning=false keeps the file's column the only run_id.
        statements[name] = (
            f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet('{quoted}', "
            f"union_by_name=true, hive_partitioning=false)"
        )
    return statements


def connect(data_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB connection with a view per table of the data dir."""
    con = duckdb.connect(":memory:")
    for statement in view_statements(data_dir).values():
        con.execute(statement)
    return con


def refresh_catalog(data_dir: str | Path) -> Path | None:
    """Rewrite catalog.duckdb's views. Returns its path, or None if another process holds its lock."""
    data_dir = Path(data_dir)
    path = data_dir / CATALOG_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path))
    except duckdb.IOException as exc:  # another writer holds the file lock; the next run refreshes it
        log.warning("catalog %s is locked by another process, not refreshed: %s", path, exc)
        return None
    try:
        for statement in view_statements(data_dir).values():
            con.execute(statement)
    finally:
        con.close()
    return path
