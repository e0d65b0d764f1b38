"""DuckDB over the Parquet tables of a data dir (local path, shared filesystem or object store).

`connect(data_dir)` gives an in-memory connection with one view per table that has files (it takes
no lock, so it works while a run is writing). `connect(data_dir, read_only=True)` is what `datagen
sql` uses: DuckDB may then read only the data dir (external access off, the data dir the one allowed
directory, the configuration locked), and `check_read_only(con, text)` refuses any statement but
SELECT / EXPLAIN (DESCRIBE, SHOW and SUMMARIZE are SELECTs), so COPY, ATTACH, INSTALL, CREATE and SET
never reach it: writing stays the generators' job. `refresh_catalog(data_dir)`
(re)writes `<data_dir>/catalog.duckdb` with the same views, so any DuckDB client can open it and
`SELECT * FROM math_programs`.

Views are `read_parquet` globs over the data dir: paths for a local one, URLs for an object store
(`s3://bucket/datasets/math_programs/run_id=*/*.parquet`; a table with a damaged file gets the list of its
other files, and the damaged ones are reported, not read). Here DuckDB reads those URLs through the data
dir's own filesystem (pyarrow's, registered as an fsspec filesystem), so no DuckDB extension or
separate credentials are needed; a catalog.duckdb uploaded to `s3://`, `gs://` or `az://` holds the
same URLs, which any DuckDB with the httpfs (or azure) extension and a secret reads:
`ATTACH 's3://bucket/datasets/catalog.duckdb' AS datagen (READ_ONLY)`.

Example:
    con = connect("./datasets"); con.sql("SELECT exec_status, count(*) FROM math_programs GROUP BY 1").show()
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import duckdb

import pyarrow as pa

from .flags import CLEAN_TABLES, clean_view_sql
from .tables import TABLES, TableSchema

log = logging.getLogger(__name__)
CATALOG_FILE = "catalog.duckdb"
# How DuckDB (httpfs / azure extensions) spells the object stores pyarrow and fsspec know.
_DUCKDB_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "abfs": "abfss", "abfss": "abfss"}


def view_statements(data_dir, skipped: dict[str, str] | None = None) -> dict[str, str]:
    """`CREATE OR REPLACE VIEW` statement per table that has committed files. A table with damaged
    files (unreadable footer) gets a view over its other files; `skipped` collects file -> why."""
    from schemas.datadir import DataDir
    from schemas.store import TableStore

    d = DataDir(data_dir)
    statements = {}
    # The built-in tables, then any other table a generator of the user's committed (same layout).
    names = list(TABLES) + [n for n in d.list_dirs() if n not in TABLES and n.isidentifier()]
    for name in names:
        store = TableStore(d, TABLES.get(name) or TableSchema(name, 1, pa.schema([])))
        files = store.files()
        damaged = store.damaged(files)
        files = [f for f in files if f not in damaged]
        if skipped is not None:
            skipped.update({d.url(f): why for f, why in damaged.items()})
        if not files:
            if damaged and len(store.table.arrow):  # every file damaged: an empty view, not a missing table
                statements[name] = f"CREATE OR REPLACE VIEW {name} AS {_empty_select(store.table.arrow)}"
            continue
        if damaged:
            source = "[" + ", ".join(_quote(_duckdb_url(d, f)) for f in files) + "]"
        else:  # a glob, so that a catalog.duckdb opened later sees the files committed since
            source = _quote(_duckdb_url(d, f"{store.root}/run_id=*/*.parquet"))
        # The run folders are named run_id=..., and every file carries run_id itself:
        # hive_partitioning=false keeps the file's column the only run_id.
        statements[name] = (
            f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet({source}, "
            f"union_by_name=true, hive_partitioning=false)"
        )
    # Once a cleaning step (tasks/clean/) has written rows: `<table>_clean` without the records it flagged.
    if present := {c for c in CLEAN_TABLES if c in statements}:
        for name in [n for n in statements if n not in CLEAN_TABLES and n != "runs"]:
            statements[f"{name}_clean"] = clean_view_sql(name, present)
    return statements


def _empty_select(schema: pa.Schema) -> str:
    """A SELECT of no rows with the table's columns and types (DuckDB's reading of the Arrow schema)."""
    relation = duckdb.from_arrow(schema.empty_table())
    columns = ", ".join(f'CAST(NULL AS {t}) AS "{c}"' for c, t in zip(relation.columns, relation.types))
    return f"SELECT {columns} WHERE false"


def _duckdb_url(d, path: str) -> str:
    return path if d.local else f"{_duckdb_scheme(d.scheme)}://{path}"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")


class ReadOnlyError(ValueError):
    """A statement `datagen sql` does not run: it could write, or reach outside the data dir."""


def connect(data_dir, read_only: bool = False, skipped: dict[str, str] | None = None) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB connection with a view per table of the data dir (locked down with read_only);
    damaged files are left out of the views and reported in `skipped` (file -> why)."""
    from schemas.datadir import DataDir

    from schemas.store import retry_vanished

    con = duckdb.connect(":memory:")
    d = DataDir(data_dir)
    retry_vanished(lambda: _create_views(con, d, skipped))  # a compaction may swap a run's folder meanwhile
    if read_only:
        if d.local:  # object stores are read through the registered filesystem, which needs external access
            root = str(Path(d.root).resolve()).rstrip("/") + "/"
            con.execute("SET allowed_directories = [$1]", [root])
            con.execute("SET enable_external_access = false")
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET lock_configuration = true")
    return con


def check_read_only(con: duckdb.DuckDBPyConnection, text: str) -> None:
    """Raises ReadOnlyError unless every statement in `text` is a SELECT or an EXPLAIN."""
    try:
        statements = con.extract_statements(text)
    except duckdb.Error:
        return  # a syntax error: DuckDB itself reports it when the text runs
    for statement in statements:
        kind = statement.type.name
        if kind not in READ_ONLY_STATEMENTS:
            raise ReadOnlyError(
                f"datagen sql is read-only: {kind} statements are refused (SELECT, EXPLAIN, DESCRIBE, SHOW and "
                "SUMMARIZE run; the generators write the tables)"
            )


def refresh_catalog(data_dir) -> str | None:
    """Rewrite catalog.duckdb's views. Returns where it is, or None when it was not written (another
    process holds its lock, or no DuckDB could read this kind of filesystem's URLs)."""
    from schemas.datadir import DataDir

    d = DataDir(data_dir)
    if d.local:
        return _write_catalog(Path(d.root) / CATALOG_FILE, d)
    if d.scheme not in _DUCKDB_SCHEMES:
        log.info("no catalog.duckdb for %s: DuckDB has no reader for %s://", d, d.scheme)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = _write_catalog(Path(tmp) / CATALOG_FILE, d)
        d.write_bytes(Path(local).read_bytes(), d.join(CATALOG_FILE))
    return d.url(d.join(CATALOG_FILE))


def _duckdb_scheme(scheme: str) -> str:
    return _DUCKDB_SCHEMES.get(scheme, scheme)


def _create_views(con: duckdb.DuckDBPyConnection, data_dir, skipped: dict[str, str] | None = None) -> None:
    from fsspec.implementations.arrow import ArrowFSWrapper

    from schemas.datadir import DataDir

    d = DataDir(data_dir)
    if d.fsspec is not None:  # DuckDB resolves (and binds views over) the URLs through the data dir's filesystem
        con.register_filesystem(d.fsspec)
    elif not d.local:
        con.register_filesystem(type("DataDirFS", (ArrowFSWrapper,), {"protocol": (_duckdb_scheme(d.scheme),)})(d.fs))
    for name, statement in view_statements(d, skipped).items():
        try:
            con.execute(statement)
        except duckdb.BinderException as exc:  # a user's table without record_id has no `_clean` view
            if not name.endswith("_clean"):
                raise
            log.info("no view %s: %s", name, exc)


def _write_catalog(path: Path, data_dir) -> str | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path))
    except duckdb.IOException as exc:  # another writer holds the file lock; the next run refreshes it
        log.warning("catalog %s is locked by another process, not refreshed: %s", path, exc)
        return None
    skipped: dict[str, str] = {}
    try:
        _create_views(con, data_dir, skipped)
    finally:
        con.close()
    for file, why in skipped.items():
        log.warning("catalog %s: left out damaged file %s (%s)", path, file, why)
    return str(path)
