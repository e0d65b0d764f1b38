"""Helpers for the cleaning tests: a real `math_programs` table (Parquet through the TableStore, with
its explicit schema) made of given questions and programs."""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from schemas.store import TableStore
from schemas.tables import MATH_PROGRAMS


def program_rows(pairs, run_id="20261204T000000-aaaaaa", start=0, correct=None, minutes=0):
    """math_programs rows, one per (question, program); record ids hash the position and the texts."""
    created = datetime(2026, 12, 4, tzinfo=timezone.utc) + timedelta(minutes=minutes)
    rows = []
    for i, (question, program) in enumerate(pairs, start=start):
        record_id = hashlib.sha256(f"{i}|{question}|{program}|{run_id}".encode()).hexdigest()[:24]
        rows.append({
            "record_id": record_id, "source_id": f"src-{i}", "run_id": run_id, "generator": "math_programs",
            "model": "m", "engine": "transformers", "prompt_version": "math-programs/v1", "config_hash": "h",
            "created_at": created + timedelta(microseconds=i), "question": question, "gold_answer": 1.0,
            "pass": "fixed", "attempt": 0, "program": program, "exec_status": "wrong",
            "correct": bool(correct[i - start]) if correct else False,
        })
    return rows


@pytest.fixture
def write_programs(tmp_path):
    """write_programs(pairs, **kw) -> (data_dir, rows): commits the rows to <tmp>/data/math_programs."""
    data_dir = tmp_path / "data"

    def write(pairs, **kw):
        rows = program_rows(pairs, **kw)
        store = TableStore(data_dir, MATH_PROGRAMS)
        for chunk in range(0, len(rows), 97):  # several parts, as a run commits them
            store.commit(rows[chunk:chunk + 97], rows[0]["run_id"])
        return str(data_dir), rows

    return write
