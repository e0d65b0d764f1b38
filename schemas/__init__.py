"""Arrow schemas of every datagen table (tables.py) and the DuckDB catalog over them (catalog.py)."""
from .tables import MATH_PROGRAMS, RUNS, TABLES, TableSchema

__all__ = ["MATH_PROGRAMS", "RUNS", "TABLES", "TableSchema"]
