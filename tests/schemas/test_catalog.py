"""Proves the DuckDB catalog: catalog.duckdb holds a view per table with files, readable by a plain
DuckDB client, and the in-memory connection used by `datagen sql` sees the same rows."""
from __future__ import annotations

from datetime import datetime, timezone

import duckdb

from schemas.catalog import connect, refresh_catalog
from schemas.tables import MATH_PROGRAMS, RUNS, TABLES
from schemas.store import TableStore


def test_every_table_schema_is_explicit_and_versioned():
    for name, table in TABLES.items():
        assert table.name == name and table.version >= 1
        assert table.arrow.metadata[b"datagen.table"] == name.encode()
    lineage = {"record_id", "source_id", "run_id", "generator", "model", "prompt_version", "config_hash",
               "temperature", "top_p", "max_tokens", "seed", "created_at"}
    assert lineage <= set(MATH_PROGRAMS.schema.names)


def test_catalog_views_over_parquet(tmp_path):
    now = datetime.now(timezone.utc)
    store = TableStore(tmp_path, RUNS)
    store.commit([{"run_id": "r1", "flow": "f", "status": "completed", "started_at": now, "rows_out": 3}], "r1")
    store.commit([{"run_id": "r2", "flow": "f", "status": "completed", "started_at": now, "rows_out": 4}], "r2")
    path = refresh_catalog(tmp_path)
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT sum(rows_out), count(*) FROM runs").fetchone() == (7, 2)
    assert con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'math_programs'").fetchone() == (0,)
    con.close()
    assert connect(tmp_path).execute("SELECT list_sort(list(run_id)) FROM runs").fetchone() == (["r1", "r2"],)
