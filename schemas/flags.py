"""Which records the cleaning steps flagged (tasks/clean/): contaminated by an evaluation set, or a
near-duplicate that is not its cluster's representative. The generators' files are never rewritten:
readers leave these records out — the DuckDB catalog's `<table>_clean` views (`clean_view_sql`) and
the exports (`flagged_records`, unless `--include-flagged`).

Example:
    flagged_records("./datasets", "math_programs")   # {"5c1f...", ...}: record ids to leave out
    clean_view_sql("math_programs", {"contamination", "duplicates"})
    # CREATE OR REPLACE VIEW math_programs_clean AS SELECT * FROM math_programs t WHERE NOT EXISTS (...)
"""
from __future__ import annotations

CLEAN_TABLES = ("contamination", "duplicates")
# What flags a record in each cleaning table (a SQL condition over its rows).
FLAGGED = {"contamination": "contaminated", "duplicates": "NOT representative"}


def clean_view_sql(table: str, present: set[str]) -> str:
    """`<table>_clean`: the table without its flagged records (`present`: the cleaning tables that have
    rows; with none of them the view is the whole table)."""
    clauses = [f"NOT EXISTS (SELECT 1 FROM {c} f WHERE f.source_table = '{table}' AND {FLAGGED[c]} "
               f"AND f.record_id = t.record_id)" for c in CLEAN_TABLES if c in present]
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return f"CREATE OR REPLACE VIEW {table}_clean AS SELECT t.* FROM {table} t{where}"


def flagged_records(data_dir, table: str) -> set[str]:
    """Record ids of `table` that a cleaning step flagged (few, next to the table: read whole)."""
    import pyarrow.dataset as pads

    from .store import TableStore
    from .tables import CONTAMINATION, DUPLICATES

    flagged: set[str] = set()
    for schema, condition in ((CONTAMINATION, pads.field("contaminated")),
                              (DUPLICATES, ~pads.field("representative"))):
        rows = TableStore(data_dir, schema).read(columns=["record_id"],
                                                 filter=(pads.field("source_table") == table) & condition)
        flagged.update(rows.column("record_id").to_pylist())
    return flagged
