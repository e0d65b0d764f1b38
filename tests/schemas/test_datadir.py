"""Proves data dirs beyond a local folder: the same TableStore, runs table, input reader and DuckDB
views over an fsspec filesystem (memory://) and over S3 (pyarrow's S3 client against a real S3 API
server on 127.0.0.1, moto's). Commits stay atomic (no temporary object is ever listed), committed
keys drive incremental runs the same way, and DuckDB reads the tables back; for S3 a catalog.duckdb
whose views name s3:// URLs is uploaded beside them."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import duckdb
import pyarrow as pa
import pytest

from schemas.catalog import CATALOG_FILE, connect, refresh_catalog, view_statements
from schemas.tables import RUNS
from schemas.datadir import DataDir, is_uri
from tasks.runtime.inputs import InputError, read_rows
from tasks.runtime.runs import RunState, write_run
from schemas.store import TableStore

NOW = datetime.now(timezone.utc)


def _run_row(run_id: str, flow: str = "f", rows_out: int = 1) -> dict:
    return {"run_id": run_id, "flow": flow, "status": "completed", "started_at": NOW, "rows_out": rows_out}


def test_local_paths_and_file_uris_are_local(tmp_path):
    for where in (tmp_path, str(tmp_path), f"file://{tmp_path}"):
        d = DataDir(where)
        assert d.local and d.root == str(tmp_path.resolve()) and d.url() == str(tmp_path.resolve())
    assert not is_uri(tmp_path) and is_uri("s3://b/x") and not is_uri("file:///x")
    with pytest.raises(ValueError, match="nosuchscheme"):
        DataDir("nosuchscheme://bucket/x")


def test_local_atomic_write_leaves_no_temp_and_lists_only_committed(tmp_path):
    d = DataDir(tmp_path)
    d.write_bytes(b"x", d.join("t", "run_id=r", "a.parquet"))
    (tmp_path / "t" / "run_id=r" / ".b.parquet.1234.tmp").write_bytes(b"half")  # a writer mid-commit
    assert d.list_files(d.join("t")) == [d.join("t", "run_id=r", "a.parquet")]
    assert d.list_files(d.join("missing")) == []
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [".b.parquet.1234.tmp", "a.parquet"]


@pytest.fixture
def memory_dir():
    uri = f"memory://datagen-{uuid.uuid4().hex[:8]}/datasets"
    yield uri
    import fsspec

    fsspec.filesystem("memory").rm(uri.removeprefix("memory://").split("/")[0], recursive=True)


def test_fsspec_data_dir_store_runs_and_duckdb(memory_dir):
    store = TableStore(memory_dir, RUNS)
    store.commit([_run_row("r1", "a", 3)], "r1")
    store.commit([_run_row("r2", "b", 4)], "r2")
    run = RunState.start("math-programs", {}, model="m", engine="fake")
    write_run(memory_dir, run)
    write_run(memory_dir, run.finish("completed"))  # replaced in place: still one row for this run
    assert store.committed_keys(["run_id"], flow="a") == {("r1",)}
    assert len(store.read()) == 3 and all(f.startswith(store.root) for f in store.files())
    con = connect(memory_dir)
    assert con.execute("SELECT count(*), sum(rows_out) FROM runs").fetchone() == (3, 7)
    locked = connect(memory_dir, read_only=True)  # what `datagen sql` opens: still reads the object store
    assert locked.execute("SELECT count(*) FROM runs").fetchone() == (3,)
    assert refresh_catalog(memory_dir) is None  # DuckDB has no memory:// reader: no catalog file to write


def test_inputs_from_an_fsspec_uri(memory_dir):
    d = DataDir(memory_dir)
    d.write_bytes(b'{"question": "q1"}\n\n{"question": "q2"}\nnot json\n', d.join("in.jsonl"))
    rows = read_rows(d.url(d.join("in.jsonl")))
    assert next(rows) == (1, {"question": "q1"}) and next(rows) == (3, {"question": "q2"})
    with pytest.raises(InputError, match=r"in\.jsonl: row 4: invalid JSON"):
        next(rows)
    with pytest.raises(InputError, match="file not found"):
        list(read_rows(d.url(d.join("nope.jsonl"))))


def test_s3_data_dir_store_catalog_and_duckdb(s3_server, tmp_path):
    uri = f"s3://datagen-test/{uuid.uuid4().hex[:8]}/datasets"
    d = DataDir(uri)
    assert d.fs.type_name == "s3" and d.url() == uri
    store = TableStore(uri, RUNS)
    first = store.commit([_run_row("r1", "a", 3)], "r1")
    store.commit(pa.Table.from_pylist([_run_row("r2", "b", 4)], schema=RUNS.arrow), "r2")
    assert first.startswith("datagen-test/") and len(store.files()) == 2
    assert store.committed_keys(["run_id", "flow"]) == {("r1", "a"), ("r2", "b")}
    assert connect(uri).execute("SELECT sum(rows_out) FROM runs").fetchone() == (7,)

    where = refresh_catalog(uri)
    assert where == f"{uri}/{CATALOG_FILE}" and d.exists(d.join(CATALOG_FILE))
    catalog = d.read_bytes(d.join(CATALOG_FILE))
    local = duckdb.connect(":memory:")
    path = tmp_path / CATALOG_FILE
    path.write_bytes(catalog)
    local.execute(f"ATTACH '{path}' AS datagen (READ_ONLY)")
    sql = local.execute("SELECT sql FROM duckdb_views() WHERE database_name = 'datagen' AND view_name = 'runs'").fetchone()[0]
    assert f"read_parquet('{uri}/runs/run_id=*/*.parquet'" in sql  # any DuckDB with httpfs + an S3 secret reads it
    assert set(view_statements(uri)) == {"runs"}


def test_s3_inputs_and_missing_bucket_errors(s3_server):
    d = DataDir("s3://datagen-test/inputs")
    d.write_bytes(json.dumps({"question": "q", "answer": "1"}).encode() + b"\n", d.join("p.jsonl"))
    assert list(read_rows("s3://datagen-test/inputs/p.jsonl")) == [(1, {"question": "q", "answer": "1"})]
    with pytest.raises(InputError, match=r"s3://datagen-test/inputs/none\.jsonl: file not found"):
        list(read_rows("s3://datagen-test/inputs/none.jsonl"))
