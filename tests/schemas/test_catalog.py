"""Proves the DuckDB catalog: catalog.duckdb holds a view per table with files, readable by a plain
DuckDB client, and the in-memory connection used by `datagen sql` sees the same rows; read-only, it
refuses every statement that could write (COPY into the data dir included: it once overwrote a
committed part), attach, install or configure, and cannot read a file outside the data dir."""
from __future__ import annotations

from datetime import datetime, timezone

import duckdb
import pytest

from schemas.catalog import ReadOnlyError, check_read_only, connect, refresh_catalog
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


def _runs_dir(root):
    now = datetime.now(timezone.utc)
    store = TableStore(root / "datasets", RUNS)
    store.commit([{"run_id": "r1", "flow": "f", "status": "completed", "started_at": now, "rows_out": 3}], "r1")
    return root / "datasets", store


REFUSED = {
    "copy-over-a-committed-part": "COPY (SELECT 1 AS x) TO '{part}' (FORMAT parquet)",
    "copy-partitioned-overwrite": "COPY runs TO '{data}/runs' (FORMAT parquet, PARTITION_BY (run_id), OVERWRITE)",
    "copy-out": "COPY runs TO '{outside}/out.csv'",
    "attach": "ATTACH '{data}/catalog.duckdb' AS c",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "create-table": "CREATE TABLE t AS SELECT 1",
    "create-view": "CREATE OR REPLACE VIEW runs AS SELECT 1 AS x",
    "drop-view": "DROP VIEW runs",
    "set": "SET enable_external_access = true",
    "several-statements": "SELECT 1; COPY runs TO '{outside}/x.csv'",
}


@pytest.mark.parametrize("statement", REFUSED.values(), ids=REFUSED.keys())
def test_read_only_connection_refuses_what_could_write(tmp_path, statement):
    data, store = _runs_dir(tmp_path)
    part = store.files()[0]
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    con = connect(data, read_only=True)
    text = statement.format(part=part, data=data, outside=tmp_path)
    with pytest.raises(ReadOnlyError, match="datagen sql is read-only: .* statements are refused"):
        check_read_only(con, text)
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before
    assert con.execute("SELECT count(*) FROM runs").fetchone() == (1,)


@pytest.mark.parametrize(
    "statement",
    ["SELECT * FROM runs", "DESCRIBE runs", "SHOW TABLES", "SUMMARIZE runs", "EXPLAIN SELECT * FROM runs",
     "WITH r AS (SELECT * FROM runs) SELECT count(*) FROM r"],
)
def test_read_only_connection_runs_queries(tmp_path, statement):
    data, _ = _runs_dir(tmp_path)
    con = connect(data, read_only=True)
    check_read_only(con, statement)
    assert con.sql(statement).fetchall()


def test_read_only_connection_reads_nothing_outside_the_data_dir(tmp_path):
    data, _ = _runs_dir(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    con = connect(data, read_only=True)
    for query in (f"SELECT * FROM read_text('{secret}')", f"SELECT * FROM read_csv('{secret}')"):
        check_read_only(con, query)  # a SELECT: DuckDB's own settings are what stop it
        with pytest.raises(duckdb.PermissionException):
            con.sql(query).fetchall()
    with pytest.raises(duckdb.Error, match="configuration has been locked"):
        con.execute("SET enable_external_access = true")


def test_a_damaged_file_is_left_out_of_the_views_and_reported(tmp_path):
    now = datetime.now(timezone.utc)
    store = TableStore(tmp_path, RUNS)
    for run_id, rows_out in [("r1", 3), ("r2", 4), ("r3", 5)]:
        store.commit([{"run_id": run_id, "flow": "f", "status": "completed", "started_at": now, "rows_out": rows_out}], run_id)
    damaged = store.files()[1]
    with open(damaged, "r+b") as fh:
        fh.truncate(100)
    skipped = {}
    con = connect(tmp_path, read_only=True, skipped=skipped)
    assert con.execute("SELECT sum(rows_out), count(*) FROM runs").fetchone() == (8, 2)
    assert list(skipped) == [damaged] and "magic bytes" in skipped[damaged]
    assert store.files()[1] == damaged  # datagen sql moves nothing: the next run quarantines it
    path = refresh_catalog(tmp_path)  # the catalog a run leaves behind is built the same way
    assert duckdb.connect(str(path), read_only=True).execute("SELECT count(*) FROM runs").fetchone() == (2,)


def test_a_table_whose_every_file_is_damaged_is_an_empty_view(tmp_path):
    now = datetime.now(timezone.utc)
    store = TableStore(tmp_path, RUNS)
    store.commit([{"run_id": "r1", "flow": "f", "status": "completed", "started_at": now}], "r1")
    with open(store.files()[0], "r+b") as fh:
        fh.truncate(100)
    skipped = {}
    con = connect(tmp_path, read_only=True, skipped=skipped)
    assert len(skipped) == 1 and con.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    assert [c[0] for c in con.execute("DESCRIBE runs").fetchall()] == RUNS.arrow.names
    path = refresh_catalog(tmp_path)
    assert duckdb.connect(str(path), read_only=True).execute("SELECT count(*) FROM runs").fetchone() == (0,)


def test_quarantined_files_are_not_in_the_views(tmp_path):
    now = datetime.now(timezone.utc)
    store = TableStore(tmp_path, RUNS)
    store.commit([{"run_id": "r1", "flow": "f", "status": "completed", "started_at": now}], "r1")
    store.quarantine({store.files()[0]: "test"})
    store.commit([{"run_id": "r2", "flow": "f", "status": "completed", "started_at": now}], "r2")
    assert connect(tmp_path).execute("SELECT list(run_id) FROM runs").fetchone() == (["r2"],)


def test_clean_views_appear_with_the_cleaning_tables_and_skip_tables_without_record_id(tmp_path):
    import pyarrow as pa

    from schemas.tables import CONTAMINATION, TableSchema

    now = datetime.now(timezone.utc)
    TableStore(tmp_path, TableSchema("notes", 1, pa.schema([("text", pa.string())]))).commit([{"text": "a"}], "r1")
    TableStore(tmp_path, TableSchema("mine", 1, pa.schema([("record_id", pa.string())]))).commit(
        [{"record_id": "x"}, {"record_id": "y"}], "r1")
    views = lambda con: {r[0] for r in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}  # noqa: E731
    assert "mine_clean" not in views(connect(tmp_path))  # nothing cleaned yet: no _clean view
    row = {"record_id": "x", "source_table": "mine", "check_id": "c", "method": "ngram", "settings": "{}",
           "run_id": "r2", "created_at": now, "eval_file": "e.jsonl", "eval_fingerprint": "f", "contaminated": True}
    TableStore(tmp_path, CONTAMINATION).commit([row, {**row, "record_id": "y", "contaminated": False}], "r2")
    con = connect(tmp_path, read_only=True)
    assert {"mine_clean", "notes", "contamination"} <= views(con) and "notes_clean" not in views(con)
    assert con.execute("SELECT list(record_id) FROM mine_clean").fetchone() == (["y"],)
    assert duckdb.connect(str(refresh_catalog(tmp_path)), read_only=True).execute(
        "SELECT count(*) FROM mine_clean").fetchone() == (1,)
