"""Storage, at the bottom of the layers (it imports nothing of datagen's above it): the Arrow schema of
every built-in table and the lineage columns (tables.py), the data dir on a local path or an object
store (datadir.py), the atomic, rerun-safe Parquet table store (store.py) and the DuckDB catalog over
the tables (catalog.py)."""
from .tables import MATH_PROGRAMS, RUNS, TABLES, TableSchema

__all__ = ["MATH_PROGRAMS", "RUNS", "TABLES", "TableSchema"]
