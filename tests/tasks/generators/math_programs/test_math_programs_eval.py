"""Proves `datagen eval math-programs` on a hand-built math_programs table (Parquet written with
TableStore): per run and pass, the problem count, solve rate (pass@k), greedy accuracy (attempt 0),
majority-vote accuracy over the executed values (tolerance groups, ties to the earlier attempt),
verified programs and the status breakdown equal values worked out by hand below; --run selects
runs, a run with no records is a clear error (exit 2), and --json writes the same table."""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

import pytest

from schemas.store import TableStore
from schemas.tables import MATH_PROGRAMS
from tasks.generators.math_programs import eval as mp_eval

R1, R2 = "20260101T000000-aaaa", "20260102T000000-bbbb"


def _row(run_id, pass_name, source_id, gold, attempt, status, value):
    """One full math_programs row; only the columns the eval reads vary."""
    return {
        "record_id": f"{run_id}-{pass_name}-{source_id}-{attempt}", "source_id": source_id, "source_file": "f.jsonl",
        "source_row": 1, "run_id": run_id, "generator": "math_programs", "model": "m", "engine": "fake",
        "prompt_version": "math-programs/v1", "config_hash": "h", "temperature": 0.0 if attempt == 0 else 0.5,
        "top_p": 1.0, "max_tokens": 256, "seed": 0, "created_at": datetime(2026, 1, 1, tzinfo=timezone.utc),
        "question": f"{source_id}?", "gold_answer": gold, "pass": pass_name, "attempt": attempt, "exemplar_ids": [],
        "raw_output": "x", "program": None if status == "no_program" else "def solution():\n    return 0",
        "parse_error": "no_solution_function" if status == "no_program" else None, "exec_status": status,
        "exec_result": None if value is None else repr(value), "exec_value": value, "exec_error": None,
        "exec_seconds": 0.01, "correct": status == "ok", "prompt_tokens": 10, "completion_tokens": 5,
        "finish_reason": "stop", "mean_logprob": -0.2,
    }


# (source_id, gold, [(attempt, status, exec_value), ...]) — some written out of attempt order on purpose.
R1_FIXED = [
    ("p1", 6.0, [(0, "ok", 6.0), (1, "wrong", 5.0), (2, "wrong", 5.0), (3, "error", None)]),
    ("p2", 10.0, [(0, "wrong", 9.0), (1, "ok", 10.0), (2, "ok", 10.000001), (3, "timeout", None)]),
    ("p3", 3.0, [(0, "no_program", None), (1, "wrong", 4.0), (2, "wrong", 7.0), (3, "error", None)]),
    ("p4", 2.0, [(0, "wrong", 1.0), (1, "ok", 2.0), (2, "ok", 2.0)]),
    ("p5", 8.0, [(1, "wrong", 9.0), (0, "ok", 8.0)]),
]
R1_DYNAMIC = [("p3", 3.0, [(0, "wrong", 4.0), (1, "ok", 3.0), (2, "ok", 3.0)])]
R2_FIXED = [("p6", 1.0, [(0, "error", None)])]

# Worked out by hand:
# r1 fixed: solved p1 p2 p4 p5 = 4/5; greedy correct p1 p5 = 2/5; majority: p1 5 (2 votes vs 1) wrong,
#   p2 10 (10 and 10.000001 vote together, 2 vs 1) right, p3 4 vs 7 tie -> 4 wrong, p4 2 right,
#   p5 8 vs 9 tie -> attempt 0's 8 right = 3/5; statuses ok 6, wrong 7, error 2, timeout 1, no_program 1.
EXPECTED = [
    {"run_id": R1, "pass": "fixed", "problems": 5, "solved": 4, "solve_rate": 0.8, "greedy_accuracy": 0.4,
     "majority_accuracy": 0.6, "verified_programs": 6, "attempts": 17,
     "ok": 6, "wrong": 7, "error": 2, "timeout": 1, "no_program": 1},
    {"run_id": R1, "pass": "dynamic", "problems": 1, "solved": 1, "solve_rate": 1.0, "greedy_accuracy": 0.0,
     "majority_accuracy": 1.0, "verified_programs": 2, "attempts": 3,
     "ok": 2, "wrong": 1, "error": 0, "timeout": 0, "no_program": 0},
    {"run_id": R2, "pass": "fixed", "problems": 1, "solved": 0, "solve_rate": 0.0, "greedy_accuracy": 0.0,
     "majority_accuracy": 0.0, "verified_programs": 0, "attempts": 1,
     "ok": 0, "wrong": 0, "error": 1, "timeout": 0, "no_program": 0},
]


@pytest.fixture
def data_dir(tmp_path):
    store = TableStore(tmp_path, MATH_PROGRAMS)
    # r2 first, and dynamic before fixed: the table's order must not come from the files'
    for run_id, pass_name, problems in [(R2, "fixed", R2_FIXED), (R1, "dynamic", R1_DYNAMIC), (R1, "fixed", R1_FIXED)]:
        store.commit([_row(run_id, pass_name, sid, gold, a, s, v) for sid, gold, attempts in problems
                      for a, s, v in attempts], run_id)
    return str(tmp_path)


def _args(data_dir, run=None, json_out=None):
    p = argparse.ArgumentParser()
    mp_eval.add_arguments(p)
    argv = ["--data-dir", data_dir, *[x for r in run or [] for x in ("--run", r)]]
    return p.parse_args(argv + (["--json", json_out] if json_out else []))


def test_metrics_per_run_and_pass_match_hand_counts(data_dir):
    assert mp_eval.evaluation_table(data_dir) == EXPECTED


def test_run_selection(data_dir):
    assert mp_eval.evaluation_table(data_dir, [R2]) == EXPECTED[2:]
    assert mp_eval.evaluation_table(data_dir, [R1, R2]) == EXPECTED


@pytest.mark.parametrize("values, expected", [
    ([], None), ([3.0], 3.0), ([1.0, 2.0, 2.0], 2.0), ([2.0, 1.0], 2.0), ([1.0, 2.0], 1.0),
    ([9.0, 10.0, 10.000001], 10.0), ([1000.0, 1000.5, 1000.5], 1000.5),  # 0.5 apart: two answers
])
def test_majority_value(values, expected):
    assert mp_eval.majority_value(values) == expected


def test_main_prints_the_table_and_writes_json(data_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert mp_eval.main(_args(data_dir, run=[R1], json_out=str(out))) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == list(mp_eval.EVAL_COLUMNS)
    assert printed[1].split() == [R1, "fixed", "5", "4", "0.800", "0.400", "0.600", "6", "17", "6", "7", "2", "1", "1"]
    assert printed[2].split()[:7] == [R1, "dynamic", "1", "1", "1.000", "0.000", "1.000"]
    assert len(printed) == 3
    assert json.loads(out.read_text()) == EXPECTED[:2]


def test_unknown_run_or_empty_data_dir_is_a_clear_error(data_dir, tmp_path, capsys):
    assert mp_eval.main(_args(data_dir, run=[R1, "nope"])) == 2
    assert "no math_programs records for run(s) ['nope']" in capsys.readouterr().err
    assert mp_eval.main(_args(str(tmp_path / "empty"))) == 2
    assert "no math_programs records in" in capsys.readouterr().err
